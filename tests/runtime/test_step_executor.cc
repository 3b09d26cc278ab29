// The hand-scheduled step executor against plain autograd: one rank's loss and every parameter
// gradient through run_forward_backward (one or two nano-batches, with and without
// recomputation, with the loss in chunks) equal those of model.loss_sum(...).backward().
#include <gtest/gtest.h>
#include <torch/types.h>

#include "attention_server/kernel.h"
#include "common/error.h"
#include "comm/timeline.h"
#include "runtime/attention_op.h"
#include "runtime/model.h"
#include "runtime/step_executor.h"
#include "scheduler/plan.h"
#include "tests/runtime/tiny_model.h"

namespace cadre::runtime {
namespace {

std::vector<torch::Tensor> take_grads(const LlamaModel& model) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : model.parameters()) {
    grads.push_back(p.value.grad().defined() ? p.value.grad().clone() : torch::zeros_like(p.value));
    if (p.value.grad().defined()) p.value.mutable_grad().zero_();
  }
  return grads;
}

NanoBatch nano_of(const torch::Tensor& tokens, const std::vector<int64_t>& lengths,
                  attention_server::CoreAttentionKernel& kernel, comm::Timeline* timeline) {
  NanoBatch n;
  n.tokens = tokens;
  n.positions = document_positions(lengths);
  n.targets = document_targets(tokens, lengths);
  const attention_server::VarlenBatch batch = attention_server::whole_documents_batch(lengths);
  n.make_attention = [batch, &kernel, timeline]() {
    return make_colocated_phases(batch, kernel, timeline);
  };
  return n;
}

TEST(StepExecutor, MatchesPlainAutograd) {
  const auto config = testing::tiny_model(/*tied=*/true, /*layers=*/3);
  LlamaModel model(config, 3);
  auto kernel = attention_server::make_kernel("cpu");
  const std::vector<int64_t> lengths = {9, 1, 17, 5, 12};
  torch::manual_seed(5);
  auto tokens = torch::randint(0, config.vocab_size(), {44}, torch::kLong);
  const double scale = 0.37;

  // Reference: one autograd graph for the whole micro-batch.
  auto layout = scheduler::layout_from_rank_documents({lengths});
  auto attention = make_colocated_attention(layout, 0, *kernel);
  auto loss = model.loss_sum(tokens, lengths, *attention);
  (loss * scale).backward();
  const double expected_loss = loss.item<double>();
  const auto expected = take_grads(model);

  // Documents {9, 1} | {17, 5, 12} as two nano-batches.
  auto first = tokens.narrow(0, 0, 10), second = tokens.narrow(0, 10, 34);
  struct Case {
    const char* what;
    int nanos;
    bool recompute;
    int64_t chunk;
  };
  for (const Case& c : {Case{"one nano-batch", 1, false, 0}, Case{"two nano-batches", 2, false, 0},
                        Case{"two, recompute", 2, true, 0}, Case{"one, recompute, chunks of 5", 1, true, 5},
                        Case{"two, chunks of 3", 2, false, 3}}) {
    auto timeline = comm::make_host_timeline();
    timeline->begin_step();
    std::vector<NanoBatch> nanos;
    if (c.nanos == 1) {
      nanos.push_back(nano_of(tokens, lengths, *kernel, timeline.get()));
    } else {
      nanos.push_back(nano_of(first, {9, 1}, *kernel, timeline.get()));
      nanos.push_back(nano_of(second, {17, 5, 12}, *kernel, timeline.get()));
    }
    ExecutorOptions options;
    options.recompute = c.recompute;
    options.loss_chunk_tokens = c.chunk;
    options.loss_scale = scale;
    options.timeline = timeline.get();
    const double got = run_forward_backward(&model, config, torch::kFloat, torch::kCPU, nanos,
                                            options);
    EXPECT_NEAR(got, expected_loss, 1e-5 * std::abs(expected_loss)) << c.what;
    const auto grads = take_grads(model);
    for (size_t i = 0; i < grads.size(); ++i) {
      const double rel = (grads[i] - expected[i]).norm().item<double>() /
                         std::max(expected[i].norm().item<double>(), 1e-30);
      EXPECT_LE(rel, 1e-5) << c.what << ": " << model.parameters()[i].name;
    }
    // Every layer's attention ran once per nano-batch and direction.
    int attention_spans = 0;
    for (const auto& s : timeline->resolve()) {
      if (s.name.rfind("attention", 0) == 0) ++attention_spans;
    }
    EXPECT_EQ(attention_spans, 2 * c.nanos * config.num_layers()) << c.what;
  }
}

TEST(Timeline, ExposedCommunicationByHand) {
  using comm::Lane;
  std::vector<comm::Span> spans = {
      {Lane::kCompute, "a", 0, 10},          {Lane::kCompute, "b", 15, 30},
      {Lane::kCommunication, "a2a x", 5, 20},  // 5..10 and 15..20 covered: 5 exposed
      {Lane::kCommunication, "a2a y", 28, 40},  // 28..30 covered: 10 exposed
      {Lane::kCommunication, "grad", 40, 50},   // other prefix
  };
  EXPECT_DOUBLE_EQ(comm::exposed_communication_us(spans, "a2a"), 15.0);
  EXPECT_DOUBLE_EQ(comm::exposed_communication_us(spans), 25.0);
  EXPECT_DOUBLE_EQ(comm::busy_us(spans, Lane::kCompute), 25.0);
  EXPECT_DOUBLE_EQ(comm::busy_us(spans, Lane::kCommunication), 37.0);  // 5..20, 28..50
  const auto round_trip = comm::deserialize_spans(comm::serialize_spans(spans));
  ASSERT_EQ(round_trip.size(), spans.size());
  EXPECT_EQ(round_trip[2].name, "a2a x");
  EXPECT_EQ(round_trip[3].end_us, 40);
  EXPECT_THROW(comm::deserialize_spans(comm::serialize_spans(spans).substr(0, 7)), Error);
}

}  // namespace
}  // namespace cadre::runtime
