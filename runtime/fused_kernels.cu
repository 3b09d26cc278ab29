// Fused elementwise kernels of the worker's layers (see fused_kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "runtime/fused_kernels.h"

namespace cadre::runtime::fused {
namespace {

constexpr int kThreads = 256;
// Shared memory of the RMSNorm backward's per-block weight-gradient accumulator: 44 KiB of fp32,
// under the 48 KiB a block gets without opting in.
constexpr int64_t kMaxNormCols = 11 * 1024;
// Blocks of the RMSNorm backward: each loops over rows and keeps one fp32 partial of the weight
// gradient (a few per SM; their sum is one small reduction).
constexpr int64_t kNormBackwardBlocks = 528;
constexpr int64_t kMaxGrid = 8192;

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ inline T from_float(float x);
template <>
__device__ inline float from_float<float>(float x) {
  return x;
}
template <>
__device__ inline __half from_float<__half>(float x) {
  return __float2half(x);
}
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

// V values of T in one aligned load or store.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Sum over the block (blockDim.x a multiple of 32); every thread gets the total. `scratch` holds
// 32 floats; the leading barrier makes back-to-back calls safe.
__device__ inline float block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T, int V>
__global__ void rms_norm_forward_kernel(const T* x, int64_t x_row_stride, const float* weight, T* y,
                                        float* rstd, int64_t cols, float eps) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const auto* xr = reinterpret_cast<const Pack<T, V>*>(x + r * x_row_stride);
  auto* yr = reinterpret_cast<Pack<T, V>*>(y + r * cols);
  const int64_t packs = cols / V;
  float squares = 0.0f;
  for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
    const Pack<T, V> p = xr[i];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float f = to_float(p.v[k]);
      squares += f * f;
    }
  }
  const float rs = rsqrtf(block_sum(squares, scratch) / static_cast<float>(cols) + eps);
  if (threadIdx.x == 0) rstd[r] = rs;
  for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
    const Pack<T, V> p = xr[i];
    Pack<T, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = from_float<T>(to_float(p.v[k]) * rs * weight[i * V + k]);
    yr[i] = o;
  }
}

template <typename T, int V>
__global__ void rms_norm_backward_kernel(const T* dy, const T* x, int64_t x_row_stride,
                                         const float* weight, const float* rstd, T* dx,
                                         float* dweight_partial, int64_t rows, int64_t cols) {
  __shared__ float scratch[32];
  extern __shared__ float dweight[];  // [cols]: each thread owns the same columns in every row
  const int64_t packs = cols / V;
  for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
#pragma unroll
    for (int k = 0; k < V; ++k) dweight[i * V + k] = 0.0f;
  }
  const float inv_cols = 1.0f / static_cast<float>(cols);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float rs = rstd[r];
    const auto* xr = reinterpret_cast<const Pack<T, V>*>(x + r * x_row_stride);
    const auto* dyr = reinterpret_cast<const Pack<T, V>*>(dy + r * cols);
    auto* dxr = reinterpret_cast<Pack<T, V>*>(dx + r * cols);
    float dot = 0.0f;
    for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
      const Pack<T, V> px = xr[i], pd = dyr[i];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        dot += to_float(pd.v[k]) * weight[i * V + k] * to_float(px.v[k]) * rs;
      }
    }
    const float mean_dot = block_sum(dot, scratch) * inv_cols;
    for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
      const Pack<T, V> px = xr[i], pd = dyr[i];
      Pack<T, V> o;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float n = to_float(px.v[k]) * rs;
        const float g = to_float(pd.v[k]);
        o.v[k] = from_float<T>(rs * (g * weight[i * V + k] - n * mean_dot));
        dweight[i * V + k] += g * n;
      }
      dxr[i] = o;
    }
  }
  float* out = dweight_partial + static_cast<int64_t>(blockIdx.x) * cols;
  for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
#pragma unroll
    for (int k = 0; k < V; ++k) out[i * V + k] = dweight[i * V + k];
  }
}

// One block per token (grid-stride); the block's threads walk the token's heads x half pairs.
template <typename T>
__global__ void rope_kernel(const T* x, int64_t token_stride, int64_t head_stride, T* y,
                            const float* cos, const float* sin, int64_t tokens, int heads, int half,
                            float sin_sign) {
  const int pairs = heads * half;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const float* ct = cos + t * half;
    const float* st = sin + t * half;
    T* yt = y + t * pairs * 2;
    for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
      const int h = j / half, i = j - h * half;
      const T* xh = x + t * token_stride + h * head_stride;
      const float a = to_float(xh[i]), b = to_float(xh[i + half]);
      const float c = ct[i], s = sin_sign * st[i];
      yt[h * 2 * half + i] = from_float<T>(a * c - b * s);
      yt[h * 2 * half + i + half] = from_float<T>(a * s + b * c);
    }
  }
}

__device__ inline float sigmoid(float a) { return 1.0f / (1.0f + expf(-a)); }

template <typename T, int V>
__global__ void swiglu_forward_kernel(const T* gate, const T* up, T* out, int64_t packs) {
  const auto* g = reinterpret_cast<const Pack<T, V>*>(gate);
  const auto* u = reinterpret_cast<const Pack<T, V>*>(up);
  auto* o = reinterpret_cast<Pack<T, V>*>(out);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Pack<T, V> pg = g[i], pu = u[i];
    Pack<T, V> po;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float a = to_float(pg.v[k]);
      po.v[k] = from_float<T>(a * sigmoid(a) * to_float(pu.v[k]));
    }
    o[i] = po;
  }
}

template <typename T, int V>
__global__ void swiglu_backward_kernel(const T* dout, const T* gate, const T* up, T* dgate, T* dup,
                                       int64_t packs) {
  const auto* d = reinterpret_cast<const Pack<T, V>*>(dout);
  const auto* g = reinterpret_cast<const Pack<T, V>*>(gate);
  const auto* u = reinterpret_cast<const Pack<T, V>*>(up);
  auto* dg = reinterpret_cast<Pack<T, V>*>(dgate);
  auto* du = reinterpret_cast<Pack<T, V>*>(dup);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Pack<T, V> pd = d[i], pg = g[i], pu = u[i];
    Pack<T, V> og, ou;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float a = to_float(pg.v[k]), b = to_float(pu.v[k]), dv = to_float(pd.v[k]);
      const float s = sigmoid(a);
      og.v[k] = from_float<T>(dv * b * s * (1.0f + a * (1.0f - s)));
      ou.v[k] = from_float<T>(dv * a * s);
    }
    dg[i] = og;
    du[i] = ou;
  }
}

// (max, sum of exp(x - max)) pairs: the online softmax statistic.
__device__ inline void combine(float& m, float& s, float m2, float s2) {
  const float top = fmaxf(m, m2);
  if (top == -INFINITY) return;
  s = s * expf(m - top) + s2 * expf(m2 - top);
  m = top;
}

template <typename T, int V>
__global__ void cross_entropy_forward_kernel(const T* logits, const int64_t* targets, float* loss,
                                             float* lse, int64_t vocab) {
  __shared__ float scratch_m[32], scratch_s[32];
  const int64_t r = blockIdx.x;
  const auto* row = reinterpret_cast<const Pack<T, V>*>(logits + r * vocab);
  float m = -INFINITY, s = 0.0f;
  for (int64_t i = threadIdx.x; i < vocab / V; i += blockDim.x) {
    const Pack<T, V> p = row[i];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float x = to_float(p.v[k]);
      if (x > m) {
        s = s * expf(m - x) + 1.0f;
        m = x;
      } else {
        s += expf(x - m);
      }
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    combine(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    scratch_m[warp] = m;
    scratch_s[warp] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w)
      combine(m, s, scratch_m[w], scratch_s[w]);
    const float l = m + logf(s);
    lse[r] = l;
    const int64_t t = targets[r];
    loss[r] = t >= 0 && t < vocab ? l - to_float(logits[r * vocab + t]) : 0.0f;
  }
}

template <typename T, int V>
__global__ void cross_entropy_backward_kernel(const T* logits, const int64_t* targets,
                                              const float* lse, const float* grad, T* dlogits,
                                              int64_t vocab) {
  const int64_t r = blockIdx.x;
  const auto* row = reinterpret_cast<const Pack<T, V>*>(logits + r * vocab);
  auto* drow = reinterpret_cast<Pack<T, V>*>(dlogits + r * vocab);
  const int64_t t = targets[r];
  const bool valid = t >= 0 && t < vocab;
  const float g = valid ? *grad : 0.0f, l = lse[r];
  for (int64_t i = threadIdx.x; i < vocab / V; i += blockDim.x) {
    const Pack<T, V> p = row[i];
    Pack<T, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int64_t j = i * V + k;
      const float prob = valid ? expf(to_float(p.v[k]) - l) : 0.0f;
      o.v[k] = from_float<T>(g * (prob - (j == t ? 1.0f : 0.0f)));
    }
    drow[i] = o;
  }
}

// Values per aligned load: 16 bytes where every row start and pointer allows it, else one.
template <typename T>
constexpr int wide() {
  return 16 / static_cast<int>(sizeof(T));
}
inline bool aligned(const void* p, int bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

int64_t grid_for(int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxGrid, (work + kThreads - 1) / kThreads));
}

template <typename T>
cudaError_t norm_forward(const void* x, int64_t xs, const float* w, void* y, float* rstd,
                         int64_t rows, int64_t cols, float eps, cudaStream_t stream) {
  constexpr int W = wide<T>();
  const bool vec = cols % W == 0 && xs % W == 0 && aligned(x, 16) && aligned(y, 16);
  const auto* xt = static_cast<const T*>(x);
  auto* yt = static_cast<T*>(y);
  if (vec) {
    rms_norm_forward_kernel<T, W><<<rows, kThreads, 0, stream>>>(xt, xs, w, yt, rstd, cols, eps);
  } else {
    rms_norm_forward_kernel<T, 1><<<rows, kThreads, 0, stream>>>(xt, xs, w, yt, rstd, cols, eps);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t norm_backward(const void* dy, const void* x, int64_t xs, const float* w,
                          const float* rstd, void* dx, float* partial, int64_t rows, int64_t cols,
                          cudaStream_t stream) {
  constexpr int W = wide<T>();
  const bool vec =
      cols % W == 0 && xs % W == 0 && aligned(x, 16) && aligned(dy, 16) && aligned(dx, 16);
  const int64_t blocks = rms_norm_backward_blocks(rows);
  const size_t shared = static_cast<size_t>(cols) * sizeof(float);
  const auto* dyt = static_cast<const T*>(dy);
  const auto* xt = static_cast<const T*>(x);
  auto* dxt = static_cast<T*>(dx);
  if (vec) {
    rms_norm_backward_kernel<T, W>
        <<<blocks, kThreads, shared, stream>>>(dyt, xt, xs, w, rstd, dxt, partial, rows, cols);
  } else {
    rms_norm_backward_kernel<T, 1>
        <<<blocks, kThreads, shared, stream>>>(dyt, xt, xs, w, rstd, dxt, partial, rows, cols);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t swiglu_fwd(const void* gate, const void* up, void* out, int64_t n,
                       cudaStream_t stream) {
  constexpr int W = wide<T>();
  const auto* g = static_cast<const T*>(gate);
  const auto* u = static_cast<const T*>(up);
  auto* o = static_cast<T*>(out);
  if (n % W == 0 && aligned(gate, 16) && aligned(up, 16) && aligned(out, 16)) {
    swiglu_forward_kernel<T, W><<<grid_for(n / W), kThreads, 0, stream>>>(g, u, o, n / W);
  } else {
    swiglu_forward_kernel<T, 1><<<grid_for(n), kThreads, 0, stream>>>(g, u, o, n);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t swiglu_bwd(const void* dout, const void* gate, const void* up, void* dgate, void* dup,
                       int64_t n, cudaStream_t stream) {
  constexpr int W = wide<T>();
  const auto* d = static_cast<const T*>(dout);
  const auto* g = static_cast<const T*>(gate);
  const auto* u = static_cast<const T*>(up);
  auto* dg = static_cast<T*>(dgate);
  auto* du = static_cast<T*>(dup);
  if (n % W == 0 && aligned(dout, 16) && aligned(gate, 16) && aligned(up, 16) &&
      aligned(dgate, 16) && aligned(dup, 16)) {
    swiglu_backward_kernel<T, W><<<grid_for(n / W), kThreads, 0, stream>>>(d, g, u, dg, du, n / W);
  } else {
    swiglu_backward_kernel<T, 1><<<grid_for(n), kThreads, 0, stream>>>(d, g, u, dg, du, n);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t rope_typed(const void* x, int64_t ts, int64_t hs, void* y, const float* cos,
                       const float* sin, int64_t tokens, int64_t heads, int64_t half, bool inverse,
                       cudaStream_t stream) {
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(tokens, 65535));
  rope_kernel<T><<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(x), ts, hs, static_cast<T*>(y), cos, sin, tokens,
      static_cast<int>(heads), static_cast<int>(half), inverse ? -1.0f : 1.0f);
  return cudaGetLastError();
}

template <typename T>
cudaError_t ce_forward(const void* logits, const int64_t* targets, float* loss, float* lse,
                       int64_t rows, int64_t vocab, cudaStream_t stream) {
  constexpr int W = wide<T>();
  const auto* x = static_cast<const T*>(logits);
  if (vocab % W == 0 && aligned(logits, 16)) {
    cross_entropy_forward_kernel<T, W><<<rows, kThreads, 0, stream>>>(x, targets, loss, lse, vocab);
  } else {
    cross_entropy_forward_kernel<T, 1><<<rows, kThreads, 0, stream>>>(x, targets, loss, lse, vocab);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t ce_backward(const void* logits, const int64_t* targets, const float* lse,
                        const float* grad, void* dlogits, int64_t rows, int64_t vocab,
                        cudaStream_t stream) {
  constexpr int W = wide<T>();
  const auto* x = static_cast<const T*>(logits);
  auto* d = static_cast<T*>(dlogits);
  if (vocab % W == 0 && aligned(logits, 16) && aligned(dlogits, 16)) {
    cross_entropy_backward_kernel<T, W>
        <<<rows, kThreads, 0, stream>>>(x, targets, lse, grad, d, vocab);
  } else {
    cross_entropy_backward_kernel<T, 1>
        <<<rows, kThreads, 0, stream>>>(x, targets, lse, grad, d, vocab);
  }
  return cudaGetLastError();
}

}  // namespace

int64_t rms_norm_backward_blocks(int64_t rows) {
  return std::max<int64_t>(1, std::min(rows, kNormBackwardBlocks));
}
int64_t rms_norm_max_cols() { return kMaxNormCols; }

#define CADRE_FUSED_DISPATCH(dtype, fn, ...) \
  switch (dtype) {                           \
    case Dtype::kFloat:                      \
      return fn<float>(__VA_ARGS__);         \
    case Dtype::kHalf:                       \
      return fn<__half>(__VA_ARGS__);        \
    case Dtype::kBFloat16:                   \
      return fn<__nv_bfloat16>(__VA_ARGS__); \
  }                                          \
  return cudaErrorInvalidValue

cudaError_t rms_norm_forward(Dtype dtype, const void* x, int64_t x_row_stride, const float* weight,
                             void* y, float* rstd, int64_t rows, int64_t cols, float eps,
                             cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (cols <= 0 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  CADRE_FUSED_DISPATCH(dtype, norm_forward, x, x_row_stride, weight, y, rstd, rows, cols, eps,
                       stream);
}

cudaError_t rms_norm_backward(Dtype dtype, const void* dy, const void* x, int64_t x_row_stride,
                              const float* weight, const float* rstd, void* dx,
                              float* dweight_partial, int64_t rows, int64_t cols,
                              cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (cols <= 0 || cols > kMaxNormCols) return cudaErrorInvalidValue;
  CADRE_FUSED_DISPATCH(dtype, norm_backward, dy, x, x_row_stride, weight, rstd, dx, dweight_partial,
                       rows, cols, stream);
}

cudaError_t rope(Dtype dtype, const void* x, int64_t token_stride, int64_t head_stride, void* y,
                 const float* cos, const float* sin, int64_t tokens, int64_t heads, int64_t half,
                 bool inverse, cudaStream_t stream) {
  if (tokens == 0 || heads == 0 || half == 0) return cudaSuccess;
  if (heads * half > 0x7fffffff) return cudaErrorInvalidValue;
  CADRE_FUSED_DISPATCH(dtype, rope_typed, x, token_stride, head_stride, y, cos, sin, tokens, heads,
                       half, inverse, stream);
}

cudaError_t swiglu_forward(Dtype dtype, const void* gate, const void* up, void* out, int64_t n,
                           cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  CADRE_FUSED_DISPATCH(dtype, swiglu_fwd, gate, up, out, n, stream);
}

cudaError_t swiglu_backward(Dtype dtype, const void* dout, const void* gate, const void* up,
                            void* dgate, void* dup, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  CADRE_FUSED_DISPATCH(dtype, swiglu_bwd, dout, gate, up, dgate, dup, n, stream);
}

cudaError_t cross_entropy_forward(Dtype dtype, const void* logits, const int64_t* targets,
                                  float* loss, float* lse, int64_t rows, int64_t vocab,
                                  cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (vocab <= 0 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  CADRE_FUSED_DISPATCH(dtype, ce_forward, logits, targets, loss, lse, rows, vocab, stream);
}

cudaError_t cross_entropy_backward(Dtype dtype, const void* logits, const int64_t* targets,
                                   const float* lse, const float* grad, void* dlogits, int64_t rows,
                                   int64_t vocab, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (vocab <= 0 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  CADRE_FUSED_DISPATCH(dtype, ce_backward, logits, targets, lse, grad, dlogits, rows, vocab,
                       stream);
}

#undef CADRE_FUSED_DISPATCH

}  // namespace cadre::runtime::fused
