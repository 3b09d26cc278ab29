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
// exposed_comm_us + step_fixed_us (each effect separately).
struct StepCost {
  std::string strategy;
  double step_us = 0;
  double attention_us = 0;         // attention compute on the average data-parallel rank
  double linear_us = 0;            // everything else (projections, MLP, norms) on the average rank
  double pp_bubble_us = 0;         // 1F1B fill and drain: (PP - 1) x the longest micro-batch
  double dp_straggler_us = 0;      // slowest data-parallel rank minus the average
  double exposed_comm_us = 0;      // communication not hidden behind compute
  double step_fixed_us = 0;        // once per step: optimizer, host overhead, exposed gradient
                                   // all-reduce (calibration)
  double tokens_per_s = 0;         // whole cluster
  double attention_imbalance = 1;  // max / mean attention time over data-parallel ranks
  double bytes_per_rank = 0;       // moved per GPU per step (CAD dispatch, CP all-gathers)
  // Memory per GPU (docs/simulation.md, "Memory estimate"), the worst of the simulated batches;
  // it does not change the times above.
  double peak_activation_gib = 0;    // micro-batches in flight and the loss chunk
  double weights_optimizer_gib = 0;  // bf16 weights and gradients, fp32 master and Adam moments
  double peak_memory_gib = 0;        // the two together
  bool fits_memory = true;           // peak_memory_gib <= cluster.gpu_memory_gib
  double planning_ms = 0;            // wall time of plan_cad for the step (cad only)
};

struct SimulationResult {
  int32_t gpus = 0;
  int32_t data_parallel = 0;
  int32_t micro_batches = 0;  // per data-parallel rank per step
  int64_t tokens_per_step = 0;
  std::string recompute;        // training.recompute the memory column was priced with
  std::vector<StepCost> costs;  // in the order of the requested strategies
};

// Bytes one GPU keeps for backward per layer (bf16 tensors, fp32 log-sum-exp), split by where
// they live: with the token's owner, or with the core attention that used it (the owner itself for
// colocated strategies, the attention server for CAD). TP splits heads (KV heads down to one per
// GPU) and, with sequence parallelism, the hidden-sized tensors. recompute: "none" or "linear".
struct ActivationBytes {
  double owner = 0;   // per owned token: "none" norm inputs, QKV and MLP inputs, SwiGLU tensors;
                      // "linear" the layer input only
  double query = 0;   // per query row of core attention: Q and O (bf16) and log-sum-exp (fp32)
  double key = 0;     // per key/value row held by core attention: K and V (bf16)
  double output = 0;  // O alone: kept again by an owner whose queries a CAD server computed
  double per_token() const { return owner + query + key; }  // colocated attention
};
ActivationBytes activation_bytes_per_token_per_layer(const config::ModelConfig& model, int32_t tp,
                                                     const std::string& recompute);

// Parameters of one GPU of the first pipeline stage (its layers, the embedding, and with PP = 1 an
// untied LM head; the last stage holds as many), before the TP split.
double parameters_per_stage(const config::ModelConfig& model, int32_t pp);
// Weights and optimizer state: 16 bytes per parameter (bf16 weight and gradient, fp32 master
// weight and two Adam moments), divided by TP; not sharded over data parallelism.
constexpr double kWeightOptimizerBytesPerParameter = 16;

// The LM head and loss of one chunk of tokens: fp32 logits and their gradient over the
// vocabulary, split by TP (vocabulary-parallel head).
double loss_chunk_bytes(const config::ModelConfig& model, int32_t tp, int64_t chunk_tokens);

// config must be finalized (model sizes filled); cluster.num_gpus and data.context_length set the
// cell. Deterministic for a given config (the data seed).
SimulationResult simulate_step(const config::RunConfig& config,
                               const std::vector<std::string>& strategies, int32_t batches);

}  // namespace cadre::scheduler
