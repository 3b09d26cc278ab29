// Fused variable-length causal core attention over a batch of CA-tasks: the kernel interface,
// implemented by the CPU reference (cpu_kernel.cc) and, in the GPU build, LibTorch's FlashAttention.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

namespace cadre::attention_server {

// One fused batch. Sequence i has queries q[cu_seqlens_q[i] : cu_seqlens_q[i+1]] and keys
// k[cu_seqlens_k[i] : cu_seqlens_k[i+1]]; with nq queries and nk >= nq keys, query j sees keys
// [0, nk - nq + j] (causal mask aligned bottom-right: a query shard [s, e) of a document sees
// keys [0, s + j]).
//   q: [total_q, heads, head_dim]; k: [total_k, kv_heads, head_dim];
//   v: [total_k, kv_heads, v_head_dim]; heads % kv_heads == 0. v_head_dim may differ from head_dim
//   (MLA's expanded form: head_dim 192 = nope 128 + rope 64, v_head_dim 128); the output then has
//   v_head_dim. Every kernel accepts it (flash pads V to head_dim, see flash_kernel_gpu.cc).
//   cu_seqlens_q, cu_seqlens_k: int32 [batch + 1], on the same device as q (Torch convention)
struct VarlenBatch {
  torch::Tensor cu_seqlens_q;
  torch::Tensor cu_seqlens_k;
  int64_t max_seqlen_q = 0;
  int64_t max_seqlen_k = 0;
  // Host copies of cu_seqlens_q / cu_seqlens_k, or empty. With them a kernel may reorganise the
  // batch (the flash kernel splits short query shards, see flash_kernel.h) without reading the
  // device tensors back, which would stall the host behind the stream.
  std::vector<int64_t> cu_q_host;
  std::vector<int64_t> cu_k_host;
};

// A batch from host cumulative lengths (both [batch + 1], starting at 0), with its device
// tensors on `device` and the host copies kept.
VarlenBatch make_varlen_batch(const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k,
                              const torch::Device& device = torch::kCPU);

struct ForwardResult {
  torch::Tensor out;  // [total_q, heads, v_head_dim], q's dtype
  torch::Tensor lse;  // [heads, total_q], fp32 (fp64 for fp64 inputs): log-sum-exp of scaled scores
};

struct BackwardResult {
  torch::Tensor dq;  // like q
  torch::Tensor dk;  // like k
  torch::Tensor dv;  // like v
};

// The batch of whole documents of `doc_lengths` laid out back to back (each its own sequence:
// ordinary causal attention), with its cumulative lengths on `device`.
VarlenBatch whole_documents_batch(const std::vector<int64_t>& doc_lengths,
                                  const torch::Device& device = torch::kCPU);

// What a kernel did so far (kernels that build graphs count them; others report zeros).
struct KernelCounters {
  int64_t calls = 0;             // forward and backward calls
  int64_t graphs_built = 0;      // execution plans built (first use of a shape class)
  int64_t graph_cache_hits = 0;  // calls that reused a built plan
  int64_t graphs_covered = 0;    // of those, calls run by a larger built class (cudnn_kernel.cc)
  double graph_build_ms = 0;     // host time spent building them
  int64_t fallback_calls = 0;    // calls an "auto" kernel sent to flash because cuDNN refused them
  int64_t flash_calls = 0;       // calls an "auto" kernel ran on flash (refused or measured faster)
  int64_t choices_measured = 0;  // shape classes an "auto" kernel timed both kernels on
};

class CoreAttentionKernel {
 public:
  virtual ~CoreAttentionKernel() = default;
  virtual std::string name() const = 0;
  virtual KernelCounters counters() const { return {}; }
  // softmax_scale <= 0 means 1/sqrt(head_dim) (q's and k's head dim, never v's).
  // dout and out in backward: [total_q, heads, v_head_dim].
  virtual ForwardResult forward(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const VarlenBatch& batch,
                                double softmax_scale) = 0;
  virtual BackwardResult backward(const torch::Tensor& dout, const torch::Tensor& q,
                                  const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& out, const torch::Tensor& lse,
                                  const VarlenBatch& batch, double softmax_scale) = 0;
};

// The kernel for a name: "cpu" or "reference" (the CPU reference, any device), "flash" (GPU
// build), "cudnn" (GPU build with cuDNN, cudnn_kernel.h), "auto" (cudnn where it applies, else
// flash; the reference in a CPU build). Throws cadre::Error naming the accepted kernels
// otherwise, and for "cudnn" in a build without it, saying why.
std::unique_ptr<CoreAttentionKernel> make_kernel(const std::string& name);

// The CPU reference (attention_server/cpu_kernel.cc): dense masked attention per sequence.
std::unique_ptr<CoreAttentionKernel> make_cpu_kernel();

}  // namespace cadre::attention_server
