// The Llama-style decoder trained by `cadre train`: token embedding, RMSNorm, rotary embeddings
// with positions restarting at each document, grouped-query attention whose core attention goes
// through a CoreAttentionOp (so `cad` and `colocated` share everything else), SwiGLU MLP, tied or
// untied LM head, and a cross-entropy that never crosses a document boundary.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

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
torch::Tensor document_targets(const torch::Tensor& tokens, const std::vector<int64_t>& doc_lengths);

// Rotary tables of a set of tokens: cos and sin of position * theta^(-2i/head_dim), fp32
// [tokens, 1, head_dim / 2] on the positions' device.
struct RopeTables {
  torch::Tensor cos, sin;
};
RopeTables rope_tables(const torch::Tensor& positions, int64_t head_dim, double theta);

// Rotates x [tokens, heads, head_dim] (head_dim even) by its tokens' positions (int64 [tokens]):
// pairs (i, i + head_dim/2) rotate by position * theta^(-2i/head_dim) (rotate-half convention).
// Computed in fp32, returned in x's dtype.
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& positions, double theta);
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& tables);

// x * rsqrt(mean(x^2, last dim) + eps) * weight, the statistic in fp32; returned in x's dtype.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// Sum over positions with a target of -log softmax(logits)[target]; kIgnoreTarget positions add 0.
torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets);

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
  LlamaModel(const config::ModelConfig& model, uint64_t seed,
             const torch::Device& device = torch::kCPU, const TensorParallelGroup* tp = nullptr);

  // T = 1 only: logits [tokens, vocab] of one rank's packed micro-batch. tokens, positions: int64 [tokens].
  // `attention` computes every layer's core attention over this rank's rows (its Layout order).
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
  std::vector<torch::Tensor> attention_inputs(int layer, const torch::Tensor& x,
                                              const RopeTables& rope) const;
  // The layer's output from its input x and core attention's output o [n, heads, head_dim]:
  // x + o Wo^T, then the SwiGLU MLP block with its residual.
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
  };
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
};

}  // namespace cadre::runtime
