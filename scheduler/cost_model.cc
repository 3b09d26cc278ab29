// The cost model: calibrated attention time per task shape, GEMM-rate linear time per token, and
// bandwidth-priced transfers.
#include "scheduler/cost_model.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "scheduler/calibration.pb.h"
#include "scheduler/plan.h"

namespace cadre::scheduler {

extern const char* const kDefaultCalibrationJson;
extern const char* const kDefaultMhaCalibrationJson;

namespace {

constexpr int64_t kBytesPerValue = 2;  // bf16 activations on the wire

bool tpla(const config::ModelConfig& m) { return m.kv_latent_dim() > 0 && m.tpla(); }

// Query heads one GPU attends with: its tensor-parallel share, or under TPLA every head (over its
// slice of the latent, docs/latent_attention.md).
int64_t attention_heads_per_gpu(const config::ModelConfig& m, const config::ClusterConfig& c) {
  return tpla(m) ? m.num_heads() : m.num_heads() / c.tensor_parallel();
}

// Per-head width of the attention kernel's value operand (MLA: v_head_dim, head_dim when unset),
// as runtime/model.cc; the query/key width is qk_head_dim.
int64_t v_head_dim(const config::ModelConfig& m) {
  return m.kv_latent_dim() > 0 && m.v_head_dim() > 0 ? m.v_head_dim() : m.head_dim();
}

CalibrationTable parse_calibration(const std::string& json, const std::string& source) {
  cadre::calibration::CalibrationTableProto proto;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &proto, options);
  CADRE_CHECK(status.ok(), "calibration table ", source, " is not valid: ", status.ToString(),
              "; accepted: {\"device\": ..., \"heads\": H, \"head_dim\": D, \"points\": "
              "[{\"q_tokens\": .., \"kv_tokens\": .., \"forward_tflops\": .., "
              "\"backward_tflops\": ..}, ...]}");
  CalibrationTable table;
  table.device = proto.device();
  table.heads = proto.heads() > 0 ? proto.heads() : 32;
  CADRE_CHECK(
      proto.kv_heads() >= 0 && (proto.kv_heads() == 0 || table.heads % proto.kv_heads() == 0),
      "calibration table ", source, " has kv_heads ", proto.kv_heads(), " for ", table.heads,
      " heads; accepted: 0 (not recorded) or a divisor of heads");
  table.kv_heads = proto.kv_heads();
  table.head_dim = proto.head_dim() > 0 ? proto.head_dim() : 128;
  CADRE_CHECK(proto.points_size() > 0, "calibration table ", source,
              " has no points; accepted: at least one measured shape");
  for (int i = 0; i < proto.points_size(); ++i) {
    const auto& p = proto.points(i);
    CADRE_CHECK(p.q_tokens() >= 1 && p.kv_tokens() >= p.q_tokens(), "calibration table ", source,
                " point ", i, " has q_tokens ", p.q_tokens(), " and kv_tokens ", p.kv_tokens(),
                "; accepted: 1 <= q_tokens <= kv_tokens");
    CADRE_CHECK(p.forward_tflops() > 0 && p.backward_tflops() > 0, "calibration table ", source,
                " point ", i, " has forward_tflops ", p.forward_tflops(), " and backward_tflops ",
                p.backward_tflops(), "; accepted: both > 0");
    table.points.push_back({p.q_tokens(), p.kv_tokens(), p.forward_tflops(), p.backward_tflops()});
  }
  return table;
}

}  // namespace

int64_t qk_head_dim(const config::ModelConfig& m) {
  return m.head_dim() + (m.kv_latent_dim() > 0 ? m.rope_head_dim() : 0);
}

const CalibrationTable& default_calibration() {
  static const CalibrationTable table =
      parse_calibration(kDefaultCalibrationJson, "(built-in h200_flash_attention.json)");
  return table;
}

const CalibrationTable& default_mha_calibration() {
  static const CalibrationTable table =
      parse_calibration(kDefaultMhaCalibrationJson, "(built-in h200_flash_attention_mha.json)");
  return table;
}

bool uses_mha_kernel(const config::ModelConfig& model, int32_t tensor_parallel) {
  const int32_t tp = std::max(1, tensor_parallel);
  const int32_t heads = std::max(1, model.num_heads() / tp);
  const int32_t kv_heads = std::max(1, model.num_kv_heads() / tp);
  // Latent attention (MLA) counts by its heads too: the server expands the latent into per-head
  // keys and values (num_kv_heads of them) before the kernel runs.
  return heads == kv_heads;
}

const CalibrationTable& default_calibration_for(const config::ModelConfig& model,
                                                int32_t tensor_parallel) {
  return uses_mha_kernel(model, tensor_parallel) ? default_mha_calibration()
                                                 : default_calibration();
}

CalibrationTable calibration_for(const config::ClusterConfig& cluster,
                                 const config::ModelConfig& model) {
  return cluster.attention_calibration().empty()
             ? default_calibration_for(model, cluster.tensor_parallel())
             : load_calibration_json(cluster.attention_calibration());
}

CalibrationTable parse_calibration_json(const std::string& json, const std::string& source) {
  return parse_calibration(json, source);
}

CalibrationTable load_calibration_json(const std::string& path) {
  std::ifstream in(path);
  CADRE_CHECK(in.good(), "cannot read calibration table '", path,
              "'; accepted: a readable JSON file (cluster.attention_calibration)");
  std::stringstream text;
  text << in.rdbuf();
  return parse_calibration(text.str(), "'" + path + "'");
}

KvShipping kv_shipping_for(const config::SchedulerConfig& scheduler) {
  return scheduler.server_mode() == "dedicated" || scheduler.mla_shipping() == "expanded"
             ? KvShipping::kExpanded
             : KvShipping::kLatent;
}

CostModel::CostModel(const config::ModelConfig& model, const config::ClusterConfig& cluster,
                     CalibrationTable calibration, KvShipping kv_shipping)
    : model_(model),
      cluster_(cluster),
      calibration_(std::move(calibration)),
      kv_shipping_(kv_shipping) {
  CADRE_CHECK(model_.num_heads() > 0 && model_.head_dim() > 0 && model_.hidden_size() > 0,
              "cost model needs a sized model (num_heads ", model_.num_heads(), ", head_dim ",
              model_.head_dim(), ", hidden_size ", model_.hidden_size(),
              "); finalize the config first so the preset fills them");
  CADRE_CHECK(cluster_.tensor_parallel() >= 1 && cluster_.gpus_per_node() >= 1,
              "cost model: tensor_parallel ", cluster_.tensor_parallel(), " and gpus_per_node ",
              cluster_.gpus_per_node(), " must be >= 1");
  CADRE_CHECK(cluster_.gemm_tflops() > 0 && cluster_.intra_node_bandwidth_gbps() > 0 &&
                  cluster_.inter_node_bandwidth_gbps() > 0,
              "cost model: gemm_tflops and both bandwidths must be > 0");
  CADRE_CHECK(!calibration_.points.empty(), "cost model: the calibration table has no points");
  for (const CalibrationPoint& p : calibration_.points) {
    log_points_.push_back({std::log2(static_cast<double>(p.q_tokens)),
                           std::log2(static_cast<double>(p.kv_tokens)), p.forward_tflops,
                           p.backward_tflops});
    if (p.q_tokens == p.kv_tokens) diagonal_points_.push_back(log_points_.back());
  }
}

// Throughput at a shape by inverse-distance weighting in (log2 q, log2 kv): exact at measured
// points, smooth between them, and flat (nearest behaviour) far outside the measured range. A
// whole document (q == kv) is weighed among the whole-document points only when the table has
// any: the kernels run it with the top-left causal form, whose backward skips the masked tiles,
// while a shard's bottom-right form does not (docs/gpu.md), so a 64K document priced from 32K
// shards of 64K prefixes would take the shards' slower backward (measured on H200: 299 against
// 410 TFLOP/s at head dim 64).
void CostModel::rates(int64_t q_tokens, int64_t kv_tokens, double* forward,
                      double* backward) const {
  const double lq = std::log2(static_cast<double>(std::max<int64_t>(q_tokens, 1)));
  const double lk = std::log2(static_cast<double>(std::max<int64_t>(kv_tokens, 1)));
  double weight_sum = 0, forward_sum = 0, backward_sum = 0;
  const bool whole = q_tokens == kv_tokens && !diagonal_points_.empty();
  for (const LogPoint& p : whole ? diagonal_points_ : log_points_) {
    const double dq = lq - p.log_q;
    const double dk = lk - p.log_kv;
    const double d2 = dq * dq + dk * dk;
    if (d2 < 1e-12) {
      *forward = p.forward_tflops;
      *backward = p.backward_tflops;
      return;
    }
    const double w = 1.0 / (d2 * d2);
    weight_sum += w;
    forward_sum += w * p.forward_tflops;
    backward_sum += w * p.backward_tflops;
  }
  *forward = forward_sum / weight_sum;
  *backward = backward_sum / weight_sum;
}

// FLOPs of one forward pass of causal attention over the task: 2 matmuls x 2 FLOPs per
// multiply-add per query-key pair, for the heads of one GPU.
double CostModel::flops_per_pass(int64_t q_tokens, int64_t kv_tokens) const {
  const double heads = static_cast<double>(attention_heads_per_gpu(model_, cluster_));
  // Latent attention (expanded on the server): QK^T over head_dim + rope_head_dim, PV over
  // v_head_dim.
  const double widths = static_cast<double>(qk_head_dim(model_) + v_head_dim(model_));
  return 2.0 * static_cast<double>(causal_pairs(kv_tokens - q_tokens, kv_tokens)) * widths * heads;
}

double CostModel::attention_forward_us(int64_t q_tokens, int64_t kv_tokens) const {
  if (q_tokens <= 0) return 0;
  double forward, backward;
  rates(q_tokens, kv_tokens, &forward, &backward);
  return flops_per_pass(q_tokens, kv_tokens) / (forward * 1e6);
}

// Backward does 2.5x the forward FLOPs (5 matmuls against 2).
double CostModel::attention_backward_us(int64_t q_tokens, int64_t kv_tokens) const {
  if (q_tokens <= 0) return 0;
  double forward, backward;
  rates(q_tokens, kv_tokens, &forward, &backward);
  return 2.5 * flops_per_pass(q_tokens, kv_tokens) / (backward * 1e6);
}

double CostModel::attention_forward_backward_us(int64_t q_tokens, int64_t kv_tokens) const {
  if (q_tokens <= 0) return 0;
  double forward, backward;
  rates(q_tokens, kv_tokens, &forward, &backward);
  const double flops = flops_per_pass(q_tokens, kv_tokens);
  return flops / (forward * 1e6) + 2.5 * flops / (backward * 1e6);
}

double CostModel::attention_step_us(int64_t q_tokens, int64_t kv_tokens, int32_t layers) const {
  return layers * attention_forward_backward_us(q_tokens, kv_tokens);
}

double CostModel::linear_step_us_per_token(int32_t layers) const {
  const double h = model_.hidden_size();
  const double q_width = static_cast<double>(model_.num_heads()) * model_.head_dim();
  const double kv_width = static_cast<double>(model_.num_kv_heads()) * model_.head_dim();
  // Q, K, V and output projections, then the three SwiGLU matrices.
  const double params = h * q_width + 2 * h * kv_width + q_width * h +
                        3 * h * static_cast<double>(model_.ffn_hidden_size());
  // 2 FLOPs per parameter per token forward, 4 backward; split across the TP group.
  const double flops = 6.0 * params * layers / cluster_.tensor_parallel();
  return flops / (cluster_.gemm_tflops() * 1e6);
}

// Per GPU: tensor parallelism splits query heads, and KV heads down to one per GPU.
int64_t CostModel::q_bytes_per_token() const {
  return attention_heads_per_gpu(model_, cluster_) * qk_head_dim(model_) * kBytesPerValue;
}

int64_t CostModel::o_bytes_per_token() const {
  return attention_heads_per_gpu(model_, cluster_) * v_head_dim(model_) * kBytesPerValue;
}

int64_t CostModel::kv_bytes_per_token() const {
  if (model_.kv_latent_dim() > 0) {
    if (kv_shipping_ == KvShipping::kExpanded) {
      // The owner expands every attention head's key and value (one K/V head per query head).
      return attention_heads_per_gpu(model_, cluster_) *
             (qk_head_dim(model_) + v_head_dim(model_)) * kBytesPerValue;
    }
    // Latent shipping: the compact latent (TPLA: this GPU's slice of it) plus the decoupled
    // rotary key.
    const int64_t latent = model_.kv_latent_dim() / (tpla(model_) ? cluster_.tensor_parallel() : 1);
    return (latent + model_.rope_head_dim()) * kBytesPerValue;
  }
  const int64_t kv_heads = std::max<int64_t>(1, model_.num_kv_heads() / cluster_.tensor_parallel());
  return 2 * kv_heads * model_.head_dim() * kBytesPerValue;
}

double CostModel::transfer_us(int64_t bytes, LinkClass link) const {
  if (bytes <= 0 || link == LinkClass::kSelf) return 0;
  const double gbps = link == LinkClass::kIntraNode ? cluster_.intra_node_bandwidth_gbps()
                                                    : cluster_.inter_node_bandwidth_gbps();
  return static_cast<double>(bytes) / (gbps * 1e3);
}

LinkClass CostModel::link_between(int32_t rank_a, int32_t rank_b) const {
  if (rank_a == rank_b) return LinkClass::kSelf;
  return rank_a / cluster_.gpus_per_node() == rank_b / cluster_.gpus_per_node()
             ? LinkClass::kIntraNode
             : LinkClass::kInterNode;
}

}  // namespace cadre::scheduler
