// Kernel selection by name.
#include "attention_server/kernel.h"

#include <algorithm>

#include "attention_server/cudnn_kernel.h"
#include "attention_server/flash_kernel.h"
#include "common/error.h"

namespace cadre::attention_server {

std::unique_ptr<CoreAttentionKernel> make_kernel(const std::string& name) {
  if (name == "cpu" || name == "reference") return make_cpu_kernel();
  if (name == "auto") return make_auto_kernel();
#ifdef CADRE_WITH_CUDA
  if (name == "flash") return make_flash_kernel();
#endif
#ifdef CADRE_WITH_CUDNN
  if (name == "cudnn") return make_cudnn_kernel();
#endif
  if (name == "cudnn") {
    CADRE_FAIL("core-attention kernel 'cudnn' is not available: ", cudnn_kernel_unavailable_reason(),
               "; accepted here: auto, reference, cpu", cudnn_kernel_built() ? ", cudnn" : "",
#ifdef CADRE_WITH_CUDA
               ", flash"
#else
               ""
#endif
    );
  }
  CADRE_FAIL("unknown core-attention kernel '", name,
             "'; accepted: auto, flash (GPU build), cudnn (GPU build with cuDNN), reference (= cpu)");
}

VarlenBatch make_varlen_batch(const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k,
                              const torch::Device& device) {
  CADRE_CHECK(!cu_q.empty() && cu_q.size() == cu_k.size() && cu_q.front() == 0 && cu_k.front() == 0,
              "make_varlen_batch: cumulative lengths must be two arrays of one size starting at 0; "
              "got sizes ", cu_q.size(), " and ", cu_k.size());
  VarlenBatch batch;
  for (size_t i = 1; i < cu_q.size(); ++i) {
    CADRE_CHECK(cu_q[i] >= cu_q[i - 1] && cu_k[i] >= cu_k[i - 1],
                "make_varlen_batch: cumulative lengths must not decrease (sequence ", i - 1, ")");
    batch.max_seqlen_q = std::max(batch.max_seqlen_q, cu_q[i] - cu_q[i - 1]);
    batch.max_seqlen_k = std::max(batch.max_seqlen_k, cu_k[i] - cu_k[i - 1]);
  }
  batch.cu_seqlens_q = torch::tensor(cu_q, torch::kLong).to(torch::kInt).to(device);
  batch.cu_seqlens_k = cu_q == cu_k ? batch.cu_seqlens_q
                                    : torch::tensor(cu_k, torch::kLong).to(torch::kInt).to(device);
  batch.cu_q_host = cu_q;
  batch.cu_k_host = cu_k;
  return batch;
}

VarlenBatch whole_documents_batch(const std::vector<int64_t>& doc_lengths,
                                  const torch::Device& device) {
  std::vector<int64_t> cu(1, 0);
  for (int64_t n : doc_lengths) cu.push_back(cu.back() + n);
  return make_varlen_batch(cu, cu, device);
}

}  // namespace cadre::attention_server
