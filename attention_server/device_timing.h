// Device-time measurement of a call with CUDA events (GPU build only): before the start event, a
// spin kernel keeps the GPU busy while the host enqueues the call, so the events time the call's
// kernels back to back, as in a training step, where the host runs ahead of the GPU, and not the
// host's launch latency. `bench kernel` and `auto`'s kernel choice time calls this way (the split
// path launches more, shorter kernels and was misjudged slower without it: docs/gpu.md).
#pragma once

#include <ATen/cuda/Sleep.h>

#include <cstdint>

namespace cadre::attention_server {

// About 2 ms of spinning at H200's ~2 GHz SM clock: longer than any call's host-side launches.
constexpr int64_t kHostCoverCycles = int64_t{4} << 20;

// Enqueues the spin on the current stream; record the start event right after it.
inline void cover_host_launches() { at::cuda::sleep(kHostCoverCycles); }

}  // namespace cadre::attention_server
