// CAD planner properties on random inputs: coverage, balance, shard sizes, determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "common/error.h"
#include "scheduler/doc_lengths.h"
#include "scheduler/planner.h"
#include "tests/scheduler/test_models.h"

namespace cadre::scheduler {
namespace {

using testing::llama8b;

std::vector<int64_t> wlb_like(std::mt19937_64& rng, int64_t total_tokens) {
  config::DataConfig data;  // distribution "wlb" by default
  return draw_global_batch(data, total_tokens, rng());
}

std::vector<int64_t> prolong_like(std::mt19937_64& rng, int64_t total_tokens) {
  config::DataConfig data;
  data.set_distribution("prolong");
  return draw_global_batch(data, total_tokens, rng());
}

std::vector<int32_t> all_ranks(int32_t n) {
  std::vector<int32_t> r(n);
  for (int32_t i = 0; i < n; ++i) r[i] = i;
  return r;
}

void expect_valid(const Plan& plan, const PlannerOptions& options) {
  EXPECT_NO_THROW(validate_plan(plan));  // coverage exactly once, prefixes present
  for (const CaTask& t : plan.tasks) {
    const int64_t len = plan.layout.documents[t.document].length_tokens;
    const bool whole_piece_or_doc = t.q_end - t.q_begin == len;
    bool is_piece = false;
    for (const DocumentPiece& p : plan.layout.documents[t.document].pieces) {
      is_piece |= (p.doc_begin == t.q_begin && p.doc_end == t.q_end);
    }
    if (!whole_piece_or_doc && !is_piece) {
      EXPECT_GE(t.q_end - t.q_begin, options.min_shard_tokens)
          << "shard [" << t.q_begin << ", " << t.q_end << ") of document " << t.document;
    }
  }
}

double server_imbalance(const Plan& plan, const CostModel& cost) {
  std::vector<double> load(plan.server_ranks.size(), 0);
  for (const CaTask& t : plan.tasks) {
    load[t.server] += cost.attention_forward_us(t.q_end - t.q_begin, t.q_end) +
                      cost.attention_backward_us(t.q_end - t.q_begin, t.q_end);
  }
  double total = 0, peak = 0;
  for (double l : load) {
    total += l;
    peak = std::max(peak, l);
  }
  return peak * load.size() / total;
}

TEST(PlanCad, BalancesRandomWlbAndProlongBatchesWithinTolerance) {
  CostModel cost(llama8b(), config::ClusterConfig(), default_calibration());
  PlannerOptions options;
  for (int32_t ranks : {2, 8, 32}) {
    for (uint64_t seed : {1, 2, 3, 4}) {
      std::mt19937_64 rng(seed * 100 + ranks);
      const int64_t context = 65536;
      Layout layout = pack_sequential(
          seed % 2 ? wlb_like(rng, ranks * context) : prolong_like(rng, ranks * context), ranks,
          context);
      PlanStats stats;
      Plan plan = plan_cad(layout, all_ranks(ranks), ranks, cost, options, &stats);
      expect_valid(plan, options);
      EXPECT_LE(stats.imbalance_after, 1.0 + options.tolerance + 1e-9)
          << ranks << " ranks, seed " << seed << ", before " << stats.imbalance_before;
      EXPECT_NEAR(stats.imbalance_after, server_imbalance(plan, cost), 1e-6);
      EXPECT_LE(stats.imbalance_after, stats.imbalance_before + 1e-9);
    }
  }
}

TEST(PlanCad, OneGiantDocumentSpanningAllRanksIsSpreadEvenly) {
  CostModel cost(llama8b(), config::ClusterConfig(), default_calibration());
  PlannerOptions options;
  Layout layout = pack_sequential({8 * 16384}, 8, 16384);
  PlanStats stats;
  Plan plan = plan_cad(layout, all_ranks(8), 8, cost, options, &stats);
  expect_valid(plan, options);
  EXPECT_GT(stats.imbalance_before, 1.5);  // the causal tail is far heavier than the head
  EXPECT_LE(stats.imbalance_after, 1.0 + options.tolerance + 1e-9);
  EXPECT_GT(stats.bytes_moved_total, 0);
}

TEST(PlanCad, WorkIsConservedAndPlansAreDeterministic) {
  CostModel cost(llama8b(), config::ClusterConfig(), default_calibration());
  std::mt19937_64 rng(5);
  Layout layout = pack_sequential(wlb_like(rng, 16 * 32768), 16, 32768);
  Plan a = plan_cad(layout, all_ranks(16), 16, cost, PlannerOptions());
  Plan b = plan_cad(layout, all_ranks(16), 16, cost, PlannerOptions());
  EXPECT_EQ(serialize_plan(a), serialize_plan(b));
  int64_t pairs_docs = 0, pairs_tasks = 0;
  for (const PlacedDocument& d : layout.documents) pairs_docs += causal_pairs(0, d.length_tokens);
  for (const CaTask& t : a.tasks) pairs_tasks += causal_pairs(t.q_begin, t.q_end);
  EXPECT_EQ(pairs_docs, pairs_tasks);
}

TEST(PlanCad, DedicatedServersReceiveAllWork) {
  CostModel cost(llama8b(), config::ClusterConfig(), default_calibration());
  std::mt19937_64 rng(9);
  Layout layout = pack_sequential(wlb_like(rng, 6 * 32768), 6, 32768);
  PlanStats stats;
  PlannerOptions options;
  Plan plan = plan_cad(layout, {6, 7, 8}, 9, cost, options, &stats);
  expect_valid(plan, options);
  EXPECT_LE(stats.imbalance_after, 1.0 + options.tolerance + 1e-9);
  for (const ServerBatch& b : plan.batches) EXPECT_GE(b.server_rank, 6);
}

// The planner's byte counts price a moved query row at Q + O (192 + 128 per head under MLA) and a
// moved K/V row at what the shipping mode sends (latent 576 values, expanded heads x 320).
TEST(PlanCad, BytesMovedPriceQueryAndKvRowsAsShipped) {
  std::mt19937_64 rng(11);
  Layout layout = pack_sequential(prolong_like(rng, 8 * 32768), 8, 32768);
  for (KvShipping shipping : {KvShipping::kLatent, KvShipping::kExpanded}) {
    const CostModel cost(testing::deepseek_v2_lite(), config::ClusterConfig(),
                         default_mha_calibration(), shipping);
    const int64_t query_row = 16 * (192 + 128) * 2;
    const int64_t kv_row = shipping == KvShipping::kLatent ? 576 * 2 : 16 * (192 + 128) * 2;
    PlanStats stats;
    Plan plan = plan_cad(layout, all_ranks(8), 8, cost, PlannerOptions(), &stats);
    expect_valid(plan, PlannerOptions());
    int64_t total = 0;
    for (const PeerTransfer& t : plan.transfers) {
      if (plan.server_ranks[t.server] != t.owner)
        total += t.q_rows() * query_row + t.kv_rows() * kv_row;
    }
    EXPECT_GT(total, 0);
    EXPECT_EQ(stats.bytes_moved_total, total);
  }
}

TEST(PlanCad, AwkwardLayouts) {
  CostModel cost(llama8b(), config::ClusterConfig(), default_calibration());
  PlannerOptions options;
  // Ranks with no documents, one-token documents, primes.
  Layout layout = layout_from_rank_documents({{1, 1, 1}, {}, {127, 129, 131}, {4099}, {}});
  Plan plan = plan_cad(layout, all_ranks(5), 5, cost, options);
  expect_valid(plan, options);
  // Empty batch.
  Layout empty = layout_from_rank_documents({{}, {}});
  Plan none = plan_cad(empty, all_ranks(2), 2, cost, options);
  EXPECT_TRUE(none.tasks.empty());
}

// Documents cut at rank boundaries (packing "span"): hand-built pieces, then a plan over them.
TEST(PlanCad, LayoutFromRankPiecesJoinsContinuations) {
  // Rank 0: [5][3 ->], rank 1: [-> 4 ->] (the middle of the same document), rank 2: empty,
  // rank 3: [-> 2][6]. Document 1 is 3 + 4 + 2 = 9 tokens over ranks 0, 1 and 3.
  Layout layout = layout_from_rank_pieces({{5, 3}, {4}, {}, {2, 6}}, {false, true, false, true});
  ASSERT_EQ(layout.documents.size(), 3u);
  EXPECT_EQ(layout.tokens_per_rank, (std::vector<int64_t>{8, 4, 0, 8}));
  const PlacedDocument& cut = layout.documents[1];
  EXPECT_EQ(cut.length_tokens, 9);
  ASSERT_EQ(cut.pieces.size(), 3u);
  EXPECT_EQ(cut.pieces[0].rank, 0);
  EXPECT_EQ(cut.pieces[0].doc_begin, 0);
  EXPECT_EQ(cut.pieces[0].local_row, 5);
  EXPECT_EQ(cut.pieces[1].rank, 1);
  EXPECT_EQ(cut.pieces[1].doc_begin, 3);
  EXPECT_EQ(cut.pieces[1].doc_end, 7);
  EXPECT_EQ(cut.pieces[1].local_row, 0);
  EXPECT_EQ(cut.pieces[2].rank, 3);
  EXPECT_EQ(cut.pieces[2].doc_begin, 7);
  EXPECT_EQ(cut.pieces[2].doc_end, 9);
  EXPECT_EQ(layout.documents[2].pieces[0].local_row, 2);
  CostModel cost(llama8b(), config::ClusterConfig(), default_calibration());
  PlannerOptions options;
  options.min_shard_tokens = 1;
  expect_valid(plan_cad(layout, all_ranks(4), 4, cost, options), options);
  validate_plan(plan_colocated(layout));
  // Nothing to continue, or a continuing rank without tokens.
  EXPECT_THROW(layout_from_rank_pieces({{}, {4}}, {false, true}), Error);
  EXPECT_THROW(layout_from_rank_pieces({{3}, {}}, {false, true}), Error);
  EXPECT_THROW(layout_from_rank_pieces({{3}}, {false, false}), Error);
}

TEST(PlanCad, BadOptionsAreRejected) {
  CostModel cost(llama8b(), config::ClusterConfig(), default_calibration());
  Layout layout = layout_from_rank_documents({{10}, {20}});
  PlannerOptions bad;
  bad.min_shard_tokens = 0;
  EXPECT_THROW(plan_cad(layout, all_ranks(2), 2, cost, bad), Error);
  EXPECT_THROW(plan_cad(layout, {}, 2, cost, PlannerOptions()), Error);
  EXPECT_THROW(plan_cad(layout, {0, 5}, 2, cost, PlannerOptions()), Error);
}

}  // namespace
}  // namespace cadre::scheduler
