// The NCCL transport: the Transport interface over device memory, one GPU per rank, bootstrapped
// with MPI. Declared in every build; implemented in the GPU build (nccl_transport_gpu.cc), while
// the CPU build's make_nccl_transport throws a cadre::Error saying it needs the GPU build.
#pragma once

#include <cstdint>
#include <memory>

#include "comm/transport.h"

namespace cadre::comm {

struct NcclOptions {
  // An operation not complete after this long ends the job with a message naming it (the
  // watchdog aborts the communicator first).
  double timeout_seconds = 300;
  // How often the watchdog looks at in-flight operations and NCCL's asynchronous error.
  double watchdog_poll_ms = 10;
  // Connect every peer pair (and the collective rings/trees) at start, so the first step does not
  // pay for connection setup and a broken link shows up at once.
  bool warm_up = true;
  // CUDA device of this rank; -1 picks the node-local rank (MPI_COMM_TYPE_SHARED).
  int device = -1;
};

// Semantics on top of Transport's:
// - Buffers are device pointers on device(). Every operation starts after the work enqueued so far
//   on the compute stream (a CUDA event), runs on a dedicated communication stream, and
//   Work::wait() orders the compute stream after it (a CUDA event): the host does not block, and
//   anything enqueued on the compute stream after wait() sees the result. The caller owns the
//   buffers until wait() returns; freeing them afterwards through a stream-ordered allocator on
//   the compute stream (LibTorch's caching allocator) is safe.
// - broadcast, all_gather and barrier block the host until they complete.
// - A watchdog thread polls every in-flight operation and NCCL's asynchronous error; after the
//   timeout (or on an asynchronous error) it prints which operation on which rank did not
//   complete, aborts the communicator and ends the process with exit code 1, which ends the
//   whole mpirun job.
class NcclTransport : public Transport {
 public:
  virtual int device() const = 0;
  virtual int local_rank() const = 0;  // rank among the processes of this node
  virtual int local_size() const = 0;
  // Operations are ordered after / before this stream (a cudaStream_t; nullptr is the legacy
  // default stream, LibTorch's default). Set it to the stream the caller computes on.
  virtual void set_compute_stream(void* cuda_stream) = 0;
  virtual void* compute_stream() const = 0;
  virtual void* communication_stream() const = 0;
  // NCCL's own all-to-all with equal bytes for every peer (ncclAlltoAll where NCCL has it,
  // grouped send/recv otherwise): the baseline `cadre bench comm` compares all_to_all_v with.
  virtual std::unique_ptr<Work> all_to_all_equal(const void* send, void* recv,
                                                 int64_t bytes_per_peer) = 0;
  // NCCL's version as major.minor.patch.
  virtual std::string nccl_version() const = 0;
};

// True in the GPU build.
bool nccl_transport_available();

// Collective over MPI_COMM_WORLD (initialises MPI with MPI_THREAD_MULTIPLE if nobody has; it is
// then finalised at exit). Picks the GPU, creates the communicator, warms it up. Throws
// cadre::Error when the node has fewer GPUs than ranks, or in the CPU build.
std::unique_ptr<NcclTransport> make_nccl_transport(const NcclOptions& options = {});

}  // namespace cadre::comm
