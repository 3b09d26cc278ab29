// `cadre bench attention`: CAD core attention across the launched ranks (MPI on CPU): plans a
// packed batch, runs forward and backward, prints per-rank work and bytes, and checks every
// output and gradient against single-process attention of the whole documents.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <algorithm>
#include <array>
#include <random>
#include <string>

#include "attention_server/dispatch.h"
#include "comm/mpi_transport.h"
#include "common/error.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "runtime/attention_op.h"
#include "scheduler/doc_lengths.h"
#include "scheduler/planner.h"

namespace cadre::launch {

namespace {

struct BenchOptions {
  int64_t tokens_per_rank = 2048;
  int64_t mean_doc_tokens = 512;
  int64_t heads = 8, kv_heads = 2, head_dim = 32;
  std::string mode = "in_place";
  std::string distribution;  // empty: uniform lengths in [1, 2 x mean_doc_tokens]
  int servers = 0;  // dedicated: how many of the ranks serve
  uint64_t seed = 1;
  bool check = true;
};

const char* kUsage =
    "usage: mpirun -np N cadre bench attention [options]\n\n"
    "CAD core attention across N ranks over MPI (CPU): documents (lengths uniform in\n"
    "[1, 2 x mean], or from --distribution) are packed into the worker ranks, planned with the CAD planner, and run\n"
    "forward and backward; every output and gradient is checked against single-process\n"
    "attention of the whole documents.\n\n"
    "options:\n"
    "  --tokens-per-rank N   tokens of each worker rank (default 2048)\n"
    "  --mean-doc-tokens N   mean document length (default 512)\n"
    "  --distribution NAME   draw lengths from wlb, prolong, lognormal, uniform or fixed\n"
    "                        (scheduler/doc_lengths.h) instead\n"
    "  --heads H --kv-heads K --head-dim D   attention shape (default 8, 2, 32)\n"
    "  --mode in_place|dedicated   every rank serves, or the last --servers ranks do\n"
    "  --servers S           dedicated servers (default N/2)\n"
    "  --seed S              (default 1)\n"
    "  --no-check            skip the reference check\n"
    "  --backend mpi         the only backend of the CPU build\n";

int64_t parse_int(const std::string& flag, const std::string& value, int64_t min) {
  int64_t parsed = 0;
  try {
    size_t used = 0;
    parsed = std::stoll(value, &used);
    CADRE_CHECK(used == value.size(), "");
  } catch (...) {
    CADRE_FAIL(flag, " takes an integer; got '", value, "'");
  }
  CADRE_CHECK(parsed >= min, flag, " is ", parsed, "; accepted: >= ", min);
  return parsed;
}

BenchOptions parse(const Args& args, int world) {
  BenchOptions o;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& flag = args[i];
    auto value = [&]() -> std::string {
      CADRE_CHECK(i + 1 < args.size(), flag, " needs a value");
      return args[++i];
    };
    if (flag == "--tokens-per-rank") {
      o.tokens_per_rank = parse_int(flag, value(), 1);
    } else if (flag == "--mean-doc-tokens") {
      o.mean_doc_tokens = parse_int(flag, value(), 1);
    } else if (flag == "--heads") {
      o.heads = parse_int(flag, value(), 1);
    } else if (flag == "--kv-heads") {
      o.kv_heads = parse_int(flag, value(), 1);
    } else if (flag == "--head-dim") {
      o.head_dim = parse_int(flag, value(), 1);
    } else if (flag == "--servers") {
      o.servers = static_cast<int>(parse_int(flag, value(), 1));
    } else if (flag == "--seed") {
      o.seed = static_cast<uint64_t>(parse_int(flag, value(), 0));
    } else if (flag == "--mode") {
      o.mode = value();
      CADRE_CHECK(o.mode == "in_place" || o.mode == "dedicated", "--mode is '", o.mode,
                  "'; accepted: in_place, dedicated");
    } else if (flag == "--distribution") {
      o.distribution = value();
    } else if (flag == "--backend") {
      const std::string backend = value();
      CADRE_CHECK(backend == "mpi", "--backend is '", backend,
                  "'; accepted: mpi (the GPU path is exercised by scripts/gpu_check.sh)");
    } else if (flag == "--no-check") {
      o.check = false;
    } else {
      CADRE_FAIL("unknown option '", flag, "'; run `cadre bench attention --help`");
    }
  }
  CADRE_CHECK(o.heads % o.kv_heads == 0, "--heads ", o.heads, " is not a multiple of --kv-heads ",
              o.kv_heads);
  if (o.mode == "dedicated") {
    if (o.servers == 0) o.servers = world / 2;
    CADRE_CHECK(world >= 2 && o.servers >= 1 && o.servers < world, "dedicated mode with ", world,
                " ranks and ", o.servers,
                " servers; accepted: at least 2 ranks and 1 <= servers < ranks");
  }
  return o;
}

}  // namespace

int run_bench_attention(const Args& args) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    }
  }
  comm::ensure_mpi_initialized();
  auto transport = comm::make_mpi_transport(60);
  const int rank = transport->rank(), world = transport->size();
  BenchOptions o;
  try {
    o = parse(args, world);
  } catch (const Error& e) {
    if (rank == 0) std::cerr << "cadre bench attention: error: " << e.message() << "\n";
    return 2;
  }
  const int workers = o.mode == "dedicated" ? world - o.servers : world;
  std::vector<int32_t> servers;
  for (int r = o.mode == "dedicated" ? workers : 0; r < world; ++r) servers.push_back(r);

  // The same documents on every rank (same seed).
  std::vector<int64_t> lengths;
  if (o.distribution.empty()) {
    std::mt19937_64 rng(o.seed);
    for (int64_t total = 0; total < workers * o.tokens_per_rank;) {
      lengths.push_back(1 + static_cast<int64_t>(rng() % (2 * o.mean_doc_tokens)));
      total += lengths.back();
    }
  } else {
    config::DataConfig data;
    data.set_distribution(o.distribution);
    try {
      lengths = scheduler::draw_global_batch(data, workers * o.tokens_per_rank, o.seed);
    } catch (const Error& e) {
      if (rank == 0) std::cerr << "cadre bench attention: error: " << e.message() << "\n";
      return 2;
    }
  }
  scheduler::Layout layout = scheduler::pack_sequential(lengths, workers, o.tokens_per_rank);
  config::ModelConfig model;
  model.set_num_heads(static_cast<int32_t>(o.heads));
  model.set_num_kv_heads(static_cast<int32_t>(o.kv_heads));
  model.set_head_dim(static_cast<int32_t>(o.head_dim));
  model.set_hidden_size(static_cast<int32_t>(o.heads * o.head_dim));
  model.set_ffn_hidden_size(static_cast<int32_t>(4 * o.heads * o.head_dim));
  scheduler::CostModel cost(model, config::ClusterConfig(), scheduler::default_calibration());
  scheduler::PlannerOptions planner_options;
  planner_options.min_shard_tokens = std::min<int64_t>(128, o.mean_doc_tokens);
  scheduler::PlanStats stats;
  const auto plan_start = std::chrono::steady_clock::now();
  scheduler::Plan plan =
      scheduler::plan_cad(layout, servers, world, cost, planner_options, &stats);
  const double plan_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - plan_start)
          .count();

  // Inputs: every document's Q/K/V drawn from the seed; each rank takes its rows.
  torch::manual_seed(o.seed);
  const int64_t local = rank < layout.num_ranks ? layout.tokens_per_rank[rank] : 0;
  auto q = torch::zeros({local, o.heads, o.head_dim});
  auto k = torch::zeros({local, o.kv_heads, o.head_dim});
  auto v = torch::zeros({local, o.kv_heads, o.head_dim});
  auto g = torch::zeros({local, o.heads, o.head_dim});
  std::vector<std::array<torch::Tensor, 4>> docs;
  for (const auto& doc : layout.documents) {
    std::array<torch::Tensor, 4> t = {torch::randn({doc.length_tokens, o.heads, o.head_dim}),
                                      torch::randn({doc.length_tokens, o.kv_heads, o.head_dim}),
                                      torch::randn({doc.length_tokens, o.kv_heads, o.head_dim}),
                                      torch::randn({doc.length_tokens, o.heads, o.head_dim})};
    for (const auto& p : doc.pieces) {
      if (p.rank != rank) continue;
      const int64_t len = p.doc_end - p.doc_begin;
      q.narrow(0, p.local_row, len).copy_(t[0].narrow(0, p.doc_begin, len));
      k.narrow(0, p.local_row, len).copy_(t[1].narrow(0, p.doc_begin, len));
      v.narrow(0, p.local_row, len).copy_(t[2].narrow(0, p.doc_begin, len));
      g.narrow(0, p.local_row, len).copy_(t[3].narrow(0, p.doc_begin, len));
    }
    docs.push_back(t);
  }
  q.requires_grad_();
  k.requires_grad_();
  v.requires_grad_();

  auto kernel = attention_server::make_kernel("cpu");
  attention_server::CadDispatch dispatch(plan, *transport, *kernel);
  transport->barrier();
  const auto start = std::chrono::steady_clock::now();
  attention_server::ServerState state;
  auto out = dispatch.forward(q.detach(), k.detach(), v.detach(), &state);
  const auto mid = std::chrono::steady_clock::now();
  auto grads = dispatch.backward(g, state);
  const auto end = std::chrono::steady_clock::now();
  const double forward_ms = std::chrono::duration<double, std::milli>(mid - start).count();
  const double backward_ms = std::chrono::duration<double, std::milli>(end - mid).count();

  // Reference: each rank checks the rows it owns against whole-document attention.
  double max_rel_error = 0;
  if (o.check) {
    for (size_t d = 0; d < layout.documents.size(); ++d) {
      bool mine = false;
      for (const auto& p : layout.documents[d].pieces) mine |= p.rank == rank;
      if (!mine) continue;
      const int64_t n = layout.documents[d].length_tokens;
      attention_server::VarlenBatch whole = attention_server::make_varlen_batch({0, n}, {0, n});
      auto ref = kernel->forward(docs[d][0], docs[d][1], docs[d][2], whole, 0);
      auto ref_grads = kernel->backward(docs[d][3], docs[d][0], docs[d][1], docs[d][2], ref.out,
                                        ref.lse, whole, 0);
      for (const auto& p : layout.documents[d].pieces) {
        if (p.rank != rank) continue;
        const int64_t len = p.doc_end - p.doc_begin;
        auto rel = [&](const torch::Tensor& a, const torch::Tensor& b) {
          auto x = a.narrow(0, p.local_row, len), y = b.narrow(0, p.doc_begin, len);
          return (x - y).norm().item<double>() / std::max(1e-12, y.norm().item<double>());
        };
        max_rel_error = std::max({max_rel_error, rel(out, ref.out), rel(grads[0], ref_grads.dq),
                                  rel(grads[1], ref_grads.dk), rel(grads[2], ref_grads.dv)});
      }
    }
  }

  // Per-rank summary gathered on every rank (small), printed by rank 0.
  int64_t server_pairs = 0;
  for (size_t s = 0; s < plan.server_ranks.size(); ++s) {
    if (plan.server_ranks[s] != rank) continue;
    for (int32_t t : plan.batches[s].tasks) {
      server_pairs += scheduler::causal_pairs(plan.tasks[t].q_begin, plan.tasks[t].q_end);
    }
  }
  std::vector<double> mine = {static_cast<double>(local),
                              static_cast<double>(server_pairs),
                              static_cast<double>(dispatch.forward_bytes().sent +
                                                  dispatch.backward_bytes().sent),
                              static_cast<double>(dispatch.forward_bytes().received +
                                                  dispatch.backward_bytes().received),
                              forward_ms,
                              backward_ms,
                              max_rel_error};
  std::vector<double> all(mine.size() * world);
  transport->all_gather(mine.data(), all.data(), mine.size() * sizeof(double));
  double worst = 0;
  for (int r = 0; r < world; ++r) worst = std::max(worst, all[r * mine.size() + 6]);
  const bool ok = !o.check || worst < 1e-4;
  if (rank == 0) {
    std::printf("cadre bench attention: %d ranks (%s, %zu servers), %zu documents, %lld tokens/worker, "
                "heads %lld/%lld x %lld, fp32 CPU reference kernel over MPI\n",
                world, o.mode.c_str(), servers.size(), layout.documents.size(),
                static_cast<long long>(o.tokens_per_rank), static_cast<long long>(o.heads),
                static_cast<long long>(o.kv_heads), static_cast<long long>(o.head_dim));
    std::printf("plan: %d tasks, %d splits, attention imbalance %.3f -> %.3f, planned in %.2f ms\n\n",
                stats.tasks, stats.splits, stats.imbalance_before, stats.imbalance_after, plan_ms);
    std::printf("rank  tokens  server_pairs(M)  sent_MB  recv_MB  fwd_ms  bwd_ms  max_rel_err\n");
    for (int r = 0; r < world; ++r) {
      const double* row = &all[r * mine.size()];
      std::printf("%4d  %6.0f  %15.3f  %7.2f  %7.2f  %6.1f  %6.1f  %11.2e\n", r, row[0],
                  row[1] / 1e6, row[2] / 1e6, row[3] / 1e6, row[4], row[5], row[6]);
    }
    if (o.check) {
      std::printf("\ncheck against single-process attention: max relative error %.2e -> %s\n",
                  worst, ok ? "PASS" : "FAIL (tolerance 1e-4)");
    }
  }
  return ok ? 0 : 1;
}

}  // namespace cadre::launch
