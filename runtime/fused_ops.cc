// CPU build: no fused kernels (fused_ops_gpu.cc has them); model.cc uses the compositions.
#include "runtime/fused_ops.h"

#ifndef CADRE_WITH_CUDA
#include "common/error.h"

namespace cadre::runtime::fused {

bool applies(const torch::Tensor&) { return false; }
int64_t max_rms_norm_cols() { return 0; }

torch::Tensor rms_norm(const torch::Tensor&, const torch::Tensor&, double) {
  CADRE_CHECK(false, "the fused RMSNorm kernel needs the GPU build");
  return {};
}
torch::Tensor rope(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) {
  CADRE_CHECK(false, "the fused rotary kernel needs the GPU build");
  return {};
}
torch::Tensor swiglu(const torch::Tensor&, const torch::Tensor&) {
  CADRE_CHECK(false, "the fused SwiGLU kernel needs the GPU build");
  return {};
}
torch::Tensor cross_entropy_sum(const torch::Tensor&, const torch::Tensor&) {
  CADRE_CHECK(false, "the fused cross-entropy kernel needs the GPU build");
  return {};
}

}  // namespace cadre::runtime::fused
#endif
