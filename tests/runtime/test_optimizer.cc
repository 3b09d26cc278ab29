// AdamW against a hand computation, gradient clipping, and the warmup + cosine schedule.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <cmath>

#include "runtime/optimizer.h"

namespace cadre::runtime {
namespace {

TEST(AdamW, TwoStepsMatchHandComputation) {
  AdamWOptions o;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  auto matrix = torch::tensor({1.0, -2.0, 3.0, 0.5}, torch::kDouble).view({2, 2}).requires_grad_();
  auto vector = torch::tensor({1.0, -1.0}, torch::kDouble).requires_grad_();
  AdamW adam({matrix, vector}, o);
  std::vector<std::vector<double>> grads_matrix = {{0.1, -0.2, 0.3, 0.0}, {-0.5, 0.25, 1.0, 2.0}};
  std::vector<std::vector<double>> grads_vector = {{0.4, -0.3}, {0.1, 0.2}};
  std::vector<double> p_m = {1.0, -2.0, 3.0, 0.5}, m_m(4, 0), v_m(4, 0);
  std::vector<double> p_v = {1.0, -1.0}, m_v(2, 0), v_v(2, 0);
  const double lrs[2] = {0.01, 0.02};
  for (int t = 1; t <= 2; ++t) {
    matrix.mutable_grad() = torch::tensor(grads_matrix[t - 1], torch::kDouble).view({2, 2});
    vector.mutable_grad() = torch::tensor(grads_vector[t - 1], torch::kDouble);
    adam.step(lrs[t - 1]);
    auto hand = [&](std::vector<double>& p, std::vector<double>& m, std::vector<double>& v,
                    const std::vector<double>& g, bool decay) {
      for (size_t i = 0; i < p.size(); ++i) {
        if (decay) p[i] -= lrs[t - 1] * o.weight_decay * p[i];
        m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
        v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
        const double m_hat = m[i] / (1 - std::pow(o.beta1, t));
        const double v_hat = v[i] / (1 - std::pow(o.beta2, t));
        p[i] -= lrs[t - 1] * m_hat / (std::sqrt(v_hat) + o.eps);
      }
    };
    hand(p_m, m_m, v_m, grads_matrix[t - 1], true);
    hand(p_v, m_v, v_v, grads_vector[t - 1], false);  // 1-D: no weight decay
    auto flat = matrix.detach().reshape({-1});
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(flat[i].item<double>(), p_m[i], 1e-12) << t << " " << i;
    for (int i = 0; i < 2; ++i) EXPECT_NEAR(vector[i].item<double>(), p_v[i], 1e-12) << t << " " << i;
  }
  EXPECT_EQ(adam.steps(), 2);
}

TEST(ClipGradNorm, ScalesOnlyAboveTheLimit) {
  auto a = torch::zeros({2}).requires_grad_();
  auto b = torch::zeros({1}).requires_grad_();
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  EXPECT_NEAR(clip_grad_norm({a, b}, 10.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 3.0, 1e-6);
  EXPECT_NEAR(clip_grad_norm({a, b}, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-5);
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-5);
}

TEST(Schedule, WarmupThenCosineToTheFloor) {
  config::TrainingConfig t;
  t.set_learning_rate(1e-3);
  t.set_min_learning_rate(1e-4);
  t.set_warmup_steps(2);
  t.set_steps(10);
  EXPECT_DOUBLE_EQ(learning_rate_at(0, t), 5e-4);
  EXPECT_DOUBLE_EQ(learning_rate_at(1, t), 1e-3);
  EXPECT_DOUBLE_EQ(learning_rate_at(2, t), 1e-3);  // cosine starts at the peak
  // Decay over steps 2..9 (7 intervals): step 5 is 3/7 of the way.
  EXPECT_NEAR(learning_rate_at(5, t), 1e-4 + 0.5 * 9e-4 * (1 + std::cos(M_PI * 3.0 / 7.0)), 1e-15);
  EXPECT_NEAR(learning_rate_at(9, t), 1e-4, 1e-15);
  EXPECT_NEAR(learning_rate_at(50, t), 1e-4, 1e-15);  // past the end: the floor
  for (int s = 2; s < 9; ++s) EXPECT_GT(learning_rate_at(s, t), learning_rate_at(s + 1, t));
  t.set_warmup_steps(0);
  EXPECT_DOUBLE_EQ(learning_rate_at(0, t), 1e-3);
}

}  // namespace
}  // namespace cadre::runtime
