// MPI backend of the Transport interface: nonblocking MPI calls completed by a polling wait with a
// deadline; all-to-all-v as per-peer Isend/Irecv so a timeout can name the peers still missing.
#include "comm/mpi_transport.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <climits>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "common/error.h"

namespace cadre::comm {

void throw_mpi_error(const char* call, int code, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int length = 0;
  MPI_Error_string(code, text, &length);
  int rank = -1, initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  throw Error(file, line, str_cat(call, " failed on rank ", rank, ": ", text));
}

namespace {

// Messages are cut into chunks of at most this many bytes: MPI counts are ints.
constexpr int64_t kMaxChunkBytes = int64_t{1} << 30;
constexpr int kAllToAllTag = 7001;

void finalize_mpi_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

// Waits for every request until the deadline; on timeout prints which ones are missing and aborts
// the job (the other ranks would otherwise wait forever on us).
void wait_all(MPI_Comm comm, std::vector<MPI_Request>& requests, const std::vector<int>& peers,
              const char* operation, double timeout_seconds) {
  const auto start = std::chrono::steady_clock::now();
  int sleep_us = 0;
  while (true) {
    int all_done = 0;
    CADRE_MPI_CHECK(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &all_done,
                                MPI_STATUSES_IGNORE));
    if (all_done) return;
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited > timeout_seconds) {
      std::vector<int> missing;
      for (size_t i = 0; i < requests.size(); ++i) {
        int done = 0;
        MPI_Test(&requests[i], &done, MPI_STATUS_IGNORE);
        if (!done && i < peers.size()) missing.push_back(peers[i]);
      }
      std::sort(missing.begin(), missing.end());
      missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
      int rank = -1;
      MPI_Comm_rank(comm, &rank);
      std::string who;
      for (int p : missing) who += (who.empty() ? "" : ", ") + std::to_string(p);
      std::fprintf(stderr,
                   "cadre: %s timed out after %.1f s on rank %d; still waiting for rank(s) %s "
                   "(comm.timeout_seconds); ending the job\n",
                   operation, waited, rank, who.empty() ? "(unknown)" : who.c_str());
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 3);
      std::_Exit(3);
    }
    // Spin briefly, then back off to at most 1 ms between polls.
    if (sleep_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
    sleep_us = std::min(1000, sleep_us * 2 + 1);
  }
}

class MpiWork : public Work {
 public:
  MpiWork(MPI_Comm comm, std::vector<MPI_Request> requests, std::vector<int> peers,
          const char* operation, double timeout_seconds)
      : comm_(comm),
        requests_(std::move(requests)),
        peers_(std::move(peers)),
        operation_(operation),
        timeout_seconds_(timeout_seconds) {}
  void wait() override {
    if (!done_) wait_all(comm_, requests_, peers_, operation_, timeout_seconds_);
    done_ = true;
    if (after_) after_();
    after_ = nullptr;
  }
  bool done() override {
    if (done_) return true;
    int all_done = 0;
    CADRE_MPI_CHECK(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &all_done,
                                MPI_STATUSES_IGNORE));
    return all_done != 0;
  }
  void set_after(std::function<void()> after) { after_ = std::move(after); }

 private:
  MPI_Comm comm_;
  std::vector<MPI_Request> requests_;
  std::vector<int> peers_;
  const char* operation_;
  double timeout_seconds_;
  bool done_ = false;
  std::function<void()> after_;
};

class MpiTransport : public Transport {
 public:
  MpiTransport(MPI_Comm comm, double timeout_seconds)
      : comm_(comm), timeout_seconds_(timeout_seconds) {
    CADRE_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    CADRE_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  ~MpiTransport() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  bool device_memory() const override { return false; }
  void set_timeout_seconds(double seconds) override {
    CADRE_CHECK(seconds > 0, "comm timeout is ", seconds, " s; accepted: > 0");
    timeout_seconds_ = seconds;
  }

  std::unique_ptr<Transport> split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    CADRE_MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
    CADRE_CHECK(sub != MPI_COMM_NULL, "split with color ", color,
                " produced no group; accepted: color >= 0");
    return std::make_unique<MpiTransport>(sub, timeout_seconds_);
  }

  std::unique_ptr<Work> all_to_all_v(const void* send, void* recv,
                                     const AllToAllLayout& layout) override {
    const auto n = static_cast<size_t>(size_);
    CADRE_CHECK(layout.send_counts.size() == n && layout.send_displs.size() == n &&
                    layout.recv_counts.size() == n && layout.recv_displs.size() == n,
                "all_to_all_v layout has ", layout.send_counts.size(), "/",
                layout.send_displs.size(), "/", layout.recv_counts.size(), "/",
                layout.recv_displs.size(), " entries; accepted: one per rank (", size_, ")");
    std::vector<MPI_Request> requests;
    std::vector<int> peers;
    // Receives first, so no message waits in an unexpected-message queue.
    for (int p = 0; p < size_; ++p) {
      CADRE_CHECK(layout.recv_counts[p] >= 0 && layout.send_counts[p] >= 0,
                  "all_to_all_v: negative byte count for rank ", p);
      post_chunks(static_cast<char*>(recv) + layout.recv_displs[p], layout.recv_counts[p], p,
                  /*is_send=*/false, requests, peers);
    }
    for (int p = 0; p < size_; ++p) {
      post_chunks(const_cast<char*>(static_cast<const char*>(send)) + layout.send_displs[p],
                  layout.send_counts[p], p, /*is_send=*/true, requests, peers);
    }
    return std::make_unique<MpiWork>(comm_, std::move(requests), std::move(peers),
                                     "all_to_all_v", timeout_seconds_);
  }

  std::unique_ptr<Work> all_reduce_sum(void* data, int64_t count, DataType type) override {
    CADRE_CHECK(count >= 0 && count <= INT32_MAX, "all_reduce_sum of ", count,
                " elements; accepted: 0..", INT32_MAX, " per call (bucket larger tensors)");
    std::vector<MPI_Request> requests(1);
    auto work = std::unique_ptr<MpiWork>();
    if (type == DataType::kFloat32) {
      CADRE_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_FLOAT,
                                     MPI_SUM, comm_, &requests[0]));
      return std::make_unique<MpiWork>(comm_, std::move(requests), std::vector<int>{},
                                       "all_reduce_sum", timeout_seconds_);
    }
    CADRE_CHECK(type == DataType::kBFloat16, "all_reduce_sum supports fp32 and bf16; got type ",
                static_cast<int>(type));
    // bf16: accumulate in fp32 (the upper 16 bits of an fp32 are a bf16).
    auto widened = std::make_shared<std::vector<float>>(count);
    auto* bits = static_cast<uint16_t*>(data);
    for (int64_t i = 0; i < count; ++i) {
      const uint32_t word = static_cast<uint32_t>(bits[i]) << 16;
      std::memcpy(&(*widened)[i], &word, 4);
    }
    CADRE_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, widened->data(), static_cast<int>(count),
                                   MPI_FLOAT, MPI_SUM, comm_, &requests[0]));
    auto result = std::make_unique<MpiWork>(comm_, std::move(requests), std::vector<int>{},
                                            "all_reduce_sum(bf16)", timeout_seconds_);
    result->set_after([widened, bits, count]() {
      for (int64_t i = 0; i < count; ++i) {
        uint32_t word;
        std::memcpy(&word, &(*widened)[i], 4);
        // Round to nearest even when narrowing back to bf16.
        word += 0x7FFF + ((word >> 16) & 1);
        bits[i] = static_cast<uint16_t>(word >> 16);
      }
    });
    return result;
  }

  void broadcast(void* data, int64_t bytes, int root) override {
    CADRE_CHECK(root >= 0 && root < size_, "broadcast root ", root, "; accepted: 0..", size_ - 1);
    std::vector<MPI_Request> requests;
    for (int64_t offset = 0; offset < bytes; offset += kMaxChunkBytes) {
      requests.emplace_back();
      CADRE_MPI_CHECK(MPI_Ibcast(static_cast<char*>(data) + offset,
                                 static_cast<int>(std::min(kMaxChunkBytes, bytes - offset)),
                                 MPI_BYTE, root, comm_, &requests.back()));
    }
    wait_all(comm_, requests, {}, "broadcast", timeout_seconds_);
  }

  void all_gather(const void* send, void* recv, int64_t bytes) override {
    CADRE_CHECK(bytes >= 0 && bytes <= INT32_MAX, "all_gather of ", bytes,
                " bytes per rank; accepted: 0..", INT32_MAX);
    std::vector<MPI_Request> requests(1);
    CADRE_MPI_CHECK(MPI_Iallgather(send, static_cast<int>(bytes), MPI_BYTE, recv,
                                   static_cast<int>(bytes), MPI_BYTE, comm_, &requests[0]));
    wait_all(comm_, requests, {}, "all_gather", timeout_seconds_);
  }

  std::unique_ptr<Work> all_gather_async(const void* send, void* recv, int64_t bytes) override {
    CADRE_CHECK(bytes >= 0 && bytes <= INT32_MAX, "all_gather_async of ", bytes,
                " bytes per rank; accepted: 0..", INT32_MAX);
    std::vector<MPI_Request> requests(1);
    CADRE_MPI_CHECK(MPI_Iallgather(send, static_cast<int>(bytes), MPI_BYTE, recv,
                                   static_cast<int>(bytes), MPI_BYTE, comm_, &requests[0]));
    return std::make_unique<MpiWork>(comm_, std::move(requests), std::vector<int>{},
                                     "all_gather", timeout_seconds_);
  }

  std::unique_ptr<Work> reduce_scatter_sum(const void* send, void* recv, int64_t count,
                                           DataType type) override {
    CADRE_CHECK(count >= 0 && count * size_ <= INT32_MAX, "reduce_scatter_sum of ", count,
                " elements per rank x ", size_, " ranks; accepted: at most ", INT32_MAX,
                " elements in all");
    std::vector<MPI_Request> requests(1);
    if (type == DataType::kFloat32) {
      CADRE_MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, static_cast<int>(count), MPI_FLOAT,
                                                MPI_SUM, comm_, &requests[0]));
      return std::make_unique<MpiWork>(comm_, std::move(requests), std::vector<int>{},
                                       "reduce_scatter_sum", timeout_seconds_);
    }
    CADRE_CHECK(type == DataType::kBFloat16,
                "reduce_scatter_sum supports fp32 and bf16; got type ", static_cast<int>(type));
    const int64_t total = count * size_;
    auto widened = std::make_shared<std::vector<float>>(total + count);
    const auto* bits = static_cast<const uint16_t*>(send);
    for (int64_t i = 0; i < total; ++i) {
      const uint32_t word = static_cast<uint32_t>(bits[i]) << 16;
      std::memcpy(&(*widened)[i], &word, 4);
    }
    CADRE_MPI_CHECK(MPI_Ireduce_scatter_block(widened->data(), widened->data() + total,
                                              static_cast<int>(count), MPI_FLOAT, MPI_SUM, comm_,
                                              &requests[0]));
    auto result = std::make_unique<MpiWork>(comm_, std::move(requests), std::vector<int>{},
                                            "reduce_scatter_sum(bf16)", timeout_seconds_);
    auto* out = static_cast<uint16_t*>(recv);
    result->set_after([widened, out, count, total]() {
      for (int64_t i = 0; i < count; ++i) {
        uint32_t word;
        std::memcpy(&word, &(*widened)[total + i], 4);
        word += 0x7FFF + ((word >> 16) & 1);
        out[i] = static_cast<uint16_t>(word >> 16);
      }
    });
    return result;
  }

  void barrier() override {
    std::vector<MPI_Request> requests(1);
    CADRE_MPI_CHECK(MPI_Ibarrier(comm_, &requests[0]));
    wait_all(comm_, requests, {}, "barrier", timeout_seconds_);
  }

 private:
  void post_chunks(char* base, int64_t bytes, int peer, bool is_send,
                   std::vector<MPI_Request>& requests, std::vector<int>& peers) {
    int chunk = 0;
    for (int64_t offset = 0; offset < bytes; offset += kMaxChunkBytes, ++chunk) {
      const int count = static_cast<int>(std::min(kMaxChunkBytes, bytes - offset));
      requests.emplace_back();
      peers.push_back(peer);
      if (is_send) {
        CADRE_MPI_CHECK(MPI_Isend(base + offset, count, MPI_BYTE, peer, kAllToAllTag + chunk,
                                  comm_, &requests.back()));
      } else {
        CADRE_MPI_CHECK(MPI_Irecv(base + offset, count, MPI_BYTE, peer, kAllToAllTag + chunk,
                                  comm_, &requests.back()));
      }
    }
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  double timeout_seconds_;
};

}  // namespace

void ensure_mpi_initialized(int* argc, char*** argv) {
  int initialized = 0;
  CADRE_MPI_CHECK(MPI_Initialized(&initialized));
  if (initialized) return;
  int provided = 0;
  CADRE_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  std::atexit(finalize_mpi_at_exit);
}

std::unique_ptr<Transport> make_mpi_transport(double timeout_seconds) {
  ensure_mpi_initialized();
  MPI_Comm comm = MPI_COMM_NULL;
  CADRE_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  auto transport = std::make_unique<MpiTransport>(comm, timeout_seconds);
  transport->set_timeout_seconds(timeout_seconds);
  return transport;
}

}  // namespace cadre::comm
