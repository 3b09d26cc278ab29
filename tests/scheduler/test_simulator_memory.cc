// The simulator's memory estimate: activation bytes per token per layer against a hand count for a
// small model in both recompute modes, the peak of a step against a hand computation (1F1B
// micro-batches in flight, loss chunk, weights and optimizer), and the fits flag at the limit.
#include <gtest/gtest.h>

#include "common/error.h"
#include "scheduler/simulator.h"
#include "scheduler/step_calibration.h"
#include "tests/scheduler/test_models.h"

namespace cadre::scheduler {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// h 1024, 8 query heads and 2 KV heads of 128, SwiGLU 4096, 8 layers, vocabulary 32000, untied.
config::ModelConfig small_model() {
  config::ModelConfig m;
  m.set_num_layers(8);
  m.set_hidden_size(1024);
  m.set_num_heads(8);
  m.set_num_kv_heads(2);
  m.set_head_dim(128);
  m.set_ffn_hidden_size(4096);
  m.set_vocab_size(32000);
  return m;
}

// Every micro-batch holds exactly `context` tokens: 4096-token documents, 32K context.
config::RunConfig fixed_config(int32_t gpus, const std::string& recompute) {
  config::RunConfig config;
  *config.mutable_model() = small_model();
  config.mutable_cluster()->set_num_gpus(gpus);
  config.mutable_data()->set_context_length(32768);
  config.mutable_data()->set_distribution("fixed");
  config.mutable_data()->set_fixed_tokens(4096);
  config.mutable_training()->set_recompute(recompute);
  return config;
}

TEST(SimulatorMemory, BytesPerTokenPerLayerMatchAHandCount) {
  const config::ModelConfig m = small_model();
  // none, TP 1: owner 2·(4h + 3f) = 2·(4096 + 12288); query Q + O 2·2·8·128 + lse 4·8;
  // key K + V 2·2·2·128; output O 2·8·128.
  ActivationBytes none = activation_bytes_per_token_per_layer(m, 1, "none");
  EXPECT_DOUBLE_EQ(none.owner, 32768);
  EXPECT_DOUBLE_EQ(none.query, 4128);
  EXPECT_DOUBLE_EQ(none.key, 1024);
  EXPECT_DOUBLE_EQ(none.output, 2048);
  EXPECT_DOUBLE_EQ(none.per_token(), 37920);
  // linear, TP 1: owner is the layer input 2·h; core attention's tensors unchanged.
  ActivationBytes linear = activation_bytes_per_token_per_layer(m, 1, "linear");
  EXPECT_DOUBLE_EQ(linear.owner, 2048);
  EXPECT_DOUBLE_EQ(linear.query, 4128);
  EXPECT_DOUBLE_EQ(linear.key, 1024);
  EXPECT_DOUBLE_EQ(linear.per_token(), 7200);
  // TP 2 halves everything (4 query heads, 1 KV head per GPU).
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(m, 2, "none").per_token(), 18960);
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(m, 2, "linear").per_token(), 3600);
  // TP 4: 2 query heads, and the 2 KV heads cannot split below one per GPU.
  ActivationBytes tp4 = activation_bytes_per_token_per_layer(m, 4, "linear");
  EXPECT_DOUBLE_EQ(tp4.owner, 512);
  EXPECT_DOUBLE_EQ(tp4.query, 2 * 2 * 2 * 128 + 4 * 2);
  EXPECT_DOUBLE_EQ(tp4.key, 512);
  EXPECT_THROW(activation_bytes_per_token_per_layer(m, 1, "all"), Error);
}

TEST(SimulatorMemory, NoRecomputeIsKorthikantisCountForLlama8b) {
  // Korthikanti et al.'s 34·h without dropout masks (-2·h), SwiGLU's extra matrix and GQA's
  // smaller K/V: 8h + 6f + 4(a + k)d + 4a = 139392 bytes, within 0.1% of 34·h = 139264.
  const config::ModelConfig m = testing::llama8b();
  const double none = activation_bytes_per_token_per_layer(m, 1, "none").per_token();
  EXPECT_DOUBLE_EQ(none, 139392);
  EXPECT_NEAR(none / (34.0 * 4096), 1.0, 1e-3);
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(m, 1, "linear").per_token(), 28800);
}

TEST(SimulatorMemory, PeakMatchesAHandComputation) {
  // Per layer: Q and O 8·128·1024·2 each, K and V 256·1024·2 each, SwiGLU 3·1024·4096, 2 norms.
  const double params = 8.0 * 15206400 + 2.0 * 32000 * 1024;  // layers, embedding + LM head
  EXPECT_DOUBLE_EQ(parameters_per_stage(small_model(), 1), params);
  const double loss_chunk = 8192.0 * 32000 * 8;  // fp32 logits and gradient, 8192-token chunk
  EXPECT_DOUBLE_EQ(loss_chunk_bytes(small_model(), 1, 8192), loss_chunk);
  for (const char* strategy : {"fixed", "ideal", "wlb", "cp"}) {
    auto r = simulate_step(fixed_config(4, "linear"), {strategy}, 1);
    const StepCost& c = r.costs[0];
    EXPECT_EQ(r.recompute, "linear");
    // PP 1: one micro-batch of 32768 tokens, 8 layers, 7200 bytes per token, plus the loss chunk.
    EXPECT_NEAR(c.peak_activation_gib, (8.0 * 32768 * 7200 + loss_chunk) / kGiB, 1e-9) << strategy;
    EXPECT_NEAR(c.weights_optimizer_gib, 16 * params / kGiB, 1e-9);
    EXPECT_NEAR(c.peak_memory_gib, c.peak_activation_gib + c.weights_optimizer_gib, 1e-9);
    EXPECT_TRUE(c.fits_memory);
  }
  // PP 2, 6 micro-batches: stage 0 keeps 2 micro-batches of 4 layers in flight (no recompute:
  // 2·4·32768·37920 bytes), more than the last stage's one plus the loss chunk.
  auto config = fixed_config(8, "none");
  config.mutable_cluster()->set_pipeline_parallel(2);
  config.mutable_training()->set_micro_batches(6);
  const StepCost c = simulate_step(config, {"fixed"}, 1).costs[0];
  const double micro_batch = 4.0 * 32768 * 37920;
  ASSERT_GT(2 * micro_batch, micro_batch + loss_chunk);
  EXPECT_NEAR(c.peak_activation_gib, 2 * micro_batch / kGiB, 1e-9);
  // Each stage: 4 layers and one vocabulary matrix (embedding on stage 0, LM head on stage 1).
  EXPECT_NEAR(c.weights_optimizer_gib, 16 * (4.0 * 15206400 + 32000.0 * 1024) / kGiB, 1e-9);
}

TEST(SimulatorMemory, FitsFlipsAtTheLimitAndTimesDoNotChange) {
  const std::vector<std::string> strategies = {"cad", "fixed"};
  auto config = fixed_config(4, "none");
  config.mutable_data()->set_distribution("wlb");
  const SimulationResult none = simulate_step(config, strategies, 1);
  config.mutable_training()->set_recompute("linear");
  const SimulationResult linear = simulate_step(config, strategies, 1);
  for (size_t i = 0; i < strategies.size(); ++i) {
    // Recomputation costs each layer's forward segments again (the calibration's recompute
    // costs): for fixed packing, every rank's tokens x layers x that per-token cost.
    EXPECT_GT(linear.costs[i].step_us, none.costs[i].step_us);
    if (strategies[i] == "fixed") {
      const StepCalibration& cal = default_step_calibration();
      const double per_token =
          cal.segment("qkv", "recompute").us_per_unit * segment_work("qkv", small_model(), 1, 1) +
          cal.segment("out_mlp", "recompute").us_per_unit *
              segment_work("out_mlp", small_model(), 1, 1);
      const double tokens = static_cast<double>(none.tokens_per_step) / none.data_parallel;
      EXPECT_NEAR(linear.costs[i].step_us - none.costs[i].step_us,
                  tokens * small_model().num_layers() * per_token, 1e-6 * none.costs[i].step_us);
    }
    EXPECT_GT(none.costs[i].peak_activation_gib, 2 * linear.costs[i].peak_activation_gib);
    const double need = linear.costs[i].peak_memory_gib;
    for (double limit : {need * (1 - 1e-6), need * (1 + 1e-6)}) {
      config.mutable_cluster()->set_gpu_memory_gib(limit);
      const StepCost c = simulate_step(config, strategies, 1).costs[i];
      EXPECT_EQ(c.fits_memory, limit >= need) << strategies[i] << " at " << limit << " GiB";
      EXPECT_EQ(c.step_us, linear.costs[i].step_us);
      EXPECT_EQ(c.peak_memory_gib, need);
    }
  }
}

}  // namespace
}  // namespace cadre::scheduler
