// Plan bookkeeping: sequential packing, derived transfers and batches, validation, round trip.
#include <gtest/gtest.h>

#include <random>

#include "common/error.h"
#include "scheduler/plan.h"

namespace cadre::scheduler {
namespace {

TEST(CausalPairs, HandComputed) {
  EXPECT_EQ(causal_pairs(0, 1), 1);
  EXPECT_EQ(causal_pairs(0, 4), 10);       // 1+2+3+4
  EXPECT_EQ(causal_pairs(2, 4), 3 + 4);    // queries 2,3 see 3 and 4 keys
  EXPECT_EQ(causal_pairs(0, 4), causal_pairs(0, 2) + causal_pairs(2, 4));
}

TEST(PackSequential, SplitsAtChunkBoundariesAndTruncatesTheLastDocument) {
  Layout layout = pack_sequential({5, 2, 7, 9}, 2, 8);
  ASSERT_EQ(layout.documents.size(), 4u);
  EXPECT_EQ(layout.tokens_per_rank, (std::vector<int64_t>{8, 8}));
  // doc 0: rank 0 rows 0..5; doc 1: rank 0 rows 5..7; doc 2: 1 token on rank 0, 6 on rank 1.
  ASSERT_EQ(layout.documents[2].pieces.size(), 2u);
  EXPECT_EQ(layout.documents[2].pieces[0].rank, 0);
  EXPECT_EQ(layout.documents[2].pieces[0].local_row, 7);
  EXPECT_EQ(layout.documents[2].pieces[0].doc_end, 1);
  EXPECT_EQ(layout.documents[2].pieces[1].rank, 1);
  EXPECT_EQ(layout.documents[2].pieces[1].local_row, 0);
  EXPECT_EQ(layout.documents[2].pieces[1].doc_end, 7);
  // doc 3 gets the 2 tokens left on rank 1.
  EXPECT_EQ(layout.documents[3].length_tokens, 2);
  EXPECT_EQ(layout.documents[3].pieces[0].local_row, 6);
  Layout full = pack_sequential({5, 2, 7, 9}, 2, 10);
  EXPECT_EQ(full.documents.back().length_tokens, 20 - 14);
}

TEST(FinalizePlan, SpanningDocumentTransfersByHand) {
  // One document of 6 tokens: rows 0..3 on rank 0, rows 0..2 (tokens 4,5) on rank 1.
  Layout layout = pack_sequential({6}, 2, 4);
  Plan plan;
  plan.layout = layout;
  plan.world_size = 2;
  plan.server_ranks = {0, 1};
  plan.tasks = {{0, 0, 3, 1}, {0, 3, 6, 0}};  // head to server 1, tail to server 0
  finalize_plan(plan);
  // Server 0 computes queries [3,6): needs Q rows 3 (rank 0) and 4,5 (rank 1), K/V [0,6).
  const ServerBatch& b0 = plan.batches[0];
  EXPECT_EQ(b0.q_rows, 3);
  EXPECT_EQ(b0.kv_rows, 6);
  EXPECT_EQ(b0.cu_seqlens_q, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(b0.cu_seqlens_k, (std::vector<int64_t>{0, 6}));
  // Server 1 computes queries [0,3) with K/V [0,3), all from rank 0.
  EXPECT_EQ(plan.batches[1].kv_rows, 3);
  ASSERT_EQ(plan.transfers.size(), 3u);  // (0->0), (0->1), (1->0)
  const PeerTransfer& t00 = plan.transfers[0];
  EXPECT_EQ(t00.owner, 0);
  EXPECT_EQ(t00.server, 0);
  ASSERT_EQ(t00.q.size(), 1u);
  EXPECT_EQ(t00.q[0].src_row, 3);
  EXPECT_EQ(t00.q[0].dst_row, 0);
  EXPECT_EQ(t00.q[0].rows, 1);
  EXPECT_EQ(t00.kv_rows(), 4);
  const PeerTransfer& t10 = plan.transfers[2];
  EXPECT_EQ(t10.owner, 1);
  EXPECT_EQ(t10.q[0].src_row, 0);
  EXPECT_EQ(t10.q[0].dst_row, 1);
  EXPECT_EQ(t10.q[0].rows, 2);
  EXPECT_EQ(t10.kv[0].dst_row, 4);
  EXPECT_EQ(t10.kv[0].rows, 2);
  EXPECT_NO_THROW(validate_plan(plan));
}

// A random plan: random lengths, sequential packing, random splits, random servers.
Plan random_plan(std::mt19937_64& rng, int32_t ranks, int32_t servers) {
  std::vector<int64_t> lengths;
  for (int i = 0; i < 12; ++i) lengths.push_back(1 + rng() % 40);
  Plan plan;
  plan.layout = pack_sequential(lengths, ranks, 30);
  plan.world_size = ranks + (servers > ranks ? servers - ranks : 0);
  for (int32_t s = 0; s < servers; ++s) plan.server_ranks.push_back(s % plan.world_size);
  for (int32_t d = 0; d < static_cast<int32_t>(plan.layout.documents.size()); ++d) {
    const int64_t len = plan.layout.documents[d].length_tokens;
    int64_t begin = 0;
    while (begin < len) {
      const int64_t end = std::min<int64_t>(len, begin + 1 + rng() % 17);
      plan.tasks.push_back({d, begin, end, static_cast<int32_t>(rng() % servers)});
      begin = end;
    }
  }
  finalize_plan(plan);
  return plan;
}

TEST(FinalizePlan, RandomPlansMoveEveryNeededRowExactlyOnce) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const int32_t ranks = 1 + rng() % 4;
    Plan plan = random_plan(rng, ranks, ranks);
    const auto& docs = plan.layout.documents;
    for (size_t s = 0; s < plan.batches.size(); ++s) {
      const ServerBatch& batch = plan.batches[s];
      // Which (owner rank, local row) fills each Q row and K/V row of this server.
      std::vector<std::pair<int32_t, int64_t>> q_src(batch.q_rows, {-1, -1});
      std::vector<std::pair<int32_t, int64_t>> kv_src(batch.kv_rows, {-1, -1});
      for (const PeerTransfer& tr : plan.transfers) {
        if (tr.server != static_cast<int32_t>(s)) continue;
        for (const RowSegment& seg : tr.q)
          for (int64_t i = 0; i < seg.rows; ++i) {
            ASSERT_EQ(q_src[seg.dst_row + i].first, -1) << "Q row written twice";
            q_src[seg.dst_row + i] = {tr.owner, seg.src_row + i};
          }
        for (const RowSegment& seg : tr.kv)
          for (int64_t i = 0; i < seg.rows; ++i) {
            ASSERT_EQ(kv_src[seg.dst_row + i].first, -1) << "K/V row written twice";
            kv_src[seg.dst_row + i] = {tr.owner, seg.src_row + i};
          }
      }
      auto where = [&](int32_t d, int64_t token) {
        for (const DocumentPiece& p : docs[d].pieces)
          if (token >= p.doc_begin && token < p.doc_end)
            return std::make_pair(p.rank, p.local_row + token - p.doc_begin);
        return std::make_pair(-1, int64_t{-1});
      };
      for (size_t i = 0; i < batch.tasks.size(); ++i) {
        const CaTask& task = plan.tasks[batch.tasks[i]];
        for (int64_t tok = task.q_begin; tok < task.q_end; ++tok)
          ASSERT_EQ(q_src[batch.q_row[i] + tok - task.q_begin], where(task.document, tok));
        const KvPrefix& prefix = batch.prefixes[batch.kv_prefix[i]];
        ASSERT_EQ(prefix.document, task.document);
        ASSERT_GE(prefix.prefix_tokens, task.q_end);
        for (int64_t tok = 0; tok < task.q_end; ++tok)
          ASSERT_EQ(kv_src[prefix.kv_row + tok], where(task.document, tok));
      }
    }
  }
}

TEST(SerializePlan, RoundTripAndDeterminism) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 20; ++trial) {
    Plan plan = random_plan(rng, 3, 5);
    const std::string bytes = serialize_plan(plan);
    Plan back = deserialize_plan(bytes);
    EXPECT_EQ(serialize_plan(back), bytes);
    EXPECT_NO_THROW(validate_plan(back));
  }
}

TEST(SerializePlan, CorruptBytesAreRejected) {
  std::mt19937_64 rng(3);
  Plan plan = random_plan(rng, 2, 2);
  std::string bytes = serialize_plan(plan);
  try {
    deserialize_plan(bytes.substr(0, bytes.size() / 2));
    FAIL() << "truncated plan accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("plan"), std::string::npos) << e.what();
  }
  EXPECT_THROW(deserialize_plan("not a plan at all"), Error);
}

TEST(ValidatePlan, NamesTheViolation) {
  Plan plan = plan_colocated(pack_sequential({5, 3}, 2, 4));
  Plan gap = plan;
  gap.tasks.pop_back();
  try {
    finalize_plan(gap);
    FAIL() << "a plan missing query tokens was accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("not covered"), std::string::npos) << e.message();
  }
  Plan bad_server = plan;
  bad_server.tasks[0].server = 9;
  try {
    finalize_plan(bad_server);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("server 9"), std::string::npos) << e.message();
  }
  Plan stale = plan;
  stale.tasks[0].server = 1;  // tasks changed, derived layouts not
  EXPECT_THROW(validate_plan(stale), Error);
}

TEST(PlanColocated, EveryPieceStaysWithItsOwner) {
  Plan plan = plan_colocated(pack_sequential({3, 8, 1, 6}, 3, 6));
  for (const CaTask& task : plan.tasks) {
    const auto& pieces = plan.layout.documents[task.document].pieces;
    bool owner_match = false;
    for (const DocumentPiece& p : pieces) {
      if (p.doc_begin == task.q_begin && p.doc_end == task.q_end) owner_match = p.rank == task.server;
    }
    EXPECT_TRUE(owner_match);
  }
  for (const PeerTransfer& tr : plan.transfers) {
    if (tr.owner != tr.server) EXPECT_TRUE(tr.q.empty()) << "colocated plans never move queries";
  }
}

}  // namespace
}  // namespace cadre::scheduler
