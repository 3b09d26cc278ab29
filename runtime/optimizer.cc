// AdamW, gradient clipping and the learning-rate schedule, on fp32 tensors in place.
#include "runtime/optimizer.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace cadre::runtime {

AdamW::AdamW(std::vector<torch::Tensor> parameters, const AdamWOptions& options)
    : parameters_(std::move(parameters)), options_(options) {
  CADRE_CHECK(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1,
              "AdamW betas must be in [0, 1); got ", options.beta1, ", ", options.beta2);
  CADRE_CHECK(options.eps > 0, "AdamW eps must be positive; got ", options.eps);
  CADRE_CHECK(options.weight_decay >= 0, "weight decay must be >= 0; got ", options.weight_decay);
  for (const auto& p : parameters_) {
    exp_avg_.push_back(torch::zeros_like(p).detach());
    exp_avg_sq_.push_back(torch::zeros_like(p).detach());
  }
}

void AdamW::step(double learning_rate) {
  ++steps_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bias1 = 1 - std::pow(b1, static_cast<double>(steps_));
  const double bias2 = 1 - std::pow(b2, static_cast<double>(steps_));
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    torch::Tensor p = parameters_[i];
    if (!p.grad().defined()) continue;
    const torch::Tensor g = p.grad();
    if (p.dim() >= 2 && options_.weight_decay > 0) {
      p.mul_(1 - learning_rate * options_.weight_decay);
    }
    exp_avg_[i].mul_(b1).add_(g, 1 - b1);
    exp_avg_sq_[i].mul_(b2).addcmul_(g, g, 1 - b2);
    auto denom = (exp_avg_sq_[i] / bias2).sqrt_().add_(options_.eps);
    p.addcdiv_(exp_avg_[i], denom, -learning_rate / bias1);
  }
}

AdamWOptions adamw_options(const config::TrainingConfig& training) {
  AdamWOptions o;
  o.beta1 = training.adam_beta1();
  o.beta2 = training.adam_beta2();
  o.eps = training.adam_eps();
  o.weight_decay = training.weight_decay();
  return o;
}

double clip_grad_norm(const std::vector<torch::Tensor>& parameters, double max_norm) {
  double sum_squares = 0;
  for (const auto& p : parameters) {
    if (p.grad().defined()) sum_squares += p.grad().to(torch::kDouble).pow(2).sum().item<double>();
  }
  const double norm = std::sqrt(sum_squares);
  if (max_norm > 0 && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    torch::NoGradGuard no_grad;
    for (const auto& p : parameters) {
      if (p.grad().defined()) p.grad().mul_(scale);
    }
  }
  return norm;
}

double grad_sum_squares(const std::vector<torch::Tensor>& parameters,
                        const std::vector<bool>& counted) {
  double sum_squares = 0;
  for (size_t i = 0; i < parameters.size(); ++i) {
    const auto& p = parameters[i];
    if (!counted.empty() && !counted[i]) continue;
    if (p.grad().defined()) sum_squares += p.grad().to(torch::kDouble).pow(2).sum().item<double>();
  }
  return sum_squares;
}

void clip_gradients(const std::vector<torch::Tensor>& parameters, double norm, double max_norm) {
  if (!(max_norm > 0 && norm > max_norm)) return;
  const double scale = max_norm / (norm + 1e-6);
  torch::NoGradGuard no_grad;
  for (const auto& p : parameters) {
    if (p.grad().defined()) p.grad().mul_(scale);
  }
}

double learning_rate_at(int64_t step, const config::TrainingConfig& training) {
  const double peak = training.learning_rate(), floor = training.min_learning_rate();
  const int64_t warmup = training.warmup_steps(), total = training.steps();
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const int64_t decay_steps = std::max<int64_t>(1, total - 1 - warmup);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / decay_steps);
  return floor + 0.5 * (peak - floor) * (1 + std::cos(M_PI * progress));
}

}  // namespace cadre::runtime
