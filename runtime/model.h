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

// A model parameter with a stable name (checkpoints and test reports use it).
struct NamedParameter {
  std::string name;
  torch::Tensor value;  // fp32, requires grad
};

class LlamaModel {
 public:
  // `model` must have every size set (a finalized config, or explicit fields). Initialisation
  // depends only on `seed`, so every rank starts from identical weights.
  // On a CUDA device the weights are drawn there by a CUDA generator seeded with `seed` (fast for
  // billion-parameter models; different numbers than the CPU generator draws).
  LlamaModel(const config::ModelConfig& model, uint64_t seed,
             const torch::Device& device = torch::kCPU);

  // Logits [tokens, vocab] of one rank's packed micro-batch. tokens, positions: int64 [tokens].
  // `attention` computes every layer's core attention over this rank's rows (its Layout order).
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& positions,
                        CoreAttentionOp& attention) const;

  // Summed next-token loss of packed documents (see document_targets), differentiable.
  torch::Tensor loss_sum(const torch::Tensor& tokens, const std::vector<int64_t>& doc_lengths,
                         CoreAttentionOp& attention) const;

  // The forward pass in segments, for executors that schedule layers themselves (ping-pong,
  // recomputation): forward() is embed, then per layer attention_inputs -> core attention ->
  // layer_output, then head_loss_sum (or logits). Activations are in the compute dtype.
  torch::Tensor embed(const torch::Tensor& tokens) const;
  // q [n, heads, head_dim], k and v [n, kv_heads, head_dim] of layer `layer` from its input x.
  std::vector<torch::Tensor> attention_inputs(int layer, const torch::Tensor& x,
                                              const RopeTables& rope) const;
  // The layer's output from its input x and core attention's output o [n, heads, head_dim]:
  // x + o Wo^T, then the SwiGLU MLP block with its residual.
  torch::Tensor layer_output(int layer, const torch::Tensor& x, const torch::Tensor& o) const;
  // Final norm and LM head: logits [n, vocab] in the compute dtype.
  torch::Tensor logits(const torch::Tensor& x) const;
  // Sum of next-token losses (fp32) of rows x [n, hidden] with targets (kIgnoreTarget adds 0).
  torch::Tensor head_loss_sum(const torch::Tensor& x, const torch::Tensor& targets) const;
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
  torch::Tensor cast(const torch::Tensor& weight) const { return weight.to(compute_dtype_); }

  config::ModelConfig config_;
  std::vector<NamedParameter> parameters_;
  torch::Tensor embedding_, final_norm_, lm_head_;  // lm_head_ aliases embedding_ when tied
  std::vector<Layer> layers_;
  torch::ScalarType compute_dtype_ = torch::kFloat;
};

}  // namespace cadre::runtime
