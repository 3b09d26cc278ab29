// The CPU reference kernel against autograd through a naive dense attention: query shards with
// bottom-right-aligned masks, GQA ratios 1/4/8, log-sum-exp, and all three gradients.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <random>

#include "attention_server/cudnn_kernel.h"
#include "attention_server/kernel.h"
#include "common/error.h"

namespace cadre::attention_server {
namespace {

// Queries [s, e) of a document with keys [0, e): position j of the shard sees keys [0, s + j].
torch::Tensor naive(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                    torch::Tensor* lse) {
  const int64_t nq = q.size(0), nk = k.size(0), group = q.size(1) / k.size(1);
  auto qh = q.transpose(0, 1);
  auto kh = k.repeat_interleave(group, 1).transpose(0, 1);
  auto vh = v.repeat_interleave(group, 1).transpose(0, 1);
  auto scores = torch::matmul(qh, kh.transpose(1, 2)) / std::sqrt(static_cast<double>(q.size(2)));
  auto mask = torch::ones({nq, nk}, torch::kBool).triu(nk - nq + 1);
  scores = scores.masked_fill(mask, -std::numeric_limits<double>::infinity());
  if (lse) *lse = torch::logsumexp(scores, -1).detach();
  return torch::matmul(torch::softmax(scores, -1), vh).transpose(0, 1);
}

TEST(CpuKernel, ShardsMatchNaiveAttentionWithGradients) {
  auto kernel = make_kernel("cpu");
  EXPECT_EQ(kernel->name(), "cpu");
  std::mt19937_64 rng(3);
  torch::manual_seed(3);
  for (int64_t group : {1, 4, 8}) {
    const int64_t kv_heads = 2, heads = kv_heads * group, dim = 8;
    // (queries, keys) per sequence: whole documents, tails, one-token shards, 127/128/129.
    std::vector<std::pair<int64_t, int64_t>> seqs = {{5, 5}, {1, 1}, {3, 17}, {1, 9},
                                                     {127, 129}, {128, 128}, {2, 131}};
    std::vector<int64_t> cu_q{0}, cu_k{0};
    for (auto [nq, nk] : seqs) {
      cu_q.push_back(cu_q.back() + nq);
      cu_k.push_back(cu_k.back() + nk);
    }
    auto q = torch::randn({cu_q.back(), heads, dim}, torch::kDouble).requires_grad_();
    auto k = torch::randn({cu_k.back(), kv_heads, dim}, torch::kDouble).requires_grad_();
    auto v = torch::randn({cu_k.back(), kv_heads, dim}, torch::kDouble).requires_grad_();
    auto dout = torch::randn({cu_q.back(), heads, dim}, torch::kDouble);
    VarlenBatch batch = make_varlen_batch(cu_q, cu_k);
    ASSERT_EQ(batch.max_seqlen_q, 128);
    ASSERT_EQ(batch.max_seqlen_k, 131);
    ForwardResult fwd = kernel->forward(q.detach(), k.detach(), v.detach(), batch, 0);
    BackwardResult bwd = kernel->backward(dout, q.detach(), k.detach(), v.detach(), fwd.out,
                                          fwd.lse, batch, 0);
    std::vector<torch::Tensor> outs;
    for (size_t i = 0; i < seqs.size(); ++i) {
      torch::Tensor lse;
      auto qs = q.narrow(0, cu_q[i], seqs[i].first);
      auto ks = k.narrow(0, cu_k[i], seqs[i].second);
      auto vs = v.narrow(0, cu_k[i], seqs[i].second);
      outs.push_back(naive(qs, ks, vs, &lse));
      EXPECT_TRUE(torch::allclose(fwd.lse.narrow(1, cu_q[i], seqs[i].first), lse, 1e-9, 1e-12))
          << "lse of sequence " << i << ", group " << group;
    }
    auto ref = torch::cat(outs);
    (ref * dout).sum().backward();
    EXPECT_TRUE(torch::allclose(fwd.out, ref.detach(), 1e-9, 1e-12)) << "group " << group;
    EXPECT_TRUE(torch::allclose(bwd.dq, q.grad(), 1e-9, 1e-12)) << "dq, group " << group;
    EXPECT_TRUE(torch::allclose(bwd.dk, k.grad(), 1e-9, 1e-12)) << "dk, group " << group;
    EXPECT_TRUE(torch::allclose(bwd.dv, v.grad(), 1e-9, 1e-12)) << "dv, group " << group;
  }
}

TEST(CpuKernel, BadInputsSayWhatIsAccepted) {
  auto kernel = make_kernel("cpu");
  auto q = torch::randn({4, 3, 8});
  auto k = torch::randn({4, 2, 8});
  VarlenBatch batch = make_varlen_batch({0, 4}, {0, 4});
  try {
    kernel->forward(q, k, k, batch, 0);
    FAIL() << "3 query heads over 2 KV heads accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("multiple of KV heads"), std::string::npos) << e.message();
  }
  VarlenBatch more_queries = make_varlen_batch({0, 4}, {0, 2});
  auto q2 = torch::randn({4, 2, 8});
  auto k2 = torch::randn({2, 2, 8});
  EXPECT_THROW(kernel->forward(q2, k2, k2, more_queries, 0), Error);
  EXPECT_THROW(make_kernel("fastest"), Error);
}

// "reference" is the CPU kernel; "auto" runs it for CPU tensors; "cudnn" in a build without it
// says why and what this build accepts.
TEST(KernelSelection, NamesAndFallbacks) {
  EXPECT_EQ(make_kernel("reference")->name(), "cpu");
  auto automatic = make_kernel("auto");
  EXPECT_EQ(automatic->name(), "auto");
  VarlenBatch batch = make_varlen_batch({0, 3, 5}, {0, 3, 9});
  torch::manual_seed(2);
  auto q = torch::randn({5, 4, 8}), k = torch::randn({9, 2, 8}), v = torch::randn({9, 2, 8});
  ForwardResult a = automatic->forward(q, k, v, batch, 0);
  ForwardResult r = make_cpu_kernel()->forward(q, k, v, batch, 0);
  EXPECT_TRUE(torch::equal(a.out, r.out));
  EXPECT_TRUE(torch::equal(a.lse, r.lse));
  if (!cudnn_kernel_built()) {
    try {
      make_kernel("cudnn");
      ADD_FAILURE() << "make_kernel(\"cudnn\") succeeded in a build without cuDNN";
    } catch (const Error& e) {
      EXPECT_NE(e.message().find("'cudnn' is not available"), std::string::npos) << e.message();
      EXPECT_NE(e.message().find("accepted here: auto, reference"), std::string::npos)
          << e.message();
    }
  }
}

}  // namespace
}  // namespace cadre::attention_server
