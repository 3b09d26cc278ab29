// Kernel selection by name.
#include "attention_server/kernel.h"

#include "common/error.h"

namespace cadre::attention_server {

std::unique_ptr<CoreAttentionKernel> make_kernel(const std::string& name) {
  if (name == "cpu") return make_cpu_kernel();
#ifdef CADRE_WITH_CUDA
  if (name == "flash") return make_flash_kernel();
#endif
  CADRE_FAIL("unknown core-attention kernel '", name, "'; accepted: cpu, flash (GPU build)");
}

}  // namespace cadre::attention_server
