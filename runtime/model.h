// The Llama-style decoder trained by `cadre train`: token embedding, RMSNorm, rotary embeddings
// with positions restarting at each document, grouped-query attention or multi-head latent
// attention (MLA, DeepSeek-V2/V3, and its tensor-parallel latent form TPLA; model_latent.cc,
// docs/latent_attention.md) whose core attention goes through a CoreAttentionOp (so `cad` and
// `colocated` share everything else), SwiGLU MLP, tied or untied LM head, and a cross-entropy
// that never crosses a document boundary.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "attention_server/latent_expansion.h"
#include "runtime/attention_op.h"
#include "runtime/tensor_parallel.h"
#include "scheduler/config.pb.h"

namespace cadre::runtime {

// Target value of a position whose next token lies in another document (or does not exist).
constexpr int64_t kIgnoreTarget = -100;

// Position of every packed token inside its own document: 0, 1, ..., len-1 per document. int64.
torch::Tensor document_positions(const std::vector<int64_t>& doc_lengths);

// Next-token targets of packed documents: tokens[i + 1] inside a document, kIgnoreTarget at each
// document's last token, so no loss crosses a document boundary. tokens: int64 [sum(lengths)].
torch::Tensor document_targets(const torch::Tensor& tokens,
                               const std::vector<int64_t>& doc_lengths);

// Rotary tables of a set of tokens: cos and sin of position * theta^(-2i/head_dim), fp32
// [tokens, 1, head_dim / 2] on the positions' device.
struct RopeTables {
  torch::Tensor cos, sin;
};
RopeTables rope_tables(const torch::Tensor& positions, int64_t head_dim, double theta);

// Rotates x [tokens, heads, head_dim] (head_dim even) by its tokens' positions (int64 [tokens]):
// pairs (i, i + head_dim/2) rotate by position * theta^(-2i/head_dim) (rotate-half convention).
// Computed in fp32, returned in x's dtype. CUDA tensors go through the fused kernel
// (runtime/fused_ops.h); the composite of LibTorch operations serves the rest and is the
// reference the GPU tests compare with.
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& positions, double theta);
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& tables);
torch::Tensor apply_rope_composite(const torch::Tensor& x, const RopeTables& tables);

// x * rsqrt(mean(x^2, last dim) + eps) * weight, the statistic in fp32 (fp64 for fp64 x);
// returned in x's dtype. Fused on CUDA tensors (the composite: two roundings, the fused kernel
// one).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
torch::Tensor rms_norm_composite(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// The SwiGLU gate silu(gate) * up; fused on CUDA tensors.
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);
torch::Tensor swiglu_composite(const torch::Tensor& gate, const torch::Tensor& up);

// Sum over positions with a target of -log softmax(logits)[target]; kIgnoreTarget positions add 0.
// Fused on CUDA tensors (no fp32 copy of the logits; runtime/fused_ops.h).
torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets);
torch::Tensor cross_entropy_sum_composite(const torch::Tensor& logits,
                                          const torch::Tensor& targets);

// A model parameter with a stable name (checkpoints and test reports use it). Under tensor
// parallelism `value` is this rank's shard of the whole tensor: slice `shard_index` of
// `shard_parts` equal slices along `shard_dim` (-1: the whole tensor, replicated).
struct NamedParameter {
  std::string name;
  torch::Tensor value;  // fp32, requires grad
  int shard_dim = -1;
  int64_t shard_parts = 1;
  int64_t shard_index = 0;
  // Whether this rank's copy counts in sums over the tensor-parallel group (the global gradient
  // norm): false on every rank but the first holding the same shard (replicated norms, K/V
  // heads replicated when T exceeds them).
  bool counted = true;
  // The whole tensor's shape.
  std::vector<int64_t> full_shape;
};

// Core-attention heads one rank computes per layer under `tp` tensor-parallel ranks: the query
// heads of its head group; under TPLA every head once per latent slice it holds.
int64_t attention_heads_per_rank(const config::ModelConfig& model, int64_t tp);
// Per-head widths of core attention: query/key (head_dim, + rope_head_dim under MLA) and value
// (head_dim, or v_head_dim under MLA).
int64_t attention_qk_dim(const config::ModelConfig& model);
int64_t attention_v_dim(const config::ModelConfig& model);

// The normalised Sylvester-Hadamard matrix of order n (a power of two): orthogonal, symmetric.
torch::Tensor hadamard_matrix(int64_t n, const torch::TensorOptions& options = {});

// An MLA checkpoint's whole up-projection (layers.L.wkv_b, [heads * (head_dim + v_head_dim),
// kv_latent_dim]) in the basis a TPLA model of `tpla_model` computes its latent in: itself, or
// times the Hadamard matrix when model.tpla_transform = hadamard (the latent is rotated by the
// same matrix, so at one slice the function is MLA's; docs/latent_attention.md).
torch::Tensor tpla_up_projection(const torch::Tensor& wkv_b, const config::ModelConfig& tpla_model);

class LlamaModel {
 public:
  // `model` must have every size set (a finalized config, or explicit fields). Initialisation
  // depends only on `seed`, so every rank starts from identical weights.
  // On a CUDA device the weights are drawn there by a CUDA generator seeded with `seed` (fast for
  // billion-parameter models; different numbers than the CPU generator draws).
  // With `tp` of size T > 1 the model holds this rank's tensor-parallel shards (Megatron-LM
  // layout: column-parallel Q/K/V and gate/up, row-parallel output and down projections,
  // vocabulary-parallel embedding and LM head), sliced from the very weights the T = 1 model
  // draws for `seed`. `tp` must outlive the model.
  //
  // MLA (model.kv_latent_dim > 0) under TP splits the heads like the query heads above: the
  // query and K/V up-projections column-parallel by heads, the output projection row-parallel,
  // the latent's down-projection and norm replicated. TPLA (model.tpla) instead partitions the
  // latent into `tpla_parts` slices (0: the group's size T; a multiple of T, each rank holding
  // tpla_parts / T of them, so one process can evaluate TPLA form with tpla_parts > 1) and keeps
  // every head on every rank.
  LlamaModel(const config::ModelConfig& model, uint64_t seed,
             const torch::Device& device = torch::kCPU, const TensorParallelGroup* tp = nullptr,
             int64_t tpla_parts = 0);

  // T = 1 only: logits [tokens, vocab] of one rank's packed micro-batch. tokens, positions: int64
  // [tokens]. `attention` computes every layer's core attention over this rank's rows (its Layout
  // order).
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& positions,
                        CoreAttentionOp& attention) const;

  // Summed next-token loss of packed documents (see document_targets), differentiable.
  torch::Tensor loss_sum(const torch::Tensor& tokens, const std::vector<int64_t>& doc_lengths,
                         CoreAttentionOp& attention) const;

  // The forward pass in segments, for executors that schedule layers themselves (ping-pong,
  // recomputation): forward() is embed, then per layer attention_inputs -> core attention ->
  // layer_output, then head_loss_sum (or logits). Activations are in the compute dtype.
  //
  // Under tensor parallelism every call is collective over the group (the same nano-batch on
  // every rank). With sequence parallelism the residual stream x holds only this rank's rows
  // (sequence_split of the nano-batch's rows); q, k, v, o and the logits cover every row, with
  // this rank's heads / vocabulary columns.
  torch::Tensor embed(const torch::Tensor& tokens) const;
  // q [n, heads, head_dim], k and v [n, kv_heads, head_dim] of layer `layer` from its input x.
  // MLA: q and k [n, heads, head_dim + rope_head_dim], v [n, heads, v_head_dim], expanded on
  // this rank; or, with latent_outputs() on, q, the latent rows [n, 1, latent + rope_head_dim]
  // ([c ; rotated rotary key], attention_server::LatentLayout) and the up-projection weight
  // in the compute dtype [heads * (head_dim + v_head_dim), latent] that a CAD server expands
  // them with (make_cad_attention with latent_layout()).
  std::vector<torch::Tensor> attention_inputs(int layer, const torch::Tensor& x,
                                              const RopeTables& rope) const;
  // The layer's output from its input x and core attention's output o [n, heads, v dim]:
  // x + o Wo^T (TPLA: the slices' outputs of a head summed first), then the SwiGLU MLP block
  // with its residual.
  torch::Tensor layer_output(int layer, const torch::Tensor& x, const torch::Tensor& o) const;
  // Final norm and LM head: logits [n, vocab] in the compute dtype (this rank's vocabulary
  // columns under TP; with sequence parallelism x holds rows split by `rows`, which the call
  // gathers, default RowSplit::even over the group).
  torch::Tensor logits(const torch::Tensor& x, const RowSplit* rows = nullptr) const;
  // Sum of next-token losses (fp32) of rows x [n, hidden] with targets (kIgnoreTarget adds 0).
  // With sequence parallelism x is this rank's part of the rows split by `rows` and targets are
  // those of all of them, in rank order. The same value on every rank of the group.
  torch::Tensor head_loss_sum(const torch::Tensor& x, const torch::Tensor& targets,
                              const RowSplit* rows = nullptr) const;
  // How sequence parallelism deals `rows` rows of a nano-batch (one part when it is off).
  RowSplit sequence_split(int64_t rows) const;
  bool sequence_parallel() const { return tp_ != nullptr && tp_->sequence_parallel(); }
  int tensor_parallel_size() const { return tp_ ? tp_->size() : 1; }
  const TensorParallelGroup* tensor_parallel() const { return tp_; }
  // Query and K/V heads of this rank (all of them at T = 1).
  int64_t local_heads() const { return local_heads_; }
  int64_t local_kv_heads() const { return local_kv_heads_; }
  RopeTables rope(const torch::Tensor& positions) const;

  // Multi-head latent attention.
  bool latent_attention() const { return config_.kv_latent_dim() > 0; }
  bool tpla() const { return latent_attention() && config_.tpla(); }
  // Latent slices of TPLA in all and on this rank (1 and 1 for MLA).
  int64_t tpla_parts() const { return tpla_parts_; }
  int64_t local_tpla_parts() const { return local_parts_; }
  // attention_inputs returns (q, latent rows, up-projection) instead of (q, k, v). Needs MLA
  // with one latent slice per rank.
  void set_latent_outputs(bool on);
  bool latent_outputs() const { return latent_outputs_; }
  // The widths of this rank's latent rows (its TPLA slice) and of the heads they expand to.
  attention_server::LatentLayout latent_layout() const;
  int64_t qk_dim() const { return attention_qk_dim(config_); }
  int64_t v_dim() const { return attention_v_dim(config_); }

  // Activations and matrix products run in `dtype` (kFloat, kBFloat16, kHalf); parameters and
  // their gradients stay fp32 (master weights), cast per use.
  void set_compute_dtype(torch::ScalarType dtype) { compute_dtype_ = dtype; }
  torch::ScalarType compute_dtype() const { return compute_dtype_; }
  torch::Device device() const { return embedding_.device(); }

  const std::vector<NamedParameter>& parameters() const { return parameters_; }
  std::vector<torch::Tensor> parameter_tensors() const;
  int64_t parameter_count() const;
  const config::ModelConfig& config() const { return config_; }

 private:
  struct Layer {
    torch::Tensor attention_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down;
    // MLA (wq is the direct query projection when q_latent_dim is 0).
    torch::Tensor wq_a, q_norm, wq_b, wkv_a, kv_norm, wkv_b;
  };
  // model_latent.cc: MLA/TPLA parameters of one layer (drawn in a fixed order), its inputs of
  // core attention and its output projection.
  void add_latent_layer(const std::string& prefix, Layer* layer,
                        const std::function<torch::Tensor(std::vector<int64_t>, double)>& normal,
                        double residual_std);
  std::vector<torch::Tensor> latent_attention_inputs(const Layer& layer, const torch::Tensor& h,
                                                     const RopeTables& rope) const;
  torch::Tensor latent_output_projection(const Layer& layer, const torch::Tensor& o) const;
  // A weight used whole on every rank of the group (its gradient is summed over the group).
  torch::Tensor replicated(const torch::Tensor& weight) const;
  torch::Tensor add_parameter(const std::string& name, torch::Tensor value);
  // Adds this rank's slice of `full` (slice `index` of `parts` along `dim`; dim -1: replicated).
  torch::Tensor add_shard(const std::string& name, const torch::Tensor& full, int dim,
                          int64_t parts, int64_t index, bool counted);
  bool parallel() const { return tp_ != nullptr && tp_->size() > 1; }
  comm::Transport* tp_group() const { return parallel() ? &tp_->transport() : nullptr; }
  // A replicated weight whose gradient each rank sees in part (norms under sequence
  // parallelism, K/V replicated over ranks): its backward sums the gradient over `group`.
  torch::Tensor partial_grad(const torch::Tensor& weight, comm::Transport* group) const;
  torch::Tensor cast(const torch::Tensor& weight) const { return weight.to(compute_dtype_); }

  config::ModelConfig config_;
  std::vector<NamedParameter> parameters_;
  torch::Tensor embedding_, final_norm_, lm_head_;  // lm_head_ aliases embedding_ when tied
  std::vector<Layer> layers_;
  torch::ScalarType compute_dtype_ = torch::kFloat;
  const TensorParallelGroup* tp_ = nullptr;
  int64_t local_heads_ = 0, local_kv_heads_ = 0, vocab_begin_ = 0;
  int64_t tpla_parts_ = 1, local_parts_ = 1;
  bool latent_outputs_ = false;
  torch::Tensor latent_transform_;  // TPLA's orthogonal transform of the latent (or undefined)
};

}  // namespace cadre::runtime
