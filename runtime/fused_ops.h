// The worker's elementwise layers as fused GPU kernels with their own backward (fused_kernels.cu
// wrapped as LibTorch autograd functions in fused_ops_gpu.cc): RMSNorm, rotary embedding, the
// SwiGLU gate and the cross-entropy. model.cc's rms_norm / apply_rope / swiglu /
// cross_entropy_sum call them for CUDA tensors and keep their
// LibTorch compositions (the *_composite functions, the reference in tests) for everything else.
// CADRE_FUSED_OPS=0 in the environment turns them off (A/B benchmarks).
#pragma once

#include <torch/types.h>

namespace cadre::runtime::fused {

// Whether the fused kernels serve x: a GPU build, a CUDA tensor of fp32, fp16 or bf16, and not
// turned off by CADRE_FUSED_OPS=0.
bool applies(const torch::Tensor& x);

// What a run's training tensors (fp32 or bf16) go through, for its summary and profile (the
// simulator prices each differently): "fused" on CUDA with the kernels on, else "composite".
const char* elementwise_ops(bool cuda);

// x [..., cols] (the last dimension contiguous), weight [cols] of any floating dtype (its
// gradient comes back in that dtype): x * rsqrt(mean(x^2) + eps) * weight in fp32, rounded once.
// cols at most max_rms_norm_cols().
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
int64_t max_rms_norm_cols();

// x [tokens, heads, head_dim] (the last dimension contiguous), cos/sin fp32 [tokens, 1,
// head_dim / 2]: the rotate-half rotation, returned contiguous in x's dtype.
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

// silu(gate) * up for two tensors of one shape and dtype.
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);

// Sum over rows with a target (>= 0) of -log softmax(logits[r])[target[r]], as an fp32 scalar:
// logits [rows, vocab], targets int64 [rows]. One pass forward (online max and sum), one pass
// backward (softmax minus the target's one-hot, in the logits' dtype); no fp32 copy of the logits.
torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets);

}  // namespace cadre::runtime::fused
