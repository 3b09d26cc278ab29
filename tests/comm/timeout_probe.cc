// Timeout probe: rank 2 never joins the all-to-all-v; ranks 0 and 1 must end the job with a
// message naming the operation and rank 2 within their 1 s deadline (not hang).
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "comm/mpi_transport.h"

int main(int argc, char** argv) {
  cadre::comm::ensure_mpi_initialized(&argc, &argv);
  auto transport = cadre::comm::make_mpi_transport(/*timeout_seconds=*/1.0);
  const int n = transport->size();
  if (transport->rank() == 2) {
    // Withholds its part: sleeps past the others' deadline, then leaves without communicating.
    std::this_thread::sleep_for(std::chrono::seconds(20));
    return 0;
  }
  std::vector<char> send(n * 4, 1), recv(n * 4, 0);
  cadre::comm::AllToAllLayout layout;
  for (int p = 0; p < n; ++p) {
    layout.send_counts.push_back(4);
    layout.send_displs.push_back(4 * p);
    layout.recv_counts.push_back(4);
    layout.recv_displs.push_back(4 * p);
  }
  transport->all_to_all_v(send.data(), recv.data(), layout)->wait();
  std::printf("all_to_all_v completed without rank 2: the timeout did not fire\n");
  return 0;
}
