// The cudnn kernel (GPU build with cuDNN) against the float64 reference of the same masked
// attention: output, log-sum-exp, dq, dk, dv on awkward and random fused layouts (empty and
// one-token sequences, primes, tile edges, query shards of 1-2K against long prefixes), bf16 and
// fp16, head dims 64, 128 and 192/128 (latent attention), GQA 1, 4, 8; the graph cache (one build
// per shape class, hits after); the auto kernel's choice; inputs it refuses. Skips without a GPU
// or without cuDNN in the build.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "attention_server/cudnn_kernel.h"
#include "attention_server/flash_kernel.h"
#include "attention_server/kernel.h"
#include "common/error.h"
#include "tests/attention_server/attention_reference.h"

namespace cadre::attention_server {
namespace {

bool usable(std::string* why) {
  if (!torch::cuda::is_available() || torch::cuda::device_count() == 0) {
    *why = "no CUDA device";
    return false;
  }
  if (!cudnn_kernel_built()) {
    *why = cudnn_kernel_unavailable_reason();
    return false;
  }
  return true;
}
#define CADRE_NEED_CUDNN()                  \
  do {                                      \
    std::string why;                        \
    if (!usable(&why)) GTEST_SKIP() << why; \
  } while (0)

TEST(CudnnKernel, AwkwardLayouts) {
  CADRE_NEED_CUDNN();
  auto kernel = make_cudnn_kernel();
  EXPECT_EQ(kernel->name(), "cudnn");
  const std::vector<std::vector<std::pair<int64_t, int64_t>>> layouts = {
      {{1, 1}},                                       // one token
      {{1, 1000}},                                    // last token of a document
      {{0, 0}, {5, 5}, {0, 0}},                       // empty sequences around one
      {{0, 40}, {3, 3}},                              // keys without queries
      {{127, 127}, {128, 128}, {129, 129}},           // whole documents around a tile
      {{128, 1024}, {256, 256}, {129, 700}},          // tail shards beside a whole document
      {{2, 3}, {5, 5}, {7, 1500}, {13, 17}, {1, 2}},  // primes
      {{1024, 1024}},                                 // one larger document (dense class)
      {{256, 256}, {256, 256}},                       // two documents filling their class
      {{128, 1024}},                                  // one shard filling its class
  };
  uint64_t seed = 1;
  for (const auto& sequences : layouts) {
    for (auto [heads, kv_heads, dim] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {8, 8, 128}, {8, 2, 64}, {8, 1, 128}, {16, 4, 128}}) {
      Shape shape{sequences, heads, kv_heads, dim, torch::kBFloat16};
      check_shape(*kernel, shape, seed++);
    }
  }
}

TEST(CudnnKernel, LatentAttentionHeadDims) {
  CADRE_NEED_CUDNN();
  auto kernel = make_cudnn_kernel();
  uint64_t seed = 50;
  for (torch::ScalarType dtype : {torch::kBFloat16, torch::kHalf}) {
    Shape shape{{{64, 64}, {128, 900}, {1, 33}, {257, 257}}, 8, 8, 192, dtype, 128};
    check_shape(*kernel, shape, seed++);
  }
}

TEST(CudnnKernel, LongShardsAgainstLongPrefixes) {
  CADRE_NEED_CUDNN();
  auto kernel = make_cudnn_kernel();
  Shape shape{{{1024, 16384}, {2048, 6144}, {512, 512}}, 8, 2, 128, torch::kBFloat16};
  check_shape(*kernel, shape, 77);
}

TEST(CudnnKernel, RandomLayoutsBf16AndFp16) {
  CADRE_NEED_CUDNN();
  auto kernel = make_cudnn_kernel();
  std::mt19937 rng(7);
  for (int trial = 0; trial < 12; ++trial) {
    Shape shape;
    shape.dtype = trial % 2 == 0 ? torch::kBFloat16 : torch::kHalf;
    shape.head_dim = trial % 3 == 0 ? 64 : 128;
    const int64_t groups[] = {1, 4, 8};
    shape.kv_heads = 1 + trial % 2;
    shape.heads = shape.kv_heads * groups[trial % 3];
    int sequences = 1 + static_cast<int>(rng() % 7);
    for (int s = 0; s < sequences; ++s) {
      int64_t nk = 1 + rng() % 1500;
      int64_t nq = (rng() % 3 == 0) ? nk : 1 + static_cast<int64_t>(rng() % nk);
      shape.sequences.emplace_back(nq, nk);
    }
    check_shape(*kernel, shape, 100 + trial);
  }
}

// One graph per shape class and direction, reused by every batch of the class.
TEST(CudnnKernel, GraphCacheServesAShapeClass) {
  CADRE_NEED_CUDNN();
  auto kernel = make_cudnn_kernel();
  auto run = [&](const Shape& shape) {
    Inputs in = make_inputs(shape, 3);
    ForwardResult f = kernel->forward(in.q, in.k, in.v, in.batch, 0.0);
    kernel->backward(in.dout, in.q, in.k, in.v, f.out, f.lse, in.batch, 0.0);
  };
  // 3 and 4 sequences share the 4-sequence class, 100 and 110 queries the 112 class, 900 and
  // 1000 keys the 1024 class.
  run(Shape{{{100, 900}, {50, 50}, {7, 7}}, 8, 2, 128});
  KernelCounters first = kernel->counters();
  EXPECT_EQ(first.graphs_built, 2);  // forward and backward
  EXPECT_EQ(first.graph_cache_hits, 0);
  run(Shape{{{110, 1000}, {1, 1}, {9, 9}, {100, 100}}, 8, 2, 128});
  KernelCounters second = kernel->counters();
  EXPECT_EQ(second.graphs_built, 2);
  EXPECT_EQ(second.graph_cache_hits, 2);
  run(Shape{{{100, 5000}}, 8, 2, 128});  // a longer key class
  EXPECT_EQ(kernel->counters().graphs_built, 4);
  EXPECT_EQ(kernel->counters().calls, 6);
  // 96 queries, 1024 keys, 3 sequences: no class of its own, but the (4, 112, 1024) class
  // covers it within twice its tile grid, so it runs there (against the float64 reference)
  // without building.
  check_shape(*kernel, Shape{{{90, 950}, {30, 30}, {5, 5}}, 8, 2, 128}, 77);
  EXPECT_EQ(kernel->counters().graphs_built, 4);
  EXPECT_EQ(kernel->counters().graphs_covered, 2);
  std::cout << "[cudnn graph cache] built " << kernel->counters().graphs_built << " in "
            << kernel->counters().graph_build_ms << " ms, hits "
            << kernel->counters().graph_cache_hits << "\n";
}

// A batch whose sequences fill their class exactly runs a dense graph (no padding mask) built for
// it alone: it matches the reference, and a batch of the same class that does not fill it builds
// the padded graph instead of running on the dense one.
TEST(CudnnKernel, DenseClassesServeOnlyFullBatches) {
  CADRE_NEED_CUDNN();
  auto kernel = make_cudnn_kernel();
  check_shape(*kernel, Shape{{{1024, 1024}}, 8, 2, 64}, 31);
  EXPECT_EQ(kernel->counters().graphs_built, 2);
  check_shape(*kernel, Shape{{{1000, 1000}}, 8, 2, 64}, 32);  // class 1024, not full
  EXPECT_EQ(kernel->counters().graphs_built, 4);
  EXPECT_EQ(kernel->counters().graphs_covered, 0);
  check_shape(*kernel, Shape{{{1024, 1024}}, 8, 2, 64}, 33);  // the dense class again
  check_shape(*kernel, Shape{{{900, 900}}, 8, 2, 64}, 34);    // the padded one again
  EXPECT_EQ(kernel->counters().graphs_built, 4);
}

TEST(CudnnKernel, AutoPicksCudnnAndFallsBackToFlash) {
  CADRE_NEED_CUDNN();
  auto kernel = make_kernel("auto");
  EXPECT_EQ(kernel->name(), "auto");
  check_shape(*kernel, Shape{{{64, 300}, {20, 20}}, 8, 2, 128}, 9);
  EXPECT_EQ(kernel->counters().fallback_calls, 0);
  EXPECT_GT(kernel->counters().graphs_built, 0);
  // The class's first forward and backward timed both kernels; the result of the faster came
  // back (checked against float64 above), and the same class again is not timed again.
  EXPECT_EQ(kernel->counters().choices_measured, 2);
  EXPECT_EQ(kernel->counters().calls, 2);
  const int64_t on_flash = kernel->counters().flash_calls;
  EXPECT_LE(on_flash, 2);
  check_shape(*kernel, Shape{{{60, 290}, {30, 30}}, 8, 2, 128}, 11);  // same class
  EXPECT_EQ(kernel->counters().choices_measured, 2);
  EXPECT_EQ(kernel->counters().calls, 4);
  EXPECT_EQ(kernel->counters().flash_calls, 2 * on_flash);  // the class keeps its choice
  std::cout << "[auto] forward and backward of the class: " << on_flash << " of 2 on flash\n";
  check_shape(*kernel, Shape{{{64, 300}, {20, 20}}, 8, 2, 96}, 10);  // head dim cuDNN refuses
  EXPECT_EQ(kernel->counters().fallback_calls, 2);
  EXPECT_EQ(kernel->counters().flash_calls, 2 * on_flash + 2);
  EXPECT_EQ(kernel->counters().choices_measured, 2);
}

// The flash kernel's split (folded unmasked prefix + causal diagonal, merged by log-sum-exp) with
// its parts on cuDNN: every shard split in both directions (tiny prefix chunks too), and the
// default rules; GQA 1, 2, 4, 8, both dtypes, head dims 64 and 128.
TEST(CudnnSplit, PartsOnCudnnMatchFloat64) {
  CADRE_NEED_CUDNN();
  FlashKernelOptions always, tiny, defaults;
  always.cudnn_parts = tiny.cudnn_parts = defaults.cudnn_parts = true;
  always.backward_min_prefix_ratio = 0;
  always.backward_min_prefix_keys = 0;
  always.force_forward_split = true;
  tiny = always;
  tiny.prefix_chunk_keys = 96;
  uint64_t seed = 500;
  for (const FlashKernelOptions& options : {always, tiny, defaults}) {
    auto kernel = make_flash_kernel(options);
    EXPECT_EQ(kernel->name(), "cudnn-split");
    for (auto [heads, kv_heads, dim] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {8, 8, 128}, {8, 4, 64}, {8, 1, 128}, {16, 2, 128}}) {
      for (torch::ScalarType dtype : {torch::kBFloat16, torch::kHalf}) {
        Shape shape{{{128, 1024}, {3, 700}, {64, 64}, {1, 97}, {256, 4096}, {0, 30}}, heads,
                    kv_heads, dim, dtype};
        check_shape(*kernel, shape, seed++);
      }
    }
    EXPECT_GT(kernel->counters().graphs_built, 0);
  }
  // Uniform shards: the prefix call's chunks fill their class (a dense graph without a mask), as
  // in the calibration grid's cells.
  auto kernel = make_flash_kernel(always);
  check_shape(*kernel, Shape{{{128, 1024}, {128, 1024}}, 8, 2, 128, torch::kBFloat16}, seed++);
}

// forward_rows against the float64 reference of each sequence gathered on its own: query ranges
// that overlap (a shard's prefix chunks), keys read where they lie (a diagonal block), outputs in
// an order of their own; unmasked (each query its own one-query sequence in the reference, so it
// sees every key), causal, and unmasked filling its class (a dense graph); GQA and MHA, both
// dtypes.
TEST(CudnnKernel, ForwardRowsReadInPlace) {
  CADRE_NEED_CUDNN();
  auto kernel = make_cudnn_attention();
  const torch::Device device(torch::kCUDA, 0);
  RaggedRows unmasked, causal;
  auto add = [](RaggedRows& r, int64_t q_row, int64_t q_len, int64_t k_row, int64_t k_len) {
    r.q_row.push_back(q_row);
    r.q_len.push_back(q_len);
    r.k_row.push_back(k_row);
    r.k_len.push_back(k_len);
    r.o_row.push_back(r.out_rows);
    r.out_rows += q_len;
  };
  add(unmasked, 0, 37, 0, 300);    // two chunks of one shard's prefix: the same queries
  add(unmasked, 0, 37, 300, 350);
  add(unmasked, 37, 1, 10, 1);     // one query, one key
  add(unmasked, 5, 125, 650, 350); // overlapping the first shard
  add(causal, 0, 37, 613, 37);     // diagonal blocks read in place
  add(causal, 37, 100, 0, 400);    // a shard against its keys
  add(causal, 137, 13, 987, 13);
  causal.o_row = {113, 13, 0};      // outputs in reverse order of the sequences
  // Every sequence fills its class (2 x 64 queries x 128 keys): a dense graph without any mask,
  // whose -inf scalar no operation uses (cudnn_graph.h leaves it out of the variant pack).
  RaggedRows dense;
  add(dense, 10, 64, 500, 128);
  add(dense, 10, 64, 0, 128);
  uint64_t seed = 900;
  for (auto [heads, kv_heads, dim, dtype] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, torch::ScalarType>>{
           {8, 2, 128, torch::kBFloat16}, {8, 8, 64, torch::kHalf}, {16, 2, 64, torch::kBFloat16}}) {
    torch::manual_seed(seed++);
    auto opts = torch::TensorOptions().dtype(dtype).device(device);
    torch::Tensor q = torch::randn({150, heads, dim}, opts);
    torch::Tensor k = torch::randn({1000, kv_heads, dim}, opts);
    torch::Tensor v = torch::randn({1000, kv_heads, dim}, opts);
    const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
    for (const RaggedRows* layout : {&unmasked, &causal, &dense}) {
      const bool is_causal = layout == &causal;
      const RaggedRows& rows = *layout;
      ForwardResult got = kernel->forward_rows(q, k, v, rows, 0.0, is_causal);
      ASSERT_EQ(got.out.sizes(), (std::vector<int64_t>{rows.out_rows, heads, dim}));
      ASSERT_EQ(got.lse.sizes(), (std::vector<int64_t>{rows.out_rows, heads}));
      for (size_t i = 0; i < rows.q_row.size(); ++i) {
        const int64_t nq = rows.q_len[i], nk = rows.k_len[i];
        torch::Tensor qs = q.narrow(0, rows.q_row[i], nq);
        torch::Tensor ks = k.narrow(0, rows.k_row[i], nk), vs = v.narrow(0, rows.k_row[i], nk);
        Shape shape{{}, heads, kv_heads, dim, dtype};
        if (is_causal) {
          shape.sequences = {{nq, nk}};
        } else {
          shape.sequences.assign(nq, {1, nk});
          ks = ks.repeat({nq, 1, 1});
          vs = vs.repeat({nq, 1, 1});
        }
        Reference ref = reference_attention(qs, ks, vs, torch::zeros_like(qs), shape, scale);
        const double out_error = relative_error(got.out.narrow(0, rows.o_row[i], nq), ref.out);
        const double lse_error =
            relative_error(got.lse.narrow(0, rows.o_row[i], nq), ref.lse.t());
        EXPECT_LE(out_error, 1e-2) << (is_causal ? "causal" : "unmasked") << " sequence " << i
                                   << " heads " << heads << "/" << kv_heads << " d " << dim;
        EXPECT_LE(lse_error, 1e-3) << (is_causal ? "causal" : "unmasked") << " sequence " << i
                                   << " heads " << heads << "/" << kv_heads << " d " << dim;
      }
    }
  }
  // A sequence reaching outside q is refused, naming it.
  RaggedRows outside = unmasked;
  outside.q_len[3] = 200;
  torch::Tensor q = torch::randn({150, 8, 64}, torch::TensorOptions().dtype(torch::kBFloat16).device(device));
  torch::Tensor k = torch::randn({1000, 8, 64}, q.options());
  try {
    kernel->forward_rows(q, k, k, outside, 0.0, false);
    ADD_FAILURE() << "accepted a sequence reaching outside q";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("sequence 3"), std::string::npos) << e.message();
  }
}

TEST(CudnnKernel, RejectsWhatItDoesNotTake) {
  CADRE_NEED_CUDNN();
  auto kernel = make_cudnn_kernel();
  const torch::Device device(torch::kCUDA, 0);
  Shape shape{{{4, 4}}, 4, 4, 64};
  VarlenBatch batch = make_batch(shape, device);
  auto q32 = torch::randn({4, 4, 64}, torch::TensorOptions().device(device));
  auto expect_message = [&](const torch::Tensor& q, const torch::Tensor& k, const std::string& text) {
    try {
      kernel->forward(q, k, k, batch, 0.0);
      ADD_FAILURE() << "accepted inputs it should refuse (" << text << ")";
    } catch (const Error& e) {
      EXPECT_NE(e.message().find(text), std::string::npos) << e.message();
    }
  };
  expect_message(q32, q32, "accepted: bf16, fp16");
  auto q16 = q32.to(torch::kBFloat16);
  expect_message(q16.narrow(2, 0, 48).contiguous(), q16.narrow(2, 0, 48).contiguous(),
                 "accepted: 64/64, 128/128, 192/128");
  expect_message(q16, q16.narrow(1, 0, 3).contiguous(), "multiple of kv_heads");
  expect_message(q16.cpu(), q16.cpu(), "CUDA tensors");
}

}  // namespace
}  // namespace cadre::attention_server
