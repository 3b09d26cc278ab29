// ZeRO-1 (Megatron's distributed optimizer) over the gradient reducer's buckets: each rank of the
// data-parallel group keeps the fp32 master weights and both AdamW moments of its slice of every
// bucket, updates them from its reduce-scattered gradient slice, and all-gathers the updated
// weights into the model's parameters. Same update as AdamW (optimizer.h), element for element.
// The all-gathers are started by step() (embedding first, then the layers in forward order) into
// the gradient buckets, which are free until the next backward, and each bucket is copied into its
// parameters when the next forward first needs them (ensure_layer), so the gathers overlap the
// forward of the layers before.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "comm/transport.h"
#include "runtime/gradient_reducer.h"
#include "runtime/model.h"
#include "runtime/optimizer.h"

namespace cadre::runtime {

class ShardedAdamW {
 public:
  // `reducer` must be sharded (GradientReducer(..., shard = true)) over `dp`; all three must
  // outlive the optimizer. The master slices start as copies of the model's parameters.
  ShardedAdamW(const LlamaModel& model, GradientReducer& reducer, comm::Transport& dp,
               const AdamWOptions& options);
  ~ShardedAdamW();

  // Sum of squares of this rank's gradient slices, each element once over the whole grid
  // (elements of parameters whose `counted` is false add nothing), in fp64.
  double grad_sum_squares() const;
  // Scales the gradient slices by max_norm / (norm + 1e-6) when norm > max_norm > 0.
  void clip(double norm, double max_norm);
  // One AdamW step on the slices, then starts the all-gather of the weights (collective over dp).
  // The gradient buckets are zero again once every bucket has been ensured.
  void step(double learning_rate);
  // Waits for the gather of every bucket holding a parameter of `layer` (-1: the embedding;
  // num_layers: the final norm and LM head) and copies it into the parameters. Idempotent.
  void ensure_layer(int layer);
  // ensure_layer for every layer: the parameters are current after it.
  void finish_gather();

  int64_t steps() const { return steps_; }
  void set_steps(int64_t steps) { steps_ = steps; }
  // Moment `which` (0: first, 1: second) of every parameter, shaped like its value: gathered
  // over dp (collective).
  std::vector<torch::Tensor> gather_moments(int which) const;
  // The reduced gradient of every parameter, shaped like its value, gathered over dp (collective;
  // valid between the reducer's finish() and step()). For tests.
  std::vector<torch::Tensor> gather_gradients() const;
  // Sets moment `which` from tensors shaped like every parameter's value (this rank keeps its
  // slice), and the master slices from the parameters' current values.
  void set_moments(int which, const std::vector<torch::Tensor>& moments);
  void reset_master();

 private:
  // This rank's slice [begin, begin + size) of bucket b, assembled from per-parameter tensors.
  torch::Tensor slice_of(size_t b, const std::vector<torch::Tensor>& per_parameter) const;
  std::vector<torch::Tensor> gather_slices(const std::vector<torch::Tensor>& slices) const;

  const LlamaModel& model_;
  GradientReducer& reducer_;
  comm::Transport& dp_;
  AdamWOptions options_;
  void ensure_bucket(size_t b);

  std::vector<torch::Tensor> master_, exp_avg_, exp_avg_sq_, decay_, counted_;
  std::vector<std::vector<int>> bucket_layers_;       // layers with a parameter in each bucket
  std::vector<std::unique_ptr<comm::Work>> gathers_;  // per bucket, in flight after step()
  int64_t steps_ = 0;
};

}  // namespace cadre::runtime
