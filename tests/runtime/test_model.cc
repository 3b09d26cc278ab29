// The model's document boundaries: rotary positions restart at each document, attention and loss
// never cross one, so a document's logits and loss do not depend on what is packed beside it.
#include <gtest/gtest.h>
#include <torch/types.h>

#include "attention_server/kernel.h"
#include "common/error.h"
#include "runtime/attention_op.h"
#include "runtime/model.h"
#include "scheduler/plan.h"
#include "tests/runtime/tiny_model.h"

namespace cadre::runtime {
namespace {

using testing::tiny_model;

// Logits of one rank's packed documents through colocated attention.
torch::Tensor logits_of(const LlamaModel& model, const torch::Tensor& tokens,
                        const std::vector<int64_t>& lengths) {
  auto kernel = attention_server::make_kernel("cpu");
  auto layout = scheduler::layout_from_rank_documents({lengths});
  auto attention = make_colocated_attention(layout, 0, *kernel);
  return model.forward(tokens, document_positions(lengths), *attention);
}

TEST(Model, PositionsRestartAtEachDocument) {
  auto p = document_positions({3, 1, 2});
  std::vector<int64_t> expected = {0, 1, 2, 0, 0, 1};
  ASSERT_EQ(p.numel(), 6);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(p[i].item<int64_t>(), expected[i]) << "index " << i;
  EXPECT_EQ(document_positions({}).numel(), 0);
}

TEST(Model, RopeRotatesByPositionAndKeepsNorm) {
  auto x = torch::randn({1, 2, 8});
  auto at0 = apply_rope(x, torch::zeros({1}, torch::kLong), 10000);
  EXPECT_TRUE(torch::allclose(at0, x));  // position 0 is the identity
  auto at5 = apply_rope(x, torch::full({1}, 5, torch::kLong), 10000);
  EXPECT_NEAR(at5.norm().item<double>(), x.norm().item<double>(), 1e-5);
  EXPECT_FALSE(torch::allclose(at5, x));
  // Relative: <rope(q, m), rope(k, n)> depends on m - n only.
  auto q = torch::randn({1, 1, 8}), k = torch::randn({1, 1, 8});
  auto pos = [](int64_t v) { return torch::full({1}, v, torch::kLong); };
  double a = (apply_rope(q, pos(7), 100) * apply_rope(k, pos(3), 100)).sum().item<double>();
  double b = (apply_rope(q, pos(14), 100) * apply_rope(k, pos(10), 100)).sum().item<double>();
  EXPECT_NEAR(a, b, 1e-4);
}

TEST(Model, TargetsStopAtDocumentBoundaries) {
  auto tokens = torch::tensor({10, 11, 12, 20, 30, 31}, torch::kLong);
  auto t = document_targets(tokens, {3, 1, 2});
  std::vector<int64_t> expected = {11, 12, kIgnoreTarget, kIgnoreTarget, 31, kIgnoreTarget};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(t[i].item<int64_t>(), expected[i]) << "index " << i;
  EXPECT_THROW(document_targets(tokens, {3, 1}), Error);
}

TEST(Model, CrossEntropyIgnoresMaskedPositions) {
  auto logits = torch::randn({3, 5});
  auto targets = torch::tensor(std::vector<int64_t>{2, kIgnoreTarget, 4});
  auto lp = torch::log_softmax(logits, -1);
  double expected = -(lp[0][2] + lp[2][4]).item<double>();
  EXPECT_NEAR(cross_entropy_sum(logits, targets).item<double>(), expected, 1e-5);
}

TEST(Model, DocumentsDoNotSeeTheirNeighbours) {
  for (bool tied : {false, true}) {
    LlamaModel model(tiny_model(tied), 3);
    auto a = torch::randint(0, 50, {7}, torch::kLong);
    auto b = torch::randint(0, 50, {5}, torch::kLong);
    auto packed = logits_of(model, torch::cat({a, b}), {7, 5});
    auto alone_a = logits_of(model, a, {7});
    auto alone_b = logits_of(model, b, {5});
    EXPECT_TRUE(torch::allclose(packed.narrow(0, 0, 7), alone_a, 1e-5, 1e-5)) << "tied " << tied;
    EXPECT_TRUE(torch::allclose(packed.narrow(0, 7, 5), alone_b, 1e-5, 1e-5)) << "tied " << tied;

    auto kernel = attention_server::make_kernel("cpu");
    auto loss_of = [&](const torch::Tensor& tokens, const std::vector<int64_t>& lengths) {
      auto layout = scheduler::layout_from_rank_documents({lengths});
      auto attention = make_colocated_attention(layout, 0, *kernel);
      return model.loss_sum(tokens, lengths, *attention).item<double>();
    };
    const double packed_loss = loss_of(torch::cat({a, b}), {7, 5});
    EXPECT_NEAR(packed_loss, loss_of(a, {7}) + loss_of(b, {5}), 1e-4 * packed_loss);
  }
}

TEST(Model, InitialisationDependsOnlyOnTheSeed) {
  LlamaModel one(tiny_model(false), 11), two(tiny_model(false), 11), other(tiny_model(false), 12);
  ASSERT_EQ(one.parameters().size(), two.parameters().size());
  EXPECT_EQ(one.parameters().size(), 1 + 2 * 9 + 1 + 1u);  // untied: lm_head is separate
  EXPECT_EQ(LlamaModel(tiny_model(true), 11).parameters().size(), 1 + 2 * 9 + 1u);
  for (size_t i = 0; i < one.parameters().size(); ++i) {
    EXPECT_TRUE(torch::equal(one.parameters()[i].value, two.parameters()[i].value))
        << one.parameters()[i].name;
  }
  EXPECT_FALSE(torch::equal(one.parameters()[0].value, other.parameters()[0].value));
}

TEST(Model, RejectsBadSizes) {
  auto m = tiny_model(false);
  m.set_num_kv_heads(3);
  EXPECT_THROW(LlamaModel(m, 1), Error);
  m = tiny_model(false);
  m.set_head_dim(7);
  EXPECT_THROW(LlamaModel(m, 1), Error);
}

}  // namespace
}  // namespace cadre::runtime
