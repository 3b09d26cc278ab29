// Kernel selection by name.
#include "attention_server/kernel.h"

#include <algorithm>

#include "common/error.h"

namespace cadre::attention_server {

std::unique_ptr<CoreAttentionKernel> make_kernel(const std::string& name) {
  if (name == "cpu") return make_cpu_kernel();
#ifdef CADRE_WITH_CUDA
  if (name == "flash") return make_flash_kernel();
#endif
  CADRE_FAIL("unknown core-attention kernel '", name, "'; accepted: cpu, flash (GPU build)");
}

VarlenBatch whole_documents_batch(const std::vector<int64_t>& doc_lengths,
                                  const torch::Device& device) {
  std::vector<int64_t> cu(1, 0);
  int64_t max_len = 0;
  for (int64_t n : doc_lengths) {
    cu.push_back(cu.back() + n);
    max_len = std::max(max_len, n);
  }
  auto cu_tensor = torch::tensor(cu, torch::kLong).to(torch::kInt).to(device);
  return {cu_tensor, cu_tensor, max_len, max_len};
}

}  // namespace cadre::attention_server
