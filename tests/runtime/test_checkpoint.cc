// Checkpoint files: round trip, atomic replacement, keep-last-K, and rejection of corrupt,
// foreign or newer files. Also the data loader's determinism and position, which checkpoints save.
#include <gtest/gtest.h>
#include <torch/types.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "tests/temp_dir.h"
#include "common/error.h"
#include "common/posix_fs.h"
#include "runtime/checkpoint.h"
#include "runtime/data.h"

namespace cadre::runtime {
namespace {

namespace fs = std::filesystem;

using cadre::testing::TempDir;

CheckpointState sample_state(int64_t step) {
  CheckpointState s;
  s.counters["step"] = step;
  s.counters["data.batches"] = -7;
  s.tensors.emplace_back("model/w", torch::randn({3, 4}));
  s.tensors.emplace_back("x64", torch::randn({2}, torch::kDouble));
  s.tensors.emplace_back("i", torch::arange(5, torch::kLong));
  s.tensors.emplace_back("empty", torch::zeros({0, 3}));
  s.tensors.emplace_back("scalar", torch::tensor(2.5f));
  return s;
}

TEST(Checkpoint, RoundTrip) {
  TempDir dir;
  const std::string path = checkpoint_path(dir.path(), 3);
  auto state = sample_state(3);
  write_checkpoint(path, state);
  auto back = read_checkpoint(path);
  EXPECT_EQ(back.counters, state.counters);
  ASSERT_EQ(back.tensors.size(), state.tensors.size());
  for (size_t i = 0; i < state.tensors.size(); ++i) {
    EXPECT_EQ(back.tensors[i].first, state.tensors[i].first);
    EXPECT_TRUE(torch::equal(back.tensors[i].second, state.tensors[i].second))
        << state.tensors[i].first;
  }
}

TEST(Checkpoint, ReplacesAtomicallyAndLeavesNoTemporaryFiles) {
  TempDir dir;
  const std::string path = checkpoint_path(dir.path(), 1);
  write_checkpoint(path, sample_state(1));
  write_checkpoint(path, sample_state(2));
  EXPECT_EQ(read_checkpoint(path).counters.at("step"), 2);
  const auto names = posix_fs::list_directory(dir.path());
  ASSERT_EQ(names.size(), 1u);
  EXPECT_EQ(dir.path() + "/" + names[0], path);
  // A write that cannot happen throws and leaves the old file intact.
  EXPECT_THROW(write_checkpoint(dir.path() + "/missing/dir/x.ckpt", sample_state(9)), Error);
  EXPECT_EQ(read_checkpoint(path).counters.at("step"), 2);
}

TEST(Checkpoint, KeepsTheLastK) {
  TempDir dir;
  for (int64_t step = 1; step <= 5; ++step) save_checkpoint(dir.path(), step, sample_state(step), 2);
  auto kept = list_checkpoints(dir.path());
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[0], checkpoint_path(dir.path(), 4));
  EXPECT_EQ(kept[1], checkpoint_path(dir.path(), 5));
  std::ofstream(dir.path() + "/notes.txt") << "not a checkpoint";
  EXPECT_EQ(list_checkpoints(dir.path()).size(), 2u);
  EXPECT_TRUE(list_checkpoints(dir.path() + "/nothing").empty());
  EXPECT_THROW(save_checkpoint(dir.path(), 6, sample_state(6), 0), Error);
}

TEST(Checkpoint, RejectsCorruptForeignAndNewerFiles) {
  TempDir dir;
  const std::string path = checkpoint_path(dir.path(), 1);
  write_checkpoint(path, sample_state(1));
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto write_bytes = [&](const std::string& b) { std::ofstream(path, std::ios::binary) << b; };
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x40;
  write_bytes(flipped);
  EXPECT_THROW(read_checkpoint(path), Error);
  write_bytes(bytes.substr(0, bytes.size() - 20));
  EXPECT_THROW(read_checkpoint(path), Error);
  std::string newer = bytes;
  newer[8] = 2;  // version field follows the 8-byte magic
  write_bytes(newer);
  try {
    read_checkpoint(path);
    FAIL() << "a version-2 file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("version"), std::string::npos) << e.message();
  }
  write_bytes("not a checkpoint at all");
  EXPECT_THROW(read_checkpoint(path), Error);
  EXPECT_THROW(read_checkpoint(dir.path() + "/absent.ckpt"), Error);
}

config::DataConfig synthetic_data() {
  config::DataConfig d;
  d.set_distribution("uniform");
  d.set_uniform_min_tokens(4);
  d.set_uniform_max_tokens(40);
  d.set_context_length(64);
  d.set_seed(5);
  return d;
}

TEST(Data, SyntheticBatchesFitTheBudgetAndFollowTheTask) {
  DataLoader loader(synthetic_data(), 32, 1, 2);
  auto table = successor_table(32, 5);
  for (int step = 0; step < 5; ++step) {
    auto batch = loader.next();
    ASSERT_FALSE(batch.doc_lengths.empty());
    EXPECT_LE(batch.token_count(), 64);
    EXPECT_EQ(batch.tokens.numel(), batch.token_count());
    int64_t begin = 0;
    for (int64_t n : batch.doc_lengths) {
      for (int64_t i = begin; i + 1 < begin + n; ++i) {
        EXPECT_EQ(batch.tokens[i + 1].item<int64_t>(), table[batch.tokens[i].item<int64_t>()]);
      }
      begin += n;
    }
  }
}

TEST(Data, DeterministicAndRestorable) {
  DataLoader a(synthetic_data(), 32, 0, 2), b(synthetic_data(), 32, 0, 2);
  auto first_a = a.next(), first_b = b.next();
  EXPECT_EQ(first_a.doc_lengths, first_b.doc_lengths);
  EXPECT_TRUE(torch::equal(first_a.tokens, first_b.tokens));
  const DataPosition at_one = a.position();
  EXPECT_EQ(at_one.batches, 1);
  auto second = a.next();
  a.next();
  a.restore(at_one);
  auto again = a.next();
  EXPECT_EQ(again.doc_lengths, second.doc_lengths);
  EXPECT_TRUE(torch::equal(again.tokens, second.tokens));
  // Another rank draws other documents.
  DataLoader other_rank(synthetic_data(), 32, 1, 2);
  auto theirs = other_rank.next();
  EXPECT_FALSE(theirs.doc_lengths == first_a.doc_lengths &&
               torch::equal(theirs.tokens, first_a.tokens));
}

TEST(Data, TokenFileDocumentsAreSplitAndDealtToRanks) {
  TempDir dir;
  const std::string path = dir.path() + "/tokens.bin";
  // Documents [1 2 3], [4 5], [6 7 8 9 10 11] separated by eod 0 (uint16, little-endian).
  std::vector<uint16_t> tokens = {1, 2, 3, 0, 4, 5, 0, 0, 6, 7, 8, 9, 10, 11, 0};
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  auto docs = load_token_file(path, "uint16", 0);
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[2].size(), 6u);
  config::DataConfig d;
  d.set_token_file(path);
  d.set_context_length(5);
  DataLoader rank0(d, 16, 0, 2), rank1(d, 16, 1, 2);
  // Step 1: rank 0 gets [1 2 3] + [4 5]; rank 1 gets [6..10] (cut to the budget).
  auto b0 = rank0.next(), b1 = rank1.next();
  EXPECT_EQ(b0.doc_lengths, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(b1.doc_lengths, (std::vector<int64_t>{5}));
  EXPECT_EQ(b1.tokens[0].item<int64_t>(), 6);
  EXPECT_EQ(rank0.position().file_document, 0);  // wrapped around
  EXPECT_THROW(DataLoader(d, 8, 0, 1), Error);   // token 11 >= vocab 8
  d.set_token_dtype("int8");
  EXPECT_THROW(DataLoader(d, 16, 0, 1), Error);
  d.set_token_dtype("uint16");
  d.set_packing("tight");
  EXPECT_THROW(DataLoader(d, 16, 0, 1), Error);
}

// packing "fill": every rank gets exactly the budget; the document crossing a budget's end is cut
// and its rest opens the next rank's budget, or the next step's.
// A uint16 token file of documents [1 2 3], [4 5], [6 7 8 9 10 11] in `dir`, read with a
// 4-token budget and `packing`.
config::DataConfig three_documents(const TempDir& dir, const std::string& packing) {
  const std::string path = dir.path() + "/tokens.bin";
  std::vector<uint16_t> tokens = {1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 10, 11, 0};
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  config::DataConfig d;
  d.set_token_file(path);
  d.set_context_length(4);
  d.set_packing(packing);
  return d;
}

TEST(Data, TokenFileFillCutsDocumentsAtBudgetsAndLosesNoToken) {
  TempDir dir;
  config::DataConfig d = three_documents(dir, "fill");
  DataLoader rank0(d, 16, 0, 2), rank1(d, 16, 1, 2);
  auto values = [](const RankBatch& b) {
    std::vector<int64_t> v(b.tokens.data_ptr<int64_t>(),
                           b.tokens.data_ptr<int64_t>() + b.tokens.numel());
    return v;
  };
  // Hand-dealt: step 1 rank 0 [1 2 3][4], rank 1 [5][6 7 8]; step 2 rank 0 [9 10 11][1],
  // rank 1 [2 3][4 5]; step 3 rank 0 [6 7 8 9] ...
  auto a0 = rank0.next(), a1 = rank1.next();
  EXPECT_EQ(a0.doc_lengths, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(values(a0), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(a1.doc_lengths, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(values(a1), (std::vector<int64_t>{5, 6, 7, 8}));
  EXPECT_EQ(rank0.position().file_document, 2);
  EXPECT_EQ(rank0.position().file_token_offset, 3);
  const DataPosition saved = rank1.position();
  auto b0 = rank0.next(), b1 = rank1.next();
  EXPECT_EQ(b0.doc_lengths, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(values(b0), (std::vector<int64_t>{9, 10, 11, 1}));
  EXPECT_EQ(b1.doc_lengths, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(values(b1), (std::vector<int64_t>{2, 3, 4, 5}));
  auto c0 = rank0.next();
  EXPECT_EQ(values(c0), (std::vector<int64_t>{6, 7, 8, 9}));
  // Restoring mid-document replays the same tokens.
  rank1.restore(saved);
  auto again = rank1.next();
  EXPECT_EQ(again.doc_lengths, b1.doc_lengths);
  EXPECT_EQ(values(again), values(b1));
  // A position outside the file (another file's checkpoint) is refused.
  rank1.restore({5, 2, 7});
  EXPECT_THROW(rank1.next(), Error);
}

// packing "span": dealt like "fill", and the batches say where documents cross rank boundaries.
TEST(Data, TokenFileSpanMarksDocumentsCutBetweenRanks) {
  TempDir dir;
  config::DataConfig d = three_documents(dir, "span");  // three ranks below
  DataLoader r0(d, 16, 0, 3), r1(d, 16, 1, 3), r2(d, 16, 2, 3);
  // Step 1: rank 0 [1 2 3][4 ->], rank 1 [-> 5][6 7 8 ->], rank 2 [-> 9 10 11][1 (last rank:
  // not marked; the rest starts step 2 as a document of its own)].
  RankBatch a = r0.next(), b = r1.next(), c = r2.next();
  EXPECT_EQ(a.doc_lengths, (std::vector<int64_t>{3, 1}));
  EXPECT_FALSE(a.first_continues);
  EXPECT_TRUE(a.last_continues);
  EXPECT_EQ(a.last_target, 5);
  EXPECT_EQ(b.doc_lengths, (std::vector<int64_t>{1, 3}));
  EXPECT_TRUE(b.first_continues);
  EXPECT_EQ(b.first_offset, 1);
  EXPECT_TRUE(b.last_continues);
  EXPECT_EQ(b.last_target, 9);
  EXPECT_EQ(c.doc_lengths, (std::vector<int64_t>{3, 1}));
  EXPECT_TRUE(c.first_continues);
  EXPECT_EQ(c.first_offset, 3);
  EXPECT_FALSE(c.last_continues);
  // Step 2 starts inside [1 2 3] (offset 1): for rank 0 that is a document of its own; [4 5]
  // ends exactly at rank 0's budget, so rank 1 starts a new document [6 7 8 9 ->].
  RankBatch a2 = r0.next(), b2 = r1.next();
  EXPECT_EQ(a2.doc_lengths, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(a2.tokens[0].item<int64_t>(), 2);
  EXPECT_FALSE(a2.first_continues);
  EXPECT_FALSE(a2.last_continues);
  EXPECT_EQ(b2.doc_lengths, (std::vector<int64_t>{4}));
  EXPECT_FALSE(b2.first_continues);
  EXPECT_TRUE(b2.last_continues);
  EXPECT_EQ(b2.last_target, 10);
}

TEST(Data, SyntheticFillGivesEveryRankTheBudgetFromOneStream) {
  config::DataConfig d = synthetic_data();
  d.set_packing("fill");
  auto table = successor_table(32, 5);
  constexpr int kRanks = 3;
  std::vector<DataLoader> loaders;
  for (int r = 0; r < kRanks; ++r) loaders.emplace_back(d, 32, r, kRanks);
  int continued_boundaries = 0;
  for (int step = 0; step < 4; ++step) {
    std::vector<RankBatch> batches;
    for (auto& loader : loaders) batches.push_back(loader.next());
    for (int r = 0; r < kRanks; ++r) {
      const RankBatch& b = batches[r];
      EXPECT_EQ(b.token_count(), 64);
      EXPECT_EQ(b.tokens.numel(), 64);
      int64_t begin = 0;
      for (int64_t n : b.doc_lengths) {
        EXPECT_GE(n, 1);
        for (int64_t i = begin; i + 1 < begin + n; ++i) {
          EXPECT_EQ(b.tokens[i + 1].item<int64_t>(), table[b.tokens[i].item<int64_t>()]);
        }
        begin += n;
      }
      // A document cut at the end of rank r continues on rank r + 1 (same successor chain):
      // whole documents are at most 40 tokens, so a first piece longer than the gap is a rest.
      if (r + 1 < kRanks) {
        const RankBatch& next = batches[r + 1];
        const int64_t last = b.tokens[63].item<int64_t>();
        const int64_t first = next.tokens[0].item<int64_t>();
        const bool continued = first == table[last];
        const bool whole_end = b.doc_lengths.back() + next.doc_lengths.front() > 40;
        if (whole_end) {
          EXPECT_TRUE(continued) << "rank " << r << " step " << step;
        }
        continued_boundaries += continued;
      }
    }
  }
  // Documents of 4-40 tokens rarely end exactly at a budget's end: most of the 8 boundaries cut.
  EXPECT_GE(continued_boundaries, 6);
  // Deterministic: a fresh loader gives rank 1's first batch again.
  DataLoader fresh(d, 32, 1, kRanks);
  DataLoader reference(d, 32, 1, kRanks);
  EXPECT_TRUE(torch::equal(fresh.next().tokens, reference.next().tokens));
}

}  // namespace
}  // namespace cadre::runtime
