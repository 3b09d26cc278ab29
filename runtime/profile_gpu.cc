// The CUDA caching allocator's peaks for the training profile (GPU build).
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include "runtime/profile.h"

namespace cadre::runtime {

void device_memory_peaks(bool cuda, int64_t* allocated, int64_t* reserved) {
  *allocated = 0;
  *reserved = 0;
  if (!cuda) return;
  const auto stats =
      c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device());
  // Index 0 is the aggregate over pool kinds (StatType::AGGREGATE).
  *allocated = stats.allocated_bytes[0].peak;
  *reserved = stats.reserved_bytes[0].peak;
}

}  // namespace cadre::runtime
