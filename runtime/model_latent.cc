// Multi-head latent attention (DeepSeek-V2/V3) and its tensor-parallel latent form (TPLA,
// arXiv 2508.15881) inside LlamaModel: the layer's parameters, its core-attention inputs in
// expanded form (per-head keys and values) or latent form (what CAD's `latent` shipping sends),
// and the output projection. The math and the names are in docs/latent_attention.md.
#include <torch/torch.h>

#include "common/error.h"
#include "runtime/model.h"

namespace cadre::runtime {

torch::Tensor tpla_up_projection(const torch::Tensor& wkv_b,
                                 const config::ModelConfig& tpla_model) {
  CADRE_CHECK(wkv_b.dim() == 2 && wkv_b.size(1) == tpla_model.kv_latent_dim(),
              "an up-projection [rows, ", tpla_model.kv_latent_dim(), "] was expected; got ",
              wkv_b.sizes());
  if (tpla_model.tpla_transform() != "hadamard") return wkv_b;
  // c W^T = (c H)(W H)^T for the orthogonal, symmetric H.
  return torch::matmul(wkv_b, hadamard_matrix(wkv_b.size(1), wkv_b.options()).to(wkv_b.dtype()));
}

void LlamaModel::add_latent_layer(
    const std::string& p, Layer* layer,
    const std::function<torch::Tensor(std::vector<int64_t>, double)>& normal,
    double residual_std) {
  const config::ModelConfig& m = config_;
  const double std = 0.02;
  const int64_t hidden = m.hidden_size(), heads = m.num_heads();
  const int64_t nope = m.head_dim(), rope = m.rope_head_dim(), latent = m.kv_latent_dim();
  const int64_t q_latent = m.q_latent_dim(), v = attention_v_dim(m);
  const int64_t tp_size = tp_ ? tp_->size() : 1, tp_rank = tp_ ? tp_->rank() : 0;
  const bool lead = tp_rank == 0;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(embedding_.device());
  // MLA splits the heads (dim 0 of the query and up-projections, dim 1 of the output); TPLA
  // keeps every head whole on every rank and splits the up-projection's latent columns.
  auto by_heads = [&](const std::string& name, const torch::Tensor& full, int dim) {
    return tpla() ? add_shard(name, full, -1, 1, 0, lead)
                  : add_shard(name, full, dim, tp_size, tp_rank, true);
  };
  auto whole = [&](const std::string& name, const torch::Tensor& full) {
    return add_shard(name, full, -1, 1, 0, lead);
  };
  if (q_latent == 0) {
    layer->wq = by_heads(p + "wq", normal({heads * (nope + rope), hidden}, std), 0);
  } else {
    layer->wq_a = whole(p + "wq_a", normal({q_latent, hidden}, std));
    layer->q_norm = whole(p + "q_norm", torch::ones({q_latent}, f32));
    layer->wq_b = by_heads(p + "wq_b", normal({heads * (nope + rope), q_latent}, std), 0);
  }
  layer->wkv_a = whole(p + "wkv_a", normal({latent + rope, hidden}, std));
  layer->kv_norm = whole(p + "kv_norm", torch::ones({latent}, f32));
  auto wkv_b = normal({heads * (nope + v), latent}, std);
  layer->wkv_b = tpla() ? add_shard(p + "wkv_b", wkv_b, 1, tp_size, tp_rank, true)
                        : add_shard(p + "wkv_b", wkv_b, 0, tp_size, tp_rank, true);
  layer->wo = by_heads(p + "wo", normal({hidden, heads * v}, residual_std), 1);
}

torch::Tensor LlamaModel::replicated(const torch::Tensor& weight) const {
  return parallel() ? partial_grad(weight, tp_group()) : weight;
}

void LlamaModel::set_latent_outputs(bool on) {
  CADRE_CHECK(!on || (latent_attention() && local_parts_ == 1),
              "latent outputs need multi-head latent attention with one latent slice per rank ("
              "model.kv_latent_dim ", config_.kv_latent_dim(), ", ", local_parts_,
              " TPLA slices on this rank)");
  latent_outputs_ = on;
}

attention_server::LatentLayout LlamaModel::latent_layout() const {
  attention_server::LatentLayout layout;
  layout.latent_dim = config_.kv_latent_dim() / (tpla() ? tpla_parts_ : 1);
  layout.nope_dim = config_.head_dim();
  layout.rope_dim = config_.rope_head_dim();
  layout.v_dim = attention_v_dim(config_);
  return layout;
}

std::vector<torch::Tensor> LlamaModel::latent_attention_inputs(const Layer& layer,
                                                               const torch::Tensor& h,
                                                               const RopeTables& rope) const {
  const config::ModelConfig& m = config_;
  const int64_t n = h.size(0);
  const int64_t nope = m.head_dim(), rot = m.rope_head_dim(), latent = m.kv_latent_dim();
  const int64_t v_dim = attention_v_dim(m);
  const int64_t q_heads = local_heads_ / local_parts_;  // query heads of this rank
  const double eps = m.norm_eps();
  auto by_heads = [&](const torch::Tensor& w) { return tpla() ? replicated(w) : w; };

  // Query: direct, or through its low-rank latent and norm; RoPE on the rotary part only.
  torch::Tensor qf;
  if (m.q_latent_dim() == 0) {
    qf = torch::matmul(h, cast(by_heads(layer.wq)).t());
  } else {
    auto cq = rms_norm(torch::matmul(h, cast(replicated(layer.wq_a)).t()),
                       replicated(layer.q_norm), eps);
    qf = torch::matmul(cq, cast(by_heads(layer.wq_b)).t());
  }
  auto q = qf.view({n, q_heads, nope + rot});
  q = torch::cat({q.narrow(2, 0, nope), apply_rope(q.narrow(2, nope, rot), rope)}, 2);

  // K/V latent c (normalised over all of its width) and the rotary key shared by all heads.
  auto kva = torch::matmul(h, cast(replicated(layer.wkv_a)).t());
  auto c = rms_norm(kva.narrow(1, 0, latent), replicated(layer.kv_norm), eps);
  auto k_rope = apply_rope(kva.narrow(1, latent, rot).reshape({n, 1, rot}), rope);
  if (latent_transform_.defined()) c = torch::matmul(c, latent_transform_.to(c.scalar_type()));
  // This rank's latent slices (all of c for MLA).
  const int64_t width = latent / (tpla() ? tpla_parts_ : 1);
  const int64_t first = tpla() ? (tp_ ? tp_->rank() : 0) * local_parts_ : 0;
  auto c_local = c.narrow(1, first * width, local_parts_ * width);
  auto w = cast(layer.wkv_b);  // [q_heads * (nope + v), local_parts * width]

  if (latent_outputs_) {
    auto rows = torch::cat({c_local, k_rope.reshape({n, rot})}, 1).reshape({n, 1, width + rot});
    return {q.contiguous(), rows.contiguous(), w};
  }
  // Expanded: per slice, every head's key and value from that slice of the latent.
  std::vector<torch::Tensor> parts;
  for (int64_t j = 0; j < local_parts_; ++j) {
    parts.push_back(torch::matmul(c_local.narrow(1, j * width, width),
                                  w.narrow(1, j * width, width).t())
                        .view({n, q_heads, nope + v_dim}));
  }
  auto kv = local_parts_ == 1 ? parts[0] : torch::cat(parts, 1);
  const int64_t att_heads = local_heads_;
  auto k = torch::cat({kv.narrow(2, 0, nope), k_rope.expand({n, att_heads, rot})}, 2);
  auto v = kv.narrow(2, nope, v_dim);
  auto q_att = local_parts_ == 1 ? q : q.repeat({1, local_parts_, 1});
  return {q_att.contiguous(), k.contiguous(), v.contiguous()};
}

torch::Tensor LlamaModel::latent_output_projection(const Layer& layer,
                                                   const torch::Tensor& o) const {
  const int64_t n = o.size(0), v_dim = attention_v_dim(config_);
  const int64_t q_heads = local_heads_ / local_parts_;
  // TPLA: a head's outputs over the latent slices add up (the row-parallel reduction that
  // follows adds those of the other ranks).
  auto heads = local_parts_ == 1 ? o : o.reshape({n, local_parts_, q_heads, v_dim}).sum(1);
  auto wo = tpla() ? replicated(layer.wo) : layer.wo;
  return torch::matmul(heads.reshape({n, q_heads * v_dim}), cast(wo).t());
}

}  // namespace cadre::runtime
