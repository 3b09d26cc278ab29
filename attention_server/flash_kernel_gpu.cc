// The "flash" core-attention kernel (GPU build): LibTorch's FlashAttention-2 varlen forward and
// backward (aten::_flash_attention_forward / _backward) over a fused batch of CA-tasks.
//
// The operators are called through the dispatcher with arguments filled by schema name, so a
// LibTorch release that adds or renames an optional argument still works, and one that adds a
// required argument fails with a message naming it (and the schema) rather than a link error.
// Its causal mask is bottom-right aligned when a sequence has fewer queries than keys (checked
// against the reference: tests/attention_server/flash_kernel_gpu_test.cc), which is the mask a
// query shard [s, e) of a document attending to keys [0, e) needs.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/types.h>

#include <cmath>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "attention_server/flash_kernel.h"
#include "attention_server/kernel.h"
#include "common/error.h"

namespace cadre::attention_server {
namespace {

using NamedArgs = std::unordered_map<std::string, c10::IValue>;

// An ATen operator called with arguments by name; missing ones take their schema default.
class NamedOperator {
 public:
  explicit NamedOperator(const char* name)
      : name_(name), handle_(c10::Dispatcher::singleton().findSchemaOrThrow(name, "")) {}

  std::vector<c10::IValue> call(const NamedArgs& args) const {
    const c10::FunctionSchema& schema = handle_.schema();
    std::vector<c10::IValue> stack;
    stack.reserve(schema.arguments().size());
    for (const c10::Argument& argument : schema.arguments()) {
      auto given = args.find(argument.name());
      if (given != args.end()) {
        stack.push_back(given->second);
      } else if (argument.default_value().has_value()) {
        stack.push_back(*argument.default_value());
      } else {
        CADRE_FAIL("LibTorch's ", name_, " has a required argument '", argument.name(),
                   "' that the flash kernel does not fill (schema: ", schema_text(),
                   "); attention_server/flash_kernel_gpu.cc must learn it");
      }
    }
    handle_.callBoxed(&stack);
    return stack;
  }

  bool has_argument(const std::string& name) const {
    for (const c10::Argument& argument : handle_.schema().arguments()) {
      if (argument.name() == name) return true;
    }
    return false;
  }

  std::string schema_text() const {
    std::ostringstream out;
    out << handle_.schema();
    return out.str();
  }

 private:
  std::string name_;
  c10::OperatorHandle handle_;
};

void check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                  const VarlenBatch& batch) {
  CADRE_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(),
              "flash kernel: q, k, v must be CUDA tensors; got ", q.device(), ", ", k.device(),
              ", ", v.device());
  CADRE_CHECK(q.device() == k.device() && q.device() == v.device(),
              "flash kernel: q, k, v must be on one device; got ", q.device(), ", ", k.device(),
              ", ", v.device());
  CADRE_CHECK(q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kHalf,
              "flash kernel: dtype ", q.scalar_type(), " is not supported; accepted: bf16, fp16");
  CADRE_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "flash kernel: q, k, v must share a dtype; got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  CADRE_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
              "flash kernel: q, k, v must be [tokens, heads, head_dim]; got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  CADRE_CHECK(k.sizes() == v.sizes(), "flash kernel: k and v must have one shape; got ", k.sizes(),
              " and ", v.sizes());
  const int64_t head_dim = q.size(2);
  CADRE_CHECK(k.size(2) == head_dim, "flash kernel: q head_dim ", head_dim, " != k head_dim ",
              k.size(2));
  CADRE_CHECK(head_dim % 8 == 0 && head_dim <= 256, "flash kernel: head_dim ", head_dim,
              " is not supported; accepted: multiples of 8 up to 256 (64 and 128 tested)");
  CADRE_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "flash kernel: heads ", q.size(1),
              " must be a multiple of kv_heads ", k.size(1));
  for (const torch::Tensor* cu : {&batch.cu_seqlens_q, &batch.cu_seqlens_k}) {
    CADRE_CHECK(cu->defined() && cu->scalar_type() == torch::kInt && cu->dim() == 1 &&
                    cu->device() == q.device(),
                "flash kernel: cu_seqlens must be int32 [batch + 1] on ", q.device(), "; got ",
                cu->defined() ? str_cat(cu->scalar_type(), " ", cu->sizes(), " on ", cu->device())
                              : std::string("an undefined tensor"));
  }
  CADRE_CHECK(batch.cu_seqlens_q.size(0) == batch.cu_seqlens_k.size(0),
              "flash kernel: cu_seqlens_q and cu_seqlens_k differ in length (",
              batch.cu_seqlens_q.size(0), " vs ", batch.cu_seqlens_k.size(0), ")");
  CADRE_CHECK(q.size(0) == 0 || (batch.max_seqlen_q > 0 && batch.max_seqlen_k > 0),
              "flash kernel: max_seqlen_q and max_seqlen_k must be positive for a non-empty "
              "batch; got ",
              batch.max_seqlen_q, ", ", batch.max_seqlen_k);
}

torch::Tensor contiguous(const torch::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

double scale_for(double softmax_scale, int64_t head_dim) {
  return softmax_scale > 0 ? softmax_scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

class FlashKernel : public CoreAttentionKernel {
 public:
  FlashKernel()
      : forward_op_("aten::_flash_attention_forward"),
        backward_op_("aten::_flash_attention_backward") {}

  std::string name() const override { return "flash"; }

  ForwardResult forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const VarlenBatch& batch, double softmax_scale) override {
    check_inputs(q, k, v, batch);
    c10::cuda::CUDAGuard guard(q.device());
    const int64_t heads = q.size(1);
    if (q.size(0) == 0) {
      return {torch::empty_like(q), torch::empty({heads, 0}, q.options().dtype(torch::kFloat))};
    }
    NamedArgs args{{"query", contiguous(q)},
                   {"key", contiguous(k)},
                   {"value", contiguous(v)},
                   {"cum_seq_q", batch.cu_seqlens_q},
                   {"cum_seq_k", batch.cu_seqlens_k},
                   {"max_q", batch.max_seqlen_q},
                   {"max_k", batch.max_seqlen_k},
                   {"dropout_p", 0.0},
                   {"is_causal", true},
                   {"return_debug_mask", false},
                   {"scale", scale_for(softmax_scale, q.size(2))}};
    std::vector<c10::IValue> results = forward_op_.call(args);
    CADRE_CHECK(results.size() >= 2, "flash kernel: ", forward_op_.schema_text(), " returned ",
                results.size(), " values; expected output and logsumexp first");
    ForwardResult result{results[0].toTensor(), results[1].toTensor()};
    CADRE_CHECK(
        result.lse.dim() == 2 && result.lse.size(0) == heads && result.lse.size(1) == q.size(0),
        "flash kernel: LibTorch returned log-sum-exp of shape ", result.lse.sizes(),
        "; expected [heads, total_q] = [", heads, ", ", q.size(0), "]");
    return result;
  }

  BackwardResult backward(const torch::Tensor& dout, const torch::Tensor& q, const torch::Tensor& k,
                          const torch::Tensor& v, const torch::Tensor& out,
                          const torch::Tensor& lse, const VarlenBatch& batch,
                          double softmax_scale) override {
    check_inputs(q, k, v, batch);
    CADRE_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(),
                "flash kernel backward: dout and out must be shaped like q ", q.sizes(), "; got ",
                dout.sizes(), " and ", out.sizes());
    CADRE_CHECK(dout.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
                "flash kernel backward: dout and out must have q's dtype ", q.scalar_type());
    CADRE_CHECK(lse.scalar_type() == torch::kFloat && lse.dim() == 2 && lse.size(0) == q.size(1) &&
                    lse.size(1) == q.size(0),
                "flash kernel backward: lse must be fp32 [heads, total_q] = [", q.size(1), ", ",
                q.size(0), "]; got ", lse.scalar_type(), " ", lse.sizes());
    c10::cuda::CUDAGuard guard(q.device());
    if (q.size(0) == 0) {
      return {torch::zeros_like(q), torch::zeros_like(k), torch::zeros_like(v)};
    }
    // Without dropout the random-number state is never read; the operator still takes tensors.
    torch::Tensor no_rng = torch::zeros({2}, q.options().dtype(torch::kLong));
    NamedArgs args{{"grad_out", contiguous(dout)},
                   {"query", contiguous(q)},
                   {"key", contiguous(k)},
                   {"value", contiguous(v)},
                   {"out", contiguous(out)},
                   {"logsumexp", contiguous(lse)},
                   {"cum_seq_q", batch.cu_seqlens_q},
                   {"cum_seq_k", batch.cu_seqlens_k},
                   {"max_q", batch.max_seqlen_q},
                   {"max_k", batch.max_seqlen_k},
                   {"dropout_p", 0.0},
                   {"is_causal", true},
                   {"rng_state", no_rng},
                   {"philox_seed", no_rng},
                   {"philox_offset", no_rng},
                   {"unused", no_rng},
                   {"scale", scale_for(softmax_scale, q.size(2))}};
    std::vector<c10::IValue> results = backward_op_.call(args);
    CADRE_CHECK(results.size() >= 3, "flash kernel: ", backward_op_.schema_text(), " returned ",
                results.size(), " values; expected dq, dk, dv");
    BackwardResult result{results[0].toTensor(), results[1].toTensor(), results[2].toTensor()};
    CADRE_CHECK(result.dq.sizes() == q.sizes() && result.dk.sizes() == k.sizes() &&
                    result.dv.sizes() == v.sizes(),
                "flash kernel: LibTorch returned gradients shaped ", result.dq.sizes(), ", ",
                result.dk.sizes(), ", ", result.dv.sizes(), "; expected ", q.sizes(), ", ",
                k.sizes(), ", ", v.sizes());
    return result;
  }

 private:
  NamedOperator forward_op_;
  NamedOperator backward_op_;
};

}  // namespace

std::unique_ptr<CoreAttentionKernel> make_flash_kernel() { return std::make_unique<FlashKernel>(); }

std::string flash_kernel_schemas() {
  NamedOperator forward("aten::_flash_attention_forward");
  NamedOperator backward("aten::_flash_attention_backward");
  return forward.schema_text() + "\n" + backward.schema_text();
}

}  // namespace cadre::attention_server
