// Planning time of one global batch (plan_cad + finalize_plan) on one core, WLB-like documents.
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>

#include "scheduler/planner.h"

namespace {

using namespace cadre::scheduler;

// WLB-like lengths (shared/doclen/README.md's parametric fit).
std::vector<int64_t> wlb_like(uint64_t seed, int64_t total_tokens) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<int64_t> lengths;
  int64_t sum = 0;
  while (sum < total_tokens) {
    const double p = u(rng);
    int64_t len;
    if (p < 0.16) {
      len = 1 + static_cast<int64_t>(u(rng) * 1023);
    } else if (p < 0.973) {
      len = 1024 + static_cast<int64_t>(u(rng) * (6250 - 1024));
    } else {
      const double lo = p < 0.987 ? 6400 : (p < 0.995 ? 16384 : 65536);
      const double hi = p < 0.987 ? 16384 : (p < 0.995 ? 65536 : 125000);
      len = static_cast<int64_t>(std::exp(std::log(lo) + u(rng) * (std::log(hi) - std::log(lo))));
    }
    lengths.push_back(len);
    sum += len;
  }
  return lengths;
}

void BM_PlanCad(benchmark::State& state) {
  const int32_t ranks = static_cast<int32_t>(state.range(0));
  const int64_t context = state.range(1);
  cadre::config::ModelConfig model;
  model.set_num_layers(32);
  model.set_hidden_size(4096);
  model.set_num_heads(32);
  model.set_num_kv_heads(8);
  model.set_head_dim(128);
  model.set_ffn_hidden_size(14336);
  CostModel cost(model, cadre::config::ClusterConfig(), default_calibration());
  Layout layout = pack_sequential(wlb_like(42, ranks * context), ranks, context);
  std::vector<int32_t> servers(ranks);
  for (int32_t i = 0; i < ranks; ++i) servers[i] = i;
  PlanStats stats;
  for (auto _ : state) {
    Plan plan = plan_cad(layout, servers, ranks, cost, PlannerOptions(), &stats);
    benchmark::DoNotOptimize(plan.transfers.data());
  }
  state.counters["documents"] = static_cast<double>(layout.documents.size());
  state.counters["tasks"] = stats.tasks;
  state.counters["imbalance_before"] = stats.imbalance_before;
  state.counters["imbalance_after"] = stats.imbalance_after;
  state.counters["MB_moved_max_rank"] = stats.bytes_moved_max_rank / 1e6;
}

BENCHMARK(BM_PlanCad)
    ->Args({8, 131072})
    ->Args({64, 131072})
    ->Args({512, 131072})
    ->Args({512, 524288})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
