// The transport interface: collectives over byte buffers that the runtime and attention server
// use, implemented by MPI (host memory) and NCCL (device memory). Knows nothing of models or plans.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cadre::comm {

enum class DataType { kFloat32, kBFloat16, kFloat16, kInt64, kUInt8 };
size_t data_type_bytes(DataType type);

// A pending operation. wait() blocks until the buffers it was given may be reused (and throws
// cadre::Error if the operation failed or timed out); the handle keeps nothing alive itself:
// the caller owns the buffers until wait() returns.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  virtual bool done() = 0;  // non-blocking test
};

// Counts and displacements in bytes, one per peer of the group.
struct AllToAllLayout {
  std::vector<int64_t> send_counts;
  std::vector<int64_t> send_displs;
  std::vector<int64_t> recv_counts;
  std::vector<int64_t> recv_displs;
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "mpi" or "nccl".
  virtual std::string backend() const = 0;
  // True if buffers passed to this transport are device pointers.
  virtual bool device_memory() const = 0;

  // A sub-group of the ranks that pass the same color, ordered by key then rank. Collective over
  // this transport's ranks.
  virtual std::unique_ptr<Transport> split(int color, int key) = 0;

  // All-to-all-v of bytes. Zero-count peers are skipped on both sides.
  virtual std::unique_ptr<Work> all_to_all_v(const void* send, void* recv,
                                             const AllToAllLayout& layout) = 0;
  // In-place sum across ranks. kBFloat16 is accumulated in fp32 by the MPI backend.
  virtual std::unique_ptr<Work> all_reduce_sum(void* data, int64_t count, DataType type) = 0;
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // recv holds size() * bytes, rank r's contribution at offset r * bytes.
  virtual void all_gather(const void* send, void* recv, int64_t bytes) = 0;
  // all_gather without blocking the host: MPI returns a pending request, NCCL orders the compute
  // stream after it at wait() (see NcclTransport). The tensor-parallel layers use it.
  virtual std::unique_ptr<Work> all_gather_async(const void* send, void* recv, int64_t bytes);
  // send holds size() * count elements; rank r receives the sum over ranks of elements
  // [r * count, (r + 1) * count) in recv (count elements). send and recv must not overlap.
  // kBFloat16 is accumulated in fp32 by the MPI backend. Sequence parallelism and the sharded
  // optimizer use it.
  virtual std::unique_ptr<Work> reduce_scatter_sum(const void* send, void* recv, int64_t count,
                                                   DataType type);
  virtual void barrier() = 0;

  // Operations that wait longer than this for their peers end the job with a message naming the
  // operation and the peers still missing.
  virtual void set_timeout_seconds(double seconds) = 0;
};

}  // namespace cadre::comm
