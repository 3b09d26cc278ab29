// CADRE_CUDA_CHECK and CADRE_NCCL_CHECK: every CUDA and NCCL call in the GPU build goes through
// one of them, so a failure names the call, the library's error string and the rank. GPU build
// only.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "common/error.h"

namespace cadre {

// The rank named in CUDA/NCCL error messages. The NCCL transport sets it at bootstrap; before that
// it comes from the launcher's environment (Open MPI, PMI, Slurm), or -1 when none is set.
inline std::atomic<int>& error_rank_slot() {
  static std::atomic<int> rank{-2};
  return rank;
}
inline void set_error_rank(int rank) { error_rank_slot().store(rank); }
inline int error_rank() {
  int rank = error_rank_slot().load();
  if (rank != -2) return rank;
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"}) {
    if (const char* value = std::getenv(name)) return std::atoi(value);
  }
  return -1;
}

}  // namespace cadre

// Throws cadre::Error: "CUDA call <call> failed on rank R: <error string>".
#define CADRE_CUDA_CHECK(call)                                                         \
  do {                                                                                 \
    cudaError_t cadre_cuda_status_ = (call);                                           \
    if (cadre_cuda_status_ != cudaSuccess) {                                           \
      CADRE_FAIL("CUDA call ", #call, " failed on rank ", ::cadre::error_rank(), ": ", \
                 cudaGetErrorString(cadre_cuda_status_));                              \
    }                                                                                  \
  } while (0)

// Throws cadre::Error: "NCCL call <call> failed on rank R: <error string> (<last error>)".
#define CADRE_NCCL_CHECK(call)                                                                  \
  do {                                                                                          \
    ncclResult_t cadre_nccl_status_ = (call);                                                   \
    if (cadre_nccl_status_ != ncclSuccess && cadre_nccl_status_ != ncclInProgress) {            \
      CADRE_FAIL("NCCL call ", #call, " failed on rank ", ::cadre::error_rank(), ": ",          \
                 ncclGetErrorString(cadre_nccl_status_), " (", ncclGetLastError(nullptr), ")"); \
    }                                                                                           \
  } while (0)

// For destructors, which never throw: prints the failure to stderr and carries on.
#define CADRE_CUDA_WARN(call)                                                              \
  do {                                                                                     \
    cudaError_t cadre_cuda_status_ = (call);                                               \
    if (cadre_cuda_status_ != cudaSuccess) {                                               \
      std::fprintf(stderr, "cadre: %s:%d: CUDA call %s failed on rank %d: %s\n", __FILE__, \
                   __LINE__, #call, ::cadre::error_rank(),                                 \
                   cudaGetErrorString(cadre_cuda_status_));                                \
    }                                                                                      \
  } while (0)

#define CADRE_NCCL_WARN(call)                                                              \
  do {                                                                                     \
    ncclResult_t cadre_nccl_status_ = (call);                                              \
    if (cadre_nccl_status_ != ncclSuccess && cadre_nccl_status_ != ncclInProgress) {       \
      std::fprintf(stderr, "cadre: %s:%d: NCCL call %s failed on rank %d: %s\n", __FILE__, \
                   __LINE__, #call, ::cadre::error_rank(),                                 \
                   ncclGetErrorString(cadre_nccl_status_));                                \
    }                                                                                      \
  } while (0)
