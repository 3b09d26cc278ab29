// The memory estimate: every term against a hand count for a small model (what autograd saves per
// layer in both recompute modes, the bf16 weight copies, the loss chunk at its peak, the first
// backward layer, the residual buffers, the optimizer's temporaries, weights and optimizer state
// plain and sharded), then the peak of a step in the cluster simulator (1F1B micro-batches in
// flight) and in the step model (which phase holds the peak), and the fits flag at the limit.
// Each expected value is an exact hand computation, so dropping or changing any term fails.
#include <gtest/gtest.h>

#include "common/error.h"
#include "scheduler/simulator.h"
#include "scheduler/step_calibration.h"
#include "scheduler/step_model.h"
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
  // none, TP 1: owner = layer input 2h + two RMSNorms (fp32 upcast 4h + normalised 2h) + the
  // QKV and gate/up inputs 2 x 2h + SwiGLU gate, up, silu(gate), product 4 x 2f
  // = 2048 + 12288 + 4096 + 32768; query Q + O 2·2·8·128 + lse 4·8; key K + V 2·2·2·128;
  // output O 2·8·128.
  ActivationBytes none = activation_bytes_per_token_per_layer(m, 1, "none");
  EXPECT_DOUBLE_EQ(none.owner, 51200);
  EXPECT_DOUBLE_EQ(none.query, 4128);
  EXPECT_DOUBLE_EQ(none.key, 1024);
  EXPECT_DOUBLE_EQ(none.output, 2048);
  EXPECT_DOUBLE_EQ(none.per_token(), 56352);
  // linear, TP 1: owner is the layer input 2·h; core attention's tensors unchanged.
  ActivationBytes linear = activation_bytes_per_token_per_layer(m, 1, "linear");
  EXPECT_DOUBLE_EQ(linear.owner, 2048);
  EXPECT_DOUBLE_EQ(linear.query, 4128);
  EXPECT_DOUBLE_EQ(linear.key, 1024);
  EXPECT_DOUBLE_EQ(linear.per_token(), 7200);
  // TP 2 with sequence parallelism: the norms' tensors and the layer input halve (14h / 2), the
  // gathered projection inputs do not (4h), SwiGLU halves (8f / 2): 7168 + 4096 + 16384; 4 query
  // heads (2·2·4·128 + 4·4) and one KV head (2·2·128).
  ActivationBytes tp2 = activation_bytes_per_token_per_layer(m, 2, "none");
  EXPECT_DOUBLE_EQ(tp2.owner, 27648);
  EXPECT_DOUBLE_EQ(tp2.query, 2064);
  EXPECT_DOUBLE_EQ(tp2.key, 512);
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(m, 2, "linear").per_token(), 3600);
  // TP 4: 2 query heads, and the 2 KV heads cannot split below one per GPU.
  ActivationBytes tp4 = activation_bytes_per_token_per_layer(m, 4, "linear");
  EXPECT_DOUBLE_EQ(tp4.owner, 512);
  EXPECT_DOUBLE_EQ(tp4.query, 2 * 2 * 2 * 128 + 4 * 2);
  EXPECT_DOUBLE_EQ(tp4.key, 512);
  EXPECT_THROW(activation_bytes_per_token_per_layer(m, 1, "all"), Error);
}

TEST(SimulatorMemory, NoRecomputeKeepsMoreThanKorthikantisCountForLlama8b) {
  // 18h + 8f + Q, O, lse, K, V = 73728 + 114688 + 16512 + 4096 = 209024 bytes: 1.5x Korthikanti
  // et al.'s 34·h (139264), because this runtime keeps each RMSNorm's fp32 upcast and its bf16
  // output beside the projection's input, and SwiGLU's silu(gate) and product (not fused).
  const config::ModelConfig m = testing::llama8b();
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(m, 1, "none").per_token(), 209024);
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(m, 1, "linear").per_token(), 28800);
}

TEST(SimulatorMemory, EveryTransientTermMatchesAHandCount) {
  const config::ModelConfig m = small_model();
  // Layer matrices: Q, K, V 1024·(1024 + 2·256), O 1024·1024, gate/up/down 3·1024·4096.
  EXPECT_DOUBLE_EQ(layer_matrix_parameters(m, 1), 15204352);
  EXPECT_DOUBLE_EQ(layer_matrix_parameters(m, 2), 7602176);
  // bf16 copies saved per layer and nano-batch without recomputation: matrices and two norm
  // weights, 2 bytes each; none with recomputation.
  EXPECT_DOUBLE_EQ(saved_weight_copy_bytes(m, 1, "none"), 2 * (15204352 + 2048));
  EXPECT_DOUBLE_EQ(saved_weight_copy_bytes(m, 1, "linear"), 0);
  // Loss chunk of 8192 tokens: 12 bytes per logit (8192·32000), the head's bf16 copy
  // (2·32000·1024) and the final norm's 8h per token.
  EXPECT_DOUBLE_EQ(loss_chunk_bytes(m, 1, 8192), 3145728000.0 + 65536000 + 67108864);
  EXPECT_DOUBLE_EQ(loss_chunk_bytes(m, 2, 8192), 1572864000.0 + 32768000 + 8192.0 * 5120);
  // First backward layer of 1000 tokens, recomputing: 8h + 2h + 3·2f saved + 3·2f gradients per
  // token (10240 + 49152), and the bf16 O and MLP weights 2·(1024² + 3·1024·4096).
  EXPECT_DOUBLE_EQ(backward_layer_bytes(m, 1, "linear", 1000), 1000.0 * 59392 + 27262976);
  // Without recomputation only the gradients beyond what is saved: 2 x 2f per token.
  EXPECT_DOUBLE_EQ(backward_layer_bytes(m, 1, "none", 1000), 1000.0 * 16384);
  // Residual stream or its gradient: 2h bytes per token, rows split by SP.
  EXPECT_DOUBLE_EQ(residual_bytes(m, 1, 1000), 2048000);
  EXPECT_DOUBLE_EQ(residual_bytes(m, 2, 1000), 1024000);
  // Optimizer temporaries: fp64 copy and square (16 bytes per element); sharded 32.
  EXPECT_DOUBLE_EQ(optimizer_step_bytes(false, 1e6), 16e6);
  EXPECT_DOUBLE_EQ(optimizer_step_bytes(true, 1e6), 32e6);
  // Weights and optimizer state: 16 bytes plain; sharded 8 + 24 / dp.
  EXPECT_DOUBLE_EQ(weights_optimizer_bytes_per_parameter(false, 8), 16);
  EXPECT_DOUBLE_EQ(weights_optimizer_bytes_per_parameter(true, 1), 32);
  EXPECT_DOUBLE_EQ(weights_optimizer_bytes_per_parameter(true, 4), 14);
  EXPECT_DOUBLE_EQ(weights_optimizer_bytes_per_parameter(true, 8), 11);
  EXPECT_THROW(weights_optimizer_bytes_per_parameter(true, 0), Error);
}

TEST(SimulatorMemory, PeakMatchesAHandComputation) {
  // Per layer: Q and O 8·128·1024·2 each, K and V 256·1024·2 each, SwiGLU 3·1024·4096, 2 norms.
  const double params = 8.0 * 15206400 + 2.0 * 32000 * 1024;  // layers, embedding + LM head
  EXPECT_DOUBLE_EQ(parameters_per_stage(small_model(), 1), params);
  for (const char* strategy : {"fixed", "ideal", "wlb", "cp"}) {
    auto r = simulate_step(fixed_config(4, "linear"), {strategy}, 1);
    const StepCost& c = r.costs[0];
    EXPECT_EQ(r.recompute, "linear");
    // PP 1, one nano-batch of 32768 tokens: 8 layers x 7200 bytes (1887436800) + the residual
    // gradient buffer 2048·32768, then the head phase (it beats the first backward layer,
    // 32768·59392 + 27262976): the last output 2048·32768 and the 8192-token loss chunk.
    const double head_phase = 1887436800.0 + 67108864 + 67108864 + 3278372864.0;
    EXPECT_NEAR(c.peak_activation_gib, head_phase / kGiB, 1e-9) << strategy;
    EXPECT_NEAR(c.weights_optimizer_gib, 16 * params / kGiB, 1e-9);
    EXPECT_NEAR(c.peak_memory_gib, c.peak_activation_gib + c.weights_optimizer_gib, 1e-9);
    EXPECT_TRUE(c.fits_memory);
  }
  // PP 2, 6 micro-batches, no recomputation: stage 0 keeps 2 micro-batches of 4 layers in
  // flight (each 4·32768·56352 bytes + 4 layers of bf16 weight copies 4·30412800) and peaks in
  // its first backward layer (+ residual gradient 2048·32768 + SwiGLU gradients 32768·16384),
  // above the last stage's one micro-batch and the loss chunk.
  auto config = fixed_config(8, "none");
  config.mutable_cluster()->set_pipeline_parallel(2);
  config.mutable_training()->set_micro_batches(6);
  const StepCost c = simulate_step(config, {"fixed"}, 1).costs[0];
  const double micro_batch = 4.0 * 32768 * 56352 + 4.0 * 30412800;
  const double first_stage = 2 * micro_batch + 67108864 + 536870912;
  EXPECT_NEAR(c.peak_activation_gib, first_stage / kGiB, 1e-9);
  // Each stage: 4 layers and one vocabulary matrix (embedding on stage 0, LM head on stage 1).
  EXPECT_NEAR(c.weights_optimizer_gib, 16 * (4.0 * 15206400 + 32000.0 * 1024) / kGiB, 1e-9);
  // The sharded optimizer over DP 4: 8 + 24 / 4 = 14 bytes per parameter.
  config.mutable_training()->set_shard_optimizer(true);
  EXPECT_NEAR(simulate_step(config, {"fixed"}, 1).costs[0].weights_optimizer_gib,
              14 * (4.0 * 15206400 + 32000.0 * 1024) / kGiB, 1e-9);
}

// One GPU, colocated, the step model on the given documents (one micro-batch).
MemoryByComponent step_memory(const std::string& recompute, int64_t loss_chunk,
                              std::vector<int64_t> docs, bool shard = false) {
  config::RunConfig config;
  *config.mutable_model() = small_model();
  config.mutable_cluster()->set_num_gpus(1);
  config.mutable_cluster()->set_gpus_per_node(1);
  config.mutable_training()->set_attention("colocated");
  config.mutable_training()->set_recompute(recompute);
  config.mutable_training()->set_loss_chunk_tokens(loss_chunk);
  config.mutable_training()->set_shard_optimizer(shard);
  StepCalibration cal = default_step_calibration();
  cal.activation_memory_scale = 1;
  cal.memory_fixed_gib = 0;
  return price_training_step(config, {{{std::move(docs), false, false}}}, cal).memory;
}

TEST(StepModelMemory, PeakPhaseAndComponentsMatchAHandComputation) {
  // Parameters of the worker: 8 layers (15206400 with norms), the final norm, embedding and head.
  const double params = 8.0 * 15206400 + 1024 + 2.0 * 32768000;
  EXPECT_DOUBLE_EQ(worker_parameters(small_model(), 1), params);
  // 8192 tokens, recompute, 8192-token loss chunk: the head phase.
  MemoryByComponent m = step_memory("linear", 8192, {4096, 4096});
  EXPECT_EQ(m.phase, "head");
  EXPECT_NEAR(m.weights_gib, 4 * params / kGiB, 1e-12);
  EXPECT_NEAR(m.gradients_gib, 4 * params / kGiB, 1e-12);
  EXPECT_NEAR(m.optimizer_gib, 8 * params / kGiB, 1e-12);
  EXPECT_NEAR(m.activations_gib, 8.0 * 8192 * 7200 / kGiB, 1e-12);
  EXPECT_NEAR(m.weight_copies_gib, 0, 1e-12);
  EXPECT_NEAR(m.residual_gib, 2 * 16777216.0 / kGiB, 1e-12);  // gradient buffer + last output
  EXPECT_NEAR(m.loss_gib, 3278372864.0 / kGiB, 1e-12);
  EXPECT_NEAR(m.backward_gib, 0, 1e-12);
  EXPECT_NEAR(m.peak_gib, (16 * params + 471859200.0 + 33554432 + 3278372864.0) / kGiB, 1e-9);
  // A 1024-token chunk (12·1024·32000 + 65536000 + 1024·8192 = 467140608, with the last output
  // 483917824) falls below the first backward layer (8192·59392 + 27262976 = 513802240).
  m = step_memory("linear", 1024, {4096, 4096});
  EXPECT_EQ(m.phase, "backward");
  EXPECT_NEAR(m.backward_gib, 513802240.0 / kGiB, 1e-12);
  EXPECT_NEAR(m.residual_gib, 16777216.0 / kGiB, 1e-12);
  EXPECT_NEAR(m.peak_gib, (16 * params + 471859200.0 + 16777216 + 513802240) / kGiB, 1e-9);
  // No recomputation: 8 layers x 8192 x 56352 saved and 8 layers of bf16 weight copies.
  m = step_memory("none", 8192, {4096, 4096});
  EXPECT_EQ(m.phase, "head");
  EXPECT_NEAR(m.activations_gib, 8.0 * 8192 * 56352 / kGiB, 1e-12);
  EXPECT_NEAR(m.weight_copies_gib, 8.0 * 30412800 / kGiB, 1e-12);
  EXPECT_NEAR(m.peak_gib, (16 * params + 3693084672.0 + 243302400 + 33554432 + 3278372864.0) / kGiB,
              1e-9);
  // 16 tokens: the optimizer's temporaries are the peak, the fp64 embedding gradient and its
  // square (16 x 32768000).
  m = step_memory("linear", 8192, {16});
  EXPECT_EQ(m.phase, "optimizer");
  EXPECT_NEAR(m.activations_gib, 0, 1e-12);
  EXPECT_NEAR(m.peak_gib, (16 * params + 524288000.0) / kGiB, 1e-9);
  // Sharded at DP 1: 32 bytes per parameter (the reduced slice with the gradients; master, two
  // moments and two masks with the optimizer) and 32 bytes per element of the largest bucket
  // slice (the head, final norm and layer 7: 47975424).
  m = step_memory("linear", 8192, {16}, true);
  EXPECT_EQ(m.phase, "optimizer");
  EXPECT_NEAR(m.gradients_gib, 8 * params / kGiB, 1e-12);
  EXPECT_NEAR(m.optimizer_gib, 20 * params / kGiB, 1e-12);
  EXPECT_NEAR(m.peak_gib, (32 * params + 32 * 47975424.0) / kGiB, 1e-9);
}

// A profile says whether its run sharded the optimizer, so fitting and pricing it count ZeRO-1's
// state (32 bytes per parameter at DP 1, not 16).
TEST(StepModelMemory, ProfileCarriesTheShardedOptimizer) {
  profile::RunProfile p;
  p.set_ranks(1);
  p.set_workers(1);
  EXPECT_FALSE(profile_run_config(p).training().shard_optimizer());
  p.set_shard_optimizer(true);
  EXPECT_TRUE(profile_run_config(p).training().shard_optimizer());
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
