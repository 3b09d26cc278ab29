// The CPU build's side of the NCCL transport: it exists so that callers compile everywhere, and
// says plainly that it needs the GPU build. The GPU build implements it in nccl_transport_gpu.cc.
#include "comm/nccl_transport.h"

#ifndef CADRE_WITH_CUDA

#include "common/error.h"

namespace cadre::comm {

bool nccl_transport_available() { return false; }

std::unique_ptr<NcclTransport> make_nccl_transport(const NcclOptions&) {
  CADRE_FAIL(
      "the NCCL transport needs the GPU build (CMake found no CUDA LibTorch and NCCL: configure "
      "with CMAKE_PREFIX_PATH pointing at a CUDA LibTorch, see docs/gpu.md); accepted backend "
      "here: mpi");
}

}  // namespace cadre::comm

#endif  // CADRE_WITH_CUDA
