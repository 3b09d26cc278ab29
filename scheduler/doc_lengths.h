// Document-length sources: seeded parametric generators (WLB-like, ProLong-like, log-normal,
// uniform, fixed), user files of lengths, and DistCA's up-sampling recipe. Portable: the same seed
// gives the same lengths with any standard library.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "scheduler/config.pb.h"

namespace cadre::scheduler {

// Draws document lengths (tokens, >= 1) from data.distribution; "file" cycles through the file's
// lengths starting at a seeded offset.
class DocLengthSource {
 public:
  // Throws cadre::Error naming the field and what is accepted for unknown distributions, bad
  // parameters, or unreadable / malformed length files.
  explicit DocLengthSource(const config::DataConfig& data, uint64_t seed);
  int64_t next();

 private:
  double uniform01();
  double normal();

  config::DataConfig data_;
  std::mt19937_64 rng_;
  std::vector<int64_t> file_lengths_;
  size_t file_position_ = 0;
};

// Reads a lengths file: a JSON array of integers, or one integer per line ('#' comments allowed).
std::vector<int64_t> load_lengths_file(const std::string& path);

// DistCA's recipe to stress longer contexts: documents >= split_threshold_tokens are "long" and
// replicated long_replicas times; a short_keep_fraction of the short ones is kept; the result is
// shuffled (seeded) and every length multiplied by elongation.
std::vector<int64_t> upsample_lengths(const std::vector<int64_t>& lengths,
                                      const config::DataConfig& data, uint64_t seed);

// Documents for one global batch: draws until total_tokens are covered, then applies the
// up-sampling recipe (a no-op with the defaults) and draws more if it removed too many.
std::vector<int64_t> draw_global_batch(const config::DataConfig& data, int64_t total_tokens,
                                       uint64_t seed);

}  // namespace cadre::scheduler
