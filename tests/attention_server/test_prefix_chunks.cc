// Prefix chunking of the split kernels: hand-computed chunk ends and their invariants.
#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include "attention_server/prefix_chunks.h"
#include "tests/expect_error.h"

namespace cadre::attention_server {
namespace {

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
