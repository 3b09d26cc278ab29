// The CAD planner: splits documents into CA-tasks and assigns them to attention servers so that
// every server's attention time is within a tolerance of the mean, moving as few bytes as it can.
#pragma once

#include <cstdint>
#include <vector>

#include "scheduler/cost_model.h"
#include "scheduler/plan.h"

namespace cadre::scheduler {

struct PlannerOptions {
  double tolerance = 0.03;         // target: max server time <= (1 + tolerance) * mean
  int64_t min_shard_tokens = 128;  // query shards never smaller (except whole short documents)
  int32_t gpus_per_node = 8;       // for intra- vs inter-node preference
};

// The planner options a run config asks for (scheduler.tolerance, scheduler.min_shard_tokens,
// cluster.gpus_per_node).
PlannerOptions planner_options(const config::RunConfig& config);

struct PlanStats {
  double imbalance_before = 1.0;  // max/mean attention time if each owner computed its own
  double imbalance_after = 1.0;   // max/mean over servers of the plan
  int64_t bytes_moved_max_rank = 0;  // max over ranks of bytes sent + received per layer
  int64_t bytes_moved_total = 0;
  int32_t tasks = 0;
  int32_t splits = 0;  // query shards split off existing tasks by the planner
};

// server_ranks: every rank of the layout (in place) or a dedicated pool of ranks numbered from
// layout.num_ranks upward. world_size: total ranks. Deterministic.
Plan plan_cad(const Layout& layout, const std::vector<int32_t>& server_ranks, int32_t world_size,
              const CostModel& cost, const PlannerOptions& options, PlanStats* stats = nullptr);

}  // namespace cadre::scheduler
