// The main() of the multi-rank GPU suites: MPI (thread-multiple), GoogleTest, one NCCL transport
// per process when every rank has a GPU of its own (otherwise the suites skip), and an exit code
// that every rank agrees on (non-zero if any rank failed). Every rank prints its own results.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <functional>
#include <memory>

#include "comm/nccl_transport.h"

namespace cadre::testing {

// `publish(transport, true)` runs before the tests (transport is nullptr when some rank lacks a
// GPU) and `publish(nullptr, false)` after them, while MPI is still initialised.
inline int run_gpu_mpi_tests(int argc, char** argv,
                             const std::function<void(comm::NcclTransport*, bool)>& publish,
                             const comm::NcclOptions& options = {}) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  int size = 1, devices = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  int have = devices >= size ? 1 : 0, all_have = 0;
  MPI_Allreduce(&have, &all_have, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  std::unique_ptr<comm::NcclTransport> transport;
  if (all_have) transport = comm::make_nccl_transport(options);
  publish(transport.get(), true);
  int failed = RUN_ALL_TESTS();
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  publish(nullptr, false);
  transport.reset();
  MPI_Finalize();
  return any_failed;
}

}  // namespace cadre::testing
