// Training data: per rank per step, documents packed into the rank's context budget, from
// synthetic tokens with a learnable task, a user's token file, or Megatron indexed datasets
// (one, or several blended by weight: runtime/corpus.h). Deterministic given the seed;
// the position is a pair of counters that checkpoints save and restore.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/corpus.h"
#include "scheduler/config.pb.h"

namespace cadre::runtime {

// One rank's micro-batch: documents back to back. With packing "span" the first and last
// documents may be pieces of documents that continue on the neighbouring ranks.
struct RankBatch {
  std::vector<int64_t> doc_lengths;
  torch::Tensor tokens;  // int64 [sum(doc_lengths)]
  // packing "span" only:
  bool first_continues = false;  // the first document is the rest of the previous rank's last
  int64_t first_offset = 0;      // position of its first token in its document
  bool last_continues = false;   // the last document goes on at the next rank's first token
  int64_t last_target = -1;      // that token: the target of this batch's last token
  int64_t token_count() const;
};

// Where the loader stands: batches handed out so far, and (token file or Megatron datasets) the
// next document of the corpus and, with packing "fill", the first of its tokens not yet handed
// out.
struct DataPosition {
  int64_t batches = 0;
  int64_t file_document = 0;
  int64_t file_token_offset = 0;
};

// Reads a flat token file (little-endian uint16 or uint32; see docs/data.md) and splits it into
// documents at eod_token (the separator itself is dropped; empty documents are skipped).
std::vector<std::vector<uint32_t>> load_token_file(const std::string& path,
                                                   const std::string& dtype, uint32_t eod_token);

// The synthetic learnable task: a fixed successor table over the vocabulary (a seeded
// permutation); every document starts at a random token and follows the table. A model that
// learns the table predicts every target but the first, so the loss falls towards zero.
std::vector<int64_t> successor_table(int64_t vocab_size, uint64_t seed);

class DataLoader {
 public:
  // Every rank constructs the same loader (same config, same seed) and asks for its own rank.
  // Throws cadre::Error for bad settings, unreadable token files or datasets, or tokens >=
  // vocab_size (a token file is checked whole here; a Megatron dataset as it is read).
  DataLoader(const config::DataConfig& data, int64_t vocab_size, int rank, int world_size);

  // This rank's documents for the next step.
  //   packing "whole":
  //     synthetic: lengths from scheduler::DocLengthSource seeded by (seed, step, rank), drawn
  //       until the next document does not fit context_length (a first document longer than the
  //       budget is cut to it); tokens follow successor_table.
  //     token file: all ranks walk the file's documents from the shared position, filling rank
  //       0's budget, then rank 1's, ...; a document longer than the budget is cut to it; the
  //       file wraps around at its end.
  //   packing "fill": every rank gets exactly context_length tokens. One document stream per
  //     step (synthetic: lengths seeded by (seed, step); token file: from the shared position)
  //     is dealt to rank 0, 1, ... in order; the document crossing a budget's end is cut there
  //     and its rest opens the next rank's budget as a document of its own (positions restart,
  //     no attention across the cut). Synthetic: the rest left after the last rank is dropped;
  //     token file: the next step resumes inside that document, so no token is skipped.
  //   packing "span": dealt as "fill", but a document cut between two ranks of the step stays
  //     one document (DistCA's sequential packing): the next rank's piece continues its
  //     positions and the last token before the cut has the first token after it as target (the
  //     RankBatch fields say so); attention crosses the cut. At the end of the step the rest
  //     starts the next step as a document of its own, as with "fill".
  RankBatch next();

  DataPosition position() const { return position_; }
  void restore(const DataPosition& position) { position_ = position; }

 private:
  RankBatch next_synthetic();
  RankBatch next_from_file();
  RankBatch next_synthetic_filled(bool span);
  RankBatch next_from_file_filled(bool span);

  config::DataConfig data_;
  int64_t vocab_size_ = 0;
  int rank_ = 0;
  int world_size_ = 1;
  std::vector<int64_t> successor_;
  // Tokens [offset, offset + count) of corpus document d, each checked against the vocabulary.
  void read_tokens(int64_t d, int64_t offset, int64_t count, int64_t* out) const;

  std::unique_ptr<Corpus> corpus_;  // token file or Megatron datasets; null for synthetic data
  DataPosition position_;
};

}  // namespace cadre::runtime
