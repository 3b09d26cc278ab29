// The NCCL transport (GPU build): MPI bootstrap, one GPU per rank, a dedicated communication
// stream ordered with the caller's compute stream by CUDA events, all-to-all-v as grouped
// send/recv, and a watchdog that ends a stuck job with a message naming the operation.
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "comm/cuda_check.h"
#include "comm/nccl_transport.h"
#include "common/error.h"

namespace cadre::comm {
namespace {

using Clock = std::chrono::steady_clock;

void check_mpi(int status, const char* call) {
  if (status == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(status, text, &length);
  CADRE_FAIL("MPI call ", call, " failed on rank ", error_rank(), ": ", std::string(text, length));
}

// MPI is initialised by whoever comes first (the MPI transport, a test's main, or us); if we did
// it, we finalise it at exit.
void ensure_mpi_initialized() {
  int initialized = 0;
  check_mpi(MPI_Initialized(&initialized), "MPI_Initialized");
  if (initialized) return;
  int provided = 0;
  check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
  std::atexit([] {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  });
}

// Sets the current device for the scope of one call and restores the caller's afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    CADRE_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) CADRE_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int current = previous_;
    if (cudaGetDevice(&current) == cudaSuccess && current != previous_) {
      CADRE_CUDA_WARN(cudaSetDevice(previous_));
    }
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

class CudaEvent {
 public:
  CudaEvent() { CADRE_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  ~CudaEvent() {
    if (event_ != nullptr) CADRE_CUDA_WARN(cudaEventDestroy(event_));
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// The communication stream: non-blocking (no implicit order with the legacy default stream) and at
// the highest priority, so communication kernels are scheduled ahead of compute when both wait.
class CudaStream {
 public:
  CudaStream() {
    int least = 0, greatest = 0;
    CADRE_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    CADRE_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
  }
  ~CudaStream() {
    if (stream_ != nullptr) CADRE_CUDA_WARN(cudaStreamDestroy(stream_));
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) { CADRE_CUDA_CHECK(cudaMalloc(&data_, bytes)); }
  ~DeviceBuffer() {
    if (data_ != nullptr) CADRE_CUDA_WARN(cudaFree(data_));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
};

ncclDataType_t nccl_type(DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return ncclFloat32;
    case DataType::kBFloat16:
      return ncclBfloat16;
    case DataType::kFloat16:
      return ncclFloat16;
    case DataType::kInt64:
      return ncclInt64;
    case DataType::kUInt8:
      return ncclUint8;
  }
  CADRE_FAIL("unknown comm::DataType ", static_cast<int>(type),
             "; accepted: kFloat32, kBFloat16, kFloat16, kInt64, kUInt8");
}

// What the watchdog watches: operations in issue order (they complete in that order, all being
// on one stream) and the communicator's asynchronous error.
struct CommState {
  ncclComm_t comm = nullptr;
  int rank = 0;
  int device = 0;
  std::string name;
  std::atomic<double> timeout_seconds{300};

  struct InFlight {
    uint64_t sequence = 0;
    std::string operation;
    std::shared_ptr<CudaEvent> done;
    Clock::time_point issued;
  };
  std::mutex mutex;
  std::deque<InFlight> in_flight;
  std::atomic<bool> stop{false};
};

// Ends the job: prints what did not complete, aborts the communicator (which releases the peers'
// kernels stuck on this rank) and exits; mpirun then ends every rank.
[[noreturn]] void end_job(CommState& state, const std::string& reason) {
  std::fprintf(stderr,
               "cadre: rank %d: NCCL communicator '%s': %s; aborting the communicator and "
               "ending the job\n",
               state.rank, state.name.c_str(), reason.c_str());
  std::fflush(stderr);
  ncclCommAbort(state.comm);
  std::_Exit(1);
}

void watchdog_loop(CommState* state, double poll_ms) {
  if (cudaSetDevice(state->device) != cudaSuccess) return;
  const auto poll = std::chrono::microseconds(static_cast<int64_t>(poll_ms * 1000));
  while (!state->stop.load()) {
    std::this_thread::sleep_for(poll);
    std::string failure;
    {
      std::lock_guard<std::mutex> lock(state->mutex);
      while (!state->in_flight.empty()) {
        cudaError_t status = cudaEventQuery(state->in_flight.front().done->get());
        if (status == cudaSuccess) {
          state->in_flight.pop_front();
        } else if (status == cudaErrorNotReady) {
          break;
        } else {
          failure = str_cat("operation '", state->in_flight.front().operation,
                            "' failed on the device: ", cudaGetErrorString(status));
          break;
        }
      }
      if (failure.empty() && !state->in_flight.empty()) {
        const auto& oldest = state->in_flight.front();
        double waited = std::chrono::duration<double>(Clock::now() - oldest.issued).count();
        double timeout = state->timeout_seconds.load();
        if (waited > timeout) {
          failure = str_cat("operation '", oldest.operation, "' did not complete within ", timeout,
                            " s (", state->in_flight.size(),
                            " operations in flight; a peer is missing or stuck)");
        }
      }
      if (failure.empty()) {
        ncclResult_t async = ncclSuccess;
        ncclResult_t status = ncclCommGetAsyncError(state->comm, &async);
        if (status == ncclSuccess && async != ncclSuccess && async != ncclInProgress) {
          std::string operation =
              state->in_flight.empty() ? "(none in flight)" : state->in_flight.front().operation;
          failure = str_cat("asynchronous NCCL error '", ncclGetErrorString(async),
                            "' during operation '", operation, "'");
        }
      }
    }
    if (!failure.empty()) end_job(*state, failure);
  }
}

class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<CudaEvent> done, cudaStream_t compute, int device)
      : done_(std::move(done)), compute_(compute), device_(device) {}

  // Orders the compute stream after the operation; the host does not block.
  void wait() override {
    DeviceGuard guard(device_);
    CADRE_CUDA_CHECK(cudaStreamWaitEvent(compute_, done_->get(), 0));
  }

  bool done() override {
    cudaError_t status = cudaEventQuery(done_->get());
    if (status == cudaErrorNotReady) return false;
    CADRE_CUDA_CHECK(status);
    return true;
  }

 private:
  std::shared_ptr<CudaEvent> done_;
  cudaStream_t compute_;
  int device_;
};

struct NodePlacement {
  int local_rank = 0;
  int local_size = 1;
  int device = 0;
};

class NcclTransportImpl : public NcclTransport {
 public:
  // Takes ownership of `comm`.
  NcclTransportImpl(ncclComm_t comm, const NodePlacement& placement, const NcclOptions& options,
                    std::string name)
      : placement_(placement), options_(options), state_(std::make_shared<CommState>()) {
    DeviceGuard guard(placement_.device);
    state_->comm = comm;
    state_->device = placement_.device;
    state_->name = std::move(name);
    state_->timeout_seconds.store(options_.timeout_seconds);
    CADRE_NCCL_CHECK(ncclCommUserRank(comm, &rank_));
    CADRE_NCCL_CHECK(ncclCommCount(comm, &size_));
    state_->rank = rank_;
    comm_stream_ = std::make_unique<CudaStream>();
    scratch_ = std::make_unique<DeviceBuffer>(kScratchBytes);
    watchdog_ = std::thread(watchdog_loop, state_.get(), options_.watchdog_poll_ms);
    if (options_.warm_up) {
      try {
        warm_up();
      } catch (...) {
        shut_down();
        throw;
      }
    }
  }

  ~NcclTransportImpl() override { shut_down(); }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  bool device_memory() const override { return true; }
  int device() const override { return placement_.device; }
  int local_rank() const override { return placement_.local_rank; }
  int local_size() const override { return placement_.local_size; }
  void set_compute_stream(void* cuda_stream) override {
    compute_ = static_cast<cudaStream_t>(cuda_stream);
  }
  void* compute_stream() const override { return compute_; }
  void* communication_stream() const override { return comm_stream_->get(); }

  std::string nccl_version() const override {
    int version = 0;
    CADRE_NCCL_CHECK(ncclGetVersion(&version));
    return str_cat(version / 10000, ".", (version / 100) % 100, ".", version % 100);
  }

  void set_timeout_seconds(double seconds) override {
    CADRE_CHECK(seconds > 0, "NCCL transport timeout must be positive; got ", seconds, " s");
    state_->timeout_seconds.store(seconds);
  }

  std::unique_ptr<Transport> split(int color, int key) override {
    CADRE_CHECK(color >= 0, "split color must be >= 0 (NCCL colors); got ", color);
    DeviceGuard guard(placement_.device);
    // Split is collective and host-blocking; pending work on this communicator is unaffected.
    ncclComm_t child = nullptr;
    CADRE_NCCL_CHECK(ncclCommSplit(state_->comm, color, key, &child, nullptr));
    CADRE_CHECK(child != nullptr, "ncclCommSplit returned no communicator for color ", color);
    return std::make_unique<NcclTransportImpl>(child, placement_, options_,
                                               str_cat(state_->name, "/split(color=", color, ")"));
  }

  std::unique_ptr<Work> all_to_all_v(const void* send, void* recv,
                                     const AllToAllLayout& layout) override {
    check_layout(layout);
    const auto* send_bytes = static_cast<const char*>(send);
    auto* recv_bytes = static_cast<char*>(recv);
    int64_t sent = 0, received = 0;
    for (int peer = 0; peer < size_; ++peer) {
      sent += layout.send_counts[peer];
      received += layout.recv_counts[peer];
    }
    CADRE_CHECK((sent == 0 || send != nullptr) && (received == 0 || recv != nullptr),
                "all_to_all_v: null buffer with non-zero counts (send ", sent, " bytes, receive ",
                received, " bytes)");
    std::string what = str_cat("all_to_all_v (send ", sent, " B, receive ", received, " B)");
    return issue(what, [&](cudaStream_t stream) {
      // The rank's own segment goes through NCCL too (a self send/receive pair): NCCL copies it
      // inside the same kernel as the peer transfers, where a separate device copy before the
      // group would serialise with them (about 8% of the time at 1 GiB on 2 ranks).
      grouped([&]() {
        ncclResult_t status = ncclSuccess;
        for (int peer = 0; peer < size_ && status == ncclSuccess; ++peer) {
          if (layout.send_counts[peer] > 0) {
            status = ncclSend(send_bytes + layout.send_displs[peer], layout.send_counts[peer],
                              ncclUint8, peer, state_->comm, stream);
          }
          if (status == ncclSuccess && layout.recv_counts[peer] > 0) {
            status = ncclRecv(recv_bytes + layout.recv_displs[peer], layout.recv_counts[peer],
                              ncclUint8, peer, state_->comm, stream);
          }
        }
        return status;
      });
    });
  }

  std::unique_ptr<Work> all_to_all_equal(const void* send, void* recv,
                                         int64_t bytes_per_peer) override {
    CADRE_CHECK(bytes_per_peer >= 0, "all_to_all_equal: bytes_per_peer must be >= 0; got ",
                bytes_per_peer);
    return issue(str_cat("all_to_all_equal (", bytes_per_peer, " B per peer)"),
                 [&](cudaStream_t stream) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
                   CADRE_NCCL_CHECK(
                       ncclAlltoAll(send, recv, bytes_per_peer, ncclUint8, state_->comm, stream));
#else
                   grouped([&]() {
                     ncclResult_t status = ncclSuccess;
                     for (int peer = 0; peer < size_ && status == ncclSuccess; ++peer) {
                       status = ncclSend(static_cast<const char*>(send) + peer * bytes_per_peer,
                                         bytes_per_peer, ncclUint8, peer, state_->comm, stream);
                       if (status == ncclSuccess) {
                         status = ncclRecv(static_cast<char*>(recv) + peer * bytes_per_peer,
                                           bytes_per_peer, ncclUint8, peer, state_->comm, stream);
                       }
                     }
                     return status;
                   });
#endif
                 });
  }

  std::unique_ptr<Work> all_reduce_sum(void* data, int64_t count, DataType type) override {
    CADRE_CHECK(count >= 0, "all_reduce_sum: count must be >= 0; got ", count);
    CADRE_CHECK(count == 0 || data != nullptr, "all_reduce_sum: null buffer for ", count,
                " elements");
    ncclDataType_t nccl = nccl_type(type);
    return issue(str_cat("all_reduce_sum (", count, " elements)"), [&](cudaStream_t stream) {
      CADRE_NCCL_CHECK(ncclAllReduce(data, data, count, nccl, ncclSum, state_->comm, stream));
    });
  }

  void broadcast(void* data, int64_t bytes, int root) override {
    CADRE_CHECK(root >= 0 && root < size_, "broadcast: root ", root,
                " is not a rank; accepted: 0..", size_ - 1);
    CADRE_CHECK(bytes >= 0, "broadcast: bytes must be >= 0; got ", bytes);
    auto work =
        issue(str_cat("broadcast (", bytes, " B from rank ", root, ")"), [&](cudaStream_t stream) {
          CADRE_NCCL_CHECK(ncclBroadcast(data, data, bytes, ncclUint8, root, state_->comm, stream));
        });
    wait_on_host(*work);
  }

  void all_gather(const void* send, void* recv, int64_t bytes) override {
    CADRE_CHECK(bytes >= 0, "all_gather: bytes must be >= 0; got ", bytes);
    auto work = issue(str_cat("all_gather (", bytes, " B per rank)"), [&](cudaStream_t stream) {
      CADRE_NCCL_CHECK(ncclAllGather(send, recv, bytes, ncclUint8, state_->comm, stream));
    });
    wait_on_host(*work);
  }

  std::unique_ptr<Work> all_gather_async(const void* send, void* recv, int64_t bytes) override {
    CADRE_CHECK(bytes >= 0, "all_gather_async: bytes must be >= 0; got ", bytes);
    return issue(str_cat("all_gather (", bytes, " B per rank)"), [&](cudaStream_t stream) {
      CADRE_NCCL_CHECK(ncclAllGather(send, recv, bytes, ncclUint8, state_->comm, stream));
    });
  }

  std::unique_ptr<Work> reduce_scatter_sum(const void* send, void* recv, int64_t count,
                                           DataType type) override {
    CADRE_CHECK(count >= 0, "reduce_scatter_sum: count must be >= 0; got ", count);
    ncclDataType_t nccl = nccl_type(type);
    return issue(str_cat("reduce_scatter_sum (", count, " elements per rank)"),
                 [&](cudaStream_t stream) {
                   CADRE_NCCL_CHECK(ncclReduceScatter(send, recv, count, nccl, ncclSum,
                                                      state_->comm, stream));
                 });
  }

  void barrier() override {
    auto work = issue("barrier", [&](cudaStream_t stream) {
      CADRE_NCCL_CHECK(ncclAllReduce(scratch_->as<float>(), scratch_->as<float>(), 1, ncclFloat32,
                                     ncclSum, state_->comm, stream));
    });
    wait_on_host(*work);
  }

 private:
  static constexpr size_t kScratchBytes = 256;

  // Reverse order of acquisition: let issued work finish (bounded by the timeout), stop the
  // watchdog, then release the communicator, the scratch buffer and the stream. Idempotent; never
  // throws.
  void shut_down() noexcept {
    if (state_->comm == nullptr) return;
    bool drained = false;
    if (comm_stream_ != nullptr && cudaSetDevice(placement_.device) == cudaSuccess) {
      const auto deadline =
          Clock::now() + std::chrono::duration<double>(state_->timeout_seconds.load());
      while (Clock::now() < deadline) {
        cudaError_t status = cudaStreamQuery(comm_stream_->get());
        if (status == cudaSuccess) {
          drained = true;
          break;
        }
        if (status != cudaErrorNotReady) break;
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
    state_->stop.store(true);
    if (watchdog_.joinable()) watchdog_.join();
    if (drained) {
      CADRE_NCCL_WARN(ncclCommDestroy(state_->comm));
    } else {
      std::fprintf(stderr,
                   "cadre: rank %d: NCCL communicator '%s' still busy at destruction; "
                   "aborting it\n",
                   rank_, state_->name.c_str());
      CADRE_NCCL_WARN(ncclCommAbort(state_->comm));
    }
    state_->comm = nullptr;
    scratch_.reset();
    comm_stream_.reset();
  }

  void check_layout(const AllToAllLayout& layout) const {
    const size_t n = static_cast<size_t>(size_);
    CADRE_CHECK(layout.send_counts.size() == n && layout.send_displs.size() == n &&
                    layout.recv_counts.size() == n && layout.recv_displs.size() == n,
                "all_to_all_v: layout vectors must have one entry per rank (", size_,
                "); got send_counts ", layout.send_counts.size(), ", send_displs ",
                layout.send_displs.size(), ", recv_counts ", layout.recv_counts.size(),
                ", recv_displs ", layout.recv_displs.size());
    for (int peer = 0; peer < size_; ++peer) {
      CADRE_CHECK(layout.send_counts[peer] >= 0 && layout.recv_counts[peer] >= 0 &&
                      layout.send_displs[peer] >= 0 && layout.recv_displs[peer] >= 0,
                  "all_to_all_v: negative count or displacement for peer ", peer,
                  "; accepted: counts and displacements >= 0");
    }
    CADRE_CHECK(layout.send_counts[rank_] == layout.recv_counts[rank_], "all_to_all_v: rank ",
                rank_, " sends ", layout.send_counts[rank_], " bytes to itself but expects ",
                layout.recv_counts[rank_], "; the two must be equal");
  }

  // Runs NCCL calls inside one group; the group is closed even when a call fails.
  template <typename Calls>
  void grouped(Calls&& calls) {
    CADRE_NCCL_CHECK(ncclGroupStart());
    ncclResult_t status = calls();
    ncclResult_t end = ncclGroupEnd();
    CADRE_NCCL_CHECK(status);
    CADRE_NCCL_CHECK(end);
  }

  // Orders the communication stream after the compute stream, enqueues the operation, records its
  // completion event and hands it to the watchdog.
  template <typename Enqueue>
  std::unique_ptr<Work> issue(const std::string& what, Enqueue&& enqueue) {
    DeviceGuard guard(placement_.device);
    cudaStream_t stream = comm_stream_->get();
    auto ready = std::make_shared<CudaEvent>();
    CADRE_CUDA_CHECK(cudaEventRecord(ready->get(), compute_));
    CADRE_CUDA_CHECK(cudaStreamWaitEvent(stream, ready->get(), 0));
    enqueue(stream);
    auto done = std::make_shared<CudaEvent>();
    CADRE_CUDA_CHECK(cudaEventRecord(done->get(), stream));
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      state_->in_flight.push_back(
          {++sequence_, str_cat(what, " #", sequence_), done, Clock::now()});
    }
    return std::make_unique<NcclWork>(std::move(done), compute_, placement_.device);
  }

  // Host wait for the synchronous operations; the watchdog ends the job if it never completes.
  void wait_on_host(Work& work) {
    work.wait();
    while (!work.done()) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }

  // Connects every peer pair with a small all-to-all (checking the bytes that arrive), then runs
  // one all-reduce so the collective channels are set up too.
  void warm_up() {
    DeviceGuard guard(placement_.device);
    constexpr int64_t kBytesPerPeer = 64;
    const int64_t total = kBytesPerPeer * size_;
    DeviceBuffer send(total), recv(total);
    AllToAllLayout layout;
    for (int peer = 0; peer < size_; ++peer) {
      layout.send_counts.push_back(kBytesPerPeer);
      layout.send_displs.push_back(peer * kBytesPerPeer);
      layout.recv_counts.push_back(kBytesPerPeer);
      layout.recv_displs.push_back(peer * kBytesPerPeer);
    }
    std::vector<unsigned char> pattern(total);
    for (int peer = 0; peer < size_; ++peer) {
      for (int64_t i = 0; i < kBytesPerPeer; ++i) {
        pattern[peer * kBytesPerPeer + i] = static_cast<unsigned char>(rank_ * 31 + peer * 7 + i);
      }
    }
    CADRE_CUDA_CHECK(cudaMemcpy(send.as<void>(), pattern.data(), total, cudaMemcpyHostToDevice));
    wait_on_host(*all_to_all_v(send.as<void>(), recv.as<void>(), layout));
    CADRE_CUDA_CHECK(cudaMemcpy(pattern.data(), recv.as<void>(), total, cudaMemcpyDeviceToHost));
    for (int peer = 0; peer < size_; ++peer) {
      for (int64_t i = 0; i < kBytesPerPeer; ++i) {
        auto expected = static_cast<unsigned char>(peer * 31 + rank_ * 7 + i);
        CADRE_CHECK(pattern[peer * kBytesPerPeer + i] == expected, "NCCL warm-up on '",
                    state_->name, "': rank ", rank_, " received wrong bytes from rank ", peer,
                    " (byte ", i, "): the link or NCCL setup is broken");
      }
    }
    barrier();
  }

  NodePlacement placement_;
  NcclOptions options_;
  std::shared_ptr<CommState> state_;
  std::unique_ptr<CudaStream> comm_stream_;
  std::unique_ptr<DeviceBuffer> scratch_;
  std::thread watchdog_;
  cudaStream_t compute_ = nullptr;
  int rank_ = 0;
  int size_ = 1;
  uint64_t sequence_ = 0;
};

// Node-local rank and device, checked collectively so that every rank reports a bad placement
// instead of some ranks hanging in the bootstrap.
NodePlacement place_on_node(const NcclOptions& options, int world_rank) {
  MPI_Comm node = MPI_COMM_NULL;
  check_mpi(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node),
      "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)");
  NodePlacement placement;
  check_mpi(MPI_Comm_rank(node, &placement.local_rank), "MPI_Comm_rank(node)");
  check_mpi(MPI_Comm_size(node, &placement.local_size), "MPI_Comm_size(node)");
  check_mpi(MPI_Comm_free(&node), "MPI_Comm_free(node)");

  int devices = 0;
  cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess) devices = 0;
  placement.device = options.device >= 0 ? options.device : placement.local_rank;
  std::string problem;
  if (devices == 0) {
    problem =
        str_cat("rank ", world_rank, " sees no CUDA device (", cudaGetErrorString(status), ")");
  } else if (options.device < 0 && placement.local_size > devices) {
    problem = str_cat("rank ", world_rank, ": ", placement.local_size,
                      " ranks share this node but it has only ", devices,
                      " visible GPUs; accepted: at most one rank per GPU (mpirun -np <= ", devices,
                      " per node)");
  } else if (placement.device >= devices) {
    problem = str_cat("rank ", world_rank, ": device ", placement.device, " does not exist; ",
                      devices, " visible");
  }
  int ok = problem.empty() ? 1 : 0, all_ok = 0;
  check_mpi(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD),
            "MPI_Allreduce(placement check)");
  CADRE_CHECK(all_ok == 1, "NCCL transport: ",
              problem.empty() ? "another rank has no usable GPU (see its message)" : problem);
  return placement;
}

}  // namespace

bool nccl_transport_available() { return true; }

std::unique_ptr<NcclTransport> make_nccl_transport(const NcclOptions& options) {
  CADRE_CHECK(options.timeout_seconds > 0, "NcclOptions.timeout_seconds must be positive; got ",
              options.timeout_seconds);
  CADRE_CHECK(options.watchdog_poll_ms > 0, "NcclOptions.watchdog_poll_ms must be positive; got ",
              options.watchdog_poll_ms);
  // NVLink multicast (NVLS) stays off: on shared hosts it can take every GPU of the host out of
  // service (see docs/gpu.md).
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  ensure_mpi_initialized();
  int world_rank = 0, world_size = 1;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &world_size), "MPI_Comm_size");
  set_error_rank(world_rank);

  NodePlacement placement = place_on_node(options, world_rank);
  CADRE_CUDA_CHECK(cudaSetDevice(placement.device));

  ncclUniqueId id;
  if (world_rank == 0) CADRE_NCCL_CHECK(ncclGetUniqueId(&id));
  check_mpi(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast(ncclUniqueId)");
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 1;
  config.commName = "cadre.world";
  ncclComm_t comm = nullptr;
  CADRE_NCCL_CHECK(ncclCommInitRankConfig(&comm, world_size, id, world_rank, &config));
  return std::make_unique<NcclTransportImpl>(comm, placement, options, "world");
}

}  // namespace cadre::comm
