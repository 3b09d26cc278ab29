// Prefix chunking of the split kernels: the automatic chunk length against a brute-force
// minimum of the cost it models, hand-computed cases, and the chunk ends' invariants.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "attention_server/prefix_chunks.h"
#include "tests/expect_error.h"

namespace cadre::attention_server {
namespace {

// (W / slots) (1 + o / C) + C / 2, W in block-keys, evaluated over the allowed powers of two.
int64_t brute_force_chunk(double block_keys, int64_t slots) {
  int64_t best = 0;
  double best_cost = std::numeric_limits<double>::infinity();
  for (int64_t c = kMinAutoChunkKeys; c <= kMaxAutoChunkKeys; c *= 2) {
    const double cost = block_keys / static_cast<double>(slots) *
                            (1.0 + static_cast<double>(kChunkBlockOverheadKeys) / c) +
                        0.5 * static_cast<double>(c);
    if (cost < best_cost) {
      best_cost = cost;
      best = c;
    }
  }
  return best;
}

TEST(PrefixChunks, AutoLengthMinimisesTheModelledCost) {
  for (int64_t slots : {1, 66, 132, 264}) {
    for (double shards : {1.0, 3.0, 7.0, 31.0, 100.0, 512.0, 4096.0}) {
      for (int64_t prefix : {1000, 8192, 65536, 131072}) {
        std::vector<PrefixWork> work(static_cast<size_t>(shards), PrefixWork{512, 8, prefix});
        // 512 folded rows = 4 blocks, under 8 heads.
        const double block_keys = shards * 4 * 8 * static_cast<double>(prefix);
        EXPECT_EQ(auto_prefix_chunk_keys(work, slots), brute_force_chunk(block_keys, slots))
            << shards << " shards against " << prefix << " keys on " << slots << " slots";
      }
    }
  }
}

TEST(PrefixChunks, AutoLengthHandCases) {
  // Seven 128-query shards (group 4: 512 folded rows, 4 blocks) under 8 KV heads against
  // prefixes of 0..128K, mean ~64K: W = 7 * 32 * 65536 = 14.7M block-keys; on 132 SMs
  // sqrt(2 W 256 / 132) = 7.5K -> 8192.
  std::vector<PrefixWork> few;
  for (int64_t j = 0; j < 7; ++j) few.push_back({512, 8, j * 21845});
  EXPECT_EQ(auto_prefix_chunk_keys(few, 132), 8192);
  // Nothing to split, or one short shard: the shortest allowed.
  EXPECT_EQ(auto_prefix_chunk_keys({}, 132), kMinAutoChunkKeys);
  EXPECT_EQ(auto_prefix_chunk_keys({{128, 8, 4096}}, 132), kMinAutoChunkKeys);
  // A server's whole batch of 512 shards against 32K-key prefixes: the longest allowed.
  EXPECT_EQ(auto_prefix_chunk_keys(std::vector<PrefixWork>(512, {512, 8, 32768}), 132),
            kMaxAutoChunkKeys);
  // 129 folded rows take two blocks: twice the work of 128 rows.
  EXPECT_EQ(auto_prefix_chunk_keys({{129, 1, 1 << 20}}, 1),
            auto_prefix_chunk_keys({{128, 2, 1 << 20}}, 1));
  testing::expect_error([] { auto_prefix_chunk_keys({}, 0); }, {"slots must be positive"});
  testing::expect_error([] { auto_prefix_chunk_keys({{1, 1, -1}}, 1); }, {"negative work"});
}

TEST(PrefixChunks, EndsAreEqualPiecesCoveringThePrefix) {
  EXPECT_EQ(prefix_chunk_ends(0, 4096), std::vector<int64_t>{});
  EXPECT_EQ(prefix_chunk_ends(1000, 4096), (std::vector<int64_t>{1000}));
  EXPECT_EQ(prefix_chunk_ends(4096, 4096), (std::vector<int64_t>{4096}));
  // 40K in pieces of at most 32K: two of 20K (not 32K + 8K).
  EXPECT_EQ(prefix_chunk_ends(40960, 32768), (std::vector<int64_t>{20480, 40960}));
  // 10000 in pieces of at most 4096: three of 3334, rounded up to 3456 (27 blocks of 128).
  EXPECT_EQ(prefix_chunk_ends(10000, 4096), (std::vector<int64_t>{3456, 6912, 10000}));
  // Below one block no rounding: 300 in pieces of at most 96 -> four of 75.
  EXPECT_EQ(prefix_chunk_ends(300, 96), (std::vector<int64_t>{75, 150, 225, 300}));
  for (int64_t chunk : {1, 96, 128, 2048, 8192, 32768}) {
    for (int64_t prefix : {1, 127, 128, 129, 5000, 65535, 131072, 131071}) {
      std::vector<int64_t> ends = prefix_chunk_ends(prefix, chunk);
      ASSERT_FALSE(ends.empty());
      EXPECT_EQ(ends.back(), prefix);
      EXPECT_EQ(static_cast<int64_t>(ends.size()), (prefix + chunk - 1) / chunk)
          << prefix << " / " << chunk;
      int64_t start = 0;
      for (size_t i = 0; i < ends.size(); ++i) {
        const int64_t length = ends[i] - start;
        EXPECT_GT(length, 0);
        EXPECT_LE(length, chunk);
        if (i + 1 < ends.size()) {
          EXPECT_EQ(length, ends[0]) << "pieces before the last are equal";
        }
        start = ends[i];
      }
    }
  }
  // Backward keeps a prefix whole: the largest chunk length must not overflow.
  EXPECT_EQ(prefix_chunk_ends(131072, std::numeric_limits<int64_t>::max()),
            (std::vector<int64_t>{131072}));
  testing::expect_error([] { prefix_chunk_ends(10, 0); }, {"chunk length must be positive"});
}

}  // namespace
}  // namespace cadre::attention_server
