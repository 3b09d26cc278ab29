// The "auto" core-attention kernel and the cudnn kernel's availability in this build: cuDNN's
// fused attention (short query shards split as the flash kernel splits them) for the batches it
// accepts, flash for the rest (each refusal reason logged once), the reference on CPU tensors.
// docs/gpu.md has the measurements behind the choice.
#include <iostream>
#include <memory>
#include <set>
#include <string>

#ifdef CADRE_WITH_CUDNN
#include "attention_server/cudnn_graph.h"
#endif
#include "attention_server/cudnn_kernel.h"
#include "attention_server/flash_kernel.h"
#include "attention_server/kernel.h"
#include "common/error.h"

namespace cadre::attention_server {

bool cudnn_kernel_built() {
#ifdef CADRE_WITH_CUDNN
  return true;
#else
  return false;
#endif
}

std::string cudnn_kernel_unavailable_reason() {
#if defined(CADRE_WITH_CUDNN)
  return "";
#elif defined(CADRE_WITH_CUDA)
  return "this GPU build found no cuDNN (headers and libcudnn; CMake said so at configure time)";
#else
  return "this is a CPU build (the cudnn kernel needs the GPU build with cuDNN)";
#endif
}

std::string cudnn_kernel_version() {
#ifdef CADRE_WITH_CUDNN
  auto text = [](int64_t v) { return str_cat(v / 10000, ".", (v / 100) % 100, ".", v % 100); };
  return str_cat(text(cudnn::runtime_version()), " (headers ", text(cudnn::header_version()), ")");
#else
  return "none";
#endif
}

namespace {

class AutoKernel : public CoreAttentionKernel {
 public:
  AutoKernel() : reference_(make_cpu_kernel()) {
#ifdef CADRE_WITH_CUDA
    flash_ = make_flash_kernel();
#endif
#ifdef CADRE_WITH_CUDNN
    // cuDNN for every part, with the flash kernel's split of short query shards (docs/gpu.md:
    // cuDNN alone keeps only 0.64 / 0.41 of its whole-document throughput at 128-token shards).
    FlashKernelOptions split;
    split.cudnn_parts = true;
    cudnn_ = make_flash_kernel(split);
    cudnn_direct_ = make_cudnn_kernel();
#endif
  }

  std::string name() const override { return "auto"; }

  KernelCounters counters() const override {
    KernelCounters c = cudnn_ ? cudnn_->counters() : KernelCounters{};
    if (cudnn_direct_) {
      const KernelCounters d = cudnn_direct_->counters();
      c.calls += d.calls;
      c.graphs_built += d.graphs_built;
      c.graph_cache_hits += d.graph_cache_hits;
      c.graphs_covered += d.graphs_covered;
      c.graph_build_ms += d.graph_build_ms;
    }
    c.calls += fallback_calls_;
    c.fallback_calls = fallback_calls_;
    return c;
  }

  ForwardResult forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const VarlenBatch& batch, double softmax_scale) override {
    return pick(q, k, v, batch).forward(q, k, v, batch, softmax_scale);
  }

  BackwardResult backward(const torch::Tensor& dout, const torch::Tensor& q,
                          const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& out,
                          const torch::Tensor& lse, const VarlenBatch& batch,
                          double softmax_scale) override {
    return pick(q, k, v, batch).backward(dout, q, k, v, out, lse, batch, softmax_scale);
  }

 private:
  CoreAttentionKernel& pick(const torch::Tensor& q, const torch::Tensor& k,
                            const torch::Tensor& v, const VarlenBatch& batch) {
    if (!q.is_cuda() || !flash_) return *reference_;
#ifdef CADRE_WITH_CUDNN
    const std::string why = cudnn_unsupported_reason(q, k, v, batch);
    // Latent attention's 192 / 128 widths: cuDNN's own kernel (the split runs equal widths).
    if (why.empty()) return v.size(2) != q.size(2) ? *cudnn_direct_ : *cudnn_;
    if (logged_.insert(why).second) {
      std::cerr << "cadre: attention kernel auto: flash for a batch cuDNN does not take (" << why
                << ")\n";
    }
#else
    if (logged_.insert("no cudnn").second) {
      std::cerr << "cadre: attention kernel auto: flash (" << cudnn_kernel_unavailable_reason()
                << ")\n";
    }
#endif
    ++fallback_calls_;
    return *flash_;
  }

  std::unique_ptr<CoreAttentionKernel> reference_, flash_, cudnn_, cudnn_direct_;
  std::set<std::string> logged_;
  int64_t fallback_calls_ = 0;
};

}  // namespace

std::unique_ptr<CoreAttentionKernel> make_auto_kernel() { return std::make_unique<AutoKernel>(); }

}  // namespace cadre::attention_server
