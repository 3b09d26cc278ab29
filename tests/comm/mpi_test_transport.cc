// MPI transport: exact all-to-all-v layouts (zero counts, self, uneven sizes), all-reduce in fp32
// and bf16, split, all-gather, broadcast.
#include <gtest/gtest.h>

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

// Rank r sends (r * 10 + p) % 7 bytes to rank p (some zero), each byte encoding (r, p, i).
TEST(MpiTransport, AllToAllVMovesEveryByteToItsPlace) {
  const int n = world().size(), r = world().rank();
  auto count = [](int from, int to) { return (from * 10 + to) % 7; };
  auto value = [](int from, int to, int i) { return static_cast<char>(from * 37 + to * 11 + i); };
  AllToAllLayout layout;
  std::vector<char> send, recv;
  int64_t offset = 0;
  for (int p = 0; p < n; ++p) {
    layout.send_counts.push_back(count(r, p));
    layout.send_displs.push_back(static_cast<int64_t>(send.size()));
    for (int i = 0; i < count(r, p); ++i) send.push_back(value(r, p, i));
    layout.recv_counts.push_back(count(p, r));
    layout.recv_displs.push_back(offset);
    offset += count(p, r);
  }
  recv.assign(offset, 0);
  world().all_to_all_v(send.data(), recv.data(), layout)->wait();
  for (int p = 0; p < n; ++p) {
    for (int i = 0; i < count(p, r); ++i) {
      ASSERT_EQ(recv[layout.recv_displs[p] + i], value(p, r, i)) << "from rank " << p;
    }
  }
}

TEST(MpiTransport, AllReduceSumsFp32AndBf16) {
  const int n = world().size(), r = world().rank();
  std::vector<float> values = {1.0f * r, 0.5f, -2.0f * r};
  world().all_reduce_sum(values.data(), 3, DataType::kFloat32)->wait();
  const float ranks_sum = n * (n - 1) / 2.0f;
  EXPECT_FLOAT_EQ(values[0], ranks_sum);
  EXPECT_FLOAT_EQ(values[1], 0.5f * n);
  EXPECT_FLOAT_EQ(values[2], -2.0f * ranks_sum);
  // bf16 1.0 is 0x3F80; each rank contributes 1.0 (exactly representable sums up to 256).
  std::vector<uint16_t> bf16 = {0x3F80, 0x4000};  // 1.0, 2.0
  world().all_reduce_sum(bf16.data(), 2, DataType::kBFloat16)->wait();
  auto to_float = [](uint16_t bits) {
    uint32_t word = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &word, 4);
    return f;
  };
  EXPECT_FLOAT_EQ(to_float(bf16[0]), 1.0f * n);
  EXPECT_FLOAT_EQ(to_float(bf16[1]), 2.0f * n);
}

TEST(MpiTransport, SplitAllGatherBroadcastBarrier) {
  const int n = world().size(), r = world().rank();
  auto group = world().split(r % 2, r);
  EXPECT_EQ(group->size(), (n + 1 - r % 2) / 2);
  EXPECT_EQ(group->rank(), r / 2);
  std::vector<int> mine = {r}, all(group->size(), -1);
  group->all_gather(mine.data(), all.data(), sizeof(int));
  for (int i = 0; i < group->size(); ++i) EXPECT_EQ(all[i], 2 * i + r % 2);
  int token = r == 0 ? 4242 : 0;
  world().broadcast(&token, sizeof(int), 0);
  EXPECT_EQ(token, 4242);
  world().barrier();
}

TEST(MpiTransport, BadLayoutIsRejected) {
  AllToAllLayout layout;  // no entries
  char byte = 0;
  EXPECT_THROW(world().all_to_all_v(&byte, &byte, layout), Error);
  EXPECT_THROW(world().set_timeout_seconds(0), Error);
  EXPECT_THROW(world().broadcast(&byte, 1, world().size()), Error);
}

}  // namespace
}  // namespace cadre::comm
