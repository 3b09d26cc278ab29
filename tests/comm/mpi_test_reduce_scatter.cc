// The collectives tensor parallelism and the sharded optimizer add to the transport:
// reduce_scatter_sum (fp32 and bf16) and all_gather_async, against sums written out by hand.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "comm/mpi_transport.h"
#include "common/error.h"

namespace cadre::comm {
namespace {

Transport& world() {
  static std::unique_ptr<Transport> transport = make_mpi_transport(60);
  return *transport;
}

uint16_t to_bf16(float x) {
  uint32_t w;
  std::memcpy(&w, &x, 4);
  return static_cast<uint16_t>(w >> 16);  // exact for the small integers used here
}
float from_bf16(uint16_t b) {
  const uint32_t w = static_cast<uint32_t>(b) << 16;
  float x;
  std::memcpy(&x, &w, 4);
  return x;
}

// Element i of rank r's buffer is r * 1000 + i: rank q receives sum_r (r * 1000 + q * count + j).
TEST(Collectives, ReduceScatterSumsEachRanksSlice) {
  const int n = world().size(), me = world().rank();
  for (int64_t count : {0, 1, 5, 17}) {
    std::vector<float> send(count * n), recv(count, -1.0f);
    for (int64_t i = 0; i < count * n; ++i) send[i] = static_cast<float>(me * 1000 + i);
    world().reduce_scatter_sum(send.data(), recv.data(), count, DataType::kFloat32)->wait();
    for (int64_t j = 0; j < count; ++j) {
      double want = 0;
      for (int r = 0; r < n; ++r) want += r * 1000 + me * count + j;
      EXPECT_EQ(recv[j], static_cast<float>(want)) << "count " << count << ", element " << j;
    }
    std::vector<uint16_t> send16(count * n), recv16(count);
    for (int64_t i = 0; i < count * n; ++i) send16[i] = to_bf16(static_cast<float>(me + i % 7));
    world().reduce_scatter_sum(send16.data(), recv16.data(), count, DataType::kBFloat16)->wait();
    for (int64_t j = 0; j < count; ++j) {
      double want = 0;
      for (int r = 0; r < n; ++r) want += r + (me * count + j) % 7;
      EXPECT_EQ(from_bf16(recv16[j]), static_cast<float>(want)) << "bf16 element " << j;
    }
  }
  EXPECT_THROW(world().reduce_scatter_sum(nullptr, nullptr, 1, DataType::kInt64), Error);
}

TEST(Collectives, AllGatherAsyncPlacesEveryRanksBytes) {
  const int n = world().size(), me = world().rank();
  std::vector<int32_t> mine = {me, me * 10, me * 100};
  std::vector<int32_t> all(3 * n, -1);
  auto work = world().all_gather_async(mine.data(), all.data(), sizeof(int32_t) * 3);
  work->wait();
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(all[3 * r], r);
    EXPECT_EQ(all[3 * r + 1], r * 10);
    EXPECT_EQ(all[3 * r + 2], r * 100);
  }
}

}  // namespace
}  // namespace cadre::comm
