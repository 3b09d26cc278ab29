// Corpora: token files (in memory), Megatron indexed datasets (memory-mapped) and weighted
// blends of them, all read by document index.
#include "runtime/corpus.h"

#include <cmath>
#include <cstdlib>
#include <limits>

#include "common/error.h"
#include "common/posix_fs.h"
#include "runtime/data.h"
#include "runtime/indexed_dataset.h"

namespace cadre::runtime {
namespace {

class TokenFileCorpus : public Corpus {
 public:
  TokenFileCorpus(const std::string& path, const std::string& dtype, uint32_t eod)
      : path_(path), documents_(load_token_file(path, dtype, eod)) {}
  int64_t size() const override { return static_cast<int64_t>(documents_.size()); }
  int64_t length(int64_t d) const override { return static_cast<int64_t>(documents_[d].size()); }
  void read(int64_t d, int64_t offset, int64_t count, int64_t* out) const override {
    const auto& doc = documents_[d];
    for (int64_t i = 0; i < count; ++i) out[i] = doc[offset + i];
  }
  std::string describe(int64_t d) const override {
    return str_cat("data.token_file '", path_, "' document ", d);
  }

 private:
  std::string path_;
  std::vector<std::vector<uint32_t>> documents_;
};

class IndexedDatasetCorpus : public Corpus {
 public:
  explicit IndexedDatasetCorpus(const std::string& prefix) : dataset_(prefix) {
    CADRE_CHECK(dataset_.total_tokens() > 0, "Megatron dataset '", prefix, "' holds no token (",
                dataset_.document_count(), " documents, all empty)");
    int64_t empty = 0;
    for (int64_t d = 0; d < dataset_.document_count(); ++d)
      empty += dataset_.document_tokens(d) == 0;
    // The non-empty documents' indices, kept only when some are empty (else the identity).
    if (empty > 0) {
      for (int64_t d = 0; d < dataset_.document_count(); ++d) {
        if (dataset_.document_tokens(d) > 0) documents_.push_back(d);
      }
    }
  }
  int64_t size() const override {
    return documents_.empty() ? dataset_.document_count() : static_cast<int64_t>(documents_.size());
  }
  int64_t length(int64_t d) const override { return dataset_.document_tokens(index(d)); }
  void read(int64_t d, int64_t offset, int64_t count, int64_t* out) const override {
    dataset_.read(index(d), offset, count, out);
  }
  std::string describe(int64_t d) const override {
    return str_cat("Megatron dataset '", dataset_.prefix(), "' document ", index(d));
  }

 private:
  int64_t index(int64_t d) const { return documents_.empty() ? d : documents_[d]; }

  IndexedDataset dataset_;
  std::vector<int64_t> documents_;  // the non-empty documents, when some are empty
};

class BlendedCorpus : public Corpus {
 public:
  BlendedCorpus(std::vector<std::unique_ptr<Corpus>> corpora, const std::vector<double>& weights)
      : corpora_(std::move(corpora)), taken_(corpora_.size(), 0) {
    CADRE_CHECK(!corpora_.empty() && corpora_.size() == weights.size() &&
                    corpora_.size() <= std::numeric_limits<uint16_t>::max(),
                "a blend needs 1 to 65535 corpora, one weight each; got ", corpora_.size(),
                " corpora and ", weights.size(), " weights");
    double total = 0;
    for (double w : weights) {
      CADRE_CHECK(w > 0 && std::isfinite(w), "blend weight ", w, " is not positive");
      total += w;
    }
    for (double w : weights) shares_.push_back(w / total);
  }
  // A blend has no end of its own: each corpus wraps around separately.
  int64_t size() const override { return std::numeric_limits<int64_t>::max() / 4; }
  int64_t length(int64_t d) const override {
    const auto [k, local] = locate(d);
    return corpora_[k]->length(local);
  }
  void read(int64_t d, int64_t offset, int64_t count, int64_t* out) const override {
    const auto [k, local] = locate(d);
    corpora_[k]->read(local, offset, count, out);
  }
  std::string describe(int64_t d) const override {
    const auto [k, local] = locate(d);
    return corpora_[k]->describe(local);
  }

 private:
  // Blend document d -> (corpus, its document). The schedule is extended on demand, always from
  // position 0, so it is the same whatever order documents are asked for in (a resumed run
  // rebuilds it up to its saved position).
  std::pair<size_t, int64_t> locate(int64_t d) const {
    CADRE_CHECK(d >= 0, "blend document ", d, " is negative");
    while (static_cast<int64_t>(which_.size()) <= d) {
      const double next = static_cast<double>(which_.size() + 1);
      size_t best = 0;
      double best_gap = -std::numeric_limits<double>::infinity();
      for (size_t k = 0; k < corpora_.size(); ++k) {
        const double gap = shares_[k] * next - static_cast<double>(taken_[k]);
        if (gap > best_gap) {
          best_gap = gap;
          best = k;
        }
      }
      which_.push_back(static_cast<uint16_t>(best));
      rank_.push_back(taken_[best]++);
    }
    const size_t k = which_[d];
    return {k, rank_[d] % corpora_[k]->size()};
  }

  std::vector<std::unique_ptr<Corpus>> corpora_;
  std::vector<double> shares_;
  mutable std::vector<int64_t> taken_;
  mutable std::vector<uint16_t> which_;
  mutable std::vector<int64_t> rank_;
};


}  // namespace

std::unique_ptr<Corpus> open_token_file_corpus(const std::string& path, const std::string& dtype,
                                               uint32_t eod_token) {
  return std::make_unique<TokenFileCorpus>(path, dtype, eod_token);
}

std::unique_ptr<Corpus> open_indexed_dataset_corpus(const std::string& prefix) {
  return std::make_unique<IndexedDatasetCorpus>(prefix);
}

std::unique_ptr<Corpus> blend_corpora(std::vector<std::unique_ptr<Corpus>> corpora,
                                      const std::vector<double>& weights) {
  return std::make_unique<BlendedCorpus>(std::move(corpora), weights);
}


std::unique_ptr<Corpus> open_corpus(const config::DataConfig& data) {
  if (data.format() == "megatron") {
    const auto sources = megatron_sources(data);
    if (sources.size() == 1) return open_indexed_dataset_corpus(sources[0].prefix);
    std::vector<std::unique_ptr<Corpus>> corpora;
    std::vector<double> weights;
    for (const auto& s : sources) {
      corpora.push_back(open_indexed_dataset_corpus(s.prefix));
      weights.push_back(s.weight);
    }
    return blend_corpora(std::move(corpora), weights);
  }
  CADRE_CHECK(data.format() == "tokens", "data.format=\"", data.format(),
              "\" is not a known name; accepted: tokens, megatron");
  if (data.token_file().empty()) return nullptr;
  return open_token_file_corpus(data.token_file(), data.token_dtype(), data.eod_token());
}

}  // namespace cadre::runtime
