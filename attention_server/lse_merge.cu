// Log-sum-exp merge of partial attention results (see lse_merge.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "attention_server/lse_merge.h"

namespace cadre::attention_server {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxPerLane = 8;  // head_dim <= 256
constexpr int kWarpsPerBlock = 8;

__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline float to_float(__half x) { return __half2float(x); }
template <typename T>
__device__ inline T from_float(float x);
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ inline __half from_float<__half>(float x) { return __float2half(x); }

// A part without a visible key has log-sum-exp -inf (FlashAttention-2 may report +inf for an
// empty row): either way it carries no weight.
__device__ inline float part_lse_of(float x) { return isfinite(x) ? x : -INFINITY; }

template <typename T>
__global__ void lse_merge_kernel(LseMergeArgs a) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= a.num_tokens * a.heads) return;
  const int64_t i = warp / a.heads;
  const int h = static_cast<int>(warp % a.heads);
  const int group = a.heads / a.kv_heads;
  const int kh = h / group, g = h % group;
  const int64_t t = a.tokens[i];
  const int begin = a.offsets[i], end = a.offsets[i + 1];
  float* lse = a.token_major_lse ? a.lse + t * a.heads + h : a.lse + h * a.total_q + t;
  const float rest_lse = part_lse_of(*lse);
  // Chunk row r of this token and head (folded row r * group + g, KV head kh): its log-sum-exp
  // and its output.
  auto part_lse_at = [&](int64_t r) {
    const int64_t row = r * group + g;
    return a.token_major_lse ? a.part_lse[row * a.kv_heads + kh]
                             : a.part_lse[kh * a.part_rows + row];
  };
  auto part_out_at = [&](int64_t r) {
    return static_cast<const T*>(a.part_out) + ((r * group + g) * a.kv_heads + kh) * a.head_dim;
  };
  float m = rest_lse;
  for (int j = begin; j < end; ++j) m = fmaxf(m, part_lse_of(part_lse_at(a.rows[j])));
  if (m == -INFINITY) return;  // no visible key in any part: nothing to merge
  T* out = static_cast<T*>(a.out) + (t * a.heads + h) * a.head_dim;
  float w = expf(rest_lse - m);  // 0 when the rest part saw no key (its output is not read)
  float total = w;
  float acc[kMaxPerLane];
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    const int d = lane + k * kWarp;
    acc[k] = d < a.head_dim && w > 0.0f ? w * to_float(out[d]) : 0.0f;
  }
  for (int j = begin; j < end; ++j) {
    w = expf(part_lse_of(part_lse_at(a.rows[j])) - m);
    total += w;
    const T* p = part_out_at(a.rows[j]);
#pragma unroll
    for (int k = 0; k < kMaxPerLane; ++k) {
      const int d = lane + k * kWarp;
      if (d < a.head_dim) acc[k] += w * to_float(p[d]);
    }
  }
  const float inv = 1.0f / total;
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    const int d = lane + k * kWarp;
    if (d < a.head_dim) out[d] = from_float<T>(acc[k] * inv);
  }
  __syncwarp();  // every lane has read *lse before lane 0 replaces it
  if (lane == 0) *lse = m + logf(total);
}

}  // namespace

cudaError_t launch_lse_merge(const LseMergeArgs& args, cudaStream_t stream) {
  if (args.num_tokens == 0 || args.heads == 0) return cudaSuccess;
  if (args.head_dim <= 0 || args.head_dim > kWarp * kMaxPerLane || args.kv_heads <= 0 ||
      args.heads % args.kv_heads != 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t warps = args.num_tokens * args.heads;
  const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks)), block(kWarpsPerBlock * kWarp);
  if (args.dtype == MergeDtype::kBFloat16) {
    lse_merge_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(args);
  } else {
    lse_merge_kernel<__half><<<grid, block, 0, stream>>>(args);
  }
  return cudaGetLastError();
}

}  // namespace cadre::attention_server
