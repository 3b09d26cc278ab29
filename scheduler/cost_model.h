// Prices a step: attention time per CA-task shape (calibration table, interpolated), linear-layer
// time per token (model dimensions x a GEMM rate), and transfer time per link class.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "scheduler/config.pb.h"

namespace cadre::scheduler {

// Measured attention throughput as a function of shard shape: TFLOP/s (causal FLOPs, forward)
// at query length q_tokens against key length kv_tokens. Backward throughput likewise.
struct CalibrationPoint {
  int64_t q_tokens = 0;
  int64_t kv_tokens = 0;
  double forward_tflops = 0;
  double backward_tflops = 0;
};

struct CalibrationTable {
  std::string device;  // e.g. "NVIDIA H200 / LibTorch 2.11 FlashAttention-2"
  int32_t heads = 32;
  int32_t kv_heads = 0;  // 0: not recorded
  int32_t head_dim = 128;
  std::vector<CalibrationPoint> points;
};

// The built-in tables (H200, Cadre's flash kernel, bf16, 32 query heads), compiled in from
// scheduler/data/: with GQA (8 KV heads, h200_flash_attention.json) and multi-head attention
// (32 KV heads, h200_flash_attention_mha.json). They differ where the kernel does: short shards'
// backward is split and folded with GQA only (docs/gpu.md).
const CalibrationTable& default_calibration();
const CalibrationTable& default_mha_calibration();
// Whether a model on TP-way tensor parallelism runs the multi-head attention kernel: one query
// head per KV head on each GPU (multi-head attention, latent attention expanded per head); every
// other model runs GQA.
bool uses_mha_kernel(const config::ModelConfig& model, int32_t tensor_parallel);
// The built-in table for a model on TP-way tensor parallelism: the MHA table when it
// uses_mha_kernel, else the GQA one.
const CalibrationTable& default_calibration_for(const config::ModelConfig& model,
                                                int32_t tensor_parallel);
// Per-head width of the attention kernel's query/key operand, as runtime/model.cc: head_dim, and
// for latent attention (MLA) the non-rotary head_dim plus the rotary key (rope_head_dim). The
// width a kernel table's head_dim is matched against (attention_table_for).
int64_t qk_head_dim(const config::ModelConfig& model);
// Loads a table from JSON ({"device":..., "points":[{"q_tokens":..,"kv_tokens":..,
// "forward_tflops":..,"backward_tflops":..}, ...]}); throws cadre::Error on bad input.
CalibrationTable load_calibration_json(const std::string& path);
// The same from JSON text; `source` names it in errors.
CalibrationTable parse_calibration_json(const std::string& json, const std::string& source);
// The table a cluster config names: cluster.attention_calibration, or if empty the built-in one
// that matches the model (default_calibration_for).
CalibrationTable calibration_for(const config::ClusterConfig& cluster,
                                 const config::ModelConfig& model);

enum class LinkClass { kSelf, kIntraNode, kInterNode };

// How a latent-attention (MLA) K/V row travels to its attention server: the latent and the rotary
// key (the server expands them with the layer's up-projection), or per-head expanded keys and
// values. Ignored for models without a latent.
enum class KvShipping { kLatent, kExpanded };
// What the trainer ships: scheduler.mla_shipping, except that dedicated servers (which hold no
// weights) always get expanded K/V.
KvShipping kv_shipping_for(const config::SchedulerConfig& scheduler);

class CostModel {
 public:
  // Uses the model's dimensions and the cluster's GEMM rate, bandwidths and calibration;
  // `kv_shipping` prices latent-attention K/V rows (kv_shipping_for the run's scheduler config).
  CostModel(const config::ModelConfig& model, const config::ClusterConfig& cluster,
            CalibrationTable calibration, KvShipping kv_shipping = KvShipping::kLatent);

  // Forward core-attention time of one task (q query tokens attending kv keys, causal,
  // bottom-right aligned) for all heads of one layer on one GPU (heads divided by TP), in us.
  double attention_forward_us(int64_t q_tokens, int64_t kv_tokens) const;
  double attention_backward_us(int64_t q_tokens, int64_t kv_tokens) const;
  // Forward + backward of one layer (one table look-up; what the planner balances).
  double attention_forward_backward_us(int64_t q_tokens, int64_t kv_tokens) const;
  // Forward + backward attention time of one task for all layers of one pipeline stage.
  double attention_step_us(int64_t q_tokens, int64_t kv_tokens, int32_t layers) const;

  // Non-attention (linear, MLP, norms) forward+backward time per token for `layers` layers.
  double linear_step_us_per_token(int32_t layers) const;

  // Bytes per token per layer per GPU (bf16) that CAD moves between an owner and a server, one
  // way; each is moved once forward and once backward (attention_server/dispatch.cc):
  //  - q: a query row, Q out (and dQ back) at the query/key width (MLA: head_dim + rope_head_dim);
  //  - o: its output, O back (and dO out) at the value width (MLA: v_head_dim);
  //  - kv: a K/V row, K and V out (and dK, dV back): the KV heads of one TP rank (at least one);
  //    MLA latent shipping: the latent plus the rotary key, whole on every head group (TPLA: the
  //    GPU's slice kv_latent_dim / TP plus the rotary key); MLA expanded shipping: every attention
  //    head's key and value.
  // Heads per GPU: num_heads / TP (TPLA: every head). A query token moved to a server costs
  // 2 (q + o) bytes per layer, forward and backward, and a K/V token 2 kv.
  int64_t q_bytes_per_token() const;
  int64_t o_bytes_per_token() const;
  int64_t kv_bytes_per_token() const;
  KvShipping kv_shipping() const { return kv_shipping_; }

  // Time to move `bytes` over one link class, in us.
  double transfer_us(int64_t bytes, LinkClass link) const;
  LinkClass link_between(int32_t rank_a, int32_t rank_b) const;

  const config::ModelConfig& model() const { return model_; }
  const config::ClusterConfig& cluster() const { return cluster_; }

 private:
  config::ModelConfig model_;
  config::ClusterConfig cluster_;
  CalibrationTable calibration_;
  KvShipping kv_shipping_;
  // Calibration points in log2 space, precomputed for interpolation.
  struct LogPoint {
    double log_q, log_kv, forward_tflops, backward_tflops;
  };
  std::vector<LogPoint> log_points_;
  // The points with q_tokens == kv_tokens: whole documents, which run the kernels' top-left causal
  // form (rates() looks whole documents up among these only).
  std::vector<LogPoint> diagonal_points_;
  // Forward and backward TFLOP/s at a shape.
  void rates(int64_t q_tokens, int64_t kv_tokens, double* forward, double* backward) const;
  double flops_per_pass(int64_t q_tokens, int64_t kv_tokens) const;
};

}  // namespace cadre::scheduler
