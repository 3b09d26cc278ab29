// The flash kernel (GPU build) against a float64 reference of the same masked attention, on
// random fused layouts: output, log-sum-exp, dq, dk, dv; bf16 and fp16; head_dim 32 to 256; GQA
// ratios 1, 2, 4, 8; query shards (fewer queries than keys, bottom-right-aligned mask) beside
// whole documents. Each with shards split into prefix and diagonal parts, with tiny prefix
// chunks, with the default splitting rules, and unsplit. Also against the CPU reference kernel
// ("cpu") when it is built. Skips without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "attention_server/flash_kernel.h"
#include "attention_server/kernel.h"
#include "common/error.h"
#include "tests/attention_server/attention_reference.h"

namespace cadre::attention_server {
namespace {

// The flash kernel splitting every shard with a prefix into prefix and diagonal (forward with
// and without GQA, backward with GQA; the layouts here are below the default rules'
// thresholds), the same with tiny prefix chunks (many chunks per token, merged by the
// log-sum-exp merge kernel), with the default rules, and unsplit.
struct Variant {
  const char* name;
  FlashKernelOptions options;
};
std::vector<Variant> variants() {
  FlashKernelOptions always, tiny_chunks, defaults, direct;
  always.backward_min_prefix_ratio = 0;
  always.backward_min_prefix_keys = 0;
  always.force_forward_split = true;
  tiny_chunks = always;
  tiny_chunks.prefix_chunk_keys = 96;
  direct.split_short_shards = false;
  return {{"split always", always},
          {"split always, 96-key chunks", tiny_chunks},
          {"default rules", defaults},
          {"unsplit", direct}};
}

bool have_gpu() { return torch::cuda::is_available() && torch::cuda::device_count() > 0; }

TEST(FlashKernel, AwkwardLayouts) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  for (const Variant& variant : variants()) {
  std::cout << "-- " << variant.name << "\n";
  auto flash = make_flash_kernel(variant.options);
  EXPECT_EQ(flash->name(), "flash");
  const std::vector<std::vector<std::pair<int64_t, int64_t>>> layouts = {
      {{1, 1}},                               // one token
      {{1, 1000}},                            // last token of a document
      {{127, 127}, {128, 128}, {129, 129}},   // whole documents around a tile
      {{128, 1024}, {256, 256}, {129, 700}},  // tail shards beside a whole document
      {{2, 3}, {5, 5}, {7, 1500}, {13, 17}},  // primes
      {{1024, 1024}},                         // one larger document
  };
  uint64_t seed = 1;
  for (const auto& sequences : layouts) {
    for (auto [heads, kv_heads, dim] :
         std::vector<std::tuple<int64_t, int64_t, int64_t>>{{8, 8, 128}, {8, 2, 64}, {8, 1, 128}}) {
      Shape shape{sequences, heads, kv_heads, dim, torch::kBFloat16};
      check_shape(*flash, shape, seed++);
    }
  }
  }
}

// The log-sum-exp merge kernel keeps head_dim / 32 values per lane (up to 256): head dims that
// leave lanes idle (32, 96) and the largest (256), groups 1, 2 and 8, many chunks per token,
// both dtypes.
TEST(FlashKernel, SplitMergeAcrossHeadDims) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  FlashKernelOptions options = variants()[1].options;  // split always, 96-key chunks
  auto flash = make_flash_kernel(options);
  uint64_t seed = 300;
  for (int64_t dim : {32, 96, 256}) {
    for (auto [heads, kv_heads] :
         std::vector<std::pair<int64_t, int64_t>>{{4, 4}, {4, 2}, {8, 1}}) {
      for (torch::ScalarType dtype : {torch::kBFloat16, torch::kHalf}) {
        Shape shape{{{128, 1024}, {3, 700}, {64, 64}, {1, 97}}, heads, kv_heads, dim, dtype};
        check_shape(*flash, shape, seed++);
      }
    }
  }
}

TEST(FlashKernel, RandomLayoutsBf16AndFp16) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  for (const Variant& variant : variants()) {
  std::cout << "-- " << variant.name << "\n";
  auto flash = make_flash_kernel(variant.options);
  std::mt19937 rng(7);
  for (int trial = 0; trial < 8; ++trial) {
    Shape shape;
    shape.dtype = trial % 2 == 0 ? torch::kBFloat16 : torch::kHalf;
    shape.head_dim = trial % 3 == 0 ? 64 : 128;
    shape.kv_heads = (trial % 4 == 0) ? 4 : 1 + trial % 2;
    shape.heads = shape.kv_heads * (trial % 3 == 1 ? 4 : 2);
    int sequences = 1 + static_cast<int>(rng() % 6);
    for (int s = 0; s < sequences; ++s) {
      int64_t nk = 1 + rng() % 1200;
      int64_t nq = (rng() % 3 == 0) ? nk : 1 + static_cast<int64_t>(rng() % nk);
      shape.sequences.emplace_back(nq, nk);
    }
    check_shape(*flash, shape, 100 + trial);
  }
  }
}

TEST(FlashKernel, MatchesCpuReferenceKernel) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<CoreAttentionKernel> cpu;
  try {
    cpu = make_kernel("cpu");
  } catch (const Error& e) {
    GTEST_SKIP() << "the CPU reference kernel is not built: " << e.message();
  }
  auto flash = make_flash_kernel();
  Shape shape{{{64, 64}, {128, 640}, {1, 33}, {300, 301}}, 8, 2, 128, torch::kBFloat16};
  torch::manual_seed(5);
  const torch::Device device(torch::kCUDA, 0);
  int64_t total_q = 0, total_k = 0;
  for (auto [nq, nk] : shape.sequences) {
    total_q += nq;
    total_k += nk;
  }
  auto opts = torch::TensorOptions().dtype(shape.dtype).device(device);
  auto q = torch::randn({total_q, 8, 128}, opts), k = torch::randn({total_k, 2, 128}, opts),
       v = torch::randn({total_k, 2, 128}, opts), dout = torch::randn({total_q, 8, 128}, opts);
  VarlenBatch gpu_batch = make_batch(shape, device);
  VarlenBatch cpu_batch = make_batch(shape, torch::kCPU);
  auto to_cpu = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kFloat); };
  ForwardResult f = flash->forward(q, k, v, gpu_batch, 0.0);
  BackwardResult b = flash->backward(dout, q, k, v, f.out, f.lse, gpu_batch, 0.0);
  ForwardResult rf = cpu->forward(to_cpu(q), to_cpu(k), to_cpu(v), cpu_batch, 0.0);
  BackwardResult rb =
      cpu->backward(to_cpu(dout), to_cpu(q), to_cpu(k), to_cpu(v), rf.out, rf.lse, cpu_batch, 0.0);
  auto err = [&](const torch::Tensor& got, const torch::Tensor& want) {
    return relative_error(got.to(torch::kCPU), want.to(torch::kDouble));
  };
  EXPECT_LE(err(f.out, rf.out), 1e-2);
  EXPECT_LE(err(f.lse, rf.lse), 1e-3);
  EXPECT_LE(err(b.dq, rb.dq), 2e-2);
  EXPECT_LE(err(b.dk, rb.dk), 2e-2);
  EXPECT_LE(err(b.dv, rb.dv), 2e-2);
  std::cout << "[flash vs cpu kernel] out " << err(f.out, rf.out) << " lse " << err(f.lse, rf.lse)
            << " dq " << err(b.dq, rb.dq) << " dk " << err(b.dk, rb.dk) << " dv "
            << err(b.dv, rb.dv) << "\n";
}

TEST(FlashKernel, RejectsWrongInputs) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  auto flash = make_flash_kernel();
  Shape shape{{{4, 4}}, 4, 4, 64, torch::kBFloat16};
  const torch::Device device(torch::kCUDA, 0);
  VarlenBatch batch = make_batch(shape, device);
  auto q = torch::randn({4, 4, 64}, torch::TensorOptions().device(device));  // fp32
  EXPECT_THROW(flash->forward(q, q, q, batch, 0.0), Error);
  auto q16 = q.to(torch::kBFloat16);
  EXPECT_THROW(flash->forward(q16, q16.narrow(1, 0, 3), q16.narrow(1, 0, 3), batch, 0.0), Error);
  EXPECT_THROW(flash->forward(q16.cpu(), q16.cpu(), q16.cpu(), batch, 0.0), Error);
  for (int which = 0; which < 3; ++which) {
    FlashKernelOptions bad;
    (which == 0 ? bad.max_forward_split_queries
                : which == 1 ? bad.max_backward_split_queries : bad.prefix_chunk_keys) = -1;
    EXPECT_THROW(make_flash_kernel(bad), Error) << "option " << which;
  }
  std::cout << "[flash schemas]\n" << flash_kernel_schemas() << "\n";
}

}  // namespace
}  // namespace cadre::attention_server
