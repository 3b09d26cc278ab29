// AdamW with decoupled weight decay (none on 1-D parameters: norms), global gradient-norm
// clipping, and the warmup + cosine learning-rate schedule.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "scheduler/config.pb.h"

namespace cadre::runtime {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

// Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (Algorithm 2), per element:
//   p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
// Weight decay applies only to parameters of two or more dimensions.
class AdamW {
 public:
  AdamW(std::vector<torch::Tensor> parameters, const AdamWOptions& options);
  // Updates every parameter from its .grad() (a parameter without a gradient is left alone).
  void step(double learning_rate);

  int64_t steps() const { return steps_; }
  // State for checkpoints: first and second moments, one per parameter, and the step count.
  std::vector<torch::Tensor>& exp_avg() { return exp_avg_; }
  std::vector<torch::Tensor>& exp_avg_sq() { return exp_avg_sq_; }
  void set_steps(int64_t steps) { steps_ = steps; }

 private:
  std::vector<torch::Tensor> parameters_;
  AdamWOptions options_;
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;
  int64_t steps_ = 0;
};

AdamWOptions adamw_options(const config::TrainingConfig& training);

// The L2 norm of all gradients together; if it exceeds max_norm (> 0), every gradient is scaled
// by max_norm / (norm + 1e-6). Returns the norm before clipping.
double clip_grad_norm(const std::vector<torch::Tensor>& parameters, double max_norm);

// Pieces of clip_grad_norm for gradients spread over ranks: the sum of squares of the gradients
// whose `counted` entry is true (all when `counted` is empty), in fp64; and scaling every
// gradient by max_norm / (norm + 1e-6) when norm exceeds max_norm (> 0).
double grad_sum_squares(const std::vector<torch::Tensor>& parameters,
                        const std::vector<bool>& counted = {});
void clip_gradients(const std::vector<torch::Tensor>& parameters, double norm, double max_norm);

// Learning rate of 0-based `step`: linear warmup to learning_rate over warmup_steps
// (lr * (step + 1) / warmup), then cosine decay to min_learning_rate at the last step.
double learning_rate_at(int64_t step, const config::TrainingConfig& training);

}  // namespace cadre::runtime
