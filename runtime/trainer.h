// One rank's training loop: data, layout and plan of each step, the model's forward and backward
// through `cad` or `colocated` core attention, data-parallel gradient all-reduce, AdamW, metrics
// and checkpoints. Every rank runs the same Trainer with the same config.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attention_server/kernel.h"
#include "comm/transport.h"
#include "runtime/data.h"
#include "runtime/model.h"
#include "runtime/optimizer.h"
#include "scheduler/config.pb.h"
#include "scheduler/cost_model.h"

namespace cadre::runtime {

// What one step did, identical on every rank.
struct StepMetrics {
  int64_t step = 0;           // 1-based: the number of optimizer steps taken after this one
  double loss = 0;            // mean next-token loss over every rank's targets
  double grad_norm = 0;       // global norm before clipping
  double learning_rate = 0;
  double step_ms = 0;         // wall time of the step on this rank (rank 0 reports its own)
  int64_t tokens = 0;         // tokens of all ranks
  int64_t targets = 0;        // positions with a target, all ranks
  int32_t documents = 0;
  double tokens_per_second = 0;
  double imbalance_before = 1;  // max/mean per-rank attention time if each rank kept its own
  double imbalance_after = 1;   // max/mean over servers of the step's plan (cad), else = before
};

// Gradients are all-reduced in flattened buckets of at most this many bytes.
constexpr int64_t kGradientBucketBytes = 16 << 20;

class Trainer {
 public:
  // `config` must have every model size set (launch::finalize_config does that). The transport
  // spans the data-parallel ranks; every rank is a worker and (cad) an in-place server.
  // Throws cadre::Error for settings this trainer does not support, naming what it accepts.
  Trainer(const config::RunConfig& config, comm::Transport& transport);

  // Forward and backward of the next step's data; leaves every parameter's .grad() holding the
  // data-parallel average (identical on all ranks). Returns the step's metrics without
  // grad_norm/learning_rate.
  StepMetrics forward_backward();
  // Clips, applies AdamW at the step's learning rate, zeroes gradients, advances the step.
  void optimizer_step(StepMetrics* metrics);
  // forward_backward + optimizer_step, timed.
  StepMetrics train_step();

  // Writes the state after the current step (rank 0 writes; all ranks wait for it). Returns the
  // path.
  std::string save_checkpoint();
  // Loads model, optimizer, data position and step from `path` (every rank reads it).
  void load_checkpoint(const std::string& path);
  // The checkpoint directory: training.checkpoint_dir, else output.dir/checkpoints.
  std::string checkpoint_dir() const;

  int64_t step() const { return step_; }
  const LlamaModel& model() const { return *model_; }
  const config::RunConfig& config() const { return config_; }

 private:
  void all_reduce_gradients();

  config::RunConfig config_;
  comm::Transport& transport_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<DataLoader> data_;
  std::unique_ptr<attention_server::CoreAttentionKernel> kernel_;
  std::unique_ptr<scheduler::CostModel> cost_;
  int64_t step_ = 0;
};

// "step 3/20 | loss 5.1234 | grad norm 0.812 | lr 3.00e-03 | 12.3 ms | 41.6k tok/s |
//  attn imbalance 1.42 -> 1.01"
std::string format_step_line(const StepMetrics& metrics, int64_t total_steps);
// One JSON object (no newline) with every field of `metrics` and the attention mode.
std::string metrics_json(const StepMetrics& metrics, const std::string& attention);

}  // namespace cadre::runtime
