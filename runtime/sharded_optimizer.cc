// ZeRO-1 AdamW over bucket slices.
#include "runtime/sharded_optimizer.h"

#include <cmath>
#include <map>

#include "common/error.h"
#include "runtime/tensor_parallel.h"

namespace cadre::runtime {

ShardedAdamW::ShardedAdamW(const LlamaModel& model, GradientReducer& reducer,
                           comm::Transport& dp, const AdamWOptions& options)
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
  }
  reset_master();
}

torch::Tensor ShardedAdamW::slice_of(size_t b, const std::vector<torch::Tensor>& per_parameter) const {
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
    // Every rank's updated slice, into every parameter of the bucket.
    auto whole = all_gather_tensor(p, dp_);
    for (const auto& m : reducer_.bucket_members(b)) {
      const torch::Tensor& value = m.parameter->value;
      value.detach().view({-1}).copy_(whole.narrow(0, m.offset, value.numel()));
    }
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
