// Prices one step of `cadre train` as the runtime runs it: its nano-batches, plans (the real
// planner), the step executor's order of compute and communication on two streams per rank (so
// what ping-pong hides and what it exposes follow the runtime's own overlap rules), the bucketed
// gradient all-reduce started as layers finish, the optimizer step, host overhead, and memory per
// rank by component, with the costs of a step calibration. docs/simulation.md, "Step model".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "scheduler/config.pb.h"
#include "scheduler/plan.h"
#include "scheduler/step_calibration.h"

namespace cadre::scheduler {

// One worker's documents of one micro-batch, as runtime::DataLoader hands them out.
struct RankDocuments {
  std::vector<int64_t> lengths;
  bool first_continues = false;  // packing "span": the first piece continues the previous rank's
  bool last_continues = false;
};
using MicroBatchDocuments = std::vector<RankDocuments>;  // one per worker

// The trainer's split of one rank's documents into `parts` nano-batches of near-equal tokens
// (longest first onto the lightest; ties to the lower part; order kept inside a part); `pinned`
// documents go to part 0 first. Returns document indices per part.
std::vector<std::vector<int>> split_nano_batches(const std::vector<int64_t>& lengths, int parts,
                                                 const std::vector<int>& pinned = {});

// Bytes one CAD exchange stage moves for `rank` (self rows excluded): out = owners to servers
// (forward: Q and K/V rows; backward: dO rows), back = servers to owners (forward: O rows;
// backward: dQ and dK/dV rows). `with_kv`: the stage carries K/V rows.
struct StageBytes {
  int64_t sent = 0, received = 0;
};
StageBytes exchange_stage_bytes(const Plan& plan, int32_t rank, bool to_servers, bool with_kv,
                                int64_t q_bytes_per_row, int64_t kv_bytes_per_row);

// Gradient all-reduce buckets as runtime::GradientReducer builds them: fp32 bytes and the layer
// whose readiness starts each (-1: at the end of backward).
struct GradientBucket {
  int64_t bytes = 0;
  int32_t last_layer = -1;
};
std::vector<GradientBucket> gradient_buckets(const config::ModelConfig& model, int32_t tp,
                                             int64_t bucket_bytes);
// Elements of the largest gradient tensor the optimizer phase copies to fp64 on one GPU: the
// largest parameter (plain AdamW), or the largest gradient bucket's slice over `dp` ranks
// (training.shard_optimizer).
double largest_gradient_elements(const config::RunConfig& config, int32_t tp, int32_t dp);
// Parameters of one worker (its TP shard; untied head included).
double worker_parameters(const config::ModelConfig& model, int32_t tp);

// Memory of one rank at its peak (docs/simulation.md, "Memory estimate"). The state terms hold
// all step long; the others are what the rank holds at the point of the step where the sum is
// largest (`phase`): "head" (the last LM-head chunk of a nano-batch, end of forward), "backward"
// (the first backward layer of a nano-batch), "attention" (a server's fused buffers) or
// "optimizer" (the gradient norm's temporaries).
struct MemoryByComponent {
  double weights_gib = 0;         // fp32 parameters
  double gradients_gib = 0;       // fp32 gradient buckets (+ sharded: the reduced slice)
  double optimizer_gib = 0;       // AdamW moments (+ sharded: master slice, two fp32 masks)
  double activations_gib = 0;     // saved for backward, every nano-batch of the micro-batch
  double weight_copies_gib = 0;   // bf16 weight copies autograd saved (no recomputation)
  double residual_gib = 0;        // nano-batches' last outputs and gradient buffers
  double loss_gib = 0;            // head phase: one loss chunk at its peak
  double backward_gib = 0;        // backward phase: the recomputed layer and its gradients
  double attention_gib = 0;       // attention phase: a server's fused Q/K/V/O/LSE of one layer
  double optimizer_step_gib = 0;  // optimizer phase: temporaries
  double fixed_gib = 0;           // calibration: what the model cannot derive
  std::string phase;
  double state_gib() const { return weights_gib + gradients_gib + optimizer_gib; }
  double above_state_gib() const {  // unscaled
    return activations_gib + weight_copies_gib + residual_gib + loss_gib + backward_gib +
           attention_gib + optimizer_step_gib;
  }
  double peak_gib = 0;  // state + activation_memory_scale x above_state + fixed
};

struct StepPrice {
  double step_us = 0;       // slowest rank: its streams' end + host overhead
  double compute_us = 0;    // slowest rank's compute-stream busy time
  double attention_us = 0;  // these five: rank 0's compute by kind
  double linear_us = 0;     // qkv and out+mlp forward and backward
  double recompute_us = 0;
  double head_embedding_us = 0;
  double optimizer_us = 0;
  double a2a_us = 0;          // rank 0: time CAD exchanges were in flight
  double exposed_a2a_us = 0;  // rank 0: of it, with its compute stream idle
  double grad_reduce_us = 0;  // rank 0: all-reduce buckets in flight
  double exposed_grad_reduce_us = 0;
  double overhead_us = 0;  // host overhead of the slowest rank
  int64_t a2a_bytes = 0;   // rank 0: sent + received by CAD exchanges
  std::vector<double> rank_step_us;
  std::vector<std::vector<int64_t>> nano_tokens;  // [worker][nano-batch, micro-batch-major]
  MemoryByComponent memory;                       // the rank with the highest peak
};

// `config` finalized (model sizes set); cluster.num_gpus ranks (workers + dedicated servers);
// one MicroBatchDocuments per training.micro_batches. Throws cadre::Error for a shape mismatch.
StepPrice price_training_step(const config::RunConfig& config,
                              const std::vector<MicroBatchDocuments>& micro_batches,
                              const StepCalibration& calibration);

// Fits the calibration's memory terms to profiles that measured peaks (the GPU build's allocator
// peaks, max over the run): per profile, measured peak - state (weights, gradients, optimizer) =
// activation_memory_scale x (what the rank holds above its state at its modelled peak) +
// memory_fixed_gib, the modelled terms from price_training_step on the profile's own documents
// (every step, warm-up included: the allocator's peak covers them). Two or more profiles of
// different activation sizes fit both terms (least squares); one fits the scale alone. Profiles
// without peaks are skipped; with none, the calibration is unchanged. Returns the profiles used.
int fit_memory(const std::vector<profile::RunProfile>& profiles, StepCalibration* calibration);

// The run configuration a profile describes (model, ranks, attention, ping-pong, recomputation,
// loss chunk, buckets, micro-batches, dtype, server mode, sharded optimizer), for pricing its
// steps.
config::RunConfig profile_run_config(const profile::RunProfile& profile);

}  // namespace cadre::scheduler
