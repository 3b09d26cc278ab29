// The CPU reference core-attention kernel: dense masked attention per sequence, computed in the
// input dtype (fp32 or fp64). Simple on purpose: it is the oracle for every other kernel.
#include <ATen/ATen.h>

#include <cmath>

#include "attention_server/kernel.h"
#include "common/error.h"

namespace cadre::attention_server {

namespace {

void check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                  const VarlenBatch& batch) {
  CADRE_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
              "core attention takes q [tokens, heads, head_dim], k [tokens, kv_heads, head_dim] "
              "and v [tokens, kv_heads, v_head_dim]; got ",
              q.dim(), "-d, ", k.dim(), "-d and ", v.dim(), "-d tensors");
  CADRE_CHECK(k.size(0) == v.size(0) && k.size(1) == v.size(1) && v.size(2) > 0,
              "k and v need the same tokens and KV heads (v's head dim may differ from k's); got ",
              k.sizes(), " and ", v.sizes());
  CADRE_CHECK(q.size(2) == k.size(2), "q head_dim ", q.size(2), " != k head_dim ", k.size(2));
  CADRE_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "query heads ", q.size(1),
              " are not a multiple of KV heads ", k.size(1));
  CADRE_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "q, k, v dtypes differ: ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  CADRE_CHECK(batch.cu_seqlens_q.numel() == batch.cu_seqlens_k.numel() &&
                  batch.cu_seqlens_q.numel() >= 1,
              "cu_seqlens_q and cu_seqlens_k need the same length >= 1; got ",
              batch.cu_seqlens_q.numel(), " and ", batch.cu_seqlens_k.numel());
}

double scale_for(const torch::Tensor& q, double softmax_scale) {
  return softmax_scale > 0 ? softmax_scale : 1.0 / std::sqrt(static_cast<double>(q.size(2)));
}

// Per sequence: [heads, nq, D] views (D = Dqk for q and k, Dv for v) of q and of k/v with KV heads repeated for their query group,
// plus the bottom-right-aligned causal mask (true = masked).
struct Sequence {
  int64_t q_begin, q_end, k_begin, k_end;
};

std::vector<Sequence> sequences(const VarlenBatch& batch, int64_t total_q, int64_t total_k) {
  auto cq = batch.cu_seqlens_q.to(torch::kCPU).to(torch::kLong);
  auto ck = batch.cu_seqlens_k.to(torch::kCPU).to(torch::kLong);
  const int64_t* pq = cq.data_ptr<int64_t>();
  const int64_t* pk = ck.data_ptr<int64_t>();
  std::vector<Sequence> out;
  CADRE_CHECK(pq[0] == 0 && pk[0] == 0, "cu_seqlens must start at 0");
  for (int64_t i = 0; i + 1 < cq.numel(); ++i) {
    const int64_t nq = pq[i + 1] - pq[i];
    const int64_t nk = pk[i + 1] - pk[i];
    CADRE_CHECK(nq >= 0 && nk >= nq, "sequence ", i, " has ", nq, " queries and ", nk,
                " keys; accepted: 0 <= queries <= keys");
    out.push_back({pq[i], pq[i + 1], pk[i], pk[i + 1]});
  }
  CADRE_CHECK(pq[cq.numel() - 1] == total_q && pk[ck.numel() - 1] == total_k,
              "cu_seqlens end at ", pq[cq.numel() - 1], " queries and ", pk[ck.numel() - 1],
              " keys but the tensors hold ", total_q, " and ", total_k);
  return out;
}

torch::Tensor causal_mask(int64_t nq, int64_t nk, const torch::Device& device) {
  // Query i (of nq) sees keys [0, nk - nq + i].
  auto rows = torch::arange(nq, torch::TensorOptions().dtype(torch::kLong).device(device));
  auto cols = torch::arange(nk, torch::TensorOptions().dtype(torch::kLong).device(device));
  return cols.unsqueeze(0) > (rows.unsqueeze(1) + (nk - nq));
}

class CpuKernel : public CoreAttentionKernel {
 public:
  std::string name() const override { return "cpu"; }

  ForwardResult forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const VarlenBatch& batch, double softmax_scale) override {
    check_inputs(q, k, v, batch);
    const double scale = scale_for(q, softmax_scale);
    const int64_t group = q.size(1) / k.size(1);
    auto out = torch::zeros({q.size(0), q.size(1), v.size(2)}, q.options());  // Dv may != Dqk
    // fp32 as the interface says, but fp64 for fp64 inputs: the reference keeps full precision.
    auto lse = torch::full({q.size(1), q.size(0)}, -INFINITY,
                           q.options().dtype(q.scalar_type() == torch::kDouble ? torch::kDouble
                                                                                : torch::kFloat32));
    for (const Sequence& s : sequences(batch, q.size(0), k.size(0))) {
      const int64_t nq = s.q_end - s.q_begin, nk = s.k_end - s.k_begin;
      if (nq == 0) continue;
      auto qs = q.slice(0, s.q_begin, s.q_end).transpose(0, 1);  // [H, nq, D]
      auto ks = k.slice(0, s.k_begin, s.k_end).repeat_interleave(group, 1).transpose(0, 1);
      auto vs = v.slice(0, s.k_begin, s.k_end).repeat_interleave(group, 1).transpose(0, 1);
      auto scores = torch::matmul(qs, ks.transpose(1, 2)) * scale;  // [H, nq, nk]
      scores.masked_fill_(causal_mask(nq, nk, q.device()).unsqueeze(0), -INFINITY);
      auto row_lse = torch::logsumexp(scores, -1, /*keepdim=*/true);  // [H, nq, 1]
      auto probs = torch::exp(scores - row_lse);
      out.slice(0, s.q_begin, s.q_end).copy_(torch::matmul(probs, vs).transpose(0, 1));
      lse.slice(1, s.q_begin, s.q_end).copy_(row_lse.squeeze(-1));
    }
    return {out, lse};
  }

  BackwardResult backward(const torch::Tensor& dout, const torch::Tensor& q,
                          const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& out,
                          const torch::Tensor& lse, const VarlenBatch& batch,
                          double softmax_scale) override {
    check_inputs(q, k, v, batch);
    const std::vector<int64_t> out_shape{q.size(0), q.size(1), v.size(2)};
    CADRE_CHECK(dout.sizes() == out_shape && out.sizes() == out_shape,
                "dout and out must be [q tokens, heads, v head_dim] = ", c10::IntArrayRef(out_shape),
                "; got ",
                dout.sizes(), " and ", out.sizes());
    const double scale = scale_for(q, softmax_scale);
    const int64_t heads = q.size(1), kv_heads = k.size(1), group = heads / kv_heads;
    auto dq = torch::zeros_like(q);
    auto dk = torch::zeros_like(k);
    auto dv = torch::zeros_like(v);
    for (const Sequence& s : sequences(batch, q.size(0), k.size(0))) {
      const int64_t nq = s.q_end - s.q_begin, nk = s.k_end - s.k_begin;
      if (nq == 0) continue;
      auto qs = q.slice(0, s.q_begin, s.q_end).transpose(0, 1);
      auto ks = k.slice(0, s.k_begin, s.k_end).repeat_interleave(group, 1).transpose(0, 1);
      auto vs = v.slice(0, s.k_begin, s.k_end).repeat_interleave(group, 1).transpose(0, 1);
      auto dos = dout.slice(0, s.q_begin, s.q_end).transpose(0, 1);
      auto os = out.slice(0, s.q_begin, s.q_end).transpose(0, 1);
      auto ls = lse.slice(1, s.q_begin, s.q_end).unsqueeze(-1).to(q.scalar_type());
      auto scores = torch::matmul(qs, ks.transpose(1, 2)) * scale;
      scores.masked_fill_(causal_mask(nq, nk, q.device()).unsqueeze(0), -INFINITY);
      auto probs = torch::exp(scores - ls);                     // P from the saved lse
      auto dprobs = torch::matmul(dos, vs.transpose(1, 2));     // dP = dO V^T
      auto delta = (dos * os).sum(-1, /*keepdim=*/true);        // D = rowsum(dO * O)
      auto dscores = probs * (dprobs - delta) * scale;          // dS (scaled)
      auto dqs = torch::matmul(dscores, ks);                    // [H, nq, Dqk]
      auto dks = torch::matmul(dscores.transpose(1, 2), qs);    // [H, nk, Dqk]
      auto dvs = torch::matmul(probs.transpose(1, 2), dos);     // [H, nk, Dv]
      dq.slice(0, s.q_begin, s.q_end).copy_(dqs.transpose(0, 1));
      // Sum each KV head's query group.
      dk.slice(0, s.k_begin, s.k_end)
          .copy_(dks.reshape({kv_heads, group, nk, -1}).sum(1).transpose(0, 1));
      dv.slice(0, s.k_begin, s.k_end)
          .copy_(dvs.reshape({kv_heads, group, nk, -1}).sum(1).transpose(0, 1));
    }
    return {dq, dk, dv};
  }
};

}  // namespace

std::unique_ptr<CoreAttentionKernel> make_cpu_kernel() { return std::make_unique<CpuKernel>(); }

}  // namespace cadre::attention_server
