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
  CADRE_CHECK(data.packing() == "whole" || data.packing() == "fill" || data.packing() == "span",
              "data.packing is '", data.packing(), "'; accepted: whole, fill, span");
  corpus_ = open_corpus(data);
  if (!corpus_) {
    successor_ = successor_table(vocab_size, data.seed());
    // Fail at construction (every rank alike) rather than in the first step.
    scheduler::DocLengthSource probe(data, data.seed());
    probe.next();
  } else if (data.format() == "tokens") {
    // A token file is in memory anyway: check it whole now (a dataset is checked as it is read).
    std::vector<int64_t> tokens;
    for (int64_t d = 0; d < corpus_->size(); ++d) {
      tokens.resize(corpus_->length(d));
      read_tokens(d, 0, corpus_->length(d), tokens.data());
    }
  }
}

void DataLoader::read_tokens(int64_t d, int64_t offset, int64_t count, int64_t* out) const {
  corpus_->read(d, offset, count, out);
  for (int64_t i = 0; i < count; ++i) {
    CADRE_CHECK(out[i] >= 0 && out[i] < vocab_size_, corpus_->describe(d), " holds token ",
                out[i], " but model.vocab_size is ", vocab_size_,
                "; accepted: tokens in [0, vocab_size)");
  }
}

RankBatch DataLoader::next() {
  const bool whole = data_.packing() == "whole", span = data_.packing() == "span";
  RankBatch batch = !corpus_
                        ? (whole ? next_synthetic() : next_synthetic_filled(span))
                        : (whole ? next_from_file() : next_from_file_filled(span));
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
  const int64_t count = corpus_->size();
  int64_t cursor = position_.file_document;
  RankBatch batch;
  std::vector<int64_t> mine;  // document indices of this rank
  for (int r = 0; r < world_size_; ++r) {
    int64_t used = 0;
    for (;;) {
      int64_t n = std::min<int64_t>(budget, corpus_->length(cursor % count));
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
  position_.file_token_offset = 0;  // whole documents: a fill/span position restarts there
  batch.tokens = torch::empty({batch.token_count()}, torch::kLong);
  int64_t* out = batch.tokens.data_ptr<int64_t>();
  for (size_t i = 0; i < mine.size(); ++i) {
    read_tokens(mine[i], 0, batch.doc_lengths[i], out);
    out += batch.doc_lengths[i];
  }
  return batch;
}

namespace {

// One piece of a document dealt to a rank by "fill" packing: tokens [offset, offset + length).
struct Piece {
  int64_t document = 0;  // index into the step's (synthetic) or the file's document list
  int64_t offset = 0;
  int64_t length = 0;
};

// Deals documents of `length(d)` tokens, d = first, first + 1, ..., starting `offset` tokens into
// `first`, to `world_size` budgets of `budget` tokens each, in rank order, cutting a document at
// each budget's end. Returns `rank`'s pieces; `first`/`offset` end at the first undealt token.
template <typename LengthOf>
std::vector<Piece> deal_filled(LengthOf length, int64_t& document, int64_t& offset,
                               int64_t budget, int rank, int world_size) {
  std::vector<Piece> mine;
  for (int r = 0; r < world_size; ++r) {
    int64_t used = 0;
    while (used < budget) {
      const int64_t take = std::min(length(document) - offset, budget - used);
      if (r == rank) mine.push_back({document, offset, take});
      used += take;
      offset += take;
      if (offset == length(document)) {
        ++document;
        offset = 0;
      }
    }
  }
  return mine;
}

// packing "span": marks `batch` (rank `rank` of the step, its `pieces` dealt by deal_filled
// starting at `step_offset` tokens into `first_document`) where its first and last documents
// continue across the neighbouring ranks' cuts. `token_at(document, offset)` reads a token.
template <typename LengthOf, typename TokenAt>
void mark_spans(RankBatch& batch, const std::vector<Piece>& pieces, int64_t first_document,
                int64_t step_offset, int rank, int world_size, LengthOf length,
                TokenAt token_at) {
  if (pieces.empty()) return;
  const Piece& first = pieces.front();
  const int64_t start = first.document == first_document ? step_offset : 0;  // in this step
  if (rank > 0 && first.offset > start) {
    batch.first_continues = true;
    batch.first_offset = first.offset - start;
  }
  const Piece& last = pieces.back();
  if (rank + 1 < world_size && last.offset + last.length < length(last.document)) {
    batch.last_continues = true;
    batch.last_target = token_at(last.document, last.offset + last.length);
  }
}

}  // namespace

RankBatch DataLoader::next_synthetic_filled(bool span) {
  const int64_t budget = data_.context_length();
  // One stream per step, shared by every rank; world_size as the "rank" keeps it apart from the
  // per-rank streams of packing "whole".
  const uint64_t seed = step_seed(data_.seed(), position_.batches, world_size_);
  scheduler::DocLengthSource source(data_, seed);
  std::mt19937_64 rng(mix(seed ^ 0x70CE45ull));
  std::vector<int64_t> lengths, starts;  // drawn on demand, in order
  auto length = [&](int64_t d) {
    while (static_cast<int64_t>(lengths.size()) <= d) {
      lengths.push_back(std::max<int64_t>(1, source.next()));
      starts.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab_size_)));
    }
    return lengths[d];
  };
  // Token `at` of document d: its start token followed `at` times through the successor table.
  auto token_at = [&](int64_t d, int64_t at) {
    int64_t token = starts[d];
    for (int64_t i = 0; i < at; ++i) token = successor_[token];
    return token;
  };
  int64_t document = 0, offset = 0;
  std::vector<Piece> pieces = deal_filled(length, document, offset, budget, rank_, world_size_);
  RankBatch batch;
  batch.tokens = torch::empty({budget}, torch::kLong);
  int64_t* out = batch.tokens.data_ptr<int64_t>();
  for (const Piece& p : pieces) {
    batch.doc_lengths.push_back(p.length);
    int64_t token = token_at(p.document, p.offset);
    for (int64_t i = 0; i < p.length; ++i) {
      *out++ = token;
      token = successor_[token];
    }
  }
  if (span) mark_spans(batch, pieces, 0, 0, rank_, world_size_, length, token_at);
  return batch;
}

RankBatch DataLoader::next_from_file_filled(bool span) {
  const int64_t budget = data_.context_length();
  const int64_t count = corpus_->size();
  auto length = [&](int64_t d) { return corpus_->length(d % count); };
  int64_t document = position_.file_document;
  int64_t offset = position_.file_token_offset;
  CADRE_CHECK(document >= 0 && document < count && offset >= 0 && offset < length(document),
              "data position (document ", document, ", token ", offset,
              ") is outside the training corpus (", count,
              " documents); was the checkpoint written with other data?");
  const int64_t first_document = document, step_offset = offset;
  std::vector<Piece> pieces = deal_filled(length, document, offset, budget, rank_, world_size_);
  position_.file_document = document % count;
  position_.file_token_offset = offset;
  RankBatch batch;
  batch.tokens = torch::empty({budget}, torch::kLong);
  int64_t* out = batch.tokens.data_ptr<int64_t>();
  for (const Piece& p : pieces) {
    batch.doc_lengths.push_back(p.length);
    read_tokens(p.document % count, p.offset, p.length, out);
    out += p.length;
  }
  if (span) {
    mark_spans(batch, pieces, first_document, step_offset, rank_, world_size_, length,
               [&](int64_t d, int64_t at) {
                 int64_t token = 0;
                 read_tokens(d % count, at, 1, &token);
                 return token;
               });
  }
  return batch;
}

}  // namespace cadre::runtime
