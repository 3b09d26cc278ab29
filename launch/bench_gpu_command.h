// Usage text of `cadre bench kernel` and `cadre bench comm`, shared by the GPU implementation
// (bench_gpu_command_gpu.cc) and the CPU build's fallback (bench_gpu_command.cc).
#pragma once

#include <string>

namespace cadre::launch {

std::string bench_kernel_usage();
std::string bench_comm_usage();

}  // namespace cadre::launch
