// The "flash" kernel (LibTorch's FlashAttention-2, GPU build only): declared in every build so
// that callers compile; defined in flash_kernel_gpu.cc, which only the GPU build compiles. Code
// that may run in a CPU build guards its calls with CADRE_WITH_CUDA.
#pragma once

#include <memory>
#include <string>

#include "attention_server/kernel.h"

namespace cadre::attention_server {

// Short query shards: FlashAttention-2 runs a shard of q queries against a long key prefix at a
// fraction of its whole-document speed (backward especially: each 128-key block meets only q
// query rows, and GQA makes it expand dK/dV to every query head; forward: a few long prefixes
// leave their thread blocks running alone at the end). With the batch's host cumulative lengths,
// the kernel splits a sequence with q < keys into
//   - its unmasked prefix (keys [0, keys - q)): no causal mask, so the heads sharing a KV head
//     fold into query rows (q * group rows, kv_heads heads: plain multi-head attention, no dK/dV
//     expansion); in forward cut into chunks of at most prefix_chunk_keys keys;
//   - its diagonal block (the last q keys), causal, beside the batch's unsplit sequences;
// and merges them by log-sum-exp. Backward gives each part the merged output and log-sum-exp,
// which makes the parts' gradients exact; they are summed. The prefix call reads K/V in place
// (the other key rows ride along as sequences without queries); only diagonal blocks and
// unsplit sequences are gathered. With cudnn_parts the forward gathers no keys and folds each
// shard's queries once: both calls place their sequences by row offsets (cudnn_kernel.h
// RaggedRows; a shard's prefix chunks share its folded queries, keys are read where they lie),
// the prefix chunks run longest first (CADRE_SPLIT_KEEP_ORDER=1: in batch order), and the small
// diagonal call runs on a side stream beside the prefix call (CADRE_SPLIT_SERIAL=1: before it). Which sequences split
// (measured on H200, docs/gpu.md):
//   backward (GQA only: without a group to fold, the split gains nothing there): q <=
//     max_backward_split_queries and prefix >= backward_min_prefix_ratio * q and >=
//     backward_min_prefix_keys;
//   forward (GQA and MHA): q <= max_forward_split_queries; all eligible ones or none, whichever a
//     schedule estimate of the two launches (thread blocks placed greedily on forward_slots
//     concurrent slots, 0 = two per SM) says is faster: the chunked forward is ~5% slower per
//     key but has no long stragglers.
// CADRE_SPLIT_PROFILE=1 prints each split forward's phases in device time (a diagnostic that
// synchronises; docs/gpu.md). Not thread-safe (it caches the split of the last batches it saw).
struct FlashKernelOptions {
  bool split_short_shards = true;
  int64_t max_forward_split_queries = 2048;
  int64_t max_backward_split_queries = 2048;
  int64_t backward_min_prefix_ratio = 8;
  int64_t backward_min_prefix_keys = 1024;
  int64_t forward_slots = 0;
  bool force_forward_split = false;  // split every eligible sequence in forward (tests)
  // Forward prefix chunks of at most this many keys, equal in length (prefix_chunks.h).
  int64_t prefix_chunk_keys = 32768;
  // The kernel the parts run on: LibTorch's FlashAttention-2, or cuDNN's fused attention
  // (cudnn_kernel.h; GPU build with cuDNN). With cuDNN, forward splits every eligible shard (the
  // schedule estimate above is FlashAttention-2's) and the kernel is named "cudnn-split".
  bool cudnn_parts = false;
};

// FlashAttention-2 varlen forward/backward over a fused batch (bf16/fp16, head_dim multiple of 8
// up to 256, GQA, bottom-right-aligned causal mask, log-sum-exp [heads, total_q]).
std::unique_ptr<CoreAttentionKernel> make_flash_kernel(const FlashKernelOptions& options = {});

// The LibTorch operator schemas the flash kernel calls (for logs and benchmark records).
std::string flash_kernel_schemas();

}  // namespace cadre::attention_server
