// The "cudnn" core-attention kernel (GPU build with cuDNN; cudnn_kernel.h): cuDNN's fused flash
// attention, expressed as the operation graph its SDPA engines recognise (the composition
// cuDNN's frontend documents for scaled dot-product attention: Q K^T, scale, padding mask from
// per-sequence lengths, bottom-right causal band, softmax with its log-sum-exp, P V; backward:
// dO.O row sums, the recomputed P, dV = P^T dO, dS = P (dO V^T - rowsum) scale, dK = dS^T Q,
// dQ = dS K through an fp32 accumulator), over ragged THD tensors so that batches of one shape
// class share one execution plan.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cudnn.h>
#include <torch/types.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "attention_server/cudnn_graph.h"
#include "attention_server/cudnn_kernel.h"
#include "attention_server/kernel.h"
#include "comm/cuda_check.h"
#include "common/env.h"
#include "common/error.h"

namespace cadre::attention_server {
namespace {

using cudnn::Graph;
using cudnn::TensorSpec;

// How shape classes round a batch's sizes: "quarter" (default), "octave" or "exact"
// (CADRE_CUDNN_BUCKET; the coarser, the fewer graph builds and the more idle tiles per call).
enum class Bucketing { kQuarter, kOctave, kExact };
Bucketing bucketing() {
  static const Bucketing mode = [] {
    const char* env = std::getenv("CADRE_CUDNN_BUCKET");
    const std::string text = env == nullptr ? "quarter" : env;
    if (text == "quarter" || text.empty()) return Bucketing::kQuarter;
    if (text == "octave") return Bucketing::kOctave;
    if (text == "exact") return Bucketing::kExact;
    CADRE_FAIL("CADRE_CUDNN_BUCKET='", text, "' is not a bucketing; accepted: quarter, octave, exact");
  }();
  return mode;
}

// The number of sequences rounded up to a power of two (exact: as it is).
int64_t bucket_sequences(int64_t b) {
  if (bucketing() == Bucketing::kExact) return std::max<int64_t>(b, 1);
  int64_t n = 1;
  while (n < b) n *= 2;
  return n;
}

// A length rounded up to the next of 2^k * {1, 1.25, 1.5, 1.75} (at least 64): a quarter octave,
// so a class wastes at most 25% of its tile grid on padding (octave: the next power of two;
// exact: as it is, at least 1).
int64_t bucket_length(int64_t s) {
  if (bucketing() == Bucketing::kExact) return std::max<int64_t>(s, 1);
  int64_t octave = 64;
  if (s <= octave) return octave;
  while (octave * 2 < s) octave *= 2;
  if (bucketing() == Bucketing::kOctave) return octave * 2;
  for (int64_t quarter = 1; quarter <= 4; ++quarter) {
    const int64_t candidate = octave + octave * quarter / 4;
    if (candidate >= s) return candidate;
  }
  return octave * 2;
}

cudnnDataType_t cudnn_dtype(torch::ScalarType t) {
  return t == torch::kBFloat16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
}

struct ClassKey {
  bool backward;
  int mask;  // Mask
  int dtype;
  int64_t heads, kv_heads, d_qk, d_v, batch, max_q, max_k;
  // Every sequence fills the class (batch sequences of exactly max_q queries and max_k keys): the
  // graph needs no padding mask.
  bool dense = false;
  bool operator<(const ClassKey& o) const {
    return std::tie(backward, mask, dtype, heads, kv_heads, d_qk, d_v, batch, max_q, max_k,
                    dense) < std::tie(o.backward, o.mask, o.dtype, o.heads, o.kv_heads, o.d_qk,
                                      o.d_v, o.batch, o.max_q, o.max_k, o.dense);
  }
};

// Unique ids of one graph's non-virtual tensors (0 = not in this graph).
struct Uids {
  int64_t q = 0, k = 0, v = 0, o = 0, stats = 0, dout = 0, dq = 0, dk = 0, dv = 0;
  int64_t seq_q = 0, seq_kv = 0, off_q = 0, off_k = 0, off_v = 0, off_o = 0, off_stats = 0;
  int64_t scale = 0, neg_inf = 0, one = 0;
  int64_t softmax_sum = 0, dq_accum = 0, dk_full = 0, dv_full = 0;  // workspace tensors
};

struct Plan {
  std::unique_ptr<Graph> graph;
  Uids uids;
};

// The shapes of one class, in cuDNN's [b, h, s, d] order over THD memory.
struct Dims {
  int64_t b, hq, hk, sq, skv, dqk, dv;
};

// THD tensor [b, h, s, d]: element (t, h, d) of a sequence at t * h_count * d_count + h * d + d.
TensorSpec thd(int64_t b, int64_t h, int64_t s, int64_t d, cudnnDataType_t dtype,
               int64_t ragged) {
  TensorSpec spec;
  spec.dims = {b, h, s, d};
  spec.strides = {s * h * d, d, h * d, 1};
  spec.dtype = dtype;
  spec.ragged_offset_uid = ragged;
  return spec;
}
// The same memory seen transposed in its last two dims ([b, h, d, s]).
TensorSpec thd_transposed(int64_t b, int64_t h, int64_t s, int64_t d, cudnnDataType_t dtype,
                          int64_t ragged) {
  TensorSpec spec;
  spec.dims = {b, h, d, s};
  spec.strides = {s * h * d, d, 1, h * d};
  spec.dtype = dtype;
  spec.ragged_offset_uid = ragged;
  return spec;
}
TensorSpec virtual_tensor(std::vector<int64_t> dims, cudnnDataType_t dtype) {
  TensorSpec spec;
  spec.strides = cudnn::strides_in_order(dims, {0, 1, 2, 3});
  spec.dims = std::move(dims);
  spec.dtype = dtype;
  spec.is_virtual = true;
  return spec;
}
TensorSpec int32_column(int64_t n) {
  TensorSpec spec;
  spec.dims = {n, 1, 1, 1};
  spec.strides = {1, 1, 1, 1};
  spec.dtype = CUDNN_DATA_INT32;
  return spec;
}
TensorSpec scalar(cudnnDataType_t dtype) {
  TensorSpec spec;
  spec.dims = {1, 1, 1, 1};
  spec.strides = {1, 1, 1, 1};
  spec.dtype = dtype;
  spec.by_value = true;
  return spec;
}
// [b, h, s, 1] fp32 statistics laid out as [total tokens, h] (ragged by tokens * h).
TensorSpec thd_stats(int64_t b, int64_t h, int64_t s, int64_t ragged) {
  TensorSpec spec;
  spec.dims = {b, h, s, 1};
  spec.strides = {s * h, 1, h, 1};
  spec.dtype = CUDNN_DATA_FLOAT;
  spec.ragged_offset_uid = ragged;
  return spec;
}

// A score tensor's row (axis 2) or column (axis 3) index, int32.
int64_t gen_index(Graph& g, int64_t scores, const std::vector<int64_t>& dims, int64_t axis,
                  cudnnDataType_t compute) {
  int64_t out = g.tensor(virtual_tensor(dims, CUDNN_DATA_INT32));
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, scores, 0, 0, out, compute, axis);
  return out;
}

// keep ? scores : -inf.
int64_t keep_or_neg_inf(Graph& g, const Uids& u, int64_t scores, int64_t keep,
                        const std::vector<int64_t>& dims) {
  int64_t out = g.tensor(virtual_tensor(dims, CUDNN_DATA_FLOAT));
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, scores, u.neg_inf, keep, out);
  return out;
}

// Scores with rows past seq_q and columns past seq_kv set to -inf.
int64_t padding_mask(Graph& g, const Uids& u, int64_t scores, const std::vector<int64_t>& dims) {
  auto boolean = [&]() { return g.tensor(virtual_tensor(dims, CUDNN_DATA_BOOLEAN)); };
  int64_t row = gen_index(g, scores, dims, 2, CUDNN_DATA_INT32);
  int64_t col = gen_index(g, scores, dims, 3, CUDNN_DATA_INT32);
  int64_t row_ok = boolean(), col_ok = boolean(), inside = boolean();
  g.pointwise(CUDNN_POINTWISE_CMP_LT, row, u.seq_q, 0, row_ok, CUDNN_DATA_BOOLEAN);
  g.pointwise(CUDNN_POINTWISE_CMP_LT, col, u.seq_kv, 0, col_ok, CUDNN_DATA_BOOLEAN);
  g.pointwise(CUDNN_POINTWISE_LOGICAL_AND, row_ok, col_ok, 0, inside, CUDNN_DATA_BOOLEAN);
  return keep_or_neg_inf(g, u, scores, inside, dims);
}

// The causal band aligned bottom-right per sequence: query row r of seq_q rows sees key columns
// c <= r + seq_kv - seq_q (a query shard [s, e) of a document against keys [0, e)); the rest
// -inf.
int64_t causal_band(Graph& g, const Uids& u, int64_t scores, const std::vector<int64_t>& dims) {
  int64_t row = gen_index(g, scores, dims, 2, CUDNN_DATA_FLOAT);
  int64_t col = gen_index(g, scores, dims, 3, CUDNN_DATA_FLOAT);
  int64_t shifted = g.tensor(virtual_tensor(dims, CUDNN_DATA_INT32));
  g.pointwise(CUDNN_POINTWISE_ADD, row, u.seq_kv, 0, shifted, CUDNN_DATA_INT32, 3);
  int64_t aligned = g.tensor(virtual_tensor(dims, CUDNN_DATA_INT32));
  g.pointwise(CUDNN_POINTWISE_SUB, shifted, u.seq_q, 0, aligned, CUDNN_DATA_INT32, 3);
  int64_t keep = g.tensor(virtual_tensor(dims, CUDNN_DATA_BOOLEAN));
  g.pointwise(CUDNN_POINTWISE_CMP_GE, aligned, col, 0, keep, CUDNN_DATA_BOOLEAN);
  return keep_or_neg_inf(g, u, scores, keep, dims);
}

// The causal band aligned top-left (row r sees columns c <= r): the same mask as the
// bottom-right band when every sequence has as many queries as keys (whole documents), in the
// form cuDNN's backward engine recognises as causal and skips the tiles above the diagonal of
// (measured on H200: twice the backward throughput of the bottom-right form on whole documents).
int64_t causal_band_top_left(Graph& g, const Uids& u, int64_t scores,
                             const std::vector<int64_t>& dims) {
  int64_t row = gen_index(g, scores, dims, 2, CUDNN_DATA_FLOAT);
  int64_t col = gen_index(g, scores, dims, 3, CUDNN_DATA_FLOAT);
  int64_t keep = g.tensor(virtual_tensor(dims, CUDNN_DATA_BOOLEAN));
  g.pointwise(CUDNN_POINTWISE_CMP_GE, row, col, 0, keep, CUDNN_DATA_BOOLEAN);
  return keep_or_neg_inf(g, u, scores, keep, dims);
}

// The mask of a graph: none (an unmasked prefix), causal aligned bottom-right per sequence
// (query shards), or causal top-left (every sequence square).
enum class Mask { kNone, kBottomRight, kTopLeft };

int64_t apply_causal(Graph& g, const Uids& u, int64_t scores, const std::vector<int64_t>& dims,
                     Mask mask) {
  if (mask == Mask::kBottomRight) return causal_band(g, u, scores, dims);
  if (mask == Mask::kTopLeft) return causal_band_top_left(g, u, scores, dims);
  return scores;
}

// Inputs every graph shares: lengths, ragged offsets and scalars.
void add_common(Graph& g, Uids& u, const Dims& d) {
  u.seq_q = g.tensor(int32_column(d.b));
  u.seq_kv = g.tensor(int32_column(d.b));
  u.off_q = g.tensor(int32_column(d.b + 1));
  u.off_k = g.tensor(int32_column(d.b + 1));
  u.off_v = g.tensor(int32_column(d.b + 1));
  u.off_o = g.tensor(int32_column(d.b + 1));
  u.off_stats = g.tensor(int32_column(d.b + 1));
  u.scale = g.tensor(scalar(CUDNN_DATA_FLOAT));
  u.neg_inf = g.tensor(scalar(CUDNN_DATA_FLOAT));
}

// Scores with the padding mask, or as they are for a dense class (every sequence fills it).
int64_t padding_unless_dense(Graph& g, const Uids& u, int64_t scores,
                             const std::vector<int64_t>& dims, bool dense) {
  return dense ? scores : padding_mask(g, u, scores, dims);
}

std::unique_ptr<Plan> build_forward(cudnnHandle_t handle, const Dims& d, cudnnDataType_t io,
                                    Mask mask, bool dense, int candidates) {
  auto plan = std::make_unique<Plan>();
  plan->graph = std::make_unique<Graph>(handle);
  Graph& g = *plan->graph;
  Uids& u = plan->uids;
  add_common(g, u, d);
  u.q = g.tensor(thd(d.b, d.hq, d.sq, d.dqk, io, u.off_q));
  u.k = g.tensor(thd_transposed(d.b, d.hk, d.skv, d.dqk, io, u.off_k));
  u.v = g.tensor(thd(d.b, d.hk, d.skv, d.dv, io, u.off_v));
  u.o = g.tensor(thd(d.b, d.hq, d.sq, d.dv, io, u.off_o));
  u.stats = g.tensor(thd_stats(d.b, d.hq, d.sq, u.off_stats));

  const std::vector<int64_t> sdims{d.b, d.hq, d.sq, d.skv}, rdims{d.b, d.hq, d.sq, 1};
  int64_t s = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.matmul(u.q, u.k, s, u.seq_q, u.seq_kv, 0, /*set_padding=*/true, 0.0);
  int64_t scaled = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.pointwise(CUDNN_POINTWISE_MUL, s, u.scale, 0, scaled);
  int64_t masked =
      apply_causal(g, u, padding_unless_dense(g, u, scaled, sdims, dense), sdims, mask);

  int64_t row_max = g.tensor(virtual_tensor(rdims, CUDNN_DATA_FLOAT));
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, masked, row_max);
  int64_t centered = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.pointwise(CUDNN_POINTWISE_SUB, masked, row_max, 0, centered);
  int64_t e = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.pointwise(CUDNN_POINTWISE_EXP, centered, 0, 0, e);
  int64_t row_sum = g.tensor(virtual_tensor(rdims, CUDNN_DATA_FLOAT));
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, row_sum);
  int64_t log_sum = g.tensor(virtual_tensor(rdims, CUDNN_DATA_FLOAT));
  g.pointwise(CUDNN_POINTWISE_LOG, row_sum, 0, 0, log_sum);
  g.pointwise(CUDNN_POINTWISE_ADD, row_max, log_sum, 0, u.stats);
  int64_t p = g.tensor(virtual_tensor(sdims, io));
  g.pointwise(CUDNN_POINTWISE_DIV, e, row_sum, 0, p);
  g.matmul(p, u.v, u.o, u.seq_q, 0, u.seq_kv);
  g.finalize("forward", candidates);
  return plan;
}

// With GQA, dK and dV are first computed for every query head and then summed per KV head.
// ragged_full_heads keeps those in the workspace as ragged THD tensors (memory ~ tokens); without
// it they are virtual [b, hq, s_kv, d] tensors the engine places itself (~ b * s_kv, padded).
std::unique_ptr<Plan> build_backward(cudnnHandle_t handle, const Dims& d, cudnnDataType_t io,
                                     Mask mask, bool dense, bool ragged_full_heads,
                                     int candidates) {
  auto plan = std::make_unique<Plan>();
  plan->graph = std::make_unique<Graph>(handle);
  Graph& g = *plan->graph;
  Uids& u = plan->uids;
  add_common(g, u, d);
  u.one = g.tensor(scalar(CUDNN_DATA_FLOAT));
  u.q = g.tensor(thd(d.b, d.hq, d.sq, d.dqk, io, u.off_q));
  u.k = g.tensor(thd_transposed(d.b, d.hk, d.skv, d.dqk, io, u.off_k));
  u.v = g.tensor(thd_transposed(d.b, d.hk, d.skv, d.dv, io, u.off_v));
  u.o = g.tensor(thd(d.b, d.hq, d.sq, d.dv, io, u.off_o));
  u.dout = g.tensor(thd(d.b, d.hq, d.sq, d.dv, io, u.off_o));
  u.stats = g.tensor(thd_stats(d.b, d.hq, d.sq, u.off_stats));
  u.dq = g.tensor(thd(d.b, d.hq, d.sq, d.dqk, io, u.off_q));
  u.dk = g.tensor(thd(d.b, d.hk, d.skv, d.dqk, io, u.off_k));
  u.dv = g.tensor(thd(d.b, d.hk, d.skv, d.dv, io, u.off_v));

  const std::vector<int64_t> sdims{d.b, d.hq, d.sq, d.skv}, rdims{d.b, d.hq, d.sq, 1};
  // Row sums of dO * O (the softmax backward's correction), kept in the workspace.
  TensorSpec prod = thd(d.b, d.hq, d.sq, d.dv, CUDNN_DATA_FLOAT, 0);
  prod.strides = {d.hq * d.sq * d.dv, d.sq * d.dv, d.hq * d.dv, 1};
  prod.is_virtual = true;
  int64_t dout_o = g.tensor(prod);
  g.pointwise(CUDNN_POINTWISE_MUL, u.dout, u.o, 0, dout_o);
  int64_t row_dot = g.tensor(virtual_tensor(rdims, CUDNN_DATA_FLOAT));
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, dout_o, row_dot);
  u.softmax_sum = g.tensor(thd_stats(d.b, d.hq, d.sq, u.off_stats));
  g.pointwise(CUDNN_POINTWISE_MUL, row_dot, u.one, 0, u.softmax_sum);

  // P recomputed from the scores and the forward's log-sum-exp.
  int64_t s = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.matmul(u.q, u.k, s, u.seq_q, u.seq_kv, 0);
  int64_t scaled = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.pointwise(CUDNN_POINTWISE_MUL, s, u.scale, 0, scaled);
  int64_t padded = padding_unless_dense(g, u, scaled, sdims, dense);
  int64_t centered = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.pointwise(CUDNN_POINTWISE_SUB, padded, u.stats, 0, centered);
  int64_t banded = apply_causal(g, u, centered, sdims, mask);
  int64_t p = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.pointwise(CUDNN_POINTWISE_EXP, banded, 0, 0, p);

  const bool grouped = d.hq != d.hk;
  const int64_t group = d.hq / d.hk;
  // [b, h, skv, sq] views of P and dS for the key-side products.
  TensorSpec transposed_scores;
  transposed_scores.dims = {d.b, d.hq, d.skv, d.sq};
  transposed_scores.strides = {d.hq * d.sq * d.skv, d.sq * d.skv, 1, d.skv};
  transposed_scores.dtype = io;
  transposed_scores.is_virtual = true;
  // A key-side product over every query head, summed over each KV head's group afterwards:
  // THD memory with the group's heads side by side, in the workspace (fp32-sized).
  auto full_heads = [&](const TensorSpec& per_kv_head) {
    TensorSpec full = per_kv_head;
    full.dims[1] = d.hq;
    if (ragged_full_heads) {
      full.strides[0] *= group;
      full.strides[2] *= group;
    } else {
      full.strides = cudnn::strides_in_order(full.dims, {0, 1, 2, 3});
      full.is_virtual = true;
      full.ragged_offset_uid = 0;
    }
    return full;
  };

  int64_t pt = g.tensor(transposed_scores);
  g.reshape(p, pt);
  if (grouped) {
    int64_t dv_full = g.tensor(full_heads(g.spec(u.dv)));
    if (ragged_full_heads) u.dv_full = dv_full;
    g.matmul(pt, u.dout, dv_full, u.seq_kv, 0, u.seq_q);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dv_full, u.dv);
  } else {
    g.matmul(pt, u.dout, u.dv, u.seq_kv, 0, u.seq_q);
  }

  int64_t dp = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.matmul(u.dout, u.v, dp, u.seq_q, u.seq_kv, 0);
  int64_t dp_centered = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.pointwise(CUDNN_POINTWISE_SUB, dp, u.softmax_sum, 0, dp_centered);
  int64_t ds_unscaled = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.pointwise(CUDNN_POINTWISE_MUL, dp_centered, p, 0, ds_unscaled);
  int64_t ds = g.tensor(virtual_tensor(sdims, CUDNN_DATA_FLOAT));
  g.pointwise(CUDNN_POINTWISE_MUL, ds_unscaled, u.scale, 0, ds);

  int64_t dst = g.tensor(transposed_scores);
  g.reshape(ds, dst);
  if (grouped) {
    int64_t dk_full = g.tensor(full_heads(g.spec(u.dk)));
    if (ragged_full_heads) u.dk_full = dk_full;
    g.matmul(dst, u.q, dk_full, u.seq_kv, 0, u.seq_q);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dk_full, u.dk);
  } else {
    g.matmul(dst, u.q, u.dk, u.seq_kv, 0, u.seq_q);
  }

  TensorSpec k_rows = thd(d.b, d.hk, d.skv, d.dqk, io, u.off_k);
  k_rows.is_virtual = true;
  int64_t k_plain = g.tensor(k_rows);  // K seen as [b, hk, skv, d]
  g.reshape(u.k, k_plain);
  TensorSpec accum = thd(d.b, d.hq, d.sq, d.dqk, CUDNN_DATA_FLOAT, u.off_q);
  u.dq_accum = g.tensor(accum);
  g.matmul(ds, k_plain, u.dq_accum, u.seq_q, 0, u.seq_kv);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, u.dq_accum, 0, 0, u.dq);
  g.finalize("backward", candidates);
  return plan;
}


torch::Tensor contiguous(const torch::Tensor& t) {
  // cuDNN wants 16-byte aligned tensors; a view into the middle of a buffer may not be.
  torch::Tensor c = t.is_contiguous() ? t : t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

// One cuDNN handle per device, owned for the process (destroyed at exit).
cudnnHandle_t handle_for(int device) {
  static std::mutex mutex;
  static std::map<int, cudnnHandle_t> handles;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  cudnnHandle_t handle = nullptr;
  cudnn::check(cudnnCreate(&handle), "cudnnCreate");
  handles.emplace(device, handle);
  return handle;
}

// Per-sequence lengths and element offsets of one call, padded to the class's sequence count,
// packed in one int32 device buffer (one host-to-device copy), 16-byte aligned segments.
struct Metadata {
  torch::Tensor buffer;
  void* seq_q = nullptr;
  void* seq_kv = nullptr;
  void* off_q = nullptr;
  void* off_k = nullptr;
  void* off_v = nullptr;
  void* off_o = nullptr;
  void* off_stats = nullptr;
};

// The rows of a batch with host cumulative lengths: each sequence where its cumulative lengths
// put it, its output at its queries.
RaggedRows rows_of(const VarlenBatch& batch) {
  RaggedRows rows;
  const auto& cq = batch.cu_q_host;
  const auto& ck = batch.cu_k_host;
  for (size_t i = 0; i + 1 < cq.size(); ++i) {
    rows.q_row.push_back(cq[i]);
    rows.q_len.push_back(cq[i + 1] - cq[i]);
    rows.k_row.push_back(ck[i]);
    rows.k_len.push_back(ck[i + 1] - ck[i]);
    rows.o_row.push_back(cq[i]);
  }
  rows.out_rows = cq.empty() ? 0 : cq.back();
  return rows;
}

// The buffer's segments: lengths (seq_q, seq_kv) then offsets (q, k, v, o, stats).
Metadata point_into(torch::Tensor buffer, int64_t lengths, int64_t offsets) {
  Metadata m;
  m.buffer = std::move(buffer);
  int32_t* p = m.buffer.data_ptr<int32_t>();
  m.seq_q = p;
  m.seq_kv = p + lengths;
  m.off_q = p + 2 * lengths;
  m.off_k = p + 2 * lengths + offsets;
  m.off_v = p + 2 * lengths + 2 * offsets;
  m.off_o = p + 2 * lengths + 3 * offsets;
  m.off_stats = p + 2 * lengths + 4 * offsets;
  return m;
}

int64_t aligned4(int64_t n) { return (n + 3) / 4 * 4; }

// From host rows: padding sequences (length 0) sit at the ends of q, k and the output.
Metadata make_metadata(const RaggedRows& rows, int64_t padded_batch, int64_t hq, int64_t hk,
                       int64_t dqk, int64_t dv, int64_t q_end, int64_t k_end,
                       const torch::Device& device) {
  const int64_t b = static_cast<int64_t>(rows.q_row.size());
  const int64_t lengths = aligned4(padded_batch), offsets = aligned4(padded_batch + 1);
  torch::Tensor host = torch::zeros({2 * lengths + 5 * offsets},
                                    torch::TensorOptions().dtype(torch::kInt).pinned_memory(true));
  int32_t* h = host.data_ptr<int32_t>();
  int32_t* seq_q = h;
  int32_t* seq_kv = h + lengths;
  int32_t* off = h + 2 * lengths;
  for (int64_t i = 0; i <= padded_batch; ++i) {
    const bool real = i < b;
    const int64_t qi = real ? rows.q_row[i] : q_end, ki = real ? rows.k_row[i] : k_end;
    const int64_t oi = real ? rows.o_row[i] : rows.out_rows;
    if (i < padded_batch) {
      seq_q[i] = static_cast<int32_t>(real ? rows.q_len[i] : 0);
      seq_kv[i] = static_cast<int32_t>(real ? rows.k_len[i] : 0);
    }
    off[i] = static_cast<int32_t>(qi * hq * dqk);
    off[offsets + i] = static_cast<int32_t>(ki * hk * dqk);
    off[2 * offsets + i] = static_cast<int32_t>(ki * hk * dv);
    off[3 * offsets + i] = static_cast<int32_t>(oi * hq * dv);
    off[4 * offsets + i] = static_cast<int32_t>(oi * hq);
  }
  return point_into(host.to(device, /*non_blocking=*/true), lengths, offsets);
}

Metadata make_metadata(const VarlenBatch& batch, int64_t padded_batch, int64_t hq, int64_t hk,
                       int64_t dqk, int64_t dv, const torch::Device& device) {
  if (!batch.cu_q_host.empty() && !batch.cu_k_host.empty()) {
    return make_metadata(rows_of(batch), padded_batch, hq, hk, dqk, dv, batch.cu_q_host.back(),
                         batch.cu_k_host.back(), device);
  }
  // Device cumulative lengths only: the same buffer built with LibTorch ops on the device.
  const int64_t b = batch.cu_seqlens_q.size(0) - 1;
  const int64_t lengths = aligned4(padded_batch), offsets = aligned4(padded_batch + 1);
  auto opts = torch::TensorOptions().dtype(torch::kInt).device(device);
  auto pad_cu = [&](const torch::Tensor& cu) {
    torch::Tensor last = cu.narrow(0, b, 1).expand({padded_batch - b});
    return torch::cat({cu, last});
  };
  torch::Tensor cq = pad_cu(batch.cu_seqlens_q), ck = pad_cu(batch.cu_seqlens_k);
  auto segment = [&](const torch::Tensor& x, int64_t size) {
    return torch::constant_pad_nd(x, {0, size - x.size(0)}, 0);
  };
  std::vector<torch::Tensor> parts{
      segment(cq.narrow(0, 1, padded_batch) - cq.narrow(0, 0, padded_batch), lengths),
      segment(ck.narrow(0, 1, padded_batch) - ck.narrow(0, 0, padded_batch), lengths),
      segment(cq * static_cast<int32_t>(hq * dqk), offsets),
      segment(ck * static_cast<int32_t>(hk * dqk), offsets),
      segment(ck * static_cast<int32_t>(hk * dv), offsets),
      segment(cq * static_cast<int32_t>(hq * dv), offsets),
      segment(cq * static_cast<int32_t>(hq), offsets)};
  return point_into(torch::cat(parts).to(opts), lengths, offsets);
}

// Carves 256-byte aligned pieces out of one workspace allocation.
class Workspace {
 public:
  int64_t reserve(int64_t bytes) {
    const int64_t at = size_;
    size_ += (bytes + 255) / 256 * 256;
    return at;
  }
  void allocate(const torch::Device& device) {
    buffer_ = torch::empty({std::max<int64_t>(size_, 1)},
                           torch::TensorOptions().dtype(torch::kByte).device(device));
  }
  void* at(int64_t offset) { return static_cast<uint8_t*>(buffer_.data_ptr()) + offset; }

 private:
  int64_t size_ = 0;
  torch::Tensor buffer_;
};

// Bytes the virtual full-head dK/dV of a GQA backward may take before the ragged layout is the
// only candidate (the engine sizes them by the class's padded shape).
constexpr int64_t kVirtualFullHeadsBytes = int64_t{4} << 30;
// Engines timed per graph on a class's first call (cuDNN's heuristics do not always rank the
// fastest first: measured on H200, docs/gpu.md).
constexpr int kTunedEngines = 4;

// Every plan a shape class may run, and the one its first call measured fastest.
struct ClassEntry {
  std::vector<std::unique_ptr<Plan>> candidates;
  Plan* chosen = nullptr;
  int64_t max_workspace_bytes() const {
    int64_t most = 0;
    for (const auto& p : candidates) most = std::max(most, p->graph->max_workspace_bytes());
    return most;
  }
};

// Why q, k, v are not inputs the graphs take (empty when they are).
std::string tensors_reason(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  if (!q.is_cuda() || !k.is_cuda() || !v.is_cuda()) return "q, k, v must be CUDA tensors";
  if (q.device() != k.device() || q.device() != v.device()) return "q, k, v must be on one device";
  if (q.scalar_type() != torch::kBFloat16 && q.scalar_type() != torch::kHalf) {
    return str_cat("dtype ", q.scalar_type(), " is not supported; accepted: bf16, fp16");
  }
  if (k.scalar_type() != q.scalar_type() || v.scalar_type() != q.scalar_type()) {
    return "q, k, v must share a dtype";
  }
  if (q.dim() != 3 || k.dim() != 3 || v.dim() != 3) {
    return str_cat("q, k, v must be [tokens, heads, head_dim]; got ", q.sizes(), ", ", k.sizes(),
                   ", ", v.sizes());
  }
  if (k.size(0) != v.size(0) || k.size(1) != v.size(1)) {
    return str_cat("k and v must have the same tokens and heads; got ", k.sizes(), " and ",
                   v.sizes());
  }
  const int64_t dqk = q.size(2), dv = v.size(2);
  if (k.size(2) != dqk) return str_cat("q head_dim ", dqk, " != k head_dim ", k.size(2));
  const bool dims_ok = (dqk == dv && (dqk == 64 || dqk == 128)) || (dqk == 192 && dv == 128);
  if (!dims_ok) {
    return str_cat("head dims q/k ", dqk, ", v ", dv,
                   " are not supported; accepted: 64/64, 128/128, 192/128");
  }
  if (k.size(1) == 0 || q.size(1) % k.size(1) != 0) {
    return str_cat("heads ", q.size(1), " must be a multiple of kv_heads ", k.size(1));
  }
  return "";
}

// Why `rows` is not a layout forward_rows takes over q, k, v (empty when it is).
std::string rows_unsupported_reason(const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& v, const RaggedRows& rows) {
  std::string why = tensors_reason(q, k, v);
  if (!why.empty()) return why;
  const size_t b = rows.q_row.size();
  if (rows.q_len.size() != b || rows.k_row.size() != b || rows.k_len.size() != b ||
      rows.o_row.size() != b) {
    return str_cat("rows: q_row, q_len, k_row, k_len and o_row must have one entry per sequence; "
                   "got ", b, ", ", rows.q_len.size(), ", ", rows.k_row.size(), ", ",
                   rows.k_len.size(), ", ", rows.o_row.size());
  }
  for (size_t i = 0; i < b; ++i) {
    const bool inside = rows.q_row[i] >= 0 && rows.q_len[i] >= 0 && rows.k_row[i] >= 0 &&
                        rows.k_len[i] >= 0 && rows.o_row[i] >= 0 &&
                        rows.q_row[i] + rows.q_len[i] <= q.size(0) &&
                        rows.k_row[i] + rows.k_len[i] <= k.size(0) &&
                        rows.o_row[i] + rows.q_len[i] <= rows.out_rows;
    if (!inside) {
      return str_cat("rows: sequence ", i, " (queries ", rows.q_row[i], " + ", rows.q_len[i],
                     ", keys ", rows.k_row[i], " + ", rows.k_len[i], ", output ", rows.o_row[i],
                     ") reaches outside q (", q.size(0), " rows), k (", k.size(0),
                     " rows) or the output (", rows.out_rows, " rows)");
    }
  }
  const int64_t limit = std::numeric_limits<int32_t>::max();
  const int64_t d = std::max(q.size(2), v.size(2));
  const int64_t widest = std::max({q.size(0) * q.size(1) * d, k.size(0) * k.size(1) * d,
                                   rows.out_rows * q.size(1) * d});
  if (widest > limit) {
    return str_cat("the call has ", widest, " elements in one tensor, more than 32-bit offsets "
                   "address (", limit, ")");
  }
  return "";
}

class CudnnKernel : public CudnnAttention {
 public:
  CudnnKernel() {
    const int64_t runtime = cudnn::runtime_version(), header = cudnn::header_version();
    CADRE_CHECK(runtime / 100 == header / 100,
                "cudnn kernel: built with cuDNN headers ", header, " but the process loaded cuDNN ",
                runtime, "; link the libcudnn that LibTorch loads (CMake's CADRE_CUDNN_LIBRARY)");
  }

  std::string name() const override { return "cudnn"; }
  KernelCounters counters() const override { return counters_; }

  ForwardResult forward_masked(const torch::Tensor& q_in, const torch::Tensor& k_in,
                               const torch::Tensor& v_in, const VarlenBatch& batch,
                               double softmax_scale, bool causal) override {
    const std::string why = cudnn_unsupported_reason(q_in, k_in, v_in, batch);
    CADRE_CHECK(why.empty(), "cudnn kernel: ", why);
    c10::cuda::CUDAGuard guard(q_in.device());
    const torch::Tensor q = contiguous(q_in), k = contiguous(k_in), v = contiguous(v_in);
    ForwardResult r;
    if (batch.max_seqlen_k == 0) {
      r = empty_forward(q, v, q.size(0));
    } else {
      const ClassKey key = resolve(class_key(false, causal, q, k, v, batch), q.device().index());
      r = forward_core(q, k, v, key, q.size(0), softmax_scale, [&](const ClassKey& key) {
        return make_metadata(batch, key.batch, q.size(1), k.size(1), q.size(2), v.size(2),
                             q.device());
      });
    }
    r.lse = r.lse.t().contiguous();  // [heads, total_q]
    return r;
  }

  ForwardResult forward_rows(const torch::Tensor& q_in, const torch::Tensor& k_in,
                             const torch::Tensor& v_in, const RaggedRows& rows,
                             double softmax_scale, bool causal) override {
    const std::string why = rows_unsupported_reason(q_in, k_in, v_in, rows);
    CADRE_CHECK(why.empty(), "cudnn kernel: ", why);
    c10::cuda::CUDAGuard guard(q_in.device());
    const torch::Tensor q = contiguous(q_in), k = contiguous(k_in), v = contiguous(v_in);
    int64_t max_q = 0, max_k = 0;
    for (size_t i = 0; i < rows.q_len.size(); ++i) {
      max_q = std::max(max_q, rows.q_len[i]);
      max_k = std::max(max_k, rows.k_len[i]);
    }
    if (max_q == 0 || max_k == 0) return empty_forward(q, v, rows.out_rows);
    const ClassKey key =
        resolve(class_key(false, causal, q, k, v, static_cast<int64_t>(rows.q_row.size()), max_q,
                          max_k, &rows),
                q.device().index());
    return forward_core(q, k, v, key, rows.out_rows, softmax_scale, [&](const ClassKey& key) {
      return make_metadata(rows, key.batch, q.size(1), k.size(1), q.size(2), v.size(2), q.size(0),
                           k.size(0), q.device());
    });
  }

  BackwardResult backward_masked(const torch::Tensor& dout_in, const torch::Tensor& q_in,
                                 const torch::Tensor& k_in, const torch::Tensor& v_in,
                                 const torch::Tensor& out_in, const torch::Tensor& lse,
                                 const VarlenBatch& batch, double softmax_scale,
                                 bool causal) override {
    const std::string why = cudnn_unsupported_reason(q_in, k_in, v_in, batch);
    CADRE_CHECK(why.empty(), "cudnn kernel: ", why);
    CADRE_CHECK(dout_in.sizes() == out_in.sizes() && out_in.size(0) == q_in.size(0) &&
                    out_in.size(1) == q_in.size(1) && out_in.size(2) == v_in.size(2),
                "cudnn kernel backward: dout and out must be [total_q, heads, d_v] = [",
                q_in.size(0), ", ", q_in.size(1), ", ", v_in.size(2), "]; got ", dout_in.sizes(),
                " and ", out_in.sizes());
    CADRE_CHECK(dout_in.scalar_type() == q_in.scalar_type() &&
                    out_in.scalar_type() == q_in.scalar_type(),
                "cudnn kernel backward: dout and out must have q's dtype ", q_in.scalar_type());
    CADRE_CHECK(lse.scalar_type() == torch::kFloat && lse.dim() == 2 &&
                    lse.size(0) == q_in.size(1) && lse.size(1) == q_in.size(0),
                "cudnn kernel backward: lse must be fp32 [heads, total_q] = [", q_in.size(1), ", ",
                q_in.size(0), "]; got ", lse.scalar_type(), " ", lse.sizes());
    c10::cuda::CUDAGuard guard(q_in.device());
    const torch::Tensor q = contiguous(q_in), k = contiguous(k_in), v = contiguous(v_in);
    const torch::Tensor dout = contiguous(dout_in), out = contiguous(out_in);
    const int64_t total_q = q.size(0), hq = q.size(1), dqk = q.size(2);
    const int64_t total_k = k.size(0), hk = k.size(1), dv = v.size(2);
    torch::Tensor dq = torch::empty_like(q), dk = torch::empty_like(k), dvt = torch::empty_like(v);
    ++counters_.calls;
    if (total_q == 0 || total_k == 0) {
      return {dq.zero_(), dk.zero_(), dvt.zero_()};
    }
    // Keys of sequences without queries must read as zero gradients; cuDNN may skip them.
    dk.zero_();
    dvt.zero_();
    float scale = static_cast<float>(softmax_scale > 0 ? softmax_scale
                                                       : 1.0 / std::sqrt(double(dqk)));
    const ClassKey key = resolve(class_key(true, causal, q, k, v, batch), q.device().index());
    ClassEntry& entry = entry_for(key, q.device().index());
    Metadata meta = make_metadata(batch, key.batch, hq, hk, dqk, dv, q.device());
    const torch::Tensor stats = lse.t().contiguous();  // [total_q, heads]
    Workspace workspace;
    const int64_t engine_ws = workspace.reserve(entry.max_workspace_bytes());
    const int64_t softmax_sum = workspace.reserve(total_q * hq * 4);
    const int64_t dq_accum = workspace.reserve(total_q * hq * dqk * 4);
    bool any_ragged_full = false;
    for (const auto& p : entry.candidates) any_ragged_full |= p->uids.dk_full > 0;
    const int64_t dk_full = any_ragged_full ? workspace.reserve(total_k * hq * dqk * 4) : 0;
    const int64_t dv_full = any_ragged_full ? workspace.reserve(total_k * hq * dv * 4) : 0;
    workspace.allocate(q.device());
    float neg_inf = -std::numeric_limits<float>::infinity(), one = 1.0f;
    auto bind = [&](const Uids& u) {
      std::vector<int64_t> uids{u.q,     u.k,         u.v,       u.o,       u.dout,
                                u.stats, u.dq,        u.dk,      u.dv,      u.seq_q,
                                u.seq_kv, u.off_q,    u.off_k,   u.off_v,   u.off_o,
                                u.off_stats, u.scale, u.neg_inf, u.one,     u.softmax_sum,
                                u.dq_accum};
      std::vector<void*> pointers{q.data_ptr(),   k.data_ptr(),     v.data_ptr(),
                                  out.data_ptr(), dout.data_ptr(),  stats.data_ptr(),
                                  dq.data_ptr(),  dk.data_ptr(),    dvt.data_ptr(),
                                  meta.seq_q,     meta.seq_kv,      meta.off_q,
                                  meta.off_k,     meta.off_v,       meta.off_o,
                                  meta.off_stats, &scale,           &neg_inf,
                                  &one,           workspace.at(softmax_sum),
                                  workspace.at(dq_accum)};
      if (u.dk_full > 0) {
        uids.push_back(u.dk_full);
        pointers.push_back(workspace.at(dk_full));
        uids.push_back(u.dv_full);
        pointers.push_back(workspace.at(dv_full));
      }
      return std::make_pair(uids, pointers);
    };
    run(entry, bind, workspace.at(engine_ws), q.device().index());
    return {dq, dk, dvt};
  }

 private:
  // Output rows without any visible key: zeros, log-sum-exp -inf (token-major).
  ForwardResult empty_forward(const torch::Tensor& q, const torch::Tensor& v, int64_t rows) {
    ++counters_.calls;
    return {torch::zeros({rows, q.size(1), v.size(2)}, q.options()),
            torch::full({rows, q.size(1)}, -INFINITY, q.options().dtype(torch::kFloat))};
  }

  // One forward call of class `key`: out [out_rows, heads, d_v], lse token-major
  // [out_rows, heads]; `metadata(key)` gives the call's lengths and offsets.
  template <typename MakeMetadata>
  ForwardResult forward_core(const torch::Tensor& q, const torch::Tensor& k,
                             const torch::Tensor& v, const ClassKey& key, int64_t out_rows,
                             double softmax_scale, MakeMetadata&& metadata) {
    const int64_t hq = q.size(1), dqk = q.size(2), dv = v.size(2);
    torch::Tensor out = torch::empty({out_rows, hq, dv}, q.options());
    torch::Tensor stats = torch::empty({out_rows, hq}, q.options().dtype(torch::kFloat));
    ++counters_.calls;
    if (out_rows == 0) return {out, stats};
    float scale = static_cast<float>(softmax_scale > 0 ? softmax_scale
                                                       : 1.0 / std::sqrt(double(dqk)));
    ClassEntry& entry = entry_for(key, q.device().index());
    Metadata meta = metadata(key);
    Workspace workspace;
    const int64_t engine_ws = workspace.reserve(entry.max_workspace_bytes());
    workspace.allocate(q.device());
    float neg_inf = -std::numeric_limits<float>::infinity();
    auto bind = [&](const Uids& u) {
      return std::make_pair(
          std::vector<int64_t>{u.q, u.k, u.v, u.o, u.stats, u.seq_q, u.seq_kv, u.off_q, u.off_k,
                               u.off_v, u.off_o, u.off_stats, u.scale, u.neg_inf},
          std::vector<void*>{q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                             stats.data_ptr(), meta.seq_q, meta.seq_kv, meta.off_q, meta.off_k,
                             meta.off_v, meta.off_o, meta.off_stats, &scale, &neg_inf});
    };
    run(entry, bind, workspace.at(engine_ws), q.device().index());
    return {out, stats};
  }

  // The class of a call over `sequences` sequences with these maxima; `rows` (the host lengths,
  // or nullptr without them) tells square and dense layouts apart.
  ClassKey class_key(bool backward, bool causal, const torch::Tensor& q, const torch::Tensor& k,
                     const torch::Tensor& v, int64_t sequences, int64_t max_q, int64_t max_k,
                     const RaggedRows* rows) const {
    ClassKey key;
    key.backward = backward;
    // Square sequences (whole documents) take the top-left band; known from the host lengths
    // (without them the bottom-right band, right for every layout).
    bool square = rows != nullptr && !rows->q_len.empty();
    for (size_t i = 0; square && i < rows->q_len.size(); ++i) square = rows->q_len[i] == rows->k_len[i];
    key.mask = static_cast<int>(!causal ? Mask::kNone
                                : square ? Mask::kTopLeft
                                         : Mask::kBottomRight);
    key.dtype = static_cast<int>(q.scalar_type());
    key.heads = q.size(1);
    key.kv_heads = k.size(1);
    key.d_qk = q.size(2);
    key.d_v = v.size(2);
    key.batch = bucket_sequences(sequences);
    key.max_q = bucket_length(max_q);
    key.max_k = bucket_length(max_k);
    // Dense: the host lengths show every one of the class's sequences full (e.g. one document
    // of a class length). CADRE_CUDNN_DENSE=0 keeps the padding mask everywhere.
    static const bool dense_allowed = env_switch_on("CADRE_CUDNN_DENSE");
    key.dense = dense_allowed && rows != nullptr && sequences == key.batch;
    for (int64_t i = 0; key.dense && i < sequences; ++i) {
      key.dense = rows->q_len[i] == key.max_q && rows->k_len[i] == key.max_k;
    }
    return key;
  }
  ClassKey class_key(bool backward, bool causal, const torch::Tensor& q, const torch::Tensor& k,
                     const torch::Tensor& v, const VarlenBatch& batch) const {
    const bool host = !batch.cu_q_host.empty() && !batch.cu_k_host.empty();
    const RaggedRows rows = host ? rows_of(batch) : RaggedRows{};
    return class_key(backward, causal, q, k, v, batch.cu_seqlens_q.size(0) - 1,
                     batch.max_seqlen_q, batch.max_seqlen_k, host ? &rows : nullptr);
  }

  // The class a call runs: its own if built, else the smallest built class of the same kind
  // that covers it (as many or more sequences, as long or longer maxima) at most twice its
  // tile grid (sequences x query length) and key length, else its own (to be built). A ragged
  // graph runs any batch within its declared sizes (padding sequences have length zero and
  // tiles beyond a sequence's length exit at once), so covering trades a bounded grid overhead
  // for no graph build: steady-state training steps whose shapes wander inside the classes
  // already built build nothing. CADRE_CUDNN_EXACT_CLASSES=1 turns covering off.
  ClassKey resolve(const ClassKey& wanted, int device) const {
    auto found = entries_.find(device);
    if (found == entries_.end() || found->second.count(wanted) > 0) return wanted;
    // A dense class is worth its build (no padding mask) and serves only its own shape.
    if (wanted.dense) return wanted;
    static const bool exact = std::getenv("CADRE_CUDNN_EXACT_CLASSES") != nullptr;
    if (exact) return wanted;
    const ClassKey* best = nullptr;
    const double grid = static_cast<double>(wanted.batch) * static_cast<double>(wanted.max_q);
    for (const auto& [key, entry] : found->second) {
      if (key.backward != wanted.backward || key.mask != wanted.mask ||
          key.dtype != wanted.dtype || key.heads != wanted.heads ||
          key.kv_heads != wanted.kv_heads || key.d_qk != wanted.d_qk || key.d_v != wanted.d_v ||
          key.dense) {
        continue;
      }
      if (key.batch < wanted.batch || key.max_q < wanted.max_q || key.max_k < wanted.max_k) continue;
      const double key_grid = static_cast<double>(key.batch) * static_cast<double>(key.max_q);
      if (key_grid > 2.0 * grid || key.max_k > 2 * wanted.max_k) continue;
      if (best == nullptr || key_grid * static_cast<double>(key.max_k) <
                                 static_cast<double>(best->batch) * best->max_q * best->max_k) {
        best = &key;
      }
    }
    if (best == nullptr) return wanted;
    ++counters_.graphs_covered;
    return *best;
  }

  ClassEntry& entry_for(const ClassKey& key, int device) {
    auto& per_device = entries_[device];
    auto it = per_device.find(key);
    if (it != per_device.end()) {
      ++counters_.graph_cache_hits;
      return it->second;
    }
    const auto start = std::chrono::steady_clock::now();
    cudnnHandle_t handle = handle_for(device);
    const Dims d{key.batch, key.heads, key.kv_heads, key.max_q, key.max_k, key.d_qk, key.d_v};
    const cudnnDataType_t io = cudnn_dtype(static_cast<torch::ScalarType>(key.dtype));
    const Mask mask = static_cast<Mask>(key.mask);
    auto build = [&](bool dense) {
      ClassEntry entry;
      if (!key.backward) {
        entry.candidates.push_back(build_forward(handle, d, io, mask, dense, kTunedEngines));
        return entry;
      }
      const bool grouped = key.heads != key.kv_heads;
      const int64_t virtual_bytes =
          2 * d.b * d.hq * d.skv * std::max(d.dqk, d.dv) * static_cast<int64_t>(sizeof(float));
      if (!grouped || virtual_bytes <= kVirtualFullHeadsBytes) {
        entry.candidates.push_back(build_backward(handle, d, io, mask, dense,
                                                  /*ragged_full_heads=*/false, kTunedEngines));
      }
      if (grouped) {
        try {
          entry.candidates.push_back(build_backward(handle, d, io, mask, dense,
                                                    /*ragged_full_heads=*/true, kTunedEngines));
        } catch (const Error&) {
          if (entry.candidates.empty()) throw;  // the only layout this class can use
        }
      }
      return entry;
    };
    ClassEntry entry;
    if (key.dense) {
      // A dense class drops the padding mask; should no engine take that graph, the padded
      // graph serves the class as it serves every other.
      try {
        entry = build(true);
      } catch (const Error& e) {
        static bool logged = false;
        if (!logged) {
          std::cerr << "cadre: cudnn kernel: dense classes keep the padding mask (" << e.what()
                    << ")\n";
          logged = true;
        }
        entry = build(false);
      }
    } else {
      entry = build(false);
    }
    build_ms_pending_ =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    ++counters_.graphs_built;
    return per_device.emplace(key, std::move(entry)).first->second;
  }

  // Runs the class's chosen plan; on the class's first call, times every candidate engine of
  // every candidate graph once (after a warm-up run) and keeps the fastest.
  template <typename Bind>
  void run(ClassEntry& entry, Bind&& bind, void* workspace, int device) {
    cudnnHandle_t handle = handle_for(device);
    cudaStream_t stream = at::cuda::getCurrentCUDAStream(device).stream();
    cudnn::check(cudnnSetStream(handle, stream), "cudnnSetStream");
    auto execute = [&](const Plan& plan) {
      auto [uids, pointers] = bind(plan.uids);
      plan.graph->execute(uids, pointers, workspace);
    };
    if (entry.chosen == nullptr) {
      const auto start = std::chrono::steady_clock::now();
      Plan* best = nullptr;
      int best_engine = 0;
      float best_ms = std::numeric_limits<float>::infinity();
      const bool only_one = entry.candidates.size() == 1 && entry.candidates[0]->graph->candidates() == 1;
      cudaEvent_t begin = nullptr, end = nullptr;
      if (!only_one) {
        CADRE_CUDA_CHECK(cudaEventCreate(&begin));
        CADRE_CUDA_CHECK(cudaEventCreate(&end));
      }
      for (auto& plan : entry.candidates) {
        for (int e = 0; e < plan->graph->candidates(); ++e) {
          plan->graph->select(e);
          if (only_one) {
            best = plan.get();
            break;
          }
          execute(*plan);  // warm-up
          CADRE_CUDA_CHECK(cudaEventRecord(begin, stream));
          execute(*plan);
          CADRE_CUDA_CHECK(cudaEventRecord(end, stream));
          CADRE_CUDA_CHECK(cudaEventSynchronize(end));
          float ms = 0;
          CADRE_CUDA_CHECK(cudaEventElapsedTime(&ms, begin, end));
          if (ms < best_ms) {
            best_ms = ms;
            best = plan.get();
            best_engine = e;
          }
        }
      }
      if (!only_one) {
        cudaEventDestroy(begin);
        cudaEventDestroy(end);
      }
      best->graph->select(best_engine);
      best->graph->drop_unselected();
      entry.chosen = best;
      if (std::getenv("CADRE_CUDNN_VERBOSE") != nullptr) {
        std::cerr << "cadre: cudnn kernel: class tuned to " << best->graph->engine() << " ("
                  << best_ms << " ms; " << (best->uids.dk_full > 0 ? "ragged" : "virtual")
                  << " full heads)\n";
      }
      counters_.graph_build_ms +=
          build_ms_pending_ +
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count();
      build_ms_pending_ = 0;
      if (!only_one) {
        execute(*best);
        return;
      }
    }
    execute(*entry.chosen);
  }

  std::map<int, std::map<ClassKey, ClassEntry>> entries_;
  mutable KernelCounters counters_;
  double build_ms_pending_ = 0;
};

}  // namespace

std::string cudnn_unsupported_reason(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, const VarlenBatch& batch) {
  std::string why = tensors_reason(q, k, v);
  if (!why.empty()) return why;
  const int64_t dqk = q.size(2), dv = v.size(2);
  for (const torch::Tensor* cu : {&batch.cu_seqlens_q, &batch.cu_seqlens_k}) {
    if (!cu->defined() || cu->scalar_type() != torch::kInt || cu->dim() != 1 ||
        cu->device() != q.device()) {
      return str_cat("cu_seqlens must be int32 [batch + 1] on ", q.device());
    }
  }
  if (batch.cu_seqlens_q.size(0) != batch.cu_seqlens_k.size(0) || batch.cu_seqlens_q.size(0) < 1) {
    return "cu_seqlens_q and cu_seqlens_k must have one length of at least 1";
  }
  // A batch without sequences (an empty nano-batch) has nothing for cuDNN to do: forward and
  // backward return empty results without a graph.
  if (batch.cu_seqlens_q.size(0) == 1 && (q.size(0) != 0 || k.size(0) != 0)) {
    return "a batch without sequences has rows";
  }
  // Element offsets are 32-bit in the graph. A GQA backward whose full-head dK/dV cannot be
  // virtual (see kVirtualFullHeadsBytes) keeps them ragged, addressed with query heads.
  const int64_t limit = std::numeric_limits<int32_t>::max();
  const int64_t d = std::max(dqk, dv), hq = q.size(1), hk = k.size(1);
  int64_t widest = std::max(q.size(0) * hq * d, k.size(0) * hk * d);
  const int64_t b = bucket_sequences(batch.cu_seqlens_q.size(0) - 1);
  const int64_t virtual_bytes = 2 * b * hq * bucket_length(batch.max_seqlen_k) * d * 4;
  if (hq != hk && virtual_bytes > kVirtualFullHeadsBytes) widest = std::max(widest, k.size(0) * hq * d);
  if (widest > limit) {
    return str_cat("the batch has ", widest, " elements in one tensor, more than 32-bit offsets "
                   "address (", limit, ")");
  }
  return "";
}

std::unique_ptr<CoreAttentionKernel> make_cudnn_kernel() { return std::make_unique<CudnnKernel>(); }
std::unique_ptr<CudnnAttention> make_cudnn_attention() { return std::make_unique<CudnnKernel>(); }

}  // namespace cadre::attention_server
