// Test helpers shared by the GPU kernel suites: a fused layout (Shape), the obviously-right
// float64 attention every kernel is checked against (bottom-right causal mask per sequence,
// gradients by autograd), relative error that never passes NaN, and the batch of a layout.
#pragma once

#include <torch/torch.h>

#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "attention_server/kernel.h"
#include "common/error.h"

namespace cadre::attention_server {

struct Shape {
  std::vector<std::pair<int64_t, int64_t>> sequences;  // (queries, keys), keys >= queries
  int64_t heads = 8;
  int64_t kv_heads = 8;
  int64_t head_dim = 128;
  torch::ScalarType dtype = torch::kBFloat16;
  int64_t v_head_dim = 0;  // 0 = head_dim
  int64_t value_dim() const { return v_head_dim > 0 ? v_head_dim : head_dim; }
};

struct Reference {
  torch::Tensor out, lse, dq, dk, dv;
};

// Obviously-right attention in float64: per sequence, scores over all keys, the causal mask
// aligned bottom-right (query j of nq sees keys [0, nk - nq + j]), softmax, gradients by autograd.
inline Reference reference_attention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& dout, const Shape& shape,
                              double scale) {
  auto q64 = q.to(torch::kDouble).detach().requires_grad_(true);
  auto k64 = k.to(torch::kDouble).detach().requires_grad_(true);
  auto v64 = v.to(torch::kDouble).detach().requires_grad_(true);
  const int64_t group = shape.heads / shape.kv_heads;
  std::vector<torch::Tensor> outs, lses;
  int64_t q_at = 0, k_at = 0;
  for (auto [nq, nk] : shape.sequences) {
    auto qs = q64.narrow(0, q_at, nq);
    auto ks = k64.narrow(0, k_at, nk).repeat_interleave(group, 1);
    auto vs = v64.narrow(0, k_at, nk).repeat_interleave(group, 1);
    auto scores = torch::einsum("qhd,khd->hqk", {qs, ks}) * scale;
    auto opts = torch::TensorOptions().dtype(torch::kLong).device(q.device());
    auto qi = torch::arange(nq, opts).view({nq, 1});
    auto kj = torch::arange(nk, opts).view({1, nk});
    auto allowed = kj <= qi + (nk - nq);
    scores = scores.masked_fill(allowed.logical_not(), -INFINITY);
    lses.push_back(torch::logsumexp(scores, -1));
    outs.push_back(torch::einsum("hqk,khd->qhd", {torch::softmax(scores, -1), vs}));
    q_at += nq;
    k_at += nk;
  }
  Reference ref;
  ref.out = torch::cat(outs, 0);
  ref.lse = torch::cat(lses, 1);
  auto grads = torch::autograd::grad({ref.out}, {q64, k64, v64}, {dout.to(torch::kDouble)});
  ref.out = ref.out.detach();
  ref.lse = ref.lse.detach();
  ref.dq = grads[0];
  ref.dk = grads[1];
  ref.dv = grads[2];
  return ref;
}

inline double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.to(torch::kDouble).to(want.device());
  if (!torch::isfinite(g).all().item<bool>()) return INFINITY;  // NaN never passes
  double norm = want.norm().item<double>();
  return (g - want).norm().item<double>() / (norm > 0 ? norm : 1.0);
}

inline VarlenBatch make_batch(const Shape& shape, torch::Device device) {
  std::vector<int64_t> cq{0}, ck{0};
  for (auto [nq, nk] : shape.sequences) {
    cq.push_back(cq.back() + nq);
    ck.push_back(ck.back() + nk);
  }
  return make_varlen_batch(cq, ck, device);
}

inline std::string describe(const Shape& shape) {
  std::string text = str_cat(shape.dtype == torch::kBFloat16 ? "bf16" : "fp16", " heads ",
                             shape.heads, "/", shape.kv_heads, " d ", shape.head_dim, " seqs");
  for (auto [nq, nk] : shape.sequences) text += str_cat(" ", nq, "/", nk);
  return text;
}

// A layout's random inputs on GPU 0 (seeded), and the kernel's forward and backward on them
// checked against reference_attention (tolerances out 1e-2, lse 1e-3, grads 2e-2), printed.
struct Inputs {
  torch::Tensor q, k, v, dout;
  VarlenBatch batch;
};

inline Inputs make_inputs(const Shape& shape, uint64_t seed) {
  torch::manual_seed(seed);
  const torch::Device device(torch::kCUDA, 0);
  int64_t total_q = 0, total_k = 0;
  for (auto [nq, nk] : shape.sequences) {
    total_q += nq;
    total_k += nk;
  }
  auto opts = torch::TensorOptions().dtype(shape.dtype).device(device);
  Inputs in;
  in.q = torch::randn({total_q, shape.heads, shape.head_dim}, opts);
  in.k = torch::randn({total_k, shape.kv_heads, shape.head_dim}, opts);
  in.v = torch::randn({total_k, shape.kv_heads, shape.value_dim()}, opts);
  in.dout = torch::randn({total_q, shape.heads, shape.value_dim()}, opts);
  in.batch = make_batch(shape, device);
  return in;
}

inline void check_shape(CoreAttentionKernel& kernel, const Shape& shape, uint64_t seed) {
  Inputs in = make_inputs(shape, seed);
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  ForwardResult fwd = kernel.forward(in.q, in.k, in.v, in.batch, 0.0);
  BackwardResult bwd = kernel.backward(in.dout, in.q, in.k, in.v, fwd.out, fwd.lse, in.batch, 0.0);
  Reference ref = reference_attention(in.q, in.k, in.v, in.dout, shape, scale);
  ASSERT_EQ(fwd.out.sizes(), ref.out.sizes());
  ASSERT_EQ(fwd.lse.sizes(), ref.lse.sizes());
    const double tol_out = 1e-2, tol_grad = 2e-2, tol_lse = 1e-3;
  struct Row {
    const char* name;
    double error, tolerance;
  } rows[] = {{"out", relative_error(fwd.out, ref.out), tol_out},
              {"lse", relative_error(fwd.lse, ref.lse), tol_lse},
              {"dq", relative_error(bwd.dq, ref.dq), tol_grad},
              {"dk", relative_error(bwd.dk, ref.dk), tol_grad},
              {"dv", relative_error(bwd.dv, ref.dv), tol_grad}};
  std::string table;
  bool ok = true;
  for (const Row& row : rows) {
    table += str_cat(" ", row.name, "=", row.error);
    ok = ok && row.error <= row.tolerance;
  }
  EXPECT_TRUE(ok) << describe(shape) << ": relative errors" << table << " (tolerances out "
                  << tol_out << ", lse " << tol_lse << ", grads " << tol_grad << ")";
  std::cout << "[" << kernel.name() << " vs float64] " << describe(shape).substr(0, 110) << ":"
            << table << "\n";
}

}  // namespace cadre::attention_server
