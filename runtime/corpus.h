// A corpus: the training documents of a token file, a Megatron indexed dataset, or several
// datasets blended by weight, read by index. DataLoader walks one with a position that
// checkpoints save; everything here is deterministic, so a resumed run reads the same tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/data_sources.h"
#include "scheduler/config.pb.h"

namespace cadre::runtime {

class Corpus {
 public:
  virtual ~Corpus() = default;
  // Documents in one pass (a blend: unbounded; see blend_corpora). Every document has at least
  // one token; readers wrap around at the end.
  virtual int64_t size() const = 0;
  virtual int64_t length(int64_t document) const = 0;
  // Tokens [offset, offset + count) of `document` into out.
  virtual void read(int64_t document, int64_t offset, int64_t count, int64_t* out) const = 0;
  // Where a document comes from, for messages: "data.token_file 'x' document 3".
  virtual std::string describe(int64_t document) const = 0;
};

// A flat token file (load_token_file: documents split at eod_token), held in memory.
std::unique_ptr<Corpus> open_token_file_corpus(const std::string& path, const std::string& dtype,
                                               uint32_t eod_token);

// A Megatron indexed dataset (runtime/indexed_dataset.h), memory-mapped; empty documents are
// skipped. Throws when it holds no token.
std::unique_ptr<Corpus> open_indexed_dataset_corpus(const std::string& prefix);

// Several corpora interleaved by weight (weights > 0, normalised). Position i of the stream
// takes the corpus whose share is furthest behind its weight, w_k * (i + 1) - taken_k (the lowest
// index on ties), and that corpus's next document; each corpus wraps around on its own and the
// blend never ends (size() is huge). So every prefix of the stream matches the weights to within
// about one document per corpus. The schedule up to the furthest document read is kept (10 bytes
// a document).
std::unique_ptr<Corpus> blend_corpora(std::vector<std::unique_ptr<Corpus>> corpora,
                                      const std::vector<double>& weights);



// The corpus data names: data.format "megatron" (one dataset or a blend), or data.token_file;
// nullptr for synthetic data (format "tokens" without a token file).
std::unique_ptr<Corpus> open_corpus(const config::DataConfig& data);

}  // namespace cadre::runtime
