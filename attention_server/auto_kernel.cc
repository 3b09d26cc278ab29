// The "auto" core-attention kernel and the cudnn kernel's availability in this build: per shape
// class and direction, the faster of cuDNN's fused attention (short query shards split as the
// flash kernel splits them) and flash, timed on the class's first call; flash for the batches
// cuDNN refuses (each reason logged once); the reference on CPU tensors. docs/gpu.md has the
// measurements behind the choice.
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>

#ifdef CADRE_WITH_CUDNN
#include <ATen/cuda/CUDAContext.h>

#include "attention_server/cudnn_graph.h"
#include "attention_server/device_timing.h"
#include "comm/cuda_check.h"
#endif
#include "attention_server/cudnn_kernel.h"
#include "attention_server/flash_kernel.h"
#include "attention_server/kernel.h"
#include "common/env.h"
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

#ifdef CADRE_WITH_CUDNN
// A length or count rounded up to a power of two: the grain at which auto's choice is measured.
int64_t octave(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}
#endif

// What auto measures its choice for: direction, dtype, heads and widths, and the batch's shape
// (sequences, longest queries and keys, each to the next power of two).
struct ChoiceKey {
  bool backward;
  int dtype;
  int64_t heads, kv_heads, d_qk, d_v, sequences, max_q, max_k;
  bool operator<(const ChoiceKey& o) const {
    return std::tie(backward, dtype, heads, kv_heads, d_qk, d_v, sequences, max_q, max_k) <
           std::tie(o.backward, o.dtype, o.heads, o.kv_heads, o.d_qk, o.d_v, o.sequences,
                    o.max_q, o.max_k);
  }
};

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
    // Calls, as auto made them (its measuring runs excluded).
    c.calls = calls_;
    c.fallback_calls = fallback_calls_;
    c.flash_calls = flash_calls_;
    c.choices_measured = static_cast<int64_t>(choices_.size());
    return c;
  }

  ForwardResult forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const VarlenBatch& batch, double softmax_scale) override {
    return run<ForwardResult>(q, k, v, batch, false, [&](CoreAttentionKernel& kernel) {
      return kernel.forward(q, k, v, batch, softmax_scale);
    });
  }

  BackwardResult backward(const torch::Tensor& dout, const torch::Tensor& q,
                          const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& out,
                          const torch::Tensor& lse, const VarlenBatch& batch,
                          double softmax_scale) override {
    return run<BackwardResult>(q, k, v, batch, true, [&](CoreAttentionKernel& kernel) {
      return kernel.backward(dout, q, k, v, out, lse, batch, softmax_scale);
    });
  }

 private:
  // Runs the call on the kernel auto picks: the reference on CPU tensors, flash where cuDNN is
  // absent or refuses the batch, else the faster of cuDNN and flash for the batch's class, timed
  // on the class's first call (CADRE_AUTO_MEASURE=0: cuDNN without measuring).
  template <typename Result, typename Call>
  Result run(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
             const VarlenBatch& batch, bool backward, Call&& call) {
    ++calls_;
    if (!q.is_cuda() || !flash_) return call(*reference_);
#ifdef CADRE_WITH_CUDNN
    const std::string why = cudnn_unsupported_reason(q, k, v, batch);
    if (why.empty()) {
      // Latent attention's 192 / 128 widths: cuDNN's own kernel (the split runs equal widths).
      CoreAttentionKernel& cudnn = v.size(2) != q.size(2) ? *cudnn_direct_ : *cudnn_;
      static const bool measure = env_switch_on("CADRE_AUTO_MEASURE");
      if (!measure) return call(cudnn);
      const ChoiceKey key{backward, static_cast<int>(q.scalar_type()), q.size(1), k.size(1),
                          q.size(2), v.size(2), octave(batch.cu_seqlens_q.size(0) - 1),
                          octave(batch.max_seqlen_q), octave(batch.max_seqlen_k)};
      auto found = choices_.find(key);
      if (found == choices_.end()) return measure_choice<Result>(key, cudnn, call);
      if (found->second) return call(cudnn);
      ++flash_calls_;
      return call(*flash_);
    }
    if (logged_.insert(why).second) {
      std::cerr << "cadre: attention kernel auto: flash for a batch cuDNN does not take (" << why
                << ")\n";
    }
#else
    (void)k, (void)v, (void)batch, (void)backward;
    if (logged_.insert("no cudnn").second) {
      std::cerr << "cadre: attention kernel auto: flash (" << cudnn_kernel_unavailable_reason()
                << ")\n";
    }
#endif
    ++fallback_calls_;
    ++flash_calls_;
    return call(*flash_);
  }

#ifdef CADRE_WITH_CUDNN
  // The class's first call: each kernel runs once untimed (cuDNN builds its graphs there) and
  // once timed on the current stream; the faster serves the class from then on and its timed
  // result is returned.
  template <typename Result, typename Call>
  Result measure_choice(const ChoiceKey& key, CoreAttentionKernel& cudnn, Call&& call) {
    cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
    auto timed = [&](CoreAttentionKernel& kernel, float* ms) {
      call(kernel);  // warm-up
      cudaEvent_t begin = nullptr, end = nullptr;
      CADRE_CUDA_CHECK(cudaEventCreate(&begin));
      CADRE_CUDA_CHECK(cudaEventCreate(&end));
      cover_host_launches();  // device time, not the host's launches (device_timing.h)
      CADRE_CUDA_CHECK(cudaEventRecord(begin, stream));
      Result result = call(kernel);
      CADRE_CUDA_CHECK(cudaEventRecord(end, stream));
      CADRE_CUDA_CHECK(cudaEventSynchronize(end));
      CADRE_CUDA_CHECK(cudaEventElapsedTime(ms, begin, end));
      cudaEventDestroy(begin);
      cudaEventDestroy(end);
      return result;
    };
    float cudnn_ms = 0, flash_ms = 0;
    Result from_cudnn = timed(cudnn, &cudnn_ms);
    Result from_flash = timed(*flash_, &flash_ms);
    const bool pick_cudnn = cudnn_ms <= flash_ms;
    choices_.emplace(key, pick_cudnn);
    static const bool verbose = std::getenv("CADRE_AUTO_VERBOSE") != nullptr;
    if (verbose) {
      std::cerr << "cadre: attention kernel auto: " << (key.backward ? "backward" : "forward")
                << " class (" << key.sequences << " sequences, q " << key.max_q << ", k "
                << key.max_k << ", heads " << key.heads << "/" << key.kv_heads << ", d "
                << key.d_qk << "): cudnn " << cudnn_ms << " ms, flash " << flash_ms
                << " ms -> " << (pick_cudnn ? "cudnn" : "flash") << "\n";
    }
    if (pick_cudnn) return from_cudnn;
    ++flash_calls_;
    return from_flash;
  }
#endif

  std::unique_ptr<CoreAttentionKernel> reference_, flash_, cudnn_, cudnn_direct_;
  std::map<ChoiceKey, bool> choices_;  // true: cudnn
  std::set<std::string> logged_;
  int64_t calls_ = 0, fallback_calls_ = 0, flash_calls_ = 0;
};

}  // namespace

std::unique_ptr<CoreAttentionKernel> make_auto_kernel() { return std::make_unique<AutoKernel>(); }

}  // namespace cadre::attention_server
