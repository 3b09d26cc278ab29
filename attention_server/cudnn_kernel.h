// The "cudnn" core-attention kernel: cuDNN's fused flash attention (forward with log-sum-exp,
// backward) built through cuDNN's graph API over packed variable-length batches, and the "auto"
// kernel that picks cudnn or flash per shape class. Declared in every build; defined in
// cudnn_kernel.cc, which only a GPU build that found cuDNN compiles (CADRE_WITH_CUDNN).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "attention_server/kernel.h"

namespace cadre::attention_server {

// Whether this build has the cudnn kernel; when not, the reason (for logs and errors).
bool cudnn_kernel_built();
std::string cudnn_kernel_unavailable_reason();
// The cuDNN the process loaded and the headers it was built with, e.g. "9.19.0 (headers 9.19.0)";
// "none" without cuDNN.
std::string cudnn_kernel_version();

// cuDNN's SDPA graphs over a VarlenBatch: q [total_q, heads, d_qk], k [total_k, kv_heads, d_qk],
// v [total_k, kv_heads, d_v] (d_qk, d_v in {64, 128}, or 192 / 128 for latent attention;
// bf16/fp16; GQA), causal mask aligned bottom-right per sequence, out [total_q, heads, d_v],
// lse [heads, total_q] fp32. Sequences are ragged (element offsets) with per-sequence lengths,
// so one graph serves every batch of its shape class: the number of sequences rounded up to a
// power of two (padding sequences have length 0) and the longest query and key lengths rounded
// up to a quarter octave. Graphs are built on first use and cached; counters() reports builds
// and hits. Throws cadre::Error for inputs it does not accept (supports() says which).
std::unique_ptr<CoreAttentionKernel> make_cudnn_kernel();

// Sequences given by explicit row offsets rather than cumulative lengths (host vectors, one entry
// per sequence): sequence i reads queries q[q_row[i] : q_row[i] + q_len[i]], keys and values
// k, v[k_row[i] : k_row[i] + k_len[i]], and writes out[o_row[i] : o_row[i] + q_len[i]]. Query and
// key ranges may overlap between sequences (the prefix chunks of one query shard read the same
// queries; a diagonal block reads its keys where they lie), output ranges must not. The causal
// mask is aligned bottom-right per sequence, as in VarlenBatch.
struct RaggedRows {
  std::vector<int64_t> q_row, q_len, k_row, k_len, o_row;
  int64_t out_rows = 0;  // rows of the output
};

// The cudnn kernel with the mask chosen per call (causal bottom-right, or none: the unmasked
// prefix part of a split query shard, flash_kernel.h), for kernels that split a batch.
class CudnnAttention : public CoreAttentionKernel {
 public:
  // Forward over sequences placed by `rows`, reading q, k, v in place: out [out_rows, heads, d_v]
  // and lse TOKEN-MAJOR [out_rows, heads] fp32 (cuDNN's own layout: no transpose), -inf for rows
  // no sequence writes (their output is unspecified).
  virtual ForwardResult forward_rows(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, const RaggedRows& rows,
                                     double softmax_scale, bool causal) = 0;
  virtual ForwardResult forward_masked(const torch::Tensor& q, const torch::Tensor& k,
                                       const torch::Tensor& v, const VarlenBatch& batch,
                                       double softmax_scale, bool causal) = 0;
  virtual BackwardResult backward_masked(const torch::Tensor& dout, const torch::Tensor& q,
                                         const torch::Tensor& k, const torch::Tensor& v,
                                         const torch::Tensor& out, const torch::Tensor& lse,
                                         const VarlenBatch& batch, double softmax_scale,
                                         bool causal) = 0;
  ForwardResult forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const VarlenBatch& batch, double softmax_scale) override {
    return forward_masked(q, k, v, batch, softmax_scale, true);
  }
  BackwardResult backward(const torch::Tensor& dout, const torch::Tensor& q,
                          const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& out,
                          const torch::Tensor& lse, const VarlenBatch& batch,
                          double softmax_scale) override {
    return backward_masked(dout, q, k, v, out, lse, batch, softmax_scale, true);
  }
};
std::unique_ptr<CudnnAttention> make_cudnn_attention();

// Whether the cudnn kernel accepts these inputs (shapes, dtype, 32-bit element offsets); when not,
// why (empty when it does).
std::string cudnn_unsupported_reason(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, const VarlenBatch& batch);

// "auto": per shape class (direction, dtype, heads, widths, and the batch's sequence count and
// longest queries and keys, each to the next power of two) the faster of cuDNN (short query
// shards split into a folded prefix and a causal diagonal: the flash kernel's split,
// FlashKernelOptions::cudnn_parts) and flash, both timed on the class's first call
// (CADRE_AUTO_MEASURE=0: cuDNN without timing); flash where cuDNN refuses the batch (logged once
// per reason); the reference kernel on CPU tensors. counters() reports flash_calls and
// choices_measured. docs/gpu.md has the measurements.
std::unique_ptr<CoreAttentionKernel> make_auto_kernel();

}  // namespace cadre::attention_server
