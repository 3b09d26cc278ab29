// Peak memory of this process for the step line and summary.json: the caching allocator's peak
// of allocated bytes on a CUDA device, the peak resident set size on the CPU.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace cadre::runtime {

// Since the process started (the allocator's peak is never reset by cadre).
int64_t peak_memory_bytes(const torch::Device& device);

// "allocator" on a CUDA device, "resident" on the CPU: what peak_memory_bytes measures.
const char* peak_memory_kind(const torch::Device& device);

}  // namespace cadre::runtime
