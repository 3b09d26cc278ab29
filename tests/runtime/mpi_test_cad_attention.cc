// CAD attention across ranks (MPI) against a single-process dense reference: outputs and all three
// gradients for random layouts and plans, exact byte counts, and errors that reach every rank.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <random>

#include "attention_server/dispatch.h"
#include "comm/mpi_transport.h"
#include "common/error.h"
#include "runtime/attention_op.h"
#include "tests/runtime/reference_attention.h"
#include "scheduler/planner.h"

namespace cadre::runtime {
namespace {

using scheduler::Layout;
using scheduler::Plan;

comm::Transport& world() {
  static std::unique_ptr<comm::Transport> transport = comm::make_mpi_transport(60);
  return *transport;
}

using testing::reference_attention;

struct Shapes {
  int64_t heads, kv_heads, dim;
};

// Runs CAD (or colocated) on every rank for `plan` and checks against the reference. All ranks
// build the same global tensors from the same seed.
void check_plan(const Plan& plan, const Shapes& shapes, uint64_t seed, bool colocated = false,
                torch::ScalarType dtype = torch::kDouble) {
  const int rank = world().rank();
  const Layout& layout = plan.layout;
  torch::manual_seed(seed);
  std::vector<torch::Tensor> gq, gk, gv, gg;  // per document: q, k, v, output gradient
  for (const auto& doc : layout.documents) {
    const int64_t n = doc.length_tokens;
    gq.push_back(torch::randn({n, shapes.heads, shapes.dim}, torch::kDouble).requires_grad_());
    gk.push_back(torch::randn({n, shapes.kv_heads, shapes.dim}, torch::kDouble).requires_grad_());
    gv.push_back(torch::randn({n, shapes.kv_heads, shapes.dim}, torch::kDouble).requires_grad_());
    gg.push_back(torch::randn({n, shapes.heads, shapes.dim}, torch::kDouble));
  }
  // This rank's local rows.
  const int64_t local = rank < layout.num_ranks ? layout.tokens_per_rank[rank] : 0;
  auto lq = torch::zeros({local, shapes.heads, shapes.dim}, torch::kDouble);
  auto lk = torch::zeros({local, shapes.kv_heads, shapes.dim}, torch::kDouble);
  auto lv = torch::zeros({local, shapes.kv_heads, shapes.dim}, torch::kDouble);
  auto lg = torch::zeros({local, shapes.heads, shapes.dim}, torch::kDouble);
  for (size_t d = 0; d < layout.documents.size(); ++d) {
    for (const auto& p : layout.documents[d].pieces) {
      if (p.rank != rank) continue;
      const int64_t len = p.doc_end - p.doc_begin;
      lq.narrow(0, p.local_row, len).copy_(gq[d].detach().narrow(0, p.doc_begin, len));
      lk.narrow(0, p.local_row, len).copy_(gk[d].detach().narrow(0, p.doc_begin, len));
      lv.narrow(0, p.local_row, len).copy_(gv[d].detach().narrow(0, p.doc_begin, len));
      lg.narrow(0, p.local_row, len).copy_(gg[d].narrow(0, p.doc_begin, len));
    }
  }
  lq = lq.to(dtype).requires_grad_();
  lk = lk.to(dtype).requires_grad_();
  lv = lv.to(dtype).requires_grad_();
  lg = lg.to(dtype);
  auto kernel = attention_server::make_kernel("cpu");
  auto op = colocated ? make_colocated_attention(layout, rank, *kernel)
                      : make_cad_attention(plan, world(), *kernel);
  auto out = (*op)(lq, lk, lv);
  (out * lg).sum().backward();

  for (size_t d = 0; d < layout.documents.size(); ++d) {
    auto ref = reference_attention(gq[d], gk[d], gv[d]);
    (ref * gg[d]).sum().backward();
    for (const auto& p : layout.documents[d].pieces) {
      if (p.rank != rank) continue;
      const int64_t len = p.doc_end - p.doc_begin;
      auto mine = [&](const torch::Tensor& t) {
        return t.narrow(0, p.local_row, len).to(torch::kDouble);
      };
      auto theirs = [&](const torch::Tensor& t) { return t.narrow(0, p.doc_begin, len); };
      // fp64: element-wise; fp32: relative error of the whole slice, with an absolute floor of
      // 1e-5 RMS per element for slices whose exact value is zero (1-token documents: dq = dk = 0).
      auto close = [&](const torch::Tensor& a, const torch::Tensor& b) {
        if (dtype == torch::kDouble) return torch::allclose(a, b, 1e-5, 1e-7);
        return (a - b).norm().item<double>() <=
               1e-5 * (b.norm().item<double>() + std::sqrt(static_cast<double>(b.numel())));
      };
      auto diff = [&](const torch::Tensor& a, const torch::Tensor& b) {
        return str_cat(": max diff ", (a - b).abs().max().item<double>(), " of ",
                       b.abs().max().item<double>());
      };
      EXPECT_TRUE(close(mine(out.detach()), theirs(ref.detach())))
          << "output of document " << d << " on rank " << rank
          << diff(mine(out.detach()), theirs(ref.detach()));
      EXPECT_TRUE(close(mine(lq.grad()), theirs(gq[d].grad())))
          << "dq of document " << d << " on rank " << rank
          << diff(mine(lq.grad()), theirs(gq[d].grad()));
      EXPECT_TRUE(close(mine(lk.grad()), theirs(gk[d].grad())))
          << "dk of document " << d << " on rank " << rank
          << diff(mine(lk.grad()), theirs(gk[d].grad()));
      EXPECT_TRUE(close(mine(lv.grad()), theirs(gv[d].grad())))
          << "dv of document " << d << " on rank " << rank
          << diff(mine(lv.grad()), theirs(gv[d].grad()));
    }
  }
}

// A plan with random query splits and random servers.
Plan random_plan(const Layout& layout, const std::vector<int32_t>& servers, int32_t world_size,
                 std::mt19937_64& rng) {
  Plan plan;
  plan.layout = layout;
  plan.server_ranks = servers;
  plan.world_size = world_size;
  for (int32_t d = 0; d < static_cast<int32_t>(layout.documents.size()); ++d) {
    const int64_t len = layout.documents[d].length_tokens;
    int64_t begin = 0;
    while (begin < len) {
      const int64_t end = std::min<int64_t>(len, begin + 1 + rng() % 13);
      plan.tasks.push_back({d, begin, end, static_cast<int32_t>(rng() % servers.size())});
      begin = end;
    }
  }
  scheduler::finalize_plan(plan);
  return plan;
}

std::vector<int32_t> iota(int32_t from, int32_t to) {
  std::vector<int32_t> v;
  for (int32_t i = from; i < to; ++i) v.push_back(i);
  return v;
}

// Awkward layouts over `ranks` owner ranks: 1-token documents, primes, one document spanning all
// ranks, ranks with no documents.
std::vector<Layout> awkward_layouts(int32_t ranks, std::mt19937_64& rng) {
  std::vector<Layout> layouts;
  layouts.push_back(scheduler::pack_sequential({1, 2, 3, 5, 7, 11, 13, 17}, ranks, 59 / ranks + 1));
  layouts.push_back(scheduler::pack_sequential({37 * ranks}, ranks, 37));  // spans every rank
  std::vector<std::vector<int64_t>> per_rank(ranks);
  for (int32_t r = 0; r < ranks; ++r) {
    if (r % 2 == 1) continue;  // empty ranks
    per_rank[r] = {1, static_cast<int64_t>(1 + rng() % 29), 31};
  }
  layouts.push_back(scheduler::layout_from_rank_documents(per_rank));
  return layouts;
}

TEST(CadAttention, InPlaceMatchesReference) {
  const int32_t ranks = world().size();
  std::mt19937_64 rng(17);
  uint64_t seed = 1;
  for (const Shapes& shapes : {Shapes{4, 4, 8}, Shapes{4, 1, 8}, Shapes{8, 1, 4}, Shapes{8, 2, 8}}) {
    for (const Layout& layout : awkward_layouts(ranks, rng)) {
      check_plan(scheduler::plan_colocated(layout), shapes, seed++);
      check_plan(random_plan(layout, iota(0, ranks), ranks, rng), shapes, seed++);
    }
  }
}

TEST(CadAttention, PlannedByTheCadPlannerMatchesReference) {
  const int32_t ranks = world().size();
  config::ModelConfig model;
  model.set_num_heads(8);
  model.set_num_kv_heads(2);
  model.set_head_dim(8);
  model.set_hidden_size(64);
  model.set_ffn_hidden_size(128);
  scheduler::CostModel cost(model, config::ClusterConfig(), scheduler::default_calibration());
  scheduler::PlannerOptions options;
  options.min_shard_tokens = 4;
  Layout layout = scheduler::pack_sequential({150, 20, 9, 60, 3, 41}, ranks, 283 / ranks + 1);
  Plan plan = scheduler::plan_cad(layout, iota(0, ranks), ranks, cost, options);
  check_plan(plan, {8, 2, 8}, 99);
}

TEST(CadAttention, Fp32MatchesReference) {
  const int32_t ranks = world().size();
  std::mt19937_64 rng(29);
  uint64_t seed = 900;
  for (const Layout& layout : awkward_layouts(ranks, rng)) {
    check_plan(random_plan(layout, iota(0, ranks), ranks, rng), {8, 2, 16}, seed++, false,
               torch::kFloat);
  }
}

TEST(CadAttention, DedicatedServersMatchReference) {
  const int32_t world_size = world().size();
  if (world_size < 2) GTEST_SKIP() << "dedicated servers need at least 2 ranks";
  const int32_t workers = world_size / 2 + (world_size % 2);
  std::mt19937_64 rng(23);
  uint64_t seed = 500;
  for (const Shapes& shapes : {Shapes{4, 4, 8}, Shapes{8, 1, 4}}) {
    for (const Layout& layout : awkward_layouts(workers, rng)) {
      check_plan(random_plan(layout, iota(workers, world_size), world_size, rng), shapes, seed++);
    }
  }
}

TEST(CadAttention, ColocatedOpMatchesReference) {
  const int32_t ranks = world().size();
  std::vector<std::vector<int64_t>> per_rank(ranks);
  for (int32_t r = 0; r < ranks; ++r) per_rank[r] = {1, 5, static_cast<int64_t>(7 + r)};
  Layout layout = scheduler::layout_from_rank_documents(per_rank);
  Plan plan = scheduler::plan_colocated(layout);
  check_plan(plan, {4, 2, 8}, 7, /*colocated=*/true);
  if (ranks > 1) {
    Layout spanning = scheduler::pack_sequential({10 * ranks}, ranks, 10);
    auto kernel = attention_server::make_kernel("cpu");
    EXPECT_THROW(make_colocated_attention(spanning, world().rank(), *kernel), Error);
  }
}

TEST(CadAttention, ByteCountsMatchThePlan) {
  const int32_t ranks = world().size();
  const int rank = world().rank();
  std::mt19937_64 rng(5);
  Layout layout = scheduler::pack_sequential({13, 29, 7, 31}, ranks, 80 / ranks + 1);
  Plan plan = random_plan(layout, iota(0, ranks), ranks, rng);
  const Shapes shapes{4, 2, 8};
  auto kernel = attention_server::make_kernel("cpu");
  attention_server::CadDispatch dispatch(plan, world(), *kernel);
  const int64_t local = layout.tokens_per_rank[rank];
  auto q = torch::randn({local, shapes.heads, shapes.dim});
  auto k = torch::randn({local, shapes.kv_heads, shapes.dim});
  attention_server::ServerState state;
  dispatch.forward(q, k, k, &state);
  // Forward: Q + K + V rows to other servers, outputs back from them; as a server, the mirror.
  int64_t sent = 0, received = 0;
  const int64_t q_row = shapes.heads * shapes.dim * 4, kv_row = 2 * shapes.kv_heads * shapes.dim * 4;
  for (const auto& tr : plan.transfers) {
    const int32_t server_rank = plan.server_ranks[tr.server];
    if (server_rank == tr.owner) continue;
    if (tr.owner == rank) {
      sent += tr.q_rows() * q_row + tr.kv_rows() * kv_row;
      received += tr.q_rows() * q_row;
    }
    if (server_rank == rank) {
      received += tr.q_rows() * q_row + tr.kv_rows() * kv_row;
      sent += tr.q_rows() * q_row;
    }
  }
  EXPECT_EQ(dispatch.forward_bytes().sent, sent);
  EXPECT_EQ(dispatch.forward_bytes().received, received);
  if (rank < plan.layout.num_ranks) {
    EXPECT_EQ(state.q.defined() ? state.q.size(0) : 0, plan.batches[rank].q_rows);
  }
}

TEST(CadAttention, BadInputsFailOnEveryRank) {
  const int32_t ranks = world().size();
  const int rank = world().rank();
  Layout layout = scheduler::pack_sequential({9, 14, 3}, ranks, 26 / ranks + 1);
  Plan plan = scheduler::plan_colocated(layout);
  auto kernel = attention_server::make_kernel("cpu");
  // Rank 0 passes the wrong number of rows; every rank must throw (no hang).
  {
    auto op = make_cad_attention(plan, world(), *kernel);
    const int64_t local = layout.tokens_per_rank[rank] + (rank == 0 ? 1 : 0);
    auto q = torch::randn({local, 4, 8});
    auto k = torch::randn({local, 2, 8});
    try {
      (*op)(q, k, k);
      ADD_FAILURE() << "bad shapes accepted on rank " << rank;
    } catch (const Error& e) {
      if (rank == 0) {
        EXPECT_NE(e.message().find("rows"), std::string::npos) << e.message();
      } else {
        EXPECT_NE(e.message().find("another rank"), std::string::npos) << e.message();
      }
    }
  }
  // A plan whose derived layouts were tampered with is rejected everywhere.
  {
    Plan corrupt = plan;
    corrupt.batches[0].q_rows += 1;
    EXPECT_THROW(make_cad_attention(corrupt, world(), *kernel), Error);
  }
  // Ranks holding different plans are told so.
  if (ranks > 1) {
    Plan other = plan;
    if (rank == 1) {
      other.tasks.clear();
      for (int32_t d = 0; d < static_cast<int32_t>(layout.documents.size()); ++d) {
        other.tasks.push_back({d, 0, layout.documents[d].length_tokens, 0});
      }
      scheduler::finalize_plan(other);
    }
    try {
      make_cad_attention(other, world(), *kernel);
      ADD_FAILURE() << "different plans accepted";
    } catch (const Error& e) {
      EXPECT_NE(e.message().find("different plan"), std::string::npos) << e.message();
    }
  }
  // Mixed dtypes.
  {
    auto op = make_cad_attention(plan, world(), *kernel);
    const int64_t local = layout.tokens_per_rank[rank];
    auto q = torch::randn({local, 4, 8});
    auto k = torch::randn({local, 2, 8}, torch::kDouble);
    EXPECT_THROW((*op)(q, k, k), Error);
  }
}

}  // namespace
}  // namespace cadre::runtime
