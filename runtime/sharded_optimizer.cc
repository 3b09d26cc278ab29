// ZeRO-1 AdamW over bucket slices.
#include "runtime/sharded_optimizer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "common/error.h"
#include "runtime/tensor_parallel.h"

namespace cadre::runtime {
namespace {

// "layers.<i>.<what>" -> i; the embedding -1; the final norm and LM head num_layers.
int forward_layer_of(const std::string& name, int num_layers) {
  const std::string prefix = "layers.";
  if (name.compare(0, prefix.size(), prefix) == 0) return std::stoi(name.substr(prefix.size()));
  return name == "embedding" ? -1 : num_layers;
}

}  // namespace

ShardedAdamW::ShardedAdamW(const LlamaModel& model, GradientReducer& reducer, comm::Transport& dp,
                           const AdamWOptions& options)
    : model_(model), reducer_(reducer), dp_(dp), options_(options) {
  CADRE_CHECK(reducer.sharded(), "ShardedAdamW needs a sharded gradient reducer");
  torch::NoGradGuard no_grad;
  for (size_t b = 0; b < reducer.bucket_count(); ++b) {
    const int64_t size = reducer.shard_gradient(b).numel();
    const auto options_f32 = reducer.shard_gradient(b).options();
    std::vector<torch::Tensor> decay, counted;
    for (const auto& p : model.parameters()) {
      decay.push_back(torch::full_like(p.value, p.value.dim() >= 2 ? 1.0 : 0.0).detach());
      counted.push_back(torch::full_like(p.value, p.counted ? 1.0 : 0.0).detach());
    }
    decay_.push_back(slice_of(b, decay));
    counted_.push_back(slice_of(b, counted));
    exp_avg_.push_back(torch::zeros({size}, options_f32));
    exp_avg_sq_.push_back(torch::zeros({size}, options_f32));
    master_.push_back(torch::zeros({size}, options_f32));
    std::vector<int> layers;
    for (const auto& m : reducer.bucket_members(b)) {
      layers.push_back(forward_layer_of(m.parameter->name, model.config().num_layers()));
    }
    bucket_layers_.push_back(layers);
  }
  gathers_.resize(reducer.bucket_count());
  reset_master();
}

ShardedAdamW::~ShardedAdamW() {
  for (auto& work : gathers_) {
    if (!work) continue;
    try {
      work->wait();
    } catch (...) {
      // The transport reports its own failure; nothing more can be done in a destructor.
    }
  }
}

void ShardedAdamW::ensure_bucket(size_t b) {
  if (!gathers_[b]) return;
  gathers_[b]->wait();
  gathers_[b].reset();
  torch::NoGradGuard no_grad;
  torch::Tensor& whole = reducer_.bucket_flat(b);
  for (const auto& m : reducer_.bucket_members(b)) {
    const torch::Tensor& value = m.parameter->value;
    value.detach().view({-1}).copy_(whole.narrow(0, m.offset, value.numel()));
  }
  whole.zero_();  // the bucket holds gradients again from here on
}

void ShardedAdamW::ensure_layer(int layer) {
  for (size_t b = 0; b < gathers_.size(); ++b) {
    if (gathers_[b] && std::find(bucket_layers_[b].begin(), bucket_layers_[b].end(), layer) !=
                           bucket_layers_[b].end()) {
      ensure_bucket(b);
    }
  }
}

void ShardedAdamW::finish_gather() {
  for (size_t b = 0; b < gathers_.size(); ++b) ensure_bucket(b);
}

torch::Tensor ShardedAdamW::slice_of(size_t b,
                                     const std::vector<torch::Tensor>& per_parameter) const {
  const int64_t padded = reducer_.padded_elements(b);
  const int64_t size = padded / dp_.size(), begin = dp_.rank() * size;
  auto flat = torch::zeros({padded}, reducer_.shard_gradient(b).options());
  std::map<const NamedParameter*, size_t> index;
  const auto& params = model_.parameters();
  for (size_t i = 0; i < params.size(); ++i) index[&params[i]] = i;
  for (const auto& m : reducer_.bucket_members(b)) {
    const torch::Tensor& t = per_parameter.at(index.at(m.parameter));
    flat.narrow(0, m.offset, t.numel()).copy_(t.reshape({-1}));
  }
  return flat.narrow(0, begin, size).clone();
}

void ShardedAdamW::reset_master() {
  finish_gather();
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> values;
  for (const auto& p : model_.parameters()) values.push_back(p.value.detach());
  for (size_t b = 0; b < master_.size(); ++b) master_[b].copy_(slice_of(b, values));
}

double ShardedAdamW::grad_sum_squares() const {
  double sum = 0;
  for (size_t b = 0; b < master_.size(); ++b) {
    const auto g = reducer_.shard_gradient(b).to(torch::kDouble);
    sum += (g * g * counted_[b].to(torch::kDouble)).sum().item<double>();
  }
  return sum;
}

void ShardedAdamW::clip(double norm, double max_norm) {
  if (!(max_norm > 0 && norm > max_norm)) return;
  const double scale = max_norm / (norm + 1e-6);
  torch::NoGradGuard no_grad;
  for (size_t b = 0; b < master_.size(); ++b) reducer_.shard_gradient(b).mul_(scale);
}

void ShardedAdamW::step(double learning_rate) {
  finish_gather();  // normally done by the forward in between
  ++steps_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bias1 = 1 - std::pow(b1, static_cast<double>(steps_));
  const double bias2 = 1 - std::pow(b2, static_cast<double>(steps_));
  torch::NoGradGuard no_grad;
  for (size_t b = 0; b < master_.size(); ++b) {
    torch::Tensor& p = master_[b];
    const torch::Tensor& g = reducer_.shard_gradient(b);
    if (options_.weight_decay > 0) {
      // p -= lr * wd * p where the parameter has two or more dimensions (as AdamW::step).
      p.sub_(p * decay_[b] * (learning_rate * options_.weight_decay));
    }
    exp_avg_[b].mul_(b1).add_(g, 1 - b1);
    exp_avg_sq_[b].mul_(b2).addcmul_(g, g, 1 - b2);
    auto denom = (exp_avg_sq_[b] / bias2).sqrt_().add_(options_.eps);
    p.addcdiv_(exp_avg_[b], denom, -learning_rate / bias1);
  }
  // Every rank's updated slices into the (no longer needed) gradient buckets, the embedding's
  // bucket (the last) first, then the layers from the first: the order the next forward uses
  // them. Copied into the parameters by ensure_layer.
  for (size_t i = master_.size(); i-- > 0;) {
    torch::Tensor& flat = reducer_.bucket_flat(i);
    gathers_[i] = dp_.all_gather_async(master_[i].data_ptr(), flat.data_ptr(),
                                       master_[i].numel() * master_[i].element_size());
  }
}

std::vector<torch::Tensor> ShardedAdamW::gather_slices(
    const std::vector<torch::Tensor>& slices) const {
  const auto& params = model_.parameters();
  std::map<const NamedParameter*, size_t> index;
  for (size_t i = 0; i < params.size(); ++i) index[&params[i]] = i;
  std::vector<torch::Tensor> out(params.size());
  for (size_t b = 0; b < slices.size(); ++b) {
    auto whole = all_gather_tensor(slices[b], dp_);
    for (const auto& m : reducer_.bucket_members(b)) {
      const torch::Tensor& value = m.parameter->value;
      out[index.at(m.parameter)] =
          whole.narrow(0, m.offset, value.numel()).view(value.sizes()).clone();
    }
  }
  return out;
}

std::vector<torch::Tensor> ShardedAdamW::gather_moments(int which) const {
  return gather_slices(which == 0 ? exp_avg_ : exp_avg_sq_);
}

std::vector<torch::Tensor> ShardedAdamW::gather_gradients() const {
  std::vector<torch::Tensor> slices;
  for (size_t b = 0; b < reducer_.bucket_count(); ++b) slices.push_back(reducer_.shard_gradient(b));
  return gather_slices(slices);
}

void ShardedAdamW::set_moments(int which, const std::vector<torch::Tensor>& moments) {
  torch::NoGradGuard no_grad;
  auto& mine = which == 0 ? exp_avg_ : exp_avg_sq_;
  for (size_t b = 0; b < mine.size(); ++b) mine[b].copy_(slice_of(b, moments));
}

}  // namespace cadre::runtime
