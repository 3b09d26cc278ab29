// The Llama-style decoder: plain fp32 tensors with autograd, one CoreAttentionOp per step shared
// by every layer.
#include "runtime/model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <torch/types.h>

#include <cmath>

#include "common/error.h"
#include "runtime/fused_ops.h"
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
    CADRE_CHECK(n >= 0 && begin + n <= src.size(0), "document lengths sum past the ", src.size(0),
                " tokens");
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
  if (fused::applies(x) && x.dim() == 3) {
    CADRE_CHECK(x.size(-1) == 2 * tables.cos.size(-1), "rotary tables are for head_dim ",
                2 * tables.cos.size(-1), " but x has ", x.size(-1));
    return fused::rope(x, tables.cos, tables.sin);
  }
  return apply_rope_composite(x, tables);
}

torch::Tensor apply_rope_composite(const torch::Tensor& x, const RopeTables& tables) {
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
  if (fused::applies(x) && x.size(-1) <= fused::max_rms_norm_cols()) {
    return fused::rms_norm(x, weight, eps);
  }
  return rms_norm_composite(x, weight, eps);
}

torch::Tensor rms_norm_composite(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto xf = x.scalar_type() == torch::kDouble ? x : x.to(torch::kFloat);
  auto normed = (xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps)).to(x.scalar_type());
  return normed * weight.to(x.scalar_type());
}

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  if (fused::applies(gate)) return fused::swiglu(gate, up);
  return swiglu_composite(gate, up);
}

torch::Tensor swiglu_composite(const torch::Tensor& gate, const torch::Tensor& up) {
  return torch::silu(gate) * up;
}

torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets) {
  if (fused::applies(logits) && logits.dim() == 2) return fused::cross_entropy_sum(logits, targets);
  return cross_entropy_sum_composite(logits, targets);
}

torch::Tensor cross_entropy_sum_composite(const torch::Tensor& logits,
                                          const torch::Tensor& targets) {
  auto log_probs = torch::log_softmax(
      logits, -1, logits.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat);
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
              m.hidden_size(), ", num_heads ", m.num_heads(), ", num_kv_heads ", m.num_kv_heads(),
              ", head_dim ", m.head_dim(), ", ffn_hidden_size ", m.ffn_hidden_size(),
              ", vocab_size ", m.vocab_size(), "); set model.preset or every size field");
  CADRE_CHECK(m.num_heads() % m.num_kv_heads() == 0, "model.num_heads (", m.num_heads(),
              ") must be a multiple of model.num_kv_heads (", m.num_kv_heads(), ")");
  CADRE_CHECK(m.head_dim() % 2 == 0, "model.head_dim must be even for rotary embeddings; got ",
              m.head_dim());
  if (m.kv_latent_dim() > 0) {
    CADRE_CHECK(m.rope_head_dim() > 0 && m.rope_head_dim() % 2 == 0,
                "latent attention needs an even model.rope_head_dim >= 2; got ", m.rope_head_dim());
    CADRE_CHECK(m.num_kv_heads() == m.num_heads(),
                "latent attention expands a key and a value "
                "per head: model.num_kv_heads (",
                m.num_kv_heads(), ") must equal num_heads (", m.num_heads(), ")");
    CADRE_CHECK(m.q_latent_dim() >= 0 && m.v_head_dim() >= 0,
                "model.q_latent_dim must be >= 0 and model.v_head_dim > 0; got ", m.q_latent_dim(),
                " and ", m.v_head_dim());
    CADRE_CHECK(m.rope_scaling() == "none", "model.rope_scaling=\"", m.rope_scaling(),
                "\" is not implemented for latent attention; accepted: none");
    CADRE_CHECK(m.tpla_transform() == "none" || m.tpla_transform() == "hadamard",
                "model.tpla_transform=\"", m.tpla_transform(), "\"; accepted: none, hadamard");
  } else {
    CADRE_CHECK(m.rope_head_dim() == 0 && !m.tpla() && m.q_latent_dim() == 0,
                "model.rope_head_dim, q_latent_dim and tpla need latent attention "
                "(model.kv_latent_dim > 0)");
  }
}

void check_tensor_parallel(const config::ModelConfig& m, int64_t tp) {
  CADRE_CHECK(m.num_heads() % tp == 0, "model.num_heads=", m.num_heads(),
              " is not divisible by cluster.tensor_parallel=", tp,
              " (query heads are split across the tensor-parallel group); accepted: a "
              "tensor_parallel that divides ",
              m.num_heads());
  CADRE_CHECK(m.num_kv_heads() % tp == 0 || tp % m.num_kv_heads() == 0,
              "model.num_kv_heads=", m.num_kv_heads(), " and cluster.tensor_parallel=", tp,
              " do not divide one another (K/V heads are split, or replicated when the group is "
              "larger); accepted: a tensor_parallel that divides or is a multiple of ",
              m.num_kv_heads());
  CADRE_CHECK(m.ffn_hidden_size() % tp == 0, "model.ffn_hidden_size=", m.ffn_hidden_size(),
              " is not divisible by cluster.tensor_parallel=", tp,
              " (gate/up columns and down rows are split); accepted: a tensor_parallel that "
              "divides ",
              m.ffn_hidden_size());
  CADRE_CHECK(m.vocab_size() % tp == 0, "model.vocab_size=", m.vocab_size(),
              " is not divisible by cluster.tensor_parallel=", tp,
              " (the embedding, LM head and loss split the vocabulary; cadre does not pad it); "
              "accepted: a vocab_size that is a multiple of ",
              tp, ", e.g. ", (m.vocab_size() + tp - 1) / tp * tp);
}

void check_tpla(const config::ModelConfig& m, int64_t tp, int64_t parts) {
  CADRE_CHECK(parts >= 1 && parts % tp == 0, "TPLA with ", parts,
              " latent slices on a tensor-parallel group of ", tp,
              " ranks; accepted: a multiple of the group's size");
  CADRE_CHECK(m.kv_latent_dim() % parts == 0, "model.kv_latent_dim=", m.kv_latent_dim(),
              " is not divisible by the ", parts,
              " TPLA slices; accepted: a slice count that "
              "divides ",
              m.kv_latent_dim());
  if (m.tpla_transform() == "hadamard") {
    const int64_t d = m.kv_latent_dim();
    CADRE_CHECK((d & (d - 1)) == 0,
                "model.tpla_transform=hadamard needs a power-of-two "
                "model.kv_latent_dim; got ",
                d);
  }
}

}  // namespace

int64_t attention_heads_per_rank(const config::ModelConfig& model, int64_t tp) {
  if (model.kv_latent_dim() > 0 && model.tpla()) return model.num_heads();
  return model.num_heads() / tp;
}

int64_t attention_qk_dim(const config::ModelConfig& model) {
  return model.head_dim() + (model.kv_latent_dim() > 0 ? model.rope_head_dim() : 0);
}

int64_t attention_v_dim(const config::ModelConfig& model) {
  return model.kv_latent_dim() > 0 && model.v_head_dim() > 0 ? model.v_head_dim()
                                                             : model.head_dim();
}

torch::Tensor hadamard_matrix(int64_t n, const torch::TensorOptions& options) {
  CADRE_CHECK(n >= 1 && (n & (n - 1)) == 0, "a Hadamard matrix of order ", n,
              " does not exist here; accepted: a power of two");
  auto h = torch::ones({1, 1}, torch::kDouble);
  while (h.size(0) < n) {
    h = torch::cat({torch::cat({h, h}, 1), torch::cat({h, -h}, 1)}, 0);
  }
  return (h / std::sqrt(static_cast<double>(n))).to(options.dtype(torch::kFloat));
}

LlamaModel::LlamaModel(const config::ModelConfig& model, uint64_t seed, const torch::Device& device,
                       const TensorParallelGroup* tp, int64_t tpla_parts)
    : config_(model), tp_(tp) {
  check_dims(model);
  const int64_t tp_size = tp ? tp->size() : 1, tp_rank = tp ? tp->rank() : 0;
  if (tp_size > 1) check_tensor_parallel(model, tp_size);
  if (latent_attention() && model.tpla()) {
    tpla_parts_ = tpla_parts > 0 ? tpla_parts : tp_size;
    check_tpla(model, tp_size, tpla_parts_);
    local_parts_ = tpla_parts_ / tp_size;
  }
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
  local_heads_ = heads / tp_size;
  // K/V heads split across the group, or (T > kv_heads) head rank / (T / kv_heads) replicated
  // on T / kv_heads consecutive ranks, which then sum its gradient.
  const bool kv_split = kv_heads % tp_size == 0;
  const int64_t kv_parts = kv_split ? tp_size : kv_heads;
  const int64_t kv_replicas = kv_split ? 1 : tp_size / kv_heads;
  const int64_t kv_index = tp_rank / kv_replicas;
  const bool kv_counted = tp_rank % kv_replicas == 0;
  local_kv_heads_ = kv_heads / kv_parts;
  if (latent_attention()) {
    // Every core-attention head has its own key and value; TPLA keeps every head per slice.
    local_heads_ = local_kv_heads_ = attention_heads_per_rank(model, tp_size) * local_parts_;
    if (tpla() && model.tpla_transform() == "hadamard") {
      latent_transform_ = hadamard_matrix(model.kv_latent_dim(), f32);
    }
  }
  vocab_begin_ = tp_rank * (vocab / tp_size);
  const bool lead = tp_rank == 0;
  // The T = 1 draws in the T = 1 order; each rank keeps its slice (rows: dim 0, columns: dim 1).
  embedding_ = add_shard("embedding", normal({vocab, hidden}, std), 0, tp_size, tp_rank, true);
  for (int32_t l = 0; l < model.num_layers(); ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    Layer layer;
    layer.attention_norm =
        add_shard(p + "attention_norm", torch::ones({hidden}, f32), -1, 1, 0, lead);
    if (latent_attention()) {
      add_latent_layer(p, &layer, normal, residual_std);
    } else {
      layer.wq = add_shard(p + "wq", normal({heads * dim, hidden}, std), 0, tp_size, tp_rank, true);
      layer.wk = add_shard(p + "wk", normal({kv_heads * dim, hidden}, std), 0, kv_parts, kv_index,
                           kv_counted);
      layer.wv = add_shard(p + "wv", normal({kv_heads * dim, hidden}, std), 0, kv_parts, kv_index,
                           kv_counted);
      layer.wo = add_shard(p + "wo", normal({hidden, heads * dim}, residual_std), 1, tp_size,
                           tp_rank, true);
    }
    layer.mlp_norm = add_shard(p + "mlp_norm", torch::ones({hidden}, f32), -1, 1, 0, lead);
    layer.w_gate = add_shard(p + "w_gate", normal({ffn, hidden}, std), 0, tp_size, tp_rank, true);
    layer.w_up = add_shard(p + "w_up", normal({ffn, hidden}, std), 0, tp_size, tp_rank, true);
    layer.w_down =
        add_shard(p + "w_down", normal({hidden, ffn}, residual_std), 1, tp_size, tp_rank, true);
    layers_.push_back(layer);
  }
  final_norm_ = add_shard("final_norm", torch::ones({hidden}, f32), -1, 1, 0, lead);
  lm_head_ = model.tie_embeddings()
                 ? embedding_
                 : add_shard("lm_head", normal({vocab, hidden}, std), 0, tp_size, tp_rank, true);
}

torch::Tensor LlamaModel::add_parameter(const std::string& name, torch::Tensor value) {
  return add_shard(name, value, -1, 1, 0, true);
}

torch::Tensor LlamaModel::add_shard(const std::string& name, const torch::Tensor& full, int dim,
                                    int64_t parts, int64_t index, bool counted) {
  torch::Tensor value = full;
  if (dim >= 0 && parts > 1) {
    const int64_t width = full.size(dim) / parts;
    value = full.narrow(dim, index * width, width).clone();
  }
  value = value.contiguous().set_requires_grad(true);
  NamedParameter p;
  p.name = name;
  p.value = value;
  p.shard_dim = parts > 1 ? dim : -1;
  p.shard_parts = parts > 1 ? parts : 1;
  p.shard_index = parts > 1 ? index : 0;
  p.counted = counted;
  p.full_shape = full.sizes().vec();
  parameters_.push_back(std::move(p));
  return value;
}

torch::Tensor LlamaModel::partial_grad(const torch::Tensor& weight, comm::Transport* group) const {
  return copy_to_tensor_parallel(weight, group);
}

RowSplit LlamaModel::sequence_split(int64_t rows) const {
  return RowSplit::even(rows, sequence_parallel() ? tp_->size() : 1);
}

torch::Tensor LlamaModel::embed(const torch::Tensor& tokens) const {
  if (!parallel()) return embedding_.index_select(0, tokens).to(compute_dtype_);
  // Vocabulary-parallel: rows of tokens outside this rank's vocabulary are zero here (and get no
  // gradient); the sum over the group is the embedding. Sequence parallelism keeps this rank's
  // rows of the sum only.
  const int64_t width = embedding_.size(0);
  auto local = tokens - vocab_begin_;
  auto inside = (local.ge(0) & local.lt(width)).to(compute_dtype_).unsqueeze(1);
  auto partial = embedding_.index_select(0, local.clamp(0, width - 1)).to(compute_dtype_) * inside;
  if (sequence_parallel()) {
    return reduce_scatter_rows(partial, tp_group(), sequence_split(tokens.size(0)));
  }
  return reduce_from_tensor_parallel(partial, tp_group());
}

RopeTables LlamaModel::rope(const torch::Tensor& positions) const {
  if (config_.rope_scaling() != "none") {  // runtime/rope_scaling.h
    return rope_tables(positions, rope_inverse_frequencies(config_));
  }
  // MLA rotates only its decoupled rotary part.
  return rope_tables(positions, latent_attention() ? config_.rope_head_dim() : config_.head_dim(),
                     config_.rope_theta());
}

std::vector<torch::Tensor> LlamaModel::attention_inputs(int layer_index, const torch::Tensor& x,
                                                        const RopeTables& rope) const {
  const Layer& layer = layers_.at(layer_index);
  const int64_t dim = config_.head_dim();
  torch::Tensor h;
  torch::Tensor wk = layer.wk, wv = layer.wv;
  if (!parallel()) {
    h = rms_norm(x, layer.attention_norm, config_.norm_eps());
  } else if (sequence_parallel()) {
    // RMSNorm over this rank's rows (its weight's gradient is partial: summed over the group),
    // then all-gather every row for the column-parallel projections.
    h = gather_rows(rms_norm(x, partial_grad(layer.attention_norm, tp_group()), config_.norm_eps()),
                    tp_group(), sequence_split(rope.cos.size(0)));
  } else {
    h = copy_to_tensor_parallel(rms_norm(x, layer.attention_norm, config_.norm_eps()), tp_group());
  }
  if (latent_attention()) return latent_attention_inputs(layer, h, rope);
  if (parallel() && tp_->kv_replicas() != nullptr) {
    // Each replica of a K/V head sees the gradient of its own query heads only.
    wk = partial_grad(wk, tp_->kv_replicas());
    wv = partial_grad(wv, tp_->kv_replicas());
  }
  const int64_t n = h.size(0);
  // One GEMM for Q, K and V (their weights side by side), split without copies; the split's
  // backward writes the three gradients into one buffer for the GEMM's backward.
  const int64_t q_width = local_heads_ * dim, kv_width = local_kv_heads_ * dim;
  auto qkv = torch::matmul(h, torch::cat({cast(layer.wq), cast(wk), cast(wv)}, 0).t())
                 .split_with_sizes({q_width, kv_width, kv_width}, 1);
  auto q = apply_rope(qkv[0].view({n, local_heads_, dim}), rope);
  auto k = apply_rope(qkv[1].view({n, local_kv_heads_, dim}), rope);
  auto v = qkv[2].view({n, local_kv_heads_, dim});
  return {q.contiguous(), k.contiguous(), v.contiguous()};
}

torch::Tensor LlamaModel::layer_output(int layer_index, const torch::Tensor& x,
                                       const torch::Tensor& o) const {
  const Layer& layer = layers_.at(layer_index);
  const int64_t n = o.size(0);
  auto attention =
      latent_attention()
          ? latent_output_projection(layer, o)
          : torch::matmul(o.reshape({n, local_heads_ * config_.head_dim()}), cast(layer.wo).t());
  if (!parallel()) {
    auto y = x + attention;
    auto h = rms_norm(y, layer.mlp_norm, config_.norm_eps());
    auto gated =
        swiglu(torch::matmul(h, cast(layer.w_gate).t()), torch::matmul(h, cast(layer.w_up).t()));
    return y + torch::matmul(gated, cast(layer.w_down).t());
  }
  // Row-parallel output projection: partial sums, reduced (or reduce-scattered to this rank's
  // rows); the MLP's column-parallel gate/up see every row, its row-parallel down is reduced.
  const bool sp = sequence_parallel();
  const RowSplit rows = sequence_split(n);
  auto reduce = [&](const torch::Tensor& partial) {
    return sp ? reduce_scatter_rows(partial, tp_group(), rows)
              : reduce_from_tensor_parallel(partial, tp_group());
  };
  auto y = x + reduce(attention);
  auto h =
      sp ? gather_rows(rms_norm(y, partial_grad(layer.mlp_norm, tp_group()), config_.norm_eps()),
                       tp_group(), rows)
         : copy_to_tensor_parallel(rms_norm(y, layer.mlp_norm, config_.norm_eps()), tp_group());
  auto gated =
      swiglu(torch::matmul(h, cast(layer.w_gate).t()), torch::matmul(h, cast(layer.w_up).t()));
  return y + reduce(torch::matmul(gated, cast(layer.w_down).t()));
}

torch::Tensor LlamaModel::logits(const torch::Tensor& x, const RowSplit* rows) const {
  if (!parallel()) {
    return torch::matmul(rms_norm(x, final_norm_, config_.norm_eps()), cast(lm_head_).t());
  }
  torch::Tensor h;
  if (sequence_parallel()) {
    CADRE_CHECK(rows != nullptr, "logits under sequence parallelism need the rows' split");
    h = gather_rows(rms_norm(x, partial_grad(final_norm_, tp_group()), config_.norm_eps()),
                    tp_group(), *rows);
  } else {
    h = copy_to_tensor_parallel(rms_norm(x, final_norm_, config_.norm_eps()), tp_group());
  }
  return torch::matmul(h, cast(lm_head_).t());
}

torch::Tensor LlamaModel::head_loss_sum(const torch::Tensor& x, const torch::Tensor& targets,
                                        const RowSplit* rows) const {
  if (!parallel()) return cross_entropy_sum(logits(x), targets);
  return vocab_parallel_cross_entropy_sum(logits(x, rows), targets, vocab_begin_, tp_group());
}

torch::Tensor LlamaModel::forward(const torch::Tensor& tokens, const torch::Tensor& positions,
                                  CoreAttentionOp& attention) const {
  CADRE_CHECK(!parallel(),
              "LlamaModel::forward runs the whole model on one rank; under tensor "
              "parallelism the step executor runs the segments");
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
  return cross_entropy_sum(logits_,
                           document_targets(tokens.to(torch::kCPU), doc_lengths).to(device));
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
