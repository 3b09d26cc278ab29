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
constexpr ElementwiseOps kComposite = ElementwiseOps::kComposite;
constexpr ElementwiseOps kFused = ElementwiseOps::kFused;

// h 1024, 8 query heads and 2 KV heads of 128, SwiGLU 4096, 8 layers, vocabulary 32000, untied.
config::ModelConfig small_model() { return testing::dense_model(8, 1024, 8, 2, 128, 4096, 32000); }

// Every micro-batch holds exactly `context` tokens: 4096-token documents, 32K context. Priced
// with LibTorch's compositions unless `ops` says "fused".
config::RunConfig fixed_config(int32_t gpus, const std::string& recompute,
                               const std::string& ops = "composite") {
  config::RunConfig config;
  *config.mutable_model() = small_model();
  config.mutable_cluster()->set_num_gpus(gpus);
  config.mutable_data()->set_context_length(32768);
  config.mutable_data()->set_distribution("fixed");
  config.mutable_data()->set_fixed_tokens(4096);
  config.mutable_training()->set_recompute(recompute);
  config.mutable_simulate()->set_elementwise_ops(ops);
  return config;
}

TEST(SimulatorMemory, BytesPerTokenPerLayerMatchAHandCount) {
  const config::ModelConfig m = small_model();
  // none, TP 1: owner = layer input 2h + two RMSNorms (fp32 upcast 4h + normalised 2h) + the
  // QKV and gate/up inputs 2 x 2h + SwiGLU gate, up, silu(gate), product 4 x 2f
  // = 2048 + 12288 + 4096 + 32768; query Q + O 2·2·8·128 + lse 4·8; key K + V 2·2·2·128;
  // output O 2·8·128.
  ActivationBytes none = activation_bytes_per_token_per_layer(m, 1, "none", kComposite);
  EXPECT_DOUBLE_EQ(none.owner, 51200);
  EXPECT_DOUBLE_EQ(none.query, 4128);
  EXPECT_DOUBLE_EQ(none.key, 1024);
  EXPECT_DOUBLE_EQ(none.output, 2048);
  EXPECT_DOUBLE_EQ(none.per_token(), 56352);
  // linear, TP 1: owner is the layer input 2·h; core attention's tensors unchanged.
  ActivationBytes linear = activation_bytes_per_token_per_layer(m, 1, "linear", kComposite);
  EXPECT_DOUBLE_EQ(linear.owner, 2048);
  EXPECT_DOUBLE_EQ(linear.query, 4128);
  EXPECT_DOUBLE_EQ(linear.key, 1024);
  EXPECT_DOUBLE_EQ(linear.per_token(), 7200);
  // TP 2 with sequence parallelism: the norms' tensors and the layer input halve (14h / 2), the
  // gathered projection inputs do not (4h), SwiGLU halves (8f / 2): 7168 + 4096 + 16384; 4 query
  // heads (2·2·4·128 + 4·4) and one KV head (2·2·128).
  ActivationBytes tp2 = activation_bytes_per_token_per_layer(m, 2, "none", kComposite);
  EXPECT_DOUBLE_EQ(tp2.owner, 27648);
  EXPECT_DOUBLE_EQ(tp2.query, 2064);
  EXPECT_DOUBLE_EQ(tp2.key, 512);
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(m, 2, "linear", kComposite).per_token(),
                   3600);
  // TP 4: 2 query heads, and the 2 KV heads cannot split below one per GPU.
  ActivationBytes tp4 = activation_bytes_per_token_per_layer(m, 4, "linear", kComposite);
  EXPECT_DOUBLE_EQ(tp4.owner, 512);
  EXPECT_DOUBLE_EQ(tp4.query, 2 * 2 * 2 * 128 + 4 * 2);
  EXPECT_DOUBLE_EQ(tp4.key, 512);
  EXPECT_THROW(activation_bytes_per_token_per_layer(m, 1, "all", kComposite), Error);
}

TEST(SimulatorMemory, NoRecomputeKeepsMoreThanKorthikantisCountForLlama8b) {
  // 18h + 8f + Q, O, lse, K, V = 73728 + 114688 + 16512 + 4096 = 209024 bytes: 1.5x Korthikanti
  // et al.'s 34·h (139264), because this runtime keeps each RMSNorm's fp32 upcast and its bf16
  // output beside the projection's input, and SwiGLU's silu(gate) and product (not fused).
  const config::ModelConfig m = testing::llama8b();
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(m, 1, "none", kComposite).per_token(),
                   209024);
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(m, 1, "linear", kComposite).per_token(),
                   28800);
}

TEST(SimulatorMemory, EveryTransientTermMatchesAHandCount) {
  const config::ModelConfig m = small_model();
  // Layer matrices: Q, K, V 1024·(1024 + 2·256), O 1024·1024, gate/up/down 3·1024·4096.
  EXPECT_DOUBLE_EQ(layer_matrix_parameters(m, 1), 15204352);
  EXPECT_DOUBLE_EQ(layer_matrix_parameters(m, 2), 7602176);
  // bf16 copies saved per layer and nano-batch without recomputation: matrices and two norm
  // weights, 2 bytes each; none with recomputation.
  EXPECT_DOUBLE_EQ(saved_weight_copy_bytes(m, 1, "none", kComposite), 2 * (15204352 + 2048));
  EXPECT_DOUBLE_EQ(saved_weight_copy_bytes(m, 1, "linear", kComposite), 0);
  // Loss chunk of 8192 tokens: 12 bytes per logit (8192·32000), the head's bf16 copy
  // (2·32000·1024) and the final norm's 8h per token.
  EXPECT_DOUBLE_EQ(loss_chunk_bytes(m, 1, 8192, kComposite), 3145728000.0 + 65536000 + 67108864);
  EXPECT_DOUBLE_EQ(loss_chunk_bytes(m, 2, 8192, kComposite),
                   1572864000.0 + 32768000 + 8192.0 * 5120);
  // First backward layer of 1000 tokens, recomputing: 8h + 2h + 3·2f saved + 3·2f gradients per
  // token (10240 + 49152), and the bf16 O and MLP weights 2·(1024² + 3·1024·4096).
  EXPECT_DOUBLE_EQ(backward_layer_bytes(m, 1, "linear", 1000, kComposite),
                   1000.0 * 59392 + 27262976);
  // Without recomputation only the gradients beyond what is saved: 2 x 2f per token.
  EXPECT_DOUBLE_EQ(backward_layer_bytes(m, 1, "none", 1000, kComposite), 1000.0 * 16384);
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

// The GPU runtime's fused kernels (runtime/fused_ops_gpu.cc) keep less than the compositions:
// RMSNorm its bf16 input and an fp32 rstd per row, SwiGLU gate and up, the cross-entropy the bf16
// logits and an fp32 log-sum-exp per row (its backward writes bf16 logit gradients).
TEST(SimulatorMemory, FusedKernelsKeepWhatTheirAutogradFunctionsSave) {
  const config::ModelConfig m = small_model();
  // none, TP 1: layer input 2h (2048); the first norm's input is the layer input, the second's
  // is the residual sum y (2h) and each keeps an fp32 rstd (2 x 4): 2056; QKV and gate/up inputs
  // 2 x 2h (4096); gate, up and the product the down matmul keeps, 3 x 2f (24576). Core
  // attention's tensors do not change.
  ActivationBytes none = activation_bytes_per_token_per_layer(m, 1, "none", kFused);
  EXPECT_DOUBLE_EQ(none.owner, 2048 + 2056 + 4096 + 24576);
  EXPECT_DOUBLE_EQ(none.query, 4128);
  EXPECT_DOUBLE_EQ(none.key, 1024);
  // TP 2 with SP: the layer input, y and the rstd halve (1024 + 1028), the gathered projection
  // inputs do not (4096), SwiGLU halves (12288).
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(m, 2, "none", kFused).owner,
                   1024 + 1028 + 4096 + 12288);
  // Recomputing keeps the layer input only, fused or not.
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(m, 1, "linear", kFused).per_token(), 7200);
  // Llama-8B: 2h + (2h + 8) + 4h + 6f + Q, O, lse, K, V = 8192 + 8200 + 16384 + 86016 + 16512 +
  // 4096 = 139400 bytes (the composition: 209024).
  EXPECT_DOUBLE_EQ(
      activation_bytes_per_token_per_layer(testing::llama8b(), 1, "none", kFused).per_token(),
      139400);
  // Rows wider than the fused RMSNorm takes (11264 values) keep the composite norms (14h) with
  // the fused SwiGLU (6f): h 12288 -> 2h + 12h + 4h + 6f = 18 x 12288 + 6 x 4096.
  config::ModelConfig wide = m;
  wide.set_hidden_size(12288);
  EXPECT_DOUBLE_EQ(activation_bytes_per_token_per_layer(wide, 1, "none", kFused).owner,
                   18.0 * 12288 + 6 * 4096);
  // bf16 weight copies without recomputation: the matrices only (the fused norms read the fp32
  // weight; the composite ones save a bf16 copy of it, 2 x 2h more).
  EXPECT_DOUBLE_EQ(saved_weight_copy_bytes(m, 1, "none", kFused), 2 * 15204352.0);
  EXPECT_DOUBLE_EQ(saved_weight_copy_bytes(wide, 1, "none", kFused),
                   2 * (layer_matrix_parameters(wide, 1) + 2 * 12288));
  EXPECT_DOUBLE_EQ(saved_weight_copy_bytes(m, 1, "linear", kFused), 0);
}

TEST(SimulatorMemory, FusedLossChunkAndFirstBackwardLayerMatchAHandCount) {
  const config::ModelConfig m = small_model();
  // 8192-token chunk, TP 1, at the loss's backward: bf16 logits saved and bf16 gradient written
  // (4 x 8192 x 32000 = 1048576000), fp32 log-sum-exp (4 x 8192), the head's bf16 copy
  // (2 x 32000 x 1024 = 65536000), its input (2 x 8192 x 1024 = 16777216) and the final norm's
  // rstd (4 x 8192).
  EXPECT_DOUBLE_EQ(loss_chunk_bytes(m, 1, 8192, kFused),
                   1048576000.0 + 32768 + 65536000 + 16777216 + 32768);
  // TP 2: the vocabulary-parallel loss is a composition (12 bytes per logit of the shard); the
  // final norm is fused (rstd of this rank's 4096 rows).
  EXPECT_DOUBLE_EQ(loss_chunk_bytes(m, 2, 8192, kFused),
                   1572864000.0 + 32768000 + 16777216 + 16384);
  // 1024-token chunk: the head matmul's backward holds the most: the bf16 logit gradient
  // (2 x 1024 x 32000), the weight copy and the bf16 weight gradient (2 x 65536000), input and
  // its gradient (2 x 2097152), the rstd (4096).
  EXPECT_DOUBLE_EQ(loss_chunk_bytes(m, 1, 1024, kFused), 65536000.0 + 131072000 + 4194304 + 4096);
  // 64-token chunk: the weight copy's backward (bf16 and fp32 weight gradients, 6 x 32768000),
  // the input's gradient (2 x 64 x 1024) and the rstd (256).
  EXPECT_DOUBLE_EQ(loss_chunk_bytes(m, 1, 64, kFused), 196608000.0 + 131072 + 256);
  // The composition's 1024-token chunk stays at LogSoftmaxBackward (12 bytes per logit).
  EXPECT_DOUBLE_EQ(loss_chunk_bytes(m, 1, 1024, kComposite),
                   12.0 * 1024 * 32000 + 65536000 + 1024.0 * 8192);
  // First backward layer of 1000 tokens, recomputing, at SwiGLU's backward: the second norm's
  // input y and rstd (2048 + 4), the segment's output (2048), the gathered gate/up input (2048),
  // gate and up (2 x 8192) and the three gradients (3 x 8192) per token, and the bf16 O and MLP
  // weights 2 x (1024^2 + 3 x 1024 x 4096).
  EXPECT_DOUBLE_EQ(backward_layer_bytes(m, 1, "linear", 1000, kFused),
                   1000.0 * (2052 + 2048 + 2048 + 16384 + 24576) + 27262976);
  // TP 2 with SP: the norm and the output halve (1026 + 1024), the gathered input does not
  // (2048), SwiGLU halves (8192 + 12288); the weights halve.
  EXPECT_DOUBLE_EQ(backward_layer_bytes(m, 2, "linear", 1000, kFused),
                   1000.0 * (1026 + 1024 + 2048 + 8192 + 12288) + 13631488);
  // Without recomputation: the gradients beyond what is saved, as composite (2 x 2f per token).
  EXPECT_DOUBLE_EQ(backward_layer_bytes(m, 1, "none", 1000, kFused), 1000.0 * 16384);
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
  // The same cells with the fused kernels: the loss chunk falls to 1130954752 bytes and the first
  // backward layer (32768 x 47108 + 27262976) now holds the peak.
  for (const char* strategy : {"fixed", "ideal"}) {
    const StepCost c = simulate_step(fixed_config(4, "linear", "fused"), {strategy}, 1).costs[0];
    const double backward_phase = 1887436800.0 + 67108864 + 32768.0 * 47108 + 27262976;
    EXPECT_NEAR(c.peak_activation_gib, backward_phase / kGiB, 1e-9) << strategy;
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
                              std::vector<int64_t> docs, bool shard = false,
                              const std::string& ops = "composite") {
  config::RunConfig config;
  *config.mutable_model() = small_model();
  config.mutable_cluster()->set_num_gpus(1);
  config.mutable_cluster()->set_gpus_per_node(1);
  config.mutable_training()->set_attention("colocated");
  config.mutable_training()->set_recompute(recompute);
  config.mutable_training()->set_loss_chunk_tokens(loss_chunk);
  config.mutable_training()->set_shard_optimizer(shard);
  config.mutable_simulate()->set_elementwise_ops(ops);
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

TEST(StepModelMemory, FusedKernelsMoveThePeakAsAHandComputationSays) {
  const double params = 8.0 * 15206400 + 1024 + 2.0 * 32768000;
  // 8192 tokens, recompute, 8192-token chunk: still the head (8 x 8192 x 7200 saved, the gradient
  // buffer and last output 2 x 16777216, the fused chunk 1130954752; the first backward layer
  // would hold 16777216 + 8192 x 47108 + 27262976).
  MemoryByComponent m = step_memory("linear", 8192, {4096, 4096}, false, "fused");
  EXPECT_EQ(m.phase, "head");
  EXPECT_NEAR(m.loss_gib, 1130954752.0 / kGiB, 1e-12);
  EXPECT_NEAR(m.peak_gib, (16 * params + 471859200.0 + 33554432 + 1130954752) / kGiB, 1e-9);
  // A 1024-token chunk (the head matmul's backward, 200806400, with the last output) falls below
  // the first backward layer: 8192 x 47108 + 27262976 = 413171712.
  m = step_memory("linear", 1024, {4096, 4096}, false, "fused");
  EXPECT_EQ(m.phase, "backward");
  EXPECT_NEAR(m.backward_gib, 413171712.0 / kGiB, 1e-12);
  EXPECT_NEAR(m.peak_gib, (16 * params + 471859200.0 + 16777216 + 413171712) / kGiB, 1e-9);
  // No recomputation: 8 layers x 8192 x (32776 + 4128 + 1024) saved, 8 layers of bf16 matrix
  // copies (2 x 15204352 each), the head phase with the fused chunk.
  m = step_memory("none", 8192, {4096, 4096}, false, "fused");
  EXPECT_EQ(m.phase, "head");
  EXPECT_NEAR(m.activations_gib, 8.0 * 8192 * 37928 / kGiB, 1e-12);
  EXPECT_NEAR(m.weight_copies_gib, 8.0 * 30408704 / kGiB, 1e-12);
  EXPECT_NEAR(m.peak_gib,
              (16 * params + 8.0 * 8192 * 37928 + 8.0 * 30408704 + 33554432 + 1130954752) / kGiB,
              1e-9);
}

// Profiles written before the field are priced with the fused kernels (the GPU runtime now);
// one that says "composite" (CADRE_FUSED_OPS=0, CPU) with the compositions.
TEST(StepModelMemory, ProfileCarriesTheElementwiseOps) {
  profile::RunProfile p;
  p.set_ranks(1);
  p.set_workers(1);
  EXPECT_EQ(profile_run_config(p).simulate().elementwise_ops(), "fused");
  p.set_elementwise_ops("composite");
  EXPECT_EQ(profile_run_config(p).simulate().elementwise_ops(), "composite");
  config::RunConfig c = profile_run_config(p);
  EXPECT_EQ(elementwise_ops(c), kComposite);
  c.mutable_simulate()->set_elementwise_ops("unfused");
  EXPECT_THROW(elementwise_ops(c), Error);
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
    // costs): for fixed packing, every rank's tokens x layers x that per-token cost, plus the
    // segments' per-call cost for each layer of each micro-batch (one nano-batch each).
    EXPECT_GT(linear.costs[i].step_us, none.costs[i].step_us);
    if (strategies[i] == "fixed") {
      const StepCalibration& cal = default_step_calibration();
      const double per_token =
          cal.segment("qkv", "recompute").us_per_unit * segment_work("qkv", small_model(), 1, 1) +
          cal.segment("out_mlp", "recompute").us_per_unit *
              segment_work("out_mlp", small_model(), 1, 1);
      const double tokens = static_cast<double>(none.tokens_per_step) / none.data_parallel;
      const double per_call = cal.segment("qkv", "recompute").fixed_us +
                              cal.segment("out_mlp", "recompute").fixed_us;
      EXPECT_NEAR(linear.costs[i].step_us - none.costs[i].step_us,
                  small_model().num_layers() *
                      (tokens * per_token + none.micro_batches * per_call),
                  1e-6 * none.costs[i].step_us);
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
