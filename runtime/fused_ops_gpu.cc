// The fused kernels as LibTorch autograd functions (GPU build; see fused_ops.h).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/autograd.h>
#include <torch/torch.h>

#include "comm/cuda_check.h"
#include "common/env.h"
#include "common/error.h"
#include "runtime/fused_kernels.h"
#include "runtime/fused_ops.h"

namespace cadre::runtime::fused {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Dtype dtype_of(const torch::Tensor& x) {
  switch (x.scalar_type()) {
    case torch::kFloat:
      return Dtype::kFloat;
    case torch::kHalf:
      return Dtype::kHalf;
    case torch::kBFloat16:
      return Dtype::kBFloat16;
    default:
      break;
  }
  CADRE_CHECK(false, "fused kernels take fp32, fp16 or bf16 tensors; got ", x.scalar_type());
  return Dtype::kFloat;
}

cudaStream_t stream_of(const torch::Tensor& x) {
  return at::cuda::getCurrentCUDAStream(x.device().index());
}

bool enabled() {
  static const bool on = env_switch_on("CADRE_FUSED_OPS");
  return on;
}

// x as [rows, cols] with its last dimension contiguous: a view where the layout allows it.
torch::Tensor as_rows(const torch::Tensor& x) {
  const int64_t cols = x.size(-1);
  if (x.dim() == 2 && x.stride(1) == 1 && x.stride(0) >= cols) return x;
  return x.contiguous().view({-1, cols});
}

struct RmsNormFunction : torch::autograd::Function<RmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, double eps) {
    const int64_t cols = x.size(-1);
    CADRE_CHECK(weight.dim() == 1 && weight.size(0) == cols, "RMSNorm weight must be [", cols,
                "]; got ", weight.sizes());
    const at::cuda::CUDAGuard guard(x.device());
    auto rows = as_rows(x);
    auto w = weight.to(x.device(), torch::kFloat).contiguous();
    auto y =
        torch::empty({rows.size(0), cols}, x.options().memory_format(at::MemoryFormat::Contiguous));
    auto rstd = torch::empty({rows.size(0)}, x.options().dtype(torch::kFloat));
    CADRE_CUDA_CHECK(rms_norm_forward(dtype_of(x), rows.data_ptr(), rows.stride(0),
                                      w.data_ptr<float>(), y.data_ptr(), rstd.data_ptr<float>(),
                                      rows.size(0), cols, static_cast<float>(eps), stream_of(x)));
    ctx->save_for_backward({rows, w, rstd});
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return y.view(x.sizes());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& rows = saved[0];
    const auto& w = saved[1];
    const auto& rstd = saved[2];
    const int64_t n = rows.size(0), cols = rows.size(1);
    const at::cuda::CUDAGuard guard(rows.device());
    auto dy = grads[0].to(rows.scalar_type()).contiguous().view({n, cols});
    auto dx = torch::empty({n, cols}, rows.options().memory_format(at::MemoryFormat::Contiguous));
    auto partial =
        torch::empty({rms_norm_backward_blocks(n), cols}, rows.options().dtype(torch::kFloat));
    CADRE_CUDA_CHECK(rms_norm_backward(dtype_of(rows), dy.data_ptr(), rows.data_ptr(),
                                       rows.stride(0), w.data_ptr<float>(), rstd.data_ptr<float>(),
                                       dx.data_ptr(), partial.data_ptr<float>(), n, cols,
                                       stream_of(rows)));
    const auto weight_dtype =
        static_cast<torch::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    auto dweight = n == 0 ? torch::zeros({cols}, w.options()) : partial.sum(0);
    return {dx.view(grads[0].sizes()), dweight.to(weight_dtype), torch::Tensor()};
  }
};

// cos/sin [tokens, 1, half] (or [tokens, half]) as contiguous fp32 [tokens, half].
torch::Tensor table(const torch::Tensor& t, int64_t tokens, int64_t half) {
  CADRE_CHECK(t.numel() == tokens * half, "rotary table must hold ", tokens, " x ", half,
              " values; got ", t.sizes());
  return t.to(torch::kFloat).contiguous().view({tokens, half});
}

// y = x rotated by (cos, sin), or by its inverse (the backward): contiguous [tokens, heads, d]
// from x whose last dim is contiguous (other strides as they come, e.g. a fused QKV slice).
torch::Tensor rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                     bool inverse) {
  const at::cuda::CUDAGuard guard(x.device());
  const int64_t tokens = x.size(0), heads = x.size(1), half = x.size(2) / 2;
  auto in = x.stride(2) == 1 ? x : x.contiguous();
  auto y = torch::empty({tokens, heads, 2 * half},
                        x.options().memory_format(at::MemoryFormat::Contiguous));
  CADRE_CUDA_CHECK(fused::rope(dtype_of(x), in.data_ptr(), in.stride(0), in.stride(1),
                               y.data_ptr(), cos.data_ptr<float>(), sin.data_ptr<float>(), tokens,
                               heads, half, inverse, stream_of(x)));
  return y;
}

struct RopeFunction : torch::autograd::Function<RopeFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& cos, const torch::Tensor& sin) {
    CADRE_CHECK(x.dim() == 3 && x.size(-1) % 2 == 0,
                "rotary input must be [tokens, heads, even head_dim]; got ", x.sizes());
    const int64_t tokens = x.size(0), half = x.size(2) / 2;
    auto c = table(cos, tokens, half), s = table(sin, tokens, half);
    ctx->save_for_backward({c, s});
    return rotate(x, c, s, /*inverse=*/false);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    return {rotate(grads[0], saved[0], saved[1], /*inverse=*/true), torch::Tensor(),
            torch::Tensor()};
  }
};

struct SwigluFunction : torch::autograd::Function<SwigluFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate,
                               const torch::Tensor& up) {
    CADRE_CHECK(gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type(),
                "SwiGLU gate and up must have one shape and dtype; got ", gate.sizes(), " ",
                gate.scalar_type(), " and ", up.sizes(), " ", up.scalar_type());
    const at::cuda::CUDAGuard guard(gate.device());
    auto g = gate.contiguous(), u = up.contiguous();
    auto out = torch::empty_like(g, at::MemoryFormat::Contiguous);
    CADRE_CUDA_CHECK(swiglu_forward(dtype_of(g), g.data_ptr(), u.data_ptr(), out.data_ptr(),
                                    g.numel(), stream_of(g)));
    ctx->save_for_backward({g, u});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& g = saved[0];
    const auto& u = saved[1];
    const at::cuda::CUDAGuard guard(g.device());
    auto d = grads[0].to(g.scalar_type()).contiguous();
    auto dg = torch::empty_like(g, at::MemoryFormat::Contiguous);
    auto du = torch::empty_like(u, at::MemoryFormat::Contiguous);
    CADRE_CUDA_CHECK(swiglu_backward(dtype_of(g), d.data_ptr(), g.data_ptr(), u.data_ptr(),
                                     dg.data_ptr(), du.data_ptr(), g.numel(), stream_of(g)));
    return {dg, du};
  }
};

struct CrossEntropyFunction : torch::autograd::Function<CrossEntropyFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& targets) {
    CADRE_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
                "cross-entropy takes logits [rows, vocab] and targets [rows]; got ", logits.sizes(),
                " and ", targets.sizes());
    const at::cuda::CUDAGuard guard(logits.device());
    auto x = logits.contiguous();
    auto t = targets.to(logits.device(), torch::kLong).contiguous();
    auto loss = torch::empty({x.size(0)}, x.options().dtype(torch::kFloat));
    auto lse = torch::empty({x.size(0)}, x.options().dtype(torch::kFloat));
    CADRE_CUDA_CHECK(cross_entropy_forward(dtype_of(x), x.data_ptr(), t.data_ptr<int64_t>(),
                                           loss.data_ptr<float>(), lse.data_ptr<float>(), x.size(0),
                                           x.size(1), stream_of(x)));
    ctx->save_for_backward({x, t, lse});
    return loss.sum();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& t = saved[1];
    const auto& lse = saved[2];
    const at::cuda::CUDAGuard guard(x.device());
    auto g = grads[0].to(x.device(), torch::kFloat).contiguous();
    auto dx = torch::empty_like(x, at::MemoryFormat::Contiguous);
    CADRE_CUDA_CHECK(cross_entropy_backward(dtype_of(x), x.data_ptr(), t.data_ptr<int64_t>(),
                                            lse.data_ptr<float>(), g.data_ptr<float>(),
                                            dx.data_ptr(), x.size(0), x.size(1), stream_of(x)));
    return {dx, torch::Tensor()};
  }
};

}  // namespace

bool applies(const torch::Tensor& x) {
  return enabled() && x.is_cuda() &&
         (x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kHalf ||
          x.scalar_type() == torch::kBFloat16);
}

const char* elementwise_ops(bool cuda) { return cuda && enabled() ? "fused" : "composite"; }

int64_t max_rms_norm_cols() { return rms_norm_max_cols(); }

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  CADRE_CHECK(x.size(-1) <= rms_norm_max_cols(), "the fused RMSNorm takes at most ",
              rms_norm_max_cols(), " values per row; got ", x.size(-1));
  return RmsNormFunction::apply(x, weight, eps);
}

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return RopeFunction::apply(x, cos, sin);
}

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  return SwigluFunction::apply(gate, up);
}

}  // namespace cadre::runtime::fused

namespace cadre::runtime::fused {

torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets) {
  return CrossEntropyFunction::apply(logits, targets);
}

}  // namespace cadre::runtime::fused
