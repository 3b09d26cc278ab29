// The Llama-style decoder: plain fp32 tensors with autograd, one CoreAttentionOp per step shared
// by every layer.
#include "runtime/model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <torch/types.h>

#include <cmath>

#include "common/error.h"
#include "runtime/rope_scaling.h"

namespace cadre::runtime {

torch::Tensor document_positions(const std::vector<int64_t>& doc_lengths) {
  int64_t total = 0;
  for (int64_t n : doc_lengths) total += n;
  auto positions = torch::empty({total}, torch::kLong);
  int64_t* p = positions.data_ptr<int64_t>();
  for (int64_t n : doc_lengths) {
    for (int64_t i = 0; i < n; ++i) *p++ = i;
  }
  return positions;
}

torch::Tensor document_targets(const torch::Tensor& tokens,
                               const std::vector<int64_t>& doc_lengths) {
  CADRE_CHECK(tokens.dim() == 1 && tokens.scalar_type() == torch::kLong,
              "tokens must be int64 [tokens]; got ", tokens.sizes(), " of ", tokens.scalar_type());
  auto src = tokens.contiguous();
  auto targets = torch::full_like(src, kIgnoreTarget);
  const int64_t* t = src.data_ptr<int64_t>();
  int64_t* out = targets.data_ptr<int64_t>();
  int64_t begin = 0;
  for (int64_t n : doc_lengths) {
    CADRE_CHECK(n >= 0 && begin + n <= src.size(0), "document lengths sum past the ",
                src.size(0), " tokens");
    for (int64_t i = begin; i + 1 < begin + n; ++i) out[i] = t[i + 1];
    begin += n;
  }
  CADRE_CHECK(begin == src.size(0), "document lengths sum to ", begin, " but there are ",
              src.size(0), " tokens");
  return targets;
}

RopeTables rope_tables(const torch::Tensor& positions, int64_t head_dim, double theta) {
  CADRE_CHECK(head_dim % 2 == 0, "rotary embeddings need an even head_dim; got ", head_dim);
  const int64_t half = head_dim / 2;
  auto index = torch::arange(half, positions.options().dtype(torch::kDouble));
  auto inv_freq = torch::pow(theta, index * (-2.0 / static_cast<double>(head_dim)));
  // Angles in double so that long positions keep their precision.
  auto angles = positions.to(torch::kDouble).unsqueeze(1) * inv_freq.unsqueeze(0);
  return {angles.cos().to(torch::kFloat).unsqueeze(1), angles.sin().to(torch::kFloat).unsqueeze(1)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& tables) {
  const int64_t half = x.size(-1) / 2;
  CADRE_CHECK(x.size(-1) == 2 * tables.cos.size(-1), "rotary tables are for head_dim ",
              2 * tables.cos.size(-1), " but x has ", x.size(-1));
  auto xf = x.to(torch::kFloat);
  auto x1 = xf.narrow(-1, 0, half);
  auto x2 = xf.narrow(-1, half, half);
  return torch::cat({x1 * tables.cos - x2 * tables.sin, x1 * tables.sin + x2 * tables.cos}, -1)
      .to(x.scalar_type());
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& positions, double theta) {
  return apply_rope(x, rope_tables(positions, x.size(-1), theta));
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto xf = x.to(torch::kFloat);
  auto normed = (xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps)).to(x.scalar_type());
  return normed * weight.to(x.scalar_type());
}

torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets) {
  auto log_probs = torch::log_softmax(logits, -1, torch::kFloat);
  auto valid = targets.ne(kIgnoreTarget);
  auto picked = log_probs.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1);
  return -(picked * valid.to(picked.scalar_type())).sum();
}

namespace {

void check_dims(const config::ModelConfig& m) {
  CADRE_CHECK(m.num_layers() > 0 && m.hidden_size() > 0 && m.num_heads() > 0 &&
                  m.num_kv_heads() > 0 && m.head_dim() > 0 && m.ffn_hidden_size() > 0 &&
                  m.vocab_size() > 0,
              "model sizes must all be positive (num_layers ", m.num_layers(), ", hidden_size ",
              m.hidden_size(), ", num_heads ", m.num_heads(), ", num_kv_heads ",
              m.num_kv_heads(), ", head_dim ", m.head_dim(), ", ffn_hidden_size ",
              m.ffn_hidden_size(), ", vocab_size ", m.vocab_size(),
              "); set model.preset or every size field");
  CADRE_CHECK(m.num_heads() % m.num_kv_heads() == 0, "model.num_heads (", m.num_heads(),
              ") must be a multiple of model.num_kv_heads (", m.num_kv_heads(), ")");
  CADRE_CHECK(m.head_dim() % 2 == 0, "model.head_dim must be even for rotary embeddings; got ",
              m.head_dim());
  CADRE_CHECK(m.kv_latent_dim() == 0,
              "cadre train implements grouped-query attention only; model.kv_latent_dim must be 0,"
              " got ", m.kv_latent_dim());
}

}  // namespace

LlamaModel::LlamaModel(const config::ModelConfig& model, uint64_t seed, const torch::Device& device)
    : config_(model) {
  check_dims(model);
  // One generator walked in a fixed order: identical weights on every rank for one seed.
  at::Generator generator = at::detail::createCPUGenerator(seed);
  if (!device.is_cpu()) {
    generator = at::globalContext().defaultGenerator(device).clone();
    generator.set_current_seed(seed);
  }
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device);
  const double std = 0.02;
  // GPT-2 / Llama practice: residual output projections scaled down by sqrt(2 * layers).
  const double residual_std = std / std::sqrt(2.0 * model.num_layers());
  auto normal = [&](std::vector<int64_t> shape, double s) {
    return at::randn(shape, generator, f32) * s;
  };
  const int64_t hidden = model.hidden_size(), heads = model.num_heads();
  const int64_t kv_heads = model.num_kv_heads(), dim = model.head_dim();
  const int64_t ffn = model.ffn_hidden_size(), vocab = model.vocab_size();

  embedding_ = add_parameter("embedding", normal({vocab, hidden}, std));
  for (int32_t l = 0; l < model.num_layers(); ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    Layer layer;
    layer.attention_norm = add_parameter(p + "attention_norm", torch::ones({hidden}, f32));
    layer.wq = add_parameter(p + "wq", normal({heads * dim, hidden}, std));
    layer.wk = add_parameter(p + "wk", normal({kv_heads * dim, hidden}, std));
    layer.wv = add_parameter(p + "wv", normal({kv_heads * dim, hidden}, std));
    layer.wo = add_parameter(p + "wo", normal({hidden, heads * dim}, residual_std));
    layer.mlp_norm = add_parameter(p + "mlp_norm", torch::ones({hidden}, f32));
    layer.w_gate = add_parameter(p + "w_gate", normal({ffn, hidden}, std));
    layer.w_up = add_parameter(p + "w_up", normal({ffn, hidden}, std));
    layer.w_down = add_parameter(p + "w_down", normal({hidden, ffn}, residual_std));
    layers_.push_back(layer);
  }
  final_norm_ = add_parameter("final_norm", torch::ones({hidden}, f32));
  lm_head_ = model.tie_embeddings() ? embedding_
                                    : add_parameter("lm_head", normal({vocab, hidden}, std));
}

torch::Tensor LlamaModel::add_parameter(const std::string& name, torch::Tensor value) {
  value = value.contiguous().set_requires_grad(true);
  parameters_.push_back({name, value});
  return value;
}

torch::Tensor LlamaModel::embed(const torch::Tensor& tokens) const {
  return embedding_.index_select(0, tokens).to(compute_dtype_);
}

RopeTables LlamaModel::rope(const torch::Tensor& positions) const {
  if (config_.rope_scaling() != "none") {  // runtime/rope_scaling.h
    return rope_tables(positions, rope_inverse_frequencies(config_));
  }
  return rope_tables(positions, config_.head_dim(), config_.rope_theta());
}

std::vector<torch::Tensor> LlamaModel::attention_inputs(int layer_index, const torch::Tensor& x,
                                                        const RopeTables& rope) const {
  const Layer& layer = layers_.at(layer_index);
  const int64_t n = x.size(0), dim = config_.head_dim();
  auto h = rms_norm(x, layer.attention_norm, config_.norm_eps());
  auto q = apply_rope(torch::matmul(h, cast(layer.wq).t()).view({n, config_.num_heads(), dim}), rope);
  auto k = apply_rope(torch::matmul(h, cast(layer.wk).t()).view({n, config_.num_kv_heads(), dim}),
                      rope);
  auto v = torch::matmul(h, cast(layer.wv).t()).view({n, config_.num_kv_heads(), dim});
  return {q.contiguous(), k.contiguous(), v.contiguous()};
}

torch::Tensor LlamaModel::layer_output(int layer_index, const torch::Tensor& x,
                                       const torch::Tensor& o) const {
  const Layer& layer = layers_.at(layer_index);
  const int64_t n = x.size(0);
  auto y = x + torch::matmul(o.reshape({n, config_.num_heads() * config_.head_dim()}),
                             cast(layer.wo).t());
  auto h = rms_norm(y, layer.mlp_norm, config_.norm_eps());
  auto gated = torch::silu(torch::matmul(h, cast(layer.w_gate).t())) *
               torch::matmul(h, cast(layer.w_up).t());
  return y + torch::matmul(gated, cast(layer.w_down).t());
}

torch::Tensor LlamaModel::logits(const torch::Tensor& x) const {
  return torch::matmul(rms_norm(x, final_norm_, config_.norm_eps()), cast(lm_head_).t());
}

torch::Tensor LlamaModel::head_loss_sum(const torch::Tensor& x, const torch::Tensor& targets) const {
  return cross_entropy_sum(logits(x), targets);
}

torch::Tensor LlamaModel::forward(const torch::Tensor& tokens, const torch::Tensor& positions,
                                  CoreAttentionOp& attention) const {
  CADRE_CHECK(tokens.dim() == 1 && tokens.sizes() == positions.sizes(),
              "tokens and positions must both be [tokens]; got ", tokens.sizes(), " and ",
              positions.sizes());
  const RopeTables tables = rope(positions);
  auto x = embed(tokens);
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    auto qkv = attention_inputs(l, x, tables);
    x = layer_output(l, x, attention(qkv[0], qkv[1], qkv[2]));
  }
  return logits(x);
}

torch::Tensor LlamaModel::loss_sum(const torch::Tensor& tokens,
                                   const std::vector<int64_t>& doc_lengths,
                                   CoreAttentionOp& attention) const {
  const auto device = this->device();
  auto logits_ = forward(tokens.to(device), document_positions(doc_lengths).to(device), attention);
  return cross_entropy_sum(logits_, document_targets(tokens.to(torch::kCPU), doc_lengths).to(device));
}

std::vector<torch::Tensor> LlamaModel::parameter_tensors() const {
  std::vector<torch::Tensor> out;
  for (const auto& p : parameters_) out.push_back(p.value);
  return out;
}

int64_t LlamaModel::parameter_count() const {
  int64_t count = 0;
  for (const auto& p : parameters_) count += p.value.numel();
  return count;
}

}  // namespace cadre::runtime
