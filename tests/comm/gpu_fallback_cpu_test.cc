// The CPU build's side of the GPU path: the NCCL transport and the GPU benchmarks exist and say
// that they need the GPU build, instead of failing to link or crashing. Built only without CUDA.
#include <gtest/gtest.h>

#include <string>

#include "comm/nccl_transport.h"
#include "common/error.h"
#include "launch/commands.h"

namespace cadre {
namespace {

TEST(GpuFallback, NcclTransportNeedsGpuBuild) {
  EXPECT_FALSE(comm::nccl_transport_available());
  try {
    comm::make_nccl_transport();
    ADD_FAILURE() << "make_nccl_transport succeeded in a CPU build";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("needs the GPU build"), std::string::npos) << e.message();
  }
}

TEST(GpuFallback, GpuBenchmarksNeedGpuBuild) {
  testing::internal::CaptureStderr();
  EXPECT_EQ(launch::run_bench_kernel({}), 1);
  EXPECT_EQ(launch::run_bench_comm({"--out", "x.json"}), 1);
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("cadre bench kernel: error: needs the GPU build"), std::string::npos) << err;
  EXPECT_NE(err.find("cadre bench comm: error: needs the GPU build"), std::string::npos) << err;
  testing::internal::CaptureStdout();
  EXPECT_EQ(launch::run_bench_kernel({"--help"}), 0);
  EXPECT_NE(testing::internal::GetCapturedStdout().find("usage: cadre bench kernel"),
            std::string::npos);
}

}  // namespace
}  // namespace cadre
