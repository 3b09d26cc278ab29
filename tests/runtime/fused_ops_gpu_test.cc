// The fused RMSNorm, rotary, SwiGLU and cross-entropy kernels (runtime/fused_ops.h, GPU build)
// against float64 references written here from the formulas, forward and backward (every input's
// gradient), in fp32, fp16 and bf16, on awkward sizes (one row, odd widths that take the
// unvectorised path, strided inputs, the widest row the RMSNorm backward takes), and against the
// LibTorch compositions model.cc uses on CPUs. Skips without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "runtime/fused_ops.h"
#include "runtime/model.h"

namespace cadre::runtime {
namespace {

bool have_gpu() { return torch::cuda::is_available(); }

// Relative error of a against the float64 reference b: max |a - b| / max(max |b|, 1e-30).
double rel_error(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.to(torch::kCPU, torch::kDouble);
  auto b64 = b.to(torch::kCPU, torch::kDouble);
  const double scale = std::max(b64.abs().max().item<double>(), 1e-30);
  return (a64 - b64).abs().max().item<double>() / scale;
}

double tolerance(torch::ScalarType t) {
  if (t == torch::kFloat) return 2e-5;
  if (t == torch::kHalf) return 4e-3;
  return 2e-2;  // bf16: 8 bits of mantissa
}

struct Case {
  int64_t rows, cols;
};

// The float64 RMSNorm, written from its definition.
torch::Tensor reference_rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps) * w;
}

TEST(FusedOps, RmsNormMatchesFloat64ForwardAndBackward) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(1);
  const std::vector<Case> cases = {
      {1, 1},    {1, 2048},    {3, 7},     {127, 64},
      {129, 96}, {1000, 2048}, {33, 5120}, {5, fused::max_rms_norm_cols()}};
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    for (const Case& c : cases) {
      for (bool strided : {false, true}) {
        auto wide = torch::randn({c.rows, c.cols + (strided ? 9 : 0)}, torch::kDouble);
        auto x64 = wide.narrow(1, strided ? 5 : 0, c.cols);  // rows c.cols + 9 apart
        auto w64 = torch::rand({c.cols}, torch::kDouble) + 0.5;
        auto g64 = torch::randn({c.rows, c.cols}, torch::kDouble);
        // The GPU input holds the dtype-rounded values; the reference starts from the same ones.
        auto wide_gpu = wide.to(torch::kCUDA, dtype);
        auto x = wide_gpu.narrow(1, strided ? 5 : 0, c.cols).detach().requires_grad_(true);
        auto xr = x.detach().to(torch::kCPU, torch::kDouble).requires_grad_(true);
        auto w = w64.to(torch::kCUDA, torch::kFloat).requires_grad_(true);
        auto wr = w.detach().to(torch::kCPU, torch::kDouble).requires_grad_(true);
        auto y = fused::rms_norm(x, w, 1e-5);
        ASSERT_EQ(y.scalar_type(), dtype);
        ASSERT_EQ(y.sizes(), x.sizes());
        (y.to(torch::kDouble) * g64.to(torch::kCUDA)).sum().backward();
        auto yr = reference_rms_norm(xr, wr, 1e-5);
        (yr * g64).sum().backward();
        const double tol = tolerance(dtype);
        const double ey = rel_error(y, yr), ex = rel_error(x.grad(), xr.grad()),
                     ew = rel_error(w.grad(), wr.grad());
        std::cout << "[rms_norm] " << dtype << " rows " << c.rows << " cols " << c.cols
                  << (strided ? " strided" : "") << ": y " << ey << " dx " << ex << " dw " << ew
                  << "\n";
        EXPECT_LT(ey, tol);
        EXPECT_LT(ex, tol);
        EXPECT_LT(ew, tol);
        EXPECT_EQ(w.grad().scalar_type(), torch::kFloat);
      }
    }
  }
}

TEST(FusedOps, RmsNormOfNoRows) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  auto x = torch::zeros({0, 64}, torch::device(torch::kCUDA).dtype(torch::kBFloat16))
               .requires_grad_(true);
  auto w = torch::ones({64}, torch::device(torch::kCUDA)).requires_grad_(true);
  auto y = fused::rms_norm(x, w, 1e-5);
  EXPECT_EQ(y.size(0), 0);
  y.sum().backward();
  EXPECT_EQ(w.grad().abs().sum().item<double>(), 0.0);
}

// The float64 rotate-half rotation, written from its definition.
torch::Tensor reference_rope(const torch::Tensor& x, const torch::Tensor& positions, double theta) {
  const int64_t dim = x.size(-1), half = dim / 2;
  auto i = torch::arange(half, torch::kDouble);
  auto angle = positions.to(torch::kDouble).unsqueeze(1) * torch::pow(theta, i * (-2.0 / dim));
  auto c = angle.cos().unsqueeze(1), s = angle.sin().unsqueeze(1);
  auto a = x.narrow(-1, 0, half), b = x.narrow(-1, half, half);
  return torch::cat({a * c - b * s, a * s + b * c}, -1);
}

TEST(FusedOps, RopeMatchesFloat64ForwardAndBackward) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(2);
  struct RopeCase {
    int64_t tokens, heads, dim;
  };
  const std::vector<RopeCase> cases = {
      {1, 1, 2}, {5, 3, 6}, {129, 8, 64}, {300, 4, 128}, {77, 16, 64}};
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    for (const RopeCase& c : cases) {
      for (bool strided : {false, true}) {
        // Strided: the heads are a slice of a wider row, as Q inside a fused QKV output.
        const int64_t extra = strided ? 3 * c.dim : 0;
        auto buffer = torch::randn({c.tokens, c.heads * c.dim + extra}, torch::kDouble);
        auto positions = torch::randint(0, 70000, {c.tokens}, torch::kLong);
        auto g64 = torch::randn({c.tokens, c.heads, c.dim}, torch::kDouble);
        auto gpu = buffer.to(torch::kCUDA, dtype).requires_grad_(true);
        auto x = gpu.narrow(1, extra, c.heads * c.dim).view({c.tokens, c.heads, c.dim});
        auto xr = x.detach().to(torch::kCPU, torch::kDouble).requires_grad_(true);
        auto y = apply_rope(x, positions.to(torch::kCUDA), 500000.0);
        ASSERT_EQ(y.scalar_type(), dtype);
        (y.to(torch::kDouble) * g64.to(torch::kCUDA)).sum().backward();
        auto yr = reference_rope(xr, positions, 500000.0);
        (yr * g64).sum().backward();
        auto dx = gpu.grad().narrow(1, extra, c.heads * c.dim).view({c.tokens, c.heads, c.dim});
        const double ey = rel_error(y, yr), ex = rel_error(dx, xr.grad());
        std::cout << "[rope] " << dtype << " tokens " << c.tokens << " heads " << c.heads << " dim "
                  << c.dim << (strided ? " strided" : "") << ": y " << ey << " dx " << ex << "\n";
        EXPECT_LT(ey, tolerance(dtype));
        EXPECT_LT(ex, tolerance(dtype));
        if (strided) {  // the columns outside the slice get no gradient
          EXPECT_EQ(gpu.grad().narrow(1, 0, extra).abs().max().item<double>(), 0.0);
        }
      }
    }
  }
}

TEST(FusedOps, SwigluMatchesFloat64ForwardAndBackward) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(3);
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    for (std::vector<int64_t> shape :
         {std::vector<int64_t>{1}, {7}, {3, 5}, {64, 8192}, {129, 17}}) {
      auto a64 = torch::randn(shape, torch::kDouble) * 3;
      auto b64 = torch::randn(shape, torch::kDouble);
      auto g64 = torch::randn(shape, torch::kDouble);
      auto a = a64.to(torch::kCUDA, dtype).requires_grad_(true);
      auto b = b64.to(torch::kCUDA, dtype).requires_grad_(true);
      auto ar = a.detach().to(torch::kCPU, torch::kDouble).requires_grad_(true);
      auto br = b.detach().to(torch::kCPU, torch::kDouble).requires_grad_(true);
      auto y = fused::swiglu(a, b);
      (y.to(torch::kDouble) * g64.to(torch::kCUDA)).sum().backward();
      auto yr = ar * torch::sigmoid(ar) * br;
      (yr * g64).sum().backward();
      const double ey = rel_error(y, yr), ea = rel_error(a.grad(), ar.grad()),
                   eb = rel_error(b.grad(), br.grad());
      std::cout << "[swiglu] " << dtype << " numel " << a.numel() << ": y " << ey << " da " << ea
                << " db " << eb << "\n";
      EXPECT_LT(ey, tolerance(dtype));
      EXPECT_LT(ea, tolerance(dtype));
      EXPECT_LT(eb, tolerance(dtype));
    }
  }
}

TEST(FusedOps, CrossEntropyMatchesFloat64ForwardAndBackward) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(5);
  struct CeCase {
    int64_t rows, vocab;
  };
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    for (const CeCase& c :
         std::vector<CeCase>{{1, 1}, {3, 7}, {64, 1000}, {17, 128256}, {5, 32003}}) {
      auto l64 = torch::randn({c.rows, c.vocab}, torch::kDouble) * 4;
      auto targets = torch::randint(0, c.vocab, {c.rows}, torch::kLong);
      if (c.rows > 2) targets[1] = kIgnoreTarget;  // a document's last token: no target
      auto logits = l64.to(torch::kCUDA, dtype).requires_grad_(true);
      auto lr = logits.detach().to(torch::kCPU, torch::kDouble).requires_grad_(true);
      auto loss = cross_entropy_sum(logits, targets.to(torch::kCUDA));
      ASSERT_EQ(loss.scalar_type(), torch::kFloat);
      (loss * 0.37).backward();
      auto valid = targets.ne(kIgnoreTarget).to(torch::kDouble);
      auto picked =
          torch::log_softmax(lr, 1).gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1);
      auto ref = -(picked * valid).sum();
      (ref * 0.37).backward();
      const double el = std::abs(loss.item<double>() - ref.item<double>()) /
                        std::max(std::abs(ref.item<double>()), 1e-30);
      const double eg = rel_error(logits.grad(), lr.grad());
      std::cout << "[cross_entropy] " << dtype << " rows " << c.rows << " vocab " << c.vocab
                << ": loss " << el << " dlogits " << eg << "\n";
      EXPECT_LT(el, 1e-5);  // fp32 statistics of the dtype's logits
      EXPECT_LT(eg, tolerance(dtype));
      if (c.rows > 2) EXPECT_EQ(logits.grad()[1].abs().max().item<double>(), 0.0);
    }
  }
}

// model.cc's entry points take the fused kernels for CUDA tensors; their results agree with the
// compositions they replace (which round twice in bf16) within one bf16 step.
TEST(FusedOps, ModelEntryPointsUseTheKernelsAndAgreeWithTheCompositions) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(4);
  auto opts = torch::device(torch::kCUDA).dtype(torch::kBFloat16);
  auto x = torch::randn({257, 2048}, opts);
  auto w = torch::rand({2048}, torch::device(torch::kCUDA)) + 0.5;
  ASSERT_TRUE(fused::applies(x));
  EXPECT_TRUE(torch::equal(rms_norm(x, w, 1e-5), fused::rms_norm(x, w, 1e-5)));
  EXPECT_LT(rel_error(rms_norm(x, w, 1e-5), rms_norm_composite(x, w, 1e-5)), 1e-2);
  auto g = torch::randn({257, 2048}, opts), u = torch::randn({257, 2048}, opts);
  EXPECT_TRUE(torch::equal(swiglu(g, u), fused::swiglu(g, u)));
  EXPECT_LT(rel_error(swiglu(g, u), swiglu_composite(g, u)), 1e-2);
  auto q = torch::randn({257, 32, 64}, opts);
  auto tables = rope_tables(torch::arange(257, torch::device(torch::kCUDA).dtype(torch::kLong)), 64,
                            500000.0);
  EXPECT_LT(rel_error(apply_rope(q, tables), apply_rope_composite(q, tables)), 1e-2);
  auto logits = torch::randn({33, 5000}, opts);
  auto targets = torch::randint(0, 5000, {33}, torch::device(torch::kCUDA).dtype(torch::kLong));
  EXPECT_TRUE(
      torch::equal(cross_entropy_sum(logits, targets), fused::cross_entropy_sum(logits, targets)));
  EXPECT_LT(
      std::abs((cross_entropy_sum(logits, targets) - cross_entropy_sum_composite(logits, targets))
                   .item<double>()) /
          cross_entropy_sum_composite(logits, targets).item<double>(),
      1e-5);
  EXPECT_FALSE(fused::applies(x.cpu()));
  EXPECT_FALSE(fused::applies(x.to(torch::kDouble)));
}

}  // namespace
}  // namespace cadre::runtime
