// Peak memory from the CUDA caching allocator or getrusage.
#include "runtime/memory_stats.h"

#include <sys/resource.h>

#ifdef CADRE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace cadre::runtime {

int64_t peak_memory_bytes(const torch::Device& device) {
#ifdef CADRE_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<int64_t>(stats.allocated_bytes[0].peak);  // [0]: the aggregate pool
  }
#endif
  (void)device;
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

const char* peak_memory_kind(const torch::Device& device) {
  return device.is_cuda() ? "allocator" : "resident";
}

}  // namespace cadre::runtime
