// How the split kernels (flash_kernel.h) cut a short query shard's unmasked key prefix into
// chunks for the forward pass. Host arithmetic only, so it builds and is tested without a GPU.
//
// Each chunk of a prefix becomes its own sequence in the prefix call (its queries repeated), so a
// batch of few shards against long prefixes still gives the kernel enough thread blocks to fill
// the GPU; the chunks of a token are merged by log-sum-exp afterwards. Shorter chunks fill the
// GPU more evenly but each block pays a fixed cost (loading its queries, writing its partial
// output and log-sum-exp), and every chunk adds a partial result to merge.
#pragma once

#include <cstdint>
#include <vector>

namespace cadre::attention_server {

// The key rows a thread block of the prefix call covers, and the bounds of the chunk length
// chosen for cuDNN parts (powers of two, so that a run meets few shape classes).
constexpr int64_t kPrefixBlockRows = 128;
constexpr int64_t kMinAutoChunkKeys = 2048;
constexpr int64_t kMaxAutoChunkKeys = 32768;
// A block's fixed cost in key columns of work (measured on H200, docs/gpu.md).
constexpr int64_t kChunkBlockOverheadKeys = 256;

// The work of one split sequence's prefix: `rows` folded query rows (queries x group) under
// `kv_heads` heads against `prefix` keys.
struct PrefixWork {
  int64_t rows = 0;
  int64_t kv_heads = 0;
  int64_t prefix = 0;
};

// The chunk length for a batch's prefixes when the kernel runs `slots` thread blocks at once:
// the power of two in [kMinAutoChunkKeys, kMaxAutoChunkKeys] nearest to sqrt(2 W o / slots),
// which minimises (W / slots) (1 + o / C) + C / 2 over C, where W is the batch's prefix work in
// block-keys (blocks of kPrefixBlockRows rows times keys) and o the block overhead: the first
// term is the work plus every block's fixed cost spread over the slots, the second the expected
// tail of the last wave. A large batch fills the GPU with long chunks; a few shards against long
// prefixes get short ones.
int64_t auto_prefix_chunk_keys(const std::vector<PrefixWork>& work, int64_t slots);

// The exclusive ends of the chunks of a `prefix`-key prefix cut into pieces of at most `chunk`
// keys: as few pieces as that allows, of equal length (rounded up to a multiple of
// kPrefixBlockRows keys when `chunk` is at least that), the last one shorter when the length does
// not divide. Empty for an empty prefix. `chunk` must be positive.
std::vector<int64_t> prefix_chunk_ends(int64_t prefix, int64_t chunk);

}  // namespace cadre::attention_server
