// The "flash" kernel (LibTorch's FlashAttention-2, GPU build only): declared in every build so
// that callers compile; defined in flash_kernel_gpu.cc, which only the GPU build compiles. Code
// that may run in a CPU build guards its calls with CADRE_WITH_CUDA.
#pragma once

#include <memory>
#include <string>

#include "attention_server/kernel.h"

namespace cadre::attention_server {

// FlashAttention-2 varlen forward/backward over a fused batch (bf16/fp16, head_dim multiple of 8
// up to 256, GQA, bottom-right-aligned causal mask, log-sum-exp [heads, total_q]).
std::unique_ptr<CoreAttentionKernel> make_flash_kernel();

// The LibTorch operator schemas the flash kernel calls (for logs and benchmark records).
std::string flash_kernel_schemas();

}  // namespace cadre::attention_server
