// Cadre's fused elementwise kernels for the worker's layers (GPU build only; fused_kernels.cu):
// RMSNorm, rotary embedding, the SwiGLU gate and the cross-entropy, forward and backward, each one
// pass over memory with fp32 arithmetic. In LibTorch's eager mode each of these is 5-12 separate
// kernels with fp32 temporaries that autograd also keeps (docs/gpu.md, "Fused elementwise
// kernels"). Plain CUDA: raw pointers and a stream, no LibTorch headers (runtime/fused_ops_gpu.cc
// wraps them as autograd functions).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace cadre::runtime::fused {

enum class Dtype { kFloat, kHalf, kBFloat16 };

// y[r, :] = x[r, :] * rstd[r] * weight, rstd[r] = 1 / sqrt(mean(x[r, :]^2) + eps), in fp32,
// rounded once to the dtype. x rows may be strided (x_row_stride elements apart, the last
// dimension contiguous); y is contiguous [rows, cols]. rstd: fp32 [rows] (kept for backward).
cudaError_t rms_norm_forward(Dtype dtype, const void* x, int64_t x_row_stride, const float* weight,
                             void* y, float* rstd, int64_t rows, int64_t cols, float eps,
                             cudaStream_t stream);

// Gradients of rms_norm_forward: dx (contiguous [rows, cols], the dtype) and the weight's gradient
// as per-block partial sums dweight_partial (fp32 [partial_blocks, cols]; the caller sums over
// the first dimension). n = x * rstd, dn = dy * weight:
//   dx = rstd * (dn - n * mean(dn * n)),  dweight = sum over rows of dy * n.
// partial_blocks: rms_norm_backward_blocks(rows). cols at most rms_norm_max_cols().
int64_t rms_norm_backward_blocks(int64_t rows);
int64_t rms_norm_max_cols();
cudaError_t rms_norm_backward(Dtype dtype, const void* dy, const void* x, int64_t x_row_stride,
                              const float* weight, const float* rstd, void* dx,
                              float* dweight_partial, int64_t rows, int64_t cols,
                              cudaStream_t stream);

// Rotary embedding (rotate-half convention), x [tokens, heads, 2 * half] with strides
// (token_stride, head_stride, 1), y contiguous [tokens, heads, 2 * half]; cos/sin fp32
// [tokens, half]. For i < half:
//   y[i] = x[i] cos - x[i + half] sin,  y[i + half] = x[i] sin + x[i + half] cos.
// inverse = true rotates by the negative angle: the backward of the forward rotation.
cudaError_t rope(Dtype dtype, const void* x, int64_t token_stride, int64_t head_stride, void* y,
                 const float* cos, const float* sin, int64_t tokens, int64_t heads, int64_t half,
                 bool inverse, cudaStream_t stream);

// out = silu(gate) * up, elementwise over n contiguous values, in fp32, rounded once.
cudaError_t swiglu_forward(Dtype dtype, const void* gate, const void* up, void* out, int64_t n,
                           cudaStream_t stream);
// dgate = dout * up * silu'(gate), dup = dout * silu(gate); silu'(a) = s (1 + a (1 - s)),
// s = sigmoid(a).
cudaError_t swiglu_backward(Dtype dtype, const void* dout, const void* gate, const void* up,
                            void* dgate, void* dup, int64_t n, cudaStream_t stream);

// Cross-entropy of logits [rows, vocab] (rows vocab apart) against targets (int64 [rows]; a
// negative target adds nothing): one pass with an online max and sum, in fp32.
// loss[r] = lse[r] - logits[r, target[r]] (0 without a target), lse[r] = log sum_j exp(logits[r,
// j]).
cudaError_t cross_entropy_forward(Dtype dtype, const void* logits, const int64_t* targets,
                                  float* loss, float* lse, int64_t rows, int64_t vocab,
                                  cudaStream_t stream);
// dlogits[r, j] = grad * (exp(logits[r, j] - lse[r]) - [j == target[r]]) for rows with a target,
// 0 for the others; grad: one fp32 value on the device (the loss sum's incoming gradient).
cudaError_t cross_entropy_backward(Dtype dtype, const void* logits, const int64_t* targets,
                                   const float* lse, const float* grad, void* dlogits, int64_t rows,
                                   int64_t vocab, cudaStream_t stream);

}  // namespace cadre::runtime::fused
