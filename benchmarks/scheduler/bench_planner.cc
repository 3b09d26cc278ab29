// Planning time of one global batch (plan_cad + finalize_plan) on one core, WLB-like documents.
#include <benchmark/benchmark.h>

#include "scheduler/doc_lengths.h"
#include "scheduler/planner.h"

namespace {

using namespace cadre::scheduler;

// range(2): 0 = WLB-like, 1 = ProLong-like documents (scheduler/doc_lengths.h).
void BM_PlanCad(benchmark::State& state) {
  const int32_t ranks = static_cast<int32_t>(state.range(0));
  const int64_t context = state.range(1);
  cadre::config::DataConfig data;
  data.set_distribution(state.range(2) == 0 ? "wlb" : "prolong");
  state.SetLabel(data.distribution());
  cadre::config::ModelConfig model;
  model.set_num_layers(32);
  model.set_hidden_size(4096);
  model.set_num_heads(32);
  model.set_num_kv_heads(8);
  model.set_head_dim(128);
  model.set_ffn_hidden_size(14336);
  CostModel cost(model, cadre::config::ClusterConfig(), default_calibration());
  Layout layout = pack_sequential(draw_global_batch(data, ranks * context, 42), ranks, context);
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
  state.counters["MB_moved_mean_rank"] = 2.0 * stats.bytes_moved_total / ranks / 1e6;
}

BENCHMARK(BM_PlanCad)
    ->ArgsProduct({{8, 16, 32, 64, 128, 256, 512}, {131072}, {0, 1}})
    ->ArgsProduct({{512, 1024, 2048, 4096}, {524288}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
