// Log-sum-exp merge of partial attention results, in place (GPU build only; lse_merge.cu).
//
// The split flash kernel (flash_kernel_gpu.cc) computes a token's attention in parts: the causal
// "rest" (out [tokens, heads, head_dim], lse [heads, tokens]) and any number of unmasked prefix
// chunks whose queries are folded (chunk row r, group member g at folded row r * group + g, KV
// head kh holding query head kh * group + g: out [rows * group, kv_heads, head_dim], lse
// [kv_heads, rows * group]; or token-major, cuDNN's layout: the rest's lse [tokens, heads] and the
// parts' [rows * group, kv_heads]). For each listed token and head this kernel replaces the
// rest's output and log-sum-exp by the merge of all parts:
//   m = max lse_p, w_p = exp(lse_p - m), out = sum w_p out_p / sum w_p, lse = m + log sum w_p.
// One warp per (token, head), fp32 arithmetic, no host round trip.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace cadre::attention_server {

enum class MergeDtype { kBFloat16, kHalf };

struct LseMergeArgs {
  MergeDtype dtype = MergeDtype::kBFloat16;
  void* out = nullptr;               // [total_q, heads, head_dim], merged in place
  float* lse = nullptr;              // [heads, total_q] (token-major: [total_q, heads]), merged
                                     // in place
  const void* part_out = nullptr;    // [part_rows, kv_heads, head_dim]
  const float* part_lse = nullptr;   // [kv_heads, part_rows] (token-major: [part_rows, kv_heads])
  const int32_t* tokens = nullptr;   // [num_tokens]: the tokens to merge
  const int32_t* offsets = nullptr;  // [num_tokens + 1]: each token's range in rows
  const int32_t* rows = nullptr;     // chunk rows (unfolded) of each token
  int64_t num_tokens = 0;
  int64_t total_q = 0;
  int64_t part_rows = 0;             // folded rows of the parts (chunk rows * group)
  int heads = 0, kv_heads = 0, head_dim = 0;
  bool token_major_lse = false;      // the layouts in parentheses above
};

// Launches on `stream`; returns the launch error (cudaSuccess when num_tokens is 0).
// head_dim must be at most 256 (8 values per lane).
cudaError_t launch_lse_merge(const LseMergeArgs& args, cudaStream_t stream);

}  // namespace cadre::attention_server
