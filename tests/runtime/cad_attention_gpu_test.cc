// The runtime's CAD attention op on GPUs: NCCL transport, FlashAttention-2 kernel, bf16, 2 ranks,
// in place and dedicated, forward and all three gradients against a float64 dense reference.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <random>

#include "comm/nccl_transport.h"
#include "tests/gpu_mpi_main.h"
#include "common/error.h"
#include "runtime/attention_op.h"
#include "tests/runtime/reference_attention.h"
#include "scheduler/planner.h"

namespace cadre::runtime {
namespace {

comm::NcclTransport* g_transport = nullptr;

using testing::reference_attention;

// Relative error of the whole slice; slices whose exact value is zero (1-token documents have
// dq = dk = 0) are measured against an RMS of 0.01 per element instead.
double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  auto x = a.to(torch::kCPU).to(torch::kDouble);
  EXPECT_FALSE(torch::isnan(x).any().item<bool>()) << "NaN in the GPU result";
  const double floor = 1e-2 * std::sqrt(static_cast<double>(std::max<int64_t>(1, b.numel())));
  return (x - b).norm().item<double>() / std::max(floor, b.norm().item<double>());
}

void check(const scheduler::Plan& plan, int64_t heads, int64_t kv_heads, int64_t dim,
           uint64_t seed) {
  const int rank = g_transport->rank();
  const auto& layout = plan.layout;
  torch::manual_seed(seed);
  std::vector<std::array<torch::Tensor, 4>> docs;
  for (const auto& doc : layout.documents) {
    const int64_t n = doc.length_tokens;
    docs.push_back({torch::randn({n, heads, dim}, torch::kDouble).requires_grad_(),
                    torch::randn({n, kv_heads, dim}, torch::kDouble).requires_grad_(),
                    torch::randn({n, kv_heads, dim}, torch::kDouble).requires_grad_(),
                    torch::randn({n, heads, dim}, torch::kDouble)});
  }
  const int64_t local = rank < layout.num_ranks ? layout.tokens_per_rank[rank] : 0;
  auto q = torch::zeros({local, heads, dim}, torch::kDouble);
  auto k = torch::zeros({local, kv_heads, dim}, torch::kDouble);
  auto v = torch::zeros({local, kv_heads, dim}, torch::kDouble);
  auto g = torch::zeros({local, heads, dim}, torch::kDouble);
  for (size_t d = 0; d < docs.size(); ++d) {
    for (const auto& p : layout.documents[d].pieces) {
      if (p.rank != rank) continue;
      const int64_t len = p.doc_end - p.doc_begin;
      q.narrow(0, p.local_row, len).copy_(docs[d][0].detach().narrow(0, p.doc_begin, len));
      k.narrow(0, p.local_row, len).copy_(docs[d][1].detach().narrow(0, p.doc_begin, len));
      v.narrow(0, p.local_row, len).copy_(docs[d][2].detach().narrow(0, p.doc_begin, len));
      g.narrow(0, p.local_row, len).copy_(docs[d][3].narrow(0, p.doc_begin, len));
    }
  }
  const auto options = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  auto gq = q.to(options).requires_grad_();
  auto gk = k.to(options).requires_grad_();
  auto gv = v.to(options).requires_grad_();
  auto kernel = attention_server::make_kernel("flash");
  auto op = make_cad_attention(plan, *g_transport, *kernel);
  auto out = (*op)(gq, gk, gv);
  (out.to(torch::kDouble) * g.to(torch::kCUDA)).sum().backward();
  for (size_t d = 0; d < docs.size(); ++d) {
    auto ref = reference_attention(docs[d][0], docs[d][1], docs[d][2]);
    (ref * docs[d][3]).sum().backward();
    for (const auto& p : layout.documents[d].pieces) {
      if (p.rank != rank) continue;
      const int64_t len = p.doc_end - p.doc_begin;
      auto mine = [&](const torch::Tensor& t) { return t.narrow(0, p.local_row, len); };
      auto theirs = [&](const torch::Tensor& t) { return t.narrow(0, p.doc_begin, len); };
      EXPECT_LT(relative_error(mine(out.detach()), theirs(ref.detach())), 2e-2) << "out, doc " << d;
      EXPECT_LT(relative_error(mine(gq.grad()), theirs(docs[d][0].grad())), 2e-2) << "dq, doc " << d;
      EXPECT_LT(relative_error(mine(gk.grad()), theirs(docs[d][1].grad())), 2e-2) << "dk, doc " << d;
      EXPECT_LT(relative_error(mine(gv.grad()), theirs(docs[d][2].grad())), 2e-2) << "dv, doc " << d;
    }
  }
}

TEST(CadAttentionGpu, InPlacePlannedAcrossTwoGpus) {
  if (!g_transport) GTEST_SKIP() << "needs one GPU per rank";
  const int32_t world = g_transport->size();
  config::ModelConfig model;
  model.set_num_heads(8);
  model.set_num_kv_heads(2);
  model.set_head_dim(64);
  model.set_hidden_size(512);
  model.set_ffn_hidden_size(1024);
  scheduler::CostModel cost(model, config::ClusterConfig(), scheduler::default_calibration());
  scheduler::PlannerOptions options;
  options.min_shard_tokens = 64;
  std::vector<int32_t> servers;
  for (int32_t r = 0; r < world; ++r) servers.push_back(r);
  // One long document spanning both ranks plus short ones: the planner splits the long one.
  auto layout = scheduler::pack_sequential({1500, 7, 129, 300, 1, 97}, world, 2034 / world + 1);
  auto plan = scheduler::plan_cad(layout, servers, world, cost, options);
  check(plan, 8, 2, 64, 1);
  check(scheduler::plan_colocated(layout), 8, 8, 128, 2);
}

TEST(CadAttentionGpu, DedicatedServer) {
  if (!g_transport) GTEST_SKIP() << "needs one GPU per rank";
  const int32_t world = g_transport->size();
  if (world < 2) GTEST_SKIP() << "needs 2 ranks";
  auto layout = scheduler::pack_sequential({700, 33, 250}, world - 1, 983 / (world - 1) + 1);
  scheduler::Plan plan;
  plan.layout = layout;
  plan.world_size = world;
  plan.server_ranks = {world - 1};
  for (int32_t d = 0; d < static_cast<int32_t>(layout.documents.size()); ++d) {
    plan.tasks.push_back({d, 0, layout.documents[d].length_tokens, 0});
  }
  scheduler::finalize_plan(plan);
  check(plan, 4, 1, 128, 3);
}

}  // namespace
}  // namespace cadre::runtime

int main(int argc, char** argv) {
  return cadre::testing::run_gpu_mpi_tests(argc, argv, [](cadre::comm::NcclTransport* t, bool) {
    cadre::runtime::g_transport = t;
  });
}
