// The planner under random inputs never yields an invalid plan: many seeds over rank counts,
// document lengths (1-token, primes, one giant, empty ranks, documents spanning ranks),
// tolerances, minimum shard sizes, node sizes and dedicated servers. Every plan passes the same
// validator that guards plans read from bytes (validate_plan / deserialize_plan), an independent
// coverage and cost check written here, a serialise round trip, and is deterministic.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "scheduler/planner.h"
#include "tests/scheduler/test_models.h"

namespace cadre::scheduler {
namespace {

struct Case {
  Layout layout;
  std::vector<int32_t> servers;
  int32_t world = 0;
  PlannerOptions options;
  std::string text;  // for failure messages
};

int64_t pick(std::mt19937_64& rng, const std::vector<int64_t>& values) {
  return values[rng() % values.size()];
}

Case random_case(uint64_t seed) {
  std::mt19937_64 rng(seed);
  Case c;
  const int32_t ranks = 1 + static_cast<int32_t>(rng() % 24);
  const int64_t context = pick(rng, {1, 2, 17, 128, 1000, 4096, 32768});
  const int shape = static_cast<int>(rng() % 3);
  if (shape == 0) {
    // One global batch packed back to back (documents cut at rank boundaries).
    std::vector<int64_t> lengths;
    int64_t total = 0;
    while (total < ranks * context) {
      int64_t n = rng() % 4 == 0 ? pick(rng, {1, 2, 3, 127, 128, 129, 131})
                                 : 1 + static_cast<int64_t>(rng() % (2 * context + 1));
      if (rng() % 16 == 0) n = ranks * context;  // one giant document over every rank
      lengths.push_back(n);
      total += n;
    }
    c.layout = pack_sequential(lengths, ranks, context);
  } else {
    // Per-rank documents, some ranks empty, some continuing their neighbour's last document.
    std::vector<std::vector<int64_t>> per_rank(ranks);
    std::vector<bool> continues(ranks, false);
    bool any = false;
    for (int32_t r = 0; r < ranks; ++r) {
      if (rng() % 5 == 0) continue;  // empty rank
      const int docs = 1 + static_cast<int>(rng() % 6);
      for (int d = 0; d < docs; ++d) per_rank[r].push_back(1 + static_cast<int64_t>(rng() % context));
      continues[r] = shape == 2 && any && rng() % 2 == 0;
      any = true;
    }
    c.layout = layout_from_rank_pieces(per_rank, continues);
  }
  c.options.tolerance = static_cast<double>(pick(rng, {1, 3, 10, 50})) / 100.0;
  c.options.min_shard_tokens = pick(rng, {1, 7, 32, 128, 1000});
  c.options.gpus_per_node = static_cast<int32_t>(pick(rng, {1, 2, 4, 8}));
  const bool dedicated = rng() % 4 == 0;
  if (dedicated) {
    const int32_t pool = 1 + static_cast<int32_t>(rng() % 4);
    for (int32_t s = 0; s < pool; ++s) c.servers.push_back(ranks + s);
    c.world = ranks + pool;
  } else {
    for (int32_t r = 0; r < ranks; ++r) c.servers.push_back(r);
    c.world = ranks;
  }
  c.text = "seed " + std::to_string(seed) + ": " + std::to_string(ranks) + " ranks, context " +
           std::to_string(context) + ", " + std::to_string(c.layout.documents.size()) +
           " documents, tolerance " + std::to_string(c.options.tolerance) + ", min shard " +
           std::to_string(c.options.min_shard_tokens) + ", gpus/node " +
           std::to_string(c.options.gpus_per_node) + (dedicated ? ", dedicated " : ", in place ") +
           std::to_string(c.servers.size()) + " servers";
  return c;
}

// Written here, independently of plan.cc: each document's queries are covered exactly once,
// every task is on a listed server, the causal work of the documents is conserved, and a split
// shard is at least min_shard_tokens (whole documents and whole pieces may be shorter).
void check_independently(const Case& c, const Plan& plan) {
  ASSERT_EQ(plan.server_ranks, c.servers) << c.text;
  const auto& docs = c.layout.documents;
  std::vector<std::vector<char>> covered(docs.size());
  int64_t pairs_docs = 0, pairs_tasks = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    covered[d].assign(docs[d].length_tokens, 0);
    pairs_docs += causal_pairs(0, docs[d].length_tokens);
  }
  for (const CaTask& t : plan.tasks) {
    ASSERT_GE(t.document, 0) << c.text;
    ASSERT_LT(t.document, static_cast<int32_t>(docs.size())) << c.text;
    ASSERT_GE(t.server, 0) << c.text;
    ASSERT_LT(t.server, static_cast<int32_t>(c.servers.size())) << c.text;
    ASSERT_GE(t.q_begin, 0) << c.text;
    ASSERT_LT(t.q_begin, t.q_end) << c.text;
    ASSERT_LE(t.q_end, docs[t.document].length_tokens) << c.text;
    for (int64_t q = t.q_begin; q < t.q_end; ++q) {
      ASSERT_EQ(covered[t.document][q]++, 0) << c.text << ": document " << t.document
                                              << " query " << q << " covered twice";
    }
    pairs_tasks += causal_pairs(t.q_begin, t.q_end);
    bool whole = t.q_end - t.q_begin == docs[t.document].length_tokens;
    for (const DocumentPiece& p : docs[t.document].pieces) {
      whole |= p.doc_begin == t.q_begin && p.doc_end == t.q_end;
    }
    if (!whole) {
      EXPECT_TRUE(t.q_end - t.q_begin >= c.options.min_shard_tokens)
          << c.text << ": shard [" << t.q_begin << ", " << t.q_end << ") of document "
          << t.document;
    }
  }
  for (size_t d = 0; d < docs.size(); ++d) {
    ASSERT_EQ(std::count(covered[d].begin(), covered[d].end(), 1),
              static_cast<long>(docs[d].length_tokens))
        << c.text << ": document " << d << " has uncovered queries";
  }
  EXPECT_EQ(pairs_docs, pairs_tasks) << c.text;
}

TEST(PlannerProperties, RandomInputsAlwaysGiveValidPlans) {
  const CostModel cost(testing::llama8b(), config::ClusterConfig(), default_calibration());
  constexpr int kSeeds = 2000;
  int with_splits = 0;
  for (uint64_t seed = 1; seed <= kSeeds; ++seed) {
    const Case c = random_case(seed);
    PlanStats stats;
    const Plan plan = plan_cad(c.layout, c.servers, c.world, cost, c.options, &stats);
    ASSERT_NO_THROW(validate_plan(plan)) << c.text;
    check_independently(c, plan);
    if (HasFatalFailure()) return;
    // The wire format carries it unchanged, and reading it back validates it again.
    const std::string bytes = serialize_plan(plan);
    Plan read;
    ASSERT_NO_THROW(read = deserialize_plan(bytes)) << c.text;
    EXPECT_EQ(serialize_plan(read), bytes) << c.text;
    // Deterministic.
    EXPECT_EQ(serialize_plan(plan_cad(c.layout, c.servers, c.world, cost, c.options)), bytes)
        << c.text;
    with_splits += stats.splits > 0;
  }
  // The sweep exercises the planner's splitting, not only the colocated start.
  EXPECT_GT(with_splits, kSeeds / 4);
}

}  // namespace
}  // namespace cadre::scheduler
