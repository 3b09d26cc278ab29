// The oracle of the model-parallel training tests: one process training what every
// data-parallel group of a grid trains (the unsplit model, every group's documents in one
// graph, the mean loss, AdamW), and the comparison of a Trainer against it step by step.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "attention_server/kernel.h"
#include "comm/transport.h"
#include "runtime/attention_op.h"
#include "runtime/data.h"
#include "runtime/model.h"
#include "runtime/optimizer.h"
#include "runtime/trainer.h"
#include "scheduler/plan.h"

namespace cadre::runtime::testing {

inline double relative_difference(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = std::max(b.to(torch::kDouble).norm().item<double>(), 1e-30);
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).norm().item<double>() / scale;
}

// One process training what every data-parallel group of the grid trains: the unsplit model,
// each step's documents of every group (rebuilt from their loaders, whole documents across
// group boundaries with packing "span") in one graph, the mean loss, AdamW.
class SingleProcessReference {
 public:
  SingleProcessReference(const config::RunConfig& config, int groups)
      : config_(config),
        groups_(groups),
        model_(config.model(), config.training().seed(), torch::kCPU, nullptr,
               // TPLA on T ranks is the function of one process with T latent slices.
               config.model().tpla() ? config.cluster().tensor_parallel() : 0),
        optimizer_(model_.parameter_tensors(), adamw_options(config.training())) {
    for (int g = 0; g < groups; ++g) {
      loaders_.push_back(
          std::make_unique<DataLoader>(config.data(), config.model().vocab_size(), g, groups));
    }
  }
  // Loss of the next step (training.micro_batches batches of every group); leaves the mean-loss
  // gradient in every parameter.
  double forward_backward() {
    for (const auto& p : model_.parameters()) {
      if (p.value.grad().defined()) p.value.mutable_grad().zero_();
    }
    auto kernel = attention_server::make_kernel("cpu");
    double loss_sum = 0;
    int64_t targets = 0;
    for (int micro = 0; micro < config_.training().micro_batches(); ++micro) {
      std::vector<std::vector<int64_t>> lengths;
      std::vector<bool> continues;
      std::vector<torch::Tensor> tokens;
      for (auto& loader : loaders_) {
        RankBatch batch = loader->next();
        lengths.push_back(batch.doc_lengths);
        continues.push_back(batch.first_continues);
        tokens.push_back(batch.tokens);
      }
      scheduler::Layout layout = scheduler::layout_from_rank_pieces(lengths, continues);
      std::vector<int64_t> whole;
      for (const auto& doc : layout.documents) {
        whole.push_back(doc.length_tokens);
        targets += std::max<int64_t>(0, doc.length_tokens - 1);
      }
      auto op =
          make_colocated_attention(scheduler::layout_from_rank_documents({whole}), 0, *kernel);
      auto loss = model_.loss_sum(torch::cat(tokens), whole, *op);
      loss.backward();
      loss_sum += loss.item<double>();
    }
    torch::NoGradGuard no_grad;
    for (const auto& p : model_.parameters())
      p.value.mutable_grad().div_(static_cast<double>(targets));
    return loss_sum / static_cast<double>(targets);
  }
  // Returns the gradient norm before clipping.
  double optimizer_step() {
    const double norm = clip_grad_norm(model_.parameter_tensors(), config_.training().grad_clip());
    optimizer_.step(learning_rate_at(step_++, config_.training()));
    return norm;
  }
  const LlamaModel& model() const { return model_; }

 private:
  config::RunConfig config_;
  int groups_;
  LlamaModel model_;
  AdamW optimizer_;
  std::vector<std::unique_ptr<DataLoader>> loaders_;
  int64_t step_ = 0;
};

// `steps` steps of a trainer under `config` against the single-process reference: the loss,
// every whole gradient (gathered from the shards), the global gradient norm and every whole
// weight after each step.
inline void expect_matches_single_process(comm::Transport& world, const config::RunConfig& config,
                                          const std::string& what, int steps = 2) {
  const int tp = config.cluster().tensor_parallel();
  Trainer trainer(config, world);
  ASSERT_EQ(trainer.grid().tensor_size(), tp) << what;
  ASSERT_EQ(trainer.grid().data_size(), world.size() / tp) << what;
  SingleProcessReference reference(config, world.size() / tp);
  for (int step = 0; step < steps; ++step) {
    StepMetrics m = trainer.forward_backward();
    const double want = reference.forward_backward();
    EXPECT_LE(std::abs(m.loss - want), 1e-5 * std::abs(want))
        << what << ", step " << step << ": loss " << m.loss << " vs one process " << want;
    const auto& got = trainer.model().parameters();
    const auto& ref = reference.model().parameters();
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < got.size(); ++i) {
      const double rel = relative_difference(trainer.whole_gradient(i), ref[i].value.grad());
      EXPECT_LE(rel, 1e-5) << what << ", step " << step << ": gradient of " << got[i].name
                           << " differs by " << rel << " (relative L2)";
    }
    trainer.optimizer_step(&m);
    const double norm = reference.optimizer_step();
    EXPECT_LE(std::abs(m.grad_norm - norm), 1e-5 * norm)
        << what << ", step " << step << ": gradient norm " << m.grad_norm << " vs " << norm;
    for (size_t i = 0; i < got.size(); ++i) {
      const double rel = relative_difference(trainer.whole_parameter(i), ref[i].value);
      EXPECT_LE(rel, 1e-5) << what << ", after step " << step << ": weight " << got[i].name
                           << " differs by " << rel << " (relative L2)";
    }
  }
}

}  // namespace cadre::runtime::testing
