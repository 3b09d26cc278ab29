// Packed documents for each rank and step: synthetic successor-table documents or a token file.
#include "runtime/data.h"

#include <algorithm>
#include <fstream>
#include <random>

#include "common/error.h"
#include "scheduler/doc_lengths.h"

namespace cadre::runtime {

int64_t RankBatch::token_count() const {
  int64_t total = 0;
  for (int64_t n : doc_lengths) total += n;
  return total;
}

namespace {

// SplitMix64 finaliser: independent-looking seeds for each (seed, step, rank).
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t step_seed(uint64_t seed, int64_t step, int rank) {
  return mix(mix(mix(seed) ^ static_cast<uint64_t>(step)) ^ static_cast<uint64_t>(rank));
}

}  // namespace

std::vector<int64_t> successor_table(int64_t vocab_size, uint64_t seed) {
  CADRE_CHECK(vocab_size >= 2, "the synthetic task needs model.vocab_size >= 2; got ", vocab_size);
  std::vector<int64_t> table(vocab_size);
  for (int64_t i = 0; i < vocab_size; ++i) table[i] = i;
  // Fisher-Yates with our own bounded draw: std::shuffle differs between standard libraries.
  std::mt19937_64 rng(mix(seed ^ 0x5EED5EEDull));
  for (int64_t i = vocab_size - 1; i > 0; --i) {
    std::swap(table[i], table[static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1))]);
  }
  return table;
}

std::vector<std::vector<uint32_t>> load_token_file(const std::string& path,
                                                   const std::string& dtype, uint32_t eod_token) {
  CADRE_CHECK(dtype == "uint16" || dtype == "uint32", "data.token_dtype is '", dtype,
              "'; accepted: uint16, uint32");
  std::ifstream in(path, std::ios::binary);
  CADRE_CHECK(in.good(), "cannot open data.token_file '", path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t width = dtype == "uint16" ? 2 : 4;
  CADRE_CHECK(bytes.size() % width == 0, "data.token_file '", path, "' has ", bytes.size(),
              " bytes, not a multiple of ", width, " (", dtype, ")");
  std::vector<std::vector<uint32_t>> documents(1);
  const auto* raw = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < bytes.size(); i += width) {
    uint32_t token = raw[i] | (static_cast<uint32_t>(raw[i + 1]) << 8);  // little-endian
    if (width == 4) {
      token |= (static_cast<uint32_t>(raw[i + 2]) << 16) | (static_cast<uint32_t>(raw[i + 3]) << 24);
    }
    if (token == eod_token) {
      if (!documents.back().empty()) documents.emplace_back();
    } else {
      documents.back().push_back(token);
    }
  }
  if (documents.back().empty()) documents.pop_back();
  CADRE_CHECK(!documents.empty(), "data.token_file '", path,
              "' holds no document (only end-of-document tokens, or empty)");
  return documents;
}

DataLoader::DataLoader(const config::DataConfig& data, int64_t vocab_size, int rank,
                       int world_size)
    : data_(data), vocab_size_(vocab_size), rank_(rank), world_size_(world_size) {
  CADRE_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "rank ", rank,
              " is outside a world of ", world_size);
  CADRE_CHECK(data.context_length() >= 2, "data.context_length must be at least 2; got ",
              data.context_length());
  if (data.token_file().empty()) {
    successor_ = successor_table(vocab_size, data.seed());
    // Fail at construction (every rank alike) rather than in the first step.
    scheduler::DocLengthSource probe(data, data.seed());
    probe.next();
  } else {
    documents_ = load_token_file(data.token_file(), data.token_dtype(), data.eod_token());
    for (const auto& doc : documents_) {
      for (uint32_t t : doc) {
        CADRE_CHECK(static_cast<int64_t>(t) < vocab_size, "data.token_file '", data.token_file(),
                    "' holds token ", t, " but model.vocab_size is ", vocab_size,
                    "; accepted: tokens < vocab_size");
      }
    }
  }
}

RankBatch DataLoader::next() {
  RankBatch batch = data_.token_file().empty() ? next_synthetic() : next_from_file();
  ++position_.batches;
  return batch;
}

RankBatch DataLoader::next_synthetic() {
  const int64_t budget = data_.context_length();
  const uint64_t seed = step_seed(data_.seed(), position_.batches, rank_);
  scheduler::DocLengthSource lengths(data_, seed);
  RankBatch batch;
  int64_t used = 0;
  for (;;) {
    int64_t n = lengths.next();
    if (batch.doc_lengths.empty()) n = std::min(n, budget);
    if (used + n > budget) break;
    batch.doc_lengths.push_back(n);
    used += n;
    if (used == budget) break;
  }
  batch.tokens = torch::empty({used}, torch::kLong);
  int64_t* out = batch.tokens.data_ptr<int64_t>();
  std::mt19937_64 rng(mix(seed ^ 0x70CE45ull));
  for (int64_t n : batch.doc_lengths) {
    int64_t token = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab_size_));
    for (int64_t i = 0; i < n; ++i) {
      *out++ = token;
      token = successor_[token];
    }
  }
  return batch;
}

RankBatch DataLoader::next_from_file() {
  const int64_t budget = data_.context_length();
  const int64_t count = static_cast<int64_t>(documents_.size());
  int64_t cursor = position_.file_document;
  RankBatch batch;
  std::vector<int64_t> mine;  // document indices of this rank
  for (int r = 0; r < world_size_; ++r) {
    int64_t used = 0;
    for (;;) {
      int64_t n = std::min<int64_t>(budget, documents_[cursor % count].size());
      if (used > 0 && used + n > budget) break;
      if (r == rank_) {
        batch.doc_lengths.push_back(n);
        mine.push_back(cursor % count);
      }
      used += n;
      ++cursor;
      if (used == budget) break;
    }
  }
  position_.file_document = cursor % count;
  batch.tokens = torch::empty({batch.token_count()}, torch::kLong);
  int64_t* out = batch.tokens.data_ptr<int64_t>();
  for (size_t i = 0; i < mine.size(); ++i) {
    const auto& doc = documents_[mine[i]];
    for (int64_t j = 0; j < batch.doc_lengths[i]; ++j) *out++ = doc[j];
  }
  return batch;
}

}  // namespace cadre::runtime
