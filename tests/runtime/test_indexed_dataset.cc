// Megatron indexed datasets: files written by an independent writer here (the layout of
// Megatron-LM's indexed_dataset.py, written from its description) read back document by
// document; the loader packs them like token-file documents; blends follow their weights, are
// deterministic and resume from a saved position; bad files get errors naming the problem.
#include <gtest/gtest.h>
#include <torch/types.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <map>

#include "common/error.h"
#include "common/posix_fs.h"
#include "runtime/corpus.h"
#include "runtime/data.h"
#include "runtime/indexed_dataset.h"
#include "tests/expect_error.h"
#include "tests/temp_dir.h"

namespace cadre::runtime {
namespace {

using cadre::testing::TempDir;

using cadre::testing::expect_error;

// The independent writer: documents as lists of sequences of tokens, dtype code 8 (uint16),
// 4 (int32) or 1 (uint8).
using Document = std::vector<std::vector<int64_t>>;

void put(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

void write_megatron(const std::string& prefix, const std::vector<Document>& docs, int code = 8) {
  const int width = code == 8 ? 2 : code == 4 ? 4 : 1;
  std::string bin, idx = std::string("MMIDIDX\0\0", 9);
  std::vector<int64_t> lengths, pointers, doc_index = {0};
  for (const Document& d : docs) {
    for (const auto& seq : d) {
      pointers.push_back(static_cast<int64_t>(bin.size()));
      lengths.push_back(static_cast<int64_t>(seq.size()));
      for (int64_t t : seq) put(bin, static_cast<uint64_t>(t), width);
    }
    doc_index.push_back(static_cast<int64_t>(lengths.size()));
  }
  put(idx, 1, 8);
  put(idx, code, 1);
  put(idx, lengths.size(), 8);
  put(idx, doc_index.size(), 8);
  for (int64_t n : lengths) put(idx, static_cast<uint64_t>(n), 4);
  for (int64_t p : pointers) put(idx, static_cast<uint64_t>(p), 8);
  for (int64_t d : doc_index) put(idx, static_cast<uint64_t>(d), 8);
  std::ofstream(prefix + ".idx", std::ios::binary).write(idx.data(), idx.size());
  std::ofstream(prefix + ".bin", std::ios::binary).write(bin.data(), bin.size());
}

std::vector<int64_t> flat(const Document& d) {
  std::vector<int64_t> out;
  for (const auto& s : d) out.insert(out.end(), s.begin(), s.end());
  return out;
}

std::vector<int64_t> values(const RankBatch& b) {
  return {b.tokens.data_ptr<int64_t>(), b.tokens.data_ptr<int64_t>() + b.tokens.numel()};
}

TEST(IndexedDataset, ReadsDocumentsOfSeveralSequences) {
  TempDir dir;
  const std::string prefix = dir.path() + "/corpus_text_document";
  const std::vector<Document> docs = {
      {{1, 2, 3}}, {{4, 5}, {6}}, {}, {{7, 8, 9, 10, 11}}, {{60000, 65535}}};
  write_megatron(prefix, docs);
  IndexedDataset d(prefix);
  EXPECT_EQ(d.document_count(), 5);
  EXPECT_EQ(d.sequence_count(), 5);
  EXPECT_EQ(d.total_tokens(), 13);
  EXPECT_STREQ(d.dtype_name(), "uint16");
  for (int64_t i = 0; i < d.document_count(); ++i) {
    const auto expected = flat(docs[i]);
    ASSERT_EQ(d.document_tokens(i), static_cast<int64_t>(expected.size()));
    std::vector<int64_t> got(expected.size());
    d.read(i, 0, got.size(), got.data());
    EXPECT_EQ(got, expected) << "document " << i;
  }
  // A read starting inside the second sequence of a document.
  std::vector<int64_t> part(2);
  d.read(1, 1, 2, part.data());
  EXPECT_EQ(part, (std::vector<int64_t>{5, 6}));
  expect_error([&] { d.read(3, 4, 2, part.data()); }, {"out of range", "document 3"});
  // The corpus skips the empty document.
  auto corpus = open_indexed_dataset_corpus(prefix);
  EXPECT_EQ(corpus->size(), 4);
  EXPECT_EQ(corpus->length(2), 5);
  EXPECT_NE(corpus->describe(2).find("document 3"), std::string::npos);
}

TEST(IndexedDataset, Int32AndUint8Tokens) {
  TempDir dir;
  write_megatron(dir.path() + "/a", {{{100000, 7, 2000000000}}}, 4);
  IndexedDataset a(dir.path() + "/a");
  std::vector<int64_t> got(3);
  a.read(0, 0, 3, got.data());
  EXPECT_EQ(got, (std::vector<int64_t>{100000, 7, 2000000000}));
  write_megatron(dir.path() + "/b", {{{255, 0, 9}}}, 1);
  IndexedDataset b(dir.path() + "/b");
  b.read(0, 0, 3, got.data());
  EXPECT_EQ(got, (std::vector<int64_t>{255, 0, 9}));
  EXPECT_STREQ(b.dtype_name(), "uint8");
  // One sequence per document (lengths read from the index itself), one of them empty.
  write_megatron(dir.path() + "/c", {{{1}}, {{}}, {{2, 3}}});
  IndexedDataset c(dir.path() + "/c");
  EXPECT_EQ(c.document_count(), 3);
  EXPECT_EQ(c.document_tokens(1), 0);
  EXPECT_EQ(c.document_tokens(2), 2);
  EXPECT_EQ(c.total_tokens(), 3);
  auto corpus = open_indexed_dataset_corpus(dir.path() + "/c");
  ASSERT_EQ(corpus->size(), 2);
  EXPECT_EQ(corpus->length(1), 2);
  corpus->read(1, 0, 2, got.data());
  EXPECT_EQ(got[0], 2);
  EXPECT_EQ(got[1], 3);
  write_megatron(dir.path() + "/d", {{{}}, {}});
  expect_error([&] { open_indexed_dataset_corpus(dir.path() + "/d"); }, {"holds no token"});
}

TEST(IndexedDataset, BadFilesAreRefusedWithTheProblem) {
  TempDir dir;
  const std::string p = dir.path() + "/x";
  write_megatron(p, {{{1, 2, 3}}, {{4, 5}}});
  std::string idx;
  {
    std::ifstream in(p + ".idx", std::ios::binary);
    idx.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto rewrite = [&](const std::string& bytes) {
    std::ofstream(p + ".idx", std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
  };
  expect_error([&] { IndexedDataset d(dir.path() + "/missing"); },
               {"cannot open the index file", "missing.idx"});
  std::string bad = idx;
  bad[0] = 'X';
  rewrite(bad);
  expect_error([&] { IndexedDataset d(p); }, {"does not start with MMIDIDX"});
  bad = idx;
  bad[17] = 7;  // float32
  rewrite(bad);
  expect_error([&] { IndexedDataset d(p); }, {"dtype code 7", "floating point", "8 uint16"});
  bad = idx;
  bad[9] = 2;
  rewrite(bad);
  expect_error([&] { IndexedDataset d(p); }, {"version 2", "accepted: 1"});
  rewrite(idx.substr(0, idx.size() - 5));
  expect_error([&] { IndexedDataset d(p); }, {"is truncated", "3 document-index entries"});
  rewrite(idx.substr(0, 20));
  expect_error([&] { IndexedDataset d(p); }, {"is truncated", "34-byte header"});
  bad = idx;
  bad[idx.size() - 8] = 1;  // the document index now ends at sequence 1 of 2
  rewrite(bad);
  expect_error([&] { IndexedDataset d(p); }, {"ends at sequence 1", "2 sequences"});
  rewrite(idx);
  std::ofstream(p + ".bin", std::ios::binary | std::ios::trunc).write("\1\0\2\0", 4);
  expect_error([&] { IndexedDataset d(p); }, {"reaches past the end", "x.bin", "truncated"});
}

config::DataConfig megatron_data(const std::string& prefix, int64_t context) {
  config::DataConfig d;
  d.set_format("megatron");
  d.set_path(prefix);
  d.set_context_length(context);
  return d;
}

// The loader deals indexed-dataset documents exactly as it deals token-file documents.
TEST(IndexedDataset, LoaderDealsTheSameBatchesAsAnEquivalentTokenFile) {
  TempDir dir;
  const std::vector<Document> docs = {{{1, 2, 3}}, {{4, 5}}, {{6, 7}, {8, 9, 10, 11}}};
  write_megatron(dir.path() + "/m", docs);
  const std::string tokens_path = dir.path() + "/tokens.bin";
  {
    std::vector<uint16_t> t;
    for (const auto& d : docs) {
      for (int64_t x : flat(d)) t.push_back(static_cast<uint16_t>(x));
      t.push_back(0);
    }
    std::ofstream(tokens_path, std::ios::binary)
        .write(reinterpret_cast<char*>(t.data()), 2 * t.size());
  }
  for (const std::string packing : {"whole", "fill", "span"}) {
    config::DataConfig m = megatron_data(dir.path() + "/m", 4), f;
    m.set_packing(packing);
    f.set_token_file(tokens_path);
    f.set_context_length(4);
    f.set_packing(packing);
    for (int rank = 0; rank < 2; ++rank) {
      DataLoader a(m, 16, rank, 2), b(f, 16, rank, 2);
      for (int step = 0; step < 5; ++step) {
        const RankBatch x = a.next(), y = b.next();
        EXPECT_EQ(x.doc_lengths, y.doc_lengths) << packing << " rank " << rank << " step " << step;
        EXPECT_EQ(values(x), values(y)) << packing << " rank " << rank << " step " << step;
        EXPECT_EQ(x.last_target, y.last_target);
      }
    }
  }
  // Hand-dealt, packing whole, one rank of budget 5: [1 2 3] + [4 5] fill it exactly, then the
  // six-token document [6 7 | 8 9 10 11] (two sequences) is cut to the budget.
  DataLoader one(megatron_data(dir.path() + "/m", 5), 16, 0, 1);
  auto first = one.next();
  EXPECT_EQ(first.doc_lengths, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(values(first), (std::vector<int64_t>{1, 2, 3, 4, 5}));
  auto second = one.next();
  EXPECT_EQ(values(second), (std::vector<int64_t>{6, 7, 8, 9, 10}));
  // Tokens at or above the vocabulary are refused as they are read, naming the document.
  DataLoader small(megatron_data(dir.path() + "/m", 5), 9, 0, 1);
  small.next();
  expect_error([&] { small.next(); },
               {"Megatron dataset", "document 2", "holds token 9", "model.vocab_size is 9"});
}

TEST(IndexedDataset, BlendFollowsWeightsIsDeterministicAndResumes) {
  TempDir dir;
  // Dataset a: documents of token 1 (length 1 + i % 3); b: token 2; c: token 3.
  for (const auto& [name, token, count] : std::vector<std::tuple<std::string, int64_t, int>>{
           {"a", 1, 50}, {"b", 2, 7}, {"c", 3, 30}}) {
    std::vector<Document> docs;
    for (int i = 0; i < count; ++i) docs.push_back({std::vector<int64_t>(1 + i % 3, token)});
    write_megatron(dir.path() + "/" + name, docs);
  }
  config::DataConfig d;
  d.set_format("megatron");
  d.add_blend("0.5:" + dir.path() + "/a");
  d.add_blend("3:" + dir.path() + "/b");  // weights 0.5 : 3 : 1.5 -> 10% : 60% : 30%
  d.add_blend("1.5:" + dir.path() + "/c");
  d.set_context_length(3);
  auto corpus = open_corpus(d);
  EXPECT_GT(corpus->size(), int64_t{1} << 40);  // a blend does not end
  // Any prefix of the schedule is within one document of the weights per corpus.
  std::map<int64_t, int64_t> taken;
  for (int64_t i = 0; i < 400; ++i) {
    std::vector<int64_t> t(1);
    corpus->read(i, 0, 1, t.data());
    ++taken[t[0]];
    const double shares[] = {0.1, 0.6, 0.3};
    for (int k = 0; k < 3; ++k) {
      EXPECT_LE(std::abs(taken[k + 1] - shares[k] * (i + 1)), 1.0 + 1e-9) << "position " << i;
    }
  }
  // b has 7 documents and is taken 60% of the time: it wraps around, in order.
  std::vector<int64_t> b_lengths;
  for (int64_t i = 0; i < 40 && b_lengths.size() < 14; ++i) {
    std::vector<int64_t> t(1);
    corpus->read(i, 0, 1, t.data());
    if (t[0] == 2) b_lengths.push_back(corpus->length(i));
  }
  EXPECT_EQ(b_lengths, (std::vector<int64_t>{1, 2, 3, 1, 2, 3, 1, 1, 2, 3, 1, 2, 3, 1}));
  // Deterministic across loaders, and a restored position replays the same batches.
  d.set_packing("fill");
  DataLoader x(d, 8, 1, 2), y(d, 8, 1, 2);
  for (int step = 0; step < 3; ++step) EXPECT_EQ(values(x.next()), values(y.next()));
  const DataPosition saved = x.position();
  std::vector<std::vector<int64_t>> later;
  for (int step = 0; step < 4; ++step) later.push_back(values(x.next()));
  DataLoader resumed(d, 8, 1, 2);
  resumed.restore(saved);
  for (int step = 0; step < 4; ++step) EXPECT_EQ(values(resumed.next()), later[step]);
}

TEST(IndexedDataset, SourcesAreValidated) {
  TempDir dir;
  write_megatron(dir.path() + "/a", {{{1}}});
  config::DataConfig d;
  d.set_format("megatron");
  expect_error([&] { megatron_sources(d); }, {"needs data.path or data.blend"});
  d.set_path(dir.path() + "/a");
  d.add_blend("1:" + dir.path() + "/a");
  expect_error([&] { megatron_sources(d); }, {"both set"});
  d.clear_path();
  d.set_blend(0, "x:" + dir.path() + "/a");
  expect_error([&] { megatron_sources(d); }, {"data.blend[0]", "WEIGHT:PREFIX"});
  d.set_blend(0, "-1:" + dir.path() + "/a");
  expect_error([&] { megatron_sources(d); }, {"positive weight"});
  d.set_blend(0, "2:" + dir.path() + "/nothing");
  expect_error([&] { megatron_sources(d); }, {"data.blend[0]", "nothing.idx' does not exist"});
  d.set_blend(0, "2:" + dir.path() + "/a");
  const auto sources = megatron_sources(d);
  ASSERT_EQ(sources.size(), 1u);
  EXPECT_EQ(sources[0].weight, 2);
}

}  // namespace
}  // namespace cadre::runtime
