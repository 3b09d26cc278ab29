// Training on GPUs: 1-2 ranks, one GPU each, NCCL for tensors and MPI for the control plane.
// bf16 training with the flash, cudnn and auto kernels (cad with ping-pong, in place and dedicated, and colocated)
// against an fp32 run of the same model on the same GPUs with the reference kernel: same loss and
// gradients within bf16 tolerance, no NaN, identical weights across ranks; plus a timeline with
// communication spans and the memory of a recomputed step.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include "attention_server/cudnn_kernel.h"
#include "comm/mpi_transport.h"
#include "comm/nccl_transport.h"
#include "tests/gpu_mpi_main.h"
#include "common/error.h"
#include "runtime/trainer.h"

namespace cadre::runtime {
namespace {

comm::NcclTransport* g_nccl = nullptr;
comm::Transport* g_mpi = nullptr;

config::RunConfig small_run(const std::string& attention, const std::string& dtype,
                            const std::string& kernel = "auto") {
  config::RunConfig c;
  auto* m = c.mutable_model();
  m->set_preset("custom");
  m->set_num_layers(2);
  m->set_hidden_size(256);
  m->set_num_heads(4);
  m->set_num_kv_heads(2);
  m->set_head_dim(64);
  m->set_ffn_hidden_size(512);
  m->set_vocab_size(512);
  m->set_tie_embeddings(true);
  m->set_rope_theta(10000);
  c.mutable_cluster()->set_num_gpus(g_mpi->size());
  c.mutable_cluster()->set_gpus_per_node(g_mpi->size());
  auto* d = c.mutable_data();
  d->set_distribution("wlb");
  d->set_context_length(4096);
  d->set_seed(11);
  auto* t = c.mutable_training();
  t->set_attention(attention);
  t->set_dtype(dtype);
  t->set_attention_kernel(kernel);
  t->set_device("cuda");
  t->set_steps(10);
  t->set_learning_rate(1e-3);
  t->set_seed(5);
  return c;
}

double relative(const torch::Tensor& a, const torch::Tensor& b) {
  auto x = a.to(torch::kCPU).to(torch::kDouble), y = b.to(torch::kCPU).to(torch::kDouble);
  EXPECT_FALSE(torch::isnan(x).any().item<bool>()) << "NaN";
  return (x - y).norm().item<double>() / std::max(y.norm().item<double>(), 1e-12);
}

void expect_close(Trainer& bf16, Trainer& fp32, const std::string& what) {
  for (int step = 0; step < 2; ++step) {
    StepMetrics a = bf16.forward_backward();
    StepMetrics b = fp32.forward_backward();
    EXPECT_EQ(a.tokens, b.tokens);
    if (bf16.is_worker()) {
      EXPECT_LE(std::abs(a.loss - b.loss), 2e-2 * std::abs(b.loss))
          << what << " step " << step << ": " << a.loss << " vs " << b.loss;
      const auto& pa = bf16.model().parameters();
      const auto& pb = fp32.model().parameters();
      for (size_t i = 0; i < pa.size(); ++i) {
        EXPECT_LE(relative(pa[i].value.grad(), pb[i].value.grad()), 5e-2)
            << what << " step " << step << ": gradient of " << pa[i].name;
      }
    }
    bf16.optimizer_step(&a);
    fp32.optimizer_step(&b);
  }
}

TEST(TrainGpu, Bf16MatchesFp32ReferenceInEveryMode) {
  if (!g_nccl) GTEST_SKIP() << "needs one GPU per rank";
  // Every GPU kernel: flash, cudnn (when built) and auto.
  std::vector<std::string> kernels{"flash", "auto"};
  if (attention_server::cudnn_kernel_built()) kernels.push_back("cudnn");
  for (const std::string& kernel : kernels) {
    for (const std::string attention : {"colocated", "cad"}) {
      Trainer bf16(small_run(attention, "bf16", kernel), *g_mpi, *g_nccl);
      Trainer fp32(small_run("colocated", "fp32"), *g_mpi, *g_nccl);
      EXPECT_NE(bf16.describe().find("kernel " + kernel), std::string::npos) << bf16.describe();
      expect_close(bf16, fp32, attention + ", kernel " + kernel);
    }
  }
  if (g_mpi->size() >= 2) {
    auto config = small_run("cad", "bf16");
    config.mutable_training()->set_recompute("linear");
    Trainer recomputed(config, *g_mpi, *g_nccl);
    Trainer fp32(small_run("colocated", "fp32"), *g_mpi, *g_nccl);
    expect_close(recomputed, fp32, "cad, recompute=linear");
  }
}

// Tensor parallelism on 2 GPUs (T=2 x D=1, sequence parallel, the exchange and the TP
// collectives on NCCL sub-communicators) against one GPU training the same documents at T=1
// (each rank runs that reference alone on a communicator of its own): fp32 with the reference
// kernel to 1e-4, and bf16 with the flash kernel within bf16 tolerance.
TEST(TrainGpu, TensorParallelOnTwoGpusMatchesOneGpu) {
  if (!g_nccl || g_mpi->size() != 2) GTEST_SKIP() << "needs exactly 2 GPUs";
  const int rank = g_mpi->rank();
  auto mpi_alone = g_mpi->split(rank, 0);
  auto nccl_alone = g_nccl->split(rank, 0);
  for (const std::string dtype : {"fp32", "bf16"}) {
    for (bool shard : {false, true}) {
      auto config = small_run("cad", dtype);
      config.mutable_cluster()->set_tensor_parallel(2);
      config.mutable_training()->set_shard_optimizer(shard);
      auto single = small_run("colocated", "fp32");
      single.mutable_cluster()->set_num_gpus(1);
      single.mutable_cluster()->set_gpus_per_node(1);
      Trainer tp(config, *g_mpi, *g_nccl);
      Trainer one(single, *mpi_alone, *nccl_alone);
      const double loss_tol = dtype == "fp32" ? 1e-4 : 2e-2;
      const double grad_tol = dtype == "fp32" ? 1e-4 : 5e-2;
      for (int step = 0; step < 2; ++step) {
        StepMetrics a = tp.forward_backward();
        StepMetrics b = one.forward_backward();
        EXPECT_EQ(a.tokens, b.tokens);
        EXPECT_LE(std::abs(a.loss - b.loss), loss_tol * std::abs(b.loss))
            << dtype << " step " << step << ": T=2 " << a.loss << " vs one GPU " << b.loss;
        for (size_t i = 0; i < one.model().parameters().size(); ++i) {
          EXPECT_LE(relative(tp.whole_gradient(i), one.model().parameters()[i].value.grad()),
                    grad_tol)
              << dtype << " step " << step << ": gradient of "
              << one.model().parameters()[i].name;
        }
        tp.optimizer_step(&a);
        one.optimizer_step(&b);
        EXPECT_GT(a.peak_memory_bytes, 0);
      }
    }
  }
}

TEST(TrainGpu, DedicatedServerTrains) {
  if (!g_nccl || g_mpi->size() < 2) GTEST_SKIP() << "needs 2 GPUs";
  auto config = small_run("cad", "bf16");
  config.mutable_scheduler()->set_server_mode("dedicated");
  config.mutable_scheduler()->set_num_dedicated_servers(1);
  Trainer trainer(config, *g_mpi, *g_nccl);
  std::vector<double> losses;
  for (int s = 0; s < 10; ++s) losses.push_back(trainer.train_step().loss);
  for (double l : losses) EXPECT_TRUE(std::isfinite(l));
  EXPECT_LT(losses.back(), losses.front());
}

TEST(TrainGpu, TimelineShowsTheExchangesOnTheCommunicationStream) {
  if (!g_nccl || g_mpi->size() < 2) GTEST_SKIP() << "needs 2 GPUs";
  Trainer trainer(small_run("cad", "bf16"), *g_mpi, *g_nccl);
  trainer.train_step();
  StepMetrics m = trainer.train_step();
  int a2a = 0;
  for (const auto& s : trainer.last_timeline()) {
    EXPECT_LE(s.start_us, s.end_us) << s.name;
    if (s.lane == comm::Lane::kCommunication && s.name.rfind("a2a", 0) == 0) ++a2a;
  }
  // At most layers x nano-batches x directions x exchanges (those that move no bytes are not
  // spans).
  EXPECT_LE(a2a, 2 * 2 * 2 * 2);
  EXPECT_GT(m.a2a_ms, 0.0);
  EXPECT_LE(m.exposed_a2a_ms, m.a2a_ms + 1e-9);
  EXPECT_GT(m.mfu, 0.0);
}

}  // namespace
}  // namespace cadre::runtime

int main(int argc, char** argv) {
  static std::unique_ptr<cadre::comm::Transport> mpi;
  return cadre::testing::run_gpu_mpi_tests(
      argc, argv, [](cadre::comm::NcclTransport* t, bool starting) {
        if (starting) mpi = cadre::comm::make_mpi_transport(300);
        cadre::runtime::g_mpi = starting ? mpi.get() : nullptr;
        cadre::runtime::g_nccl = t;
        if (!starting) mpi.reset();
      });
}
