// Prefix chunking of the split kernels (prefix_chunks.h).
#include "attention_server/prefix_chunks.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace cadre::attention_server {

int64_t auto_prefix_chunk_keys(const std::vector<PrefixWork>& work, int64_t slots) {
  CADRE_CHECK(slots > 0, "prefix chunks: slots must be positive; got ", slots);
  double block_keys = 0;
  for (const PrefixWork& w : work) {
    CADRE_CHECK(w.rows >= 0 && w.kv_heads >= 0 && w.prefix >= 0,
                "prefix chunks: negative work (rows ", w.rows, ", kv_heads ", w.kv_heads,
                ", prefix ", w.prefix, ")");
    const int64_t blocks = (w.rows + kPrefixBlockRows - 1) / kPrefixBlockRows * w.kv_heads;
    block_keys += static_cast<double>(blocks) * static_cast<double>(w.prefix);
  }
  const double best = std::sqrt(2.0 * block_keys * kChunkBlockOverheadKeys /
                                static_cast<double>(slots));
  // The nearest power of two on a log scale, within the bounds.
  int64_t chunk = kMinAutoChunkKeys;
  while (chunk < kMaxAutoChunkKeys && static_cast<double>(chunk) * std::sqrt(2.0) < best) {
    chunk *= 2;
  }
  return chunk;
}

std::vector<int64_t> prefix_chunk_ends(int64_t prefix, int64_t chunk) {
  CADRE_CHECK(chunk > 0, "prefix chunks: the chunk length must be positive; got ", chunk);
  CADRE_CHECK(prefix >= 0, "prefix chunks: the prefix length must be non-negative; got ", prefix);
  std::vector<int64_t> ends;
  if (prefix == 0) return ends;
  const int64_t pieces = 1 + (prefix - 1) / chunk;  // (no overflow for chunk near INT64_MAX)
  int64_t length = (prefix + pieces - 1) / pieces;
  if (chunk >= kPrefixBlockRows) {
    length = std::min(chunk, (length + kPrefixBlockRows - 1) / kPrefixBlockRows * kPrefixBlockRows);
  }
  for (int64_t end = length; ; end += length) {
    ends.push_back(std::min(end, prefix));
    if (end >= prefix) break;
  }
  return ends;
}

}  // namespace cadre::attention_server
