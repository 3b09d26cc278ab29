// Prices one training step of a DP x TP x PP cluster under CAD and the baselines, with the real
// planner and the cost model (docs/simulation.md has the model and its approximations).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "scheduler/config.pb.h"

namespace cadre::scheduler {

// Strategies: fixed (sequential packing, each rank its own attention: Megatron-style DP),
// cp (per-document context parallelism, head/tail sharding in a CP group), wlb (workload-balanced
// variable-length packing, WLB-LLM style), cad (core attention disaggregated and rebalanced with
// plan_cad), ideal (perfectly divisible work, no communication, no bubble: a lower bound).
const std::vector<std::string>& simulator_strategies();

// One step's price for one strategy, averaged over the simulated global batches. Times are per
// step in microseconds; step_us = attention_us + linear_us + pp_bubble_us + dp_straggler_us +
// exposed_comm_us + step_fixed_us (each effect separately).
struct StepCost {
  std::string strategy;
  double step_us = 0;
  double attention_us = 0;         // attention compute on the average data-parallel rank
  double linear_us = 0;            // everything else (projections, MLP, norms) on the average rank
  double pp_bubble_us = 0;         // 1F1B fill and drain: (PP - 1) x the longest micro-batch
  double dp_straggler_us = 0;      // slowest data-parallel rank minus the average
  double exposed_comm_us = 0;      // communication not hidden behind compute
  double step_fixed_us = 0;        // once per step: optimizer, host overhead, exposed gradient
                                   // all-reduce (calibration)
  double tokens_per_s = 0;         // whole cluster
  double attention_imbalance = 1;  // max / mean attention time over data-parallel ranks
  double bytes_per_rank = 0;       // moved per GPU per step (CAD dispatch, CP all-gathers)
  // Memory per GPU (docs/simulation.md, "Memory estimate"), the worst of the simulated batches;
  // it does not change the times above.
  double peak_activation_gib = 0;    // above the state at the peak: activations in flight and
                                     // the peak phase's own tensors (loss chunk, first backward
                                     // layer or optimizer temporaries)
  double weights_optimizer_gib = 0;  // fp32 weights, gradients and Adam moments (ZeRO-1 slices)
  double peak_memory_gib = 0;        // the two together
  bool fits_memory = true;           // peak_memory_gib <= cluster.gpu_memory_gib
  double planning_ms = 0;            // wall time of plan_cad for the step (cad only)
};

struct SimulationResult {
  int32_t gpus = 0;
  int32_t data_parallel = 0;
  int32_t micro_batches = 0;  // per data-parallel rank per step
  int64_t tokens_per_step = 0;
  std::string recompute;        // training.recompute the memory column was priced with
  std::vector<StepCost> costs;  // in the order of the requested strategies
};

// How the worker's RMSNorm, rotary embedding, SwiGLU and cross-entropy run, which sets what
// autograd keeps for them: kFused, the GPU runtime's kernels (runtime/fused_ops.h, CUDA tensors:
// RMSNorm keeps its input and an fp32 rstd per row, SwiGLU gate and up, the cross-entropy the bf16
// logits and an fp32 log-sum-exp per row); kComposite, LibTorch's compositions (CPU runs, and GPU
// runs with CADRE_FUSED_OPS=0). The fused RMSNorm takes rows of at most kFusedNormMaxColumns
// (wider hidden sizes keep the composition) and the fused cross-entropy serves one rank's whole
// vocabulary (TP > 1 uses the vocabulary-parallel composition). RoPE's saved tensors are the same
// either way (the cos/sin tables).
enum class ElementwiseOps { kFused, kComposite };
constexpr int64_t kFusedNormMaxColumns = 11 * 1024;  // runtime/fused_kernels.cu, kMaxNormCols
// simulate.elementwise_ops of a finalized config ("fused" or "composite").
ElementwiseOps elementwise_ops(const config::RunConfig& config);

// Bytes one GPU keeps for backward per layer, as autograd saves them in runtime/model.cc and
// runtime/step_executor.cc (bf16 activations; the norms' fp32 upcasts or rstd and log-sum-exp),
// split by where they live: with the token's owner, or with the core attention that used it (the
// owner itself for colocated strategies, the attention server for CAD). TP splits heads (KV heads
// down to one per GPU) and, with sequence parallelism, the norms' rows; the projections' gathered
// inputs hold every row. recompute: "none" or "linear". docs/simulation.md, "Memory estimate".
struct ActivationBytes {
  double owner = 0;   // per owned token: "none" the layer input, both RMSNorms' saved tensors
                      // (composite: fp32 input and normalised output; fused: the second norm's
                      // input and an fp32 rstd each), the gathered inputs of QKV and gate/up,
                      // SwiGLU's gate, up, (composite) silu(gate), and the product the down
                      // projection keeps; "linear" the layer input only
  double query = 0;   // per query row of core attention: Q and O (bf16) and log-sum-exp (fp32)
  double key = 0;     // per key/value row held by core attention: K and V (bf16)
  double output = 0;  // O alone: kept again by an owner whose queries a CAD server computed
  double per_token() const { return owner + query + key; }  // colocated attention
};
ActivationBytes activation_bytes_per_token_per_layer(const config::ModelConfig& model, int32_t tp,
                                                     const std::string& recompute,
                                                     ElementwiseOps ops);

// Parameters of one GPU of the first pipeline stage (its layers, the embedding, and with PP = 1 an
// untied LM head; the last stage holds as many), before the TP split.
double parameters_per_stage(const config::ModelConfig& model, int32_t pp);
// Matrix parameters of one decoder layer on one TP rank (Q, K, V, O, gate, up, down).
double layer_matrix_parameters(const config::ModelConfig& model, int32_t tp);

// Weights and optimizer state per parameter, as the runtime allocates them. Plain AdamW
// (runtime/optimizer.cc): fp32 weight, fp32 gradient (bucket view), two fp32 moments = 16.
// training.shard_optimizer (runtime/sharded_optimizer.cc, ZeRO-1 over `dp` ranks): the fp32
// weights and gradient buckets stay whole (8) and each rank adds, for its 1/dp slice, the reduced
// gradient, the fp32 master copy, two moments and two fp32 masks (weight decay, counted) = 24/dp:
// 32 at dp = 1, below 16 only from dp = 4.
double weights_optimizer_bytes_per_parameter(bool shard_optimizer, int32_t dp);

// Bytes autograd keeps of the bf16 weight copies (LlamaModel casts fp32 weights per use, and the
// matmul saves the copy) for one layer of one nano-batch: without recomputation every layer's
// copies live from its forward to its backward; with it none do. The composite RMSNorm also saves
// a bf16 copy of its weight; the fused one reads the fp32 parameter.
double saved_weight_copy_bytes(const config::ModelConfig& model, int32_t tp,
                               const std::string& recompute, ElementwiseOps ops);

// The LM head and loss of one chunk of `chunk_tokens` tokens at its peak: the largest of (a) the
// loss's backward (composite, LogSoftmaxBackward: the fp32 log-probabilities it saved, their
// gradient and its own output, 12 bytes per logit; fused: the bf16 logits it saved and the bf16
// gradient it writes, 4 bytes per logit, and an fp32 log-sum-exp per row; vocabulary split by
// TP) with the head's bf16 weight copy and input; (b) the head matmul's backward (the bf16 logit
// gradient, the weight copy, the input, its gradient and the bf16 weight gradient); (c) the
// weight copy's backward (bf16 and fp32 weight gradients, the input's gradient). The final
// RMSNorm's saved tensors for the chunk are held in all three.
double loss_chunk_bytes(const config::ModelConfig& model, int32_t tp, int64_t chunk_tokens,
                        ElementwiseOps ops);

// What the first backward layer adds for one nano-batch of `tokens` tokens: with recomputation
// its out+mlp segment's saved tensors still held at SwiGLU's backward (second RMSNorm, gathered
// input, SwiGLU's gate and up, composite also silu(gate), the output) and the three gradients in
// flight there, plus the segment's bf16 weight copies; without, only those gradients beyond the
// saved tensors already held.
double backward_layer_bytes(const config::ModelConfig& model, int32_t tp,
                            const std::string& recompute, int64_t tokens, ElementwiseOps ops);

// The residual stream (or its gradient) of `tokens` tokens: bf16, rows split by SP. The step
// executor keeps each nano-batch's last output for the head and a gradient buffer from the head
// on through backward.
double residual_bytes(const config::ModelConfig& model, int32_t tp, int64_t tokens);

// Temporaries of the optimizer phase: the gradient norm's fp64 copy and square of the largest
// gradient tensor (16 bytes per element, `largest` elements); sharded, of the largest bucket
// slice (fp64 gradient, mask, square and product: 32 bytes per element).
double optimizer_step_bytes(bool shard_optimizer, double largest);

// config must be finalized (model sizes filled); cluster.num_gpus and data.context_length set the
// cell. Deterministic for a given config (the data seed).
SimulationResult simulate_step(const config::RunConfig& config,
                               const std::vector<std::string>& strategies, int32_t batches);

}  // namespace cadre::scheduler
