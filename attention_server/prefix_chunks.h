// How the split kernels (flash_kernel.h) cut a short query shard's unmasked key prefix into
// chunks for the forward pass. Host arithmetic only, so it builds and is tested without a GPU.
//
// Each chunk of a prefix becomes its own sequence in the prefix call (its queries repeated), so a
// batch of few shards against long prefixes still gives the kernel enough thread blocks to fill
// the GPU; the chunks of a token are merged by log-sum-exp afterwards. Chunks of equal length
// leave no short remainder block running beside long ones. Shorter chunks would fill the GPU
// more evenly, but each block pays a fixed cost (loading its queries, writing its partial output
// and log-sum-exp): on H200 2K- and 4K-key chunks ran 128-token shards 10-17% slower than 8K-32K
// ones, which measured alike (docs/gpu.md), so the split kernels keep 32K.
#pragma once

#include <cstdint>
#include <vector>

namespace cadre::attention_server {

// The key rows of one thread block of the prefix call.
constexpr int64_t kPrefixBlockRows = 128;

// The exclusive ends of the chunks of a `prefix`-key prefix cut into pieces of at most `chunk`
// keys: as few pieces as that allows, of equal length (rounded up to a multiple of
// kPrefixBlockRows keys when `chunk` is at least that), the last one shorter when the length does
// not divide. Empty for an empty prefix. `chunk` must be positive.
std::vector<int64_t> prefix_chunk_ends(int64_t prefix, int64_t chunk);

}  // namespace cadre::attention_server
