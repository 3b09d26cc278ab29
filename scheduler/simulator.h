// Prices one training step of a DP x TP x PP cluster under CAD and the baselines, with the real
// planner and the cost model (docs/simulation.md has the model and its approximations).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "scheduler/config.pb.h"

namespace cadre::scheduler {

// Strategies: fixed (sequential packing, each rank its own attention: Megatron-style DP),
// cp (per-document context parallelism, head/tail sharding in a CP group), wlb (workload-balanced
// variable-length packing, WLB-LLM style), cad (core attention disaggregated and rebalanced with
// plan_cad), ideal (perfectly divisible work, no communication, no bubble: a lower bound).
const std::vector<std::string>& simulator_strategies();

// One step's price for one strategy, averaged over the simulated global batches. Times are per
// step in microseconds; step_us = attention_us + linear_us + pp_bubble_us + dp_straggler_us +
// exposed_comm_us (each effect separately).
struct StepCost {
  std::string strategy;
  double step_us = 0;
  double attention_us = 0;     // attention compute on the average data-parallel rank
  double linear_us = 0;        // everything else (projections, MLP, norms) on the average rank
  double pp_bubble_us = 0;     // 1F1B fill and drain: (PP - 1) x the longest micro-batch
  double dp_straggler_us = 0;  // slowest data-parallel rank minus the average
  double exposed_comm_us = 0;  // communication not hidden behind compute
  double tokens_per_s = 0;     // whole cluster
  double attention_imbalance = 1;  // max / mean attention time over data-parallel ranks
  double bytes_per_rank = 0;       // moved per GPU per step (CAD dispatch, CP all-gathers)
  double peak_activation_gib = 0;  // per GPU (docs/simulation.md)
  double planning_ms = 0;          // wall time of plan_cad for the step (cad only)
};

struct SimulationResult {
  int32_t gpus = 0;
  int32_t data_parallel = 0;
  int32_t micro_batches = 0;  // per data-parallel rank per step
  int64_t tokens_per_step = 0;
  std::vector<StepCost> costs;  // in the order of the requested strategies
};

// config must be finalized (model sizes filled); cluster.num_gpus and data.context_length set the
// cell. Deterministic for a given config (the data seed).
SimulationResult simulate_step(const config::RunConfig& config,
                               const std::vector<std::string>& strategies, int32_t batches);

}  // namespace cadre::scheduler
