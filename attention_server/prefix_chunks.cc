// Prefix chunking of the split kernels (prefix_chunks.h).
#include "attention_server/prefix_chunks.h"

#include <algorithm>

#include "common/error.h"

namespace cadre::attention_server {

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
