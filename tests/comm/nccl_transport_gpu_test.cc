// NCCL transport on 2+ ranks (GPU build, mpirun): exact all-to-all-v layouts (zero-count peers,
// gaps, self sends), ordering with a non-default compute stream, collectives, split, and (as a
// separate CTest entry) the watchdog ending a job whose peer never posts its part.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "comm/cuda_check.h"
#include "comm/nccl_transport.h"
#include "tests/gpu_mpi_main.h"

namespace cadre::comm {
namespace {

NcclTransport* g_transport = nullptr;

#define REQUIRE_TRANSPORT()                                                        \
  do {                                                                             \
    if (g_transport == nullptr) GTEST_SKIP() << "no GPU per rank on this machine"; \
  } while (0)

// Device memory for a test, freed at scope end.
class DeviceBytes {
 public:
  explicit DeviceBytes(size_t bytes) : bytes_(bytes) {
    CADRE_CUDA_CHECK(cudaMalloc(&data_, bytes_ == 0 ? 1 : bytes_));
  }
  ~DeviceBytes() { cudaFree(data_); }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  char* get() const { return static_cast<char*>(data_); }
  void upload(const std::vector<uint8_t>& host) {
    CADRE_CUDA_CHECK(cudaMemcpy(data_, host.data(), host.size(), cudaMemcpyHostToDevice));
  }
  std::vector<uint8_t> download() const {
    std::vector<uint8_t> host(bytes_);
    CADRE_CUDA_CHECK(cudaDeviceSynchronize());
    CADRE_CUDA_CHECK(cudaMemcpy(host.data(), data_, bytes_, cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_;
};

uint8_t pattern(int src, int dst, int64_t i) {
  return static_cast<uint8_t>(src * 37 + dst * 11 + i * 3 + (i >> 8));
}

// counts[src][dst] bytes; every rank draws the same matrix from the shared seed.
std::vector<std::vector<int64_t>> draw_counts(int size, uint32_t seed, int shape) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int64_t>> counts(size, std::vector<int64_t>(size, 0));
  for (int s = 0; s < size; ++s) {
    for (int d = 0; d < size; ++d) {
      switch (shape) {
        case 0:  // random with many zeros and awkward sizes
          counts[s][d] = (rng() % 3 == 0) ? 0 : static_cast<int64_t>(rng() % 4099);
          break;
        case 1:  // nothing at all
          counts[s][d] = 0;
          break;
        case 2:  // one large message from the last rank to rank 0
          counts[s][d] = (s == size - 1 && d == 0) ? (int64_t{32} << 20) + 7 : 0;
          break;
        default:  // only self sends
          counts[s][d] = s == d ? 129 : 0;
      }
    }
  }
  return counts;
}

// Runs one all-to-all-v with gaps between segments (poisoned) and checks every byte.
void check_all_to_all(uint32_t seed, int shape) {
  const int rank = g_transport->rank(), size = g_transport->size();
  auto counts = draw_counts(size, seed, shape);
  const int64_t kGap = 5;
  AllToAllLayout layout;
  int64_t send_total = 0, recv_total = 0;
  for (int peer = 0; peer < size; ++peer) {
    layout.send_displs.push_back(send_total);
    layout.send_counts.push_back(counts[rank][peer]);
    send_total += counts[rank][peer] + kGap;
    layout.recv_displs.push_back(recv_total);
    layout.recv_counts.push_back(counts[peer][rank]);
    recv_total += counts[peer][rank] + kGap;
  }
  std::vector<uint8_t> send_host(send_total, 0xEE);
  for (int peer = 0; peer < size; ++peer) {
    for (int64_t i = 0; i < layout.send_counts[peer]; ++i) {
      send_host[layout.send_displs[peer] + i] = pattern(rank, peer, i);
    }
  }
  DeviceBytes send(send_total), recv(recv_total);
  send.upload(send_host);
  std::vector<uint8_t> poison(recv_total, 0xA5);
  recv.upload(poison);
  g_transport->all_to_all_v(send.get(), recv.get(), layout)->wait();
  std::vector<uint8_t> got = recv.download();
  int64_t wrong = 0, first_wrong = -1;
  for (int peer = 0; peer < size; ++peer) {
    int64_t begin = layout.recv_displs[peer], count = layout.recv_counts[peer];
    for (int64_t i = 0; i < count + kGap; ++i) {
      uint8_t expected = i < count ? pattern(peer, rank, i) : 0xA5;
      if (got[begin + i] != expected && wrong++ == 0) first_wrong = begin + i;
    }
  }
  EXPECT_EQ(wrong, 0) << "rank " << rank << " seed " << seed << " shape " << shape
                      << ": first wrong byte at " << first_wrong;
}

TEST(NcclTransport, IdentityMatchesMpi) {
  REQUIRE_TRANSPORT();
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(g_transport->rank(), rank);
  EXPECT_EQ(g_transport->size(), size);
  EXPECT_EQ(g_transport->backend(), "nccl");
  EXPECT_TRUE(g_transport->device_memory());
  EXPECT_EQ(g_transport->device(), g_transport->local_rank());
  int device = -1;
  CADRE_CUDA_CHECK(cudaGetDevice(&device));
  EXPECT_EQ(device, g_transport->device());
}

TEST(NcclTransport, AllToAllVExactLayouts) {
  REQUIRE_TRANSPORT();
  for (int shape = 0; shape < 4; ++shape) {
    for (uint32_t seed = 1; seed <= (shape == 0 ? 8u : 1u); ++seed) check_all_to_all(seed, shape);
  }
}

TEST(NcclTransport, RejectsBadLayouts) {
  REQUIRE_TRANSPORT();
  const int size = g_transport->size(), rank = g_transport->rank();
  AllToAllLayout short_layout{{0}, {0}, {0}, {0}};
  if (size > 1) {
    EXPECT_THROW(g_transport->all_to_all_v(nullptr, nullptr, short_layout), Error);
  }
  AllToAllLayout self({std::vector<int64_t>(size, 0), std::vector<int64_t>(size, 0),
                       std::vector<int64_t>(size, 0), std::vector<int64_t>(size, 0)});
  self.send_counts[rank] = 4;
  self.recv_counts[rank] = 8;
  DeviceBytes buffer(16);
  try {
    g_transport->all_to_all_v(buffer.get(), buffer.get(), self);
    ADD_FAILURE() << "unequal self counts were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("to itself"), std::string::npos) << e.what();
  }
}

// The send buffer is written on a busy non-default compute stream right before the call, and read
// back on that stream right after wait(): only the event ordering makes this correct.
TEST(NcclTransport, OrdersWithComputeStream) {
  REQUIRE_TRANSPORT();
  const int rank = g_transport->rank(), size = g_transport->size();
  const int64_t per_peer = int64_t{8} << 20;
  cudaStream_t compute = nullptr;
  CADRE_CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  g_transport->set_compute_stream(compute);
  {
    DeviceBytes send(per_peer * size), recv(per_peer * size), busy(int64_t{256} << 20);
    AllToAllLayout layout;
    for (int peer = 0; peer < size; ++peer) {
      layout.send_counts.push_back(per_peer);
      layout.send_displs.push_back(peer * per_peer);
      layout.recv_counts.push_back(per_peer);
      layout.recv_displs.push_back(peer * per_peer);
    }
    for (int round = 0; round < 3; ++round) {
      CADRE_CUDA_CHECK(cudaMemsetAsync(recv.get(), 0, per_peer * size, compute));
      // Delay the compute stream, then write the payload on it.
      for (int i = 0; i < 4; ++i) {
        CADRE_CUDA_CHECK(cudaMemsetAsync(busy.get(), i, int64_t{256} << 20, compute));
      }
      CADRE_CUDA_CHECK(
          cudaMemsetAsync(send.get(), 1 + rank + 16 * round, per_peer * size, compute));
      g_transport->all_to_all_v(send.get(), recv.get(), layout)->wait();
      std::vector<uint8_t> host(per_peer * size);
      CADRE_CUDA_CHECK(
          cudaMemcpyAsync(host.data(), recv.get(), host.size(), cudaMemcpyDeviceToHost, compute));
      CADRE_CUDA_CHECK(cudaStreamSynchronize(compute));
      for (int peer = 0; peer < size; ++peer) {
        uint8_t expected = static_cast<uint8_t>(1 + peer + 16 * round);
        EXPECT_EQ(host[peer * per_peer], expected) << "round " << round << " peer " << peer;
        EXPECT_EQ(host[(peer + 1) * per_peer - 1], expected)
            << "round " << round << " peer " << peer;
      }
    }
  }
  g_transport->set_compute_stream(nullptr);
  CADRE_CUDA_CHECK(cudaStreamDestroy(compute));
}

TEST(NcclTransport, Collectives) {
  REQUIRE_TRANSPORT();
  const int rank = g_transport->rank(), size = g_transport->size();
  // all_reduce_sum fp32 (1000 elements: value rank + i).
  {
    std::vector<float> host(1000);
    for (int i = 0; i < 1000; ++i) host[i] = static_cast<float>(rank + i);
    DeviceBytes data(host.size() * 4);
    CADRE_CUDA_CHECK(cudaMemcpy(data.get(), host.data(), host.size() * 4, cudaMemcpyHostToDevice));
    g_transport->all_reduce_sum(data.get(), 1000, DataType::kFloat32)->wait();
    CADRE_CUDA_CHECK(cudaDeviceSynchronize());
    CADRE_CUDA_CHECK(cudaMemcpy(host.data(), data.get(), host.size() * 4, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 1000; ++i) {
      ASSERT_FLOAT_EQ(host[i], static_cast<float>(size * i + size * (size - 1) / 2)) << i;
    }
  }
  // int64.
  {
    int64_t value = int64_t{1} << (40 + rank);
    DeviceBytes data(8);
    CADRE_CUDA_CHECK(cudaMemcpy(data.get(), &value, 8, cudaMemcpyHostToDevice));
    g_transport->all_reduce_sum(data.get(), 1, DataType::kInt64)->wait();
    CADRE_CUDA_CHECK(cudaDeviceSynchronize());
    CADRE_CUDA_CHECK(cudaMemcpy(&value, data.get(), 8, cudaMemcpyDeviceToHost));
    int64_t expected = 0;
    for (int r = 0; r < size; ++r) expected += int64_t{1} << (40 + r);
    EXPECT_EQ(value, expected);
  }
  // broadcast from the last rank.
  {
    std::vector<uint8_t> host(777);
    for (size_t i = 0; i < host.size(); ++i)
      host[i] = static_cast<uint8_t>(rank == size - 1 ? i : 0);
    DeviceBytes data(host.size());
    data.upload(host);
    g_transport->broadcast(data.get(), host.size(), size - 1);
    auto got = data.download();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], static_cast<uint8_t>(i)) << i;
  }
  // all_gather of 3 bytes per rank.
  {
    std::vector<uint8_t> mine = {static_cast<uint8_t>(rank), 7, static_cast<uint8_t>(rank * 2)};
    DeviceBytes send(3), recv(3 * size);
    send.upload(mine);
    g_transport->all_gather(send.get(), recv.get(), 3);
    auto got = recv.download();
    for (int r = 0; r < size; ++r) {
      EXPECT_EQ(got[3 * r], r);
      EXPECT_EQ(got[3 * r + 1], 7);
      EXPECT_EQ(got[3 * r + 2], 2 * r);
    }
  }
  g_transport->barrier();
}

TEST(NcclTransport, SplitGroups) {
  REQUIRE_TRANSPORT();
  const int rank = g_transport->rank(), size = g_transport->size();
  // Everyone in one group, ordered in reverse.
  auto reversed = g_transport->split(0, size - rank);
  EXPECT_EQ(reversed->size(), size);
  EXPECT_EQ(reversed->rank(), size - 1 - rank);
  // Odd and even ranks.
  auto parity = g_transport->split(rank % 2, rank);
  EXPECT_EQ(parity->size(), (size + 1 - rank % 2) / 2);
  EXPECT_EQ(parity->rank(), rank / 2);
  float value = static_cast<float>(rank + 1);
  DeviceBytes data(4);
  CADRE_CUDA_CHECK(cudaMemcpy(data.get(), &value, 4, cudaMemcpyHostToDevice));
  parity->all_reduce_sum(data.get(), 1, DataType::kFloat32)->wait();
  CADRE_CUDA_CHECK(cudaDeviceSynchronize());
  CADRE_CUDA_CHECK(cudaMemcpy(&value, data.get(), 4, cudaMemcpyDeviceToHost));
  float expected = 0;
  for (int r = rank % 2; r < size; r += 2) expected += static_cast<float>(r + 1);
  EXPECT_FLOAT_EQ(value, expected);
  EXPECT_THROW(g_transport->split(-1, 0), Error);
}

// Run only by its own CTest entry (it ends the job): rank 0 expects bytes that rank 1 never sends.
TEST(NcclWatchdog, DISABLED_EndsJobWhenPeerIsMissing) {
  REQUIRE_TRANSPORT();
  ASSERT_GE(g_transport->size(), 2);
  g_transport->set_timeout_seconds(3);
  if (g_transport->rank() == 0) {
    DeviceBytes buffer(64);
    AllToAllLayout layout{
        std::vector<int64_t>(g_transport->size(), 0), std::vector<int64_t>(g_transport->size(), 0),
        std::vector<int64_t>(g_transport->size(), 0), std::vector<int64_t>(g_transport->size(), 0)};
    layout.recv_counts[1] = 64;
    g_transport->all_to_all_v(buffer.get(), buffer.get(), layout)->wait();
    CADRE_CUDA_CHECK(cudaDeviceSynchronize());  // never returns: the watchdog ends the process
  }
  std::this_thread::sleep_for(std::chrono::seconds(60));
  ADD_FAILURE() << "the watchdog did not end the job";
}

}  // namespace
}  // namespace cadre::comm


// MPI first, then the transport (one per process, shared by the tests), then the tests.
int main(int argc, char** argv) {
  cadre::comm::NcclOptions options;
  options.timeout_seconds = 120;
  return cadre::testing::run_gpu_mpi_tests(
      argc, argv, [](cadre::comm::NcclTransport* t, bool) { cadre::comm::g_transport = t; },
      options);
}
