// Node detection: split MPI_COMM_WORLD by shared memory, number the nodes by their lowest rank.
#include "comm/node_placement.h"

#include <mpi.h>

#include <algorithm>
#include <cstring>

#include "comm/mpi_transport.h"
#include "common/error.h"

namespace cadre::comm {

NodePlacement detect_node_placement() {
  ensure_mpi_initialized();
  int rank = 0, world = 1;
  CADRE_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  CADRE_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  MPI_Comm node_comm = MPI_COMM_NULL;
  CADRE_MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node_comm));
  NodePlacement placement;
  CADRE_MPI_CHECK(MPI_Comm_rank(node_comm, &placement.local_rank));
  CADRE_MPI_CHECK(MPI_Comm_size(node_comm, &placement.local_size));
  // A node is named by its lowest world rank (local rank 0, since the split keys on world rank).
  int leader = rank;
  CADRE_MPI_CHECK(MPI_Bcast(&leader, 1, MPI_INT, 0, node_comm));
  CADRE_MPI_CHECK(MPI_Comm_free(&node_comm));
  std::vector<int> leaders(world);
  CADRE_MPI_CHECK(MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, MPI_COMM_WORLD));
  std::vector<int> distinct = leaders;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  placement.num_nodes = static_cast<int>(distinct.size());
  placement.node_of_rank.resize(world);
  for (int r = 0; r < world; ++r) {
    placement.node_of_rank[r] = static_cast<int>(
        std::lower_bound(distinct.begin(), distinct.end(), leaders[r]) - distinct.begin());
  }
  placement.node = placement.node_of_rank[rank];

  char name[MPI_MAX_PROCESSOR_NAME + 1] = {0};
  int length = 0;
  CADRE_MPI_CHECK(MPI_Get_processor_name(name, &length));
  std::vector<char> names(static_cast<size_t>(world) * sizeof(name), 0);
  CADRE_MPI_CHECK(MPI_Allgather(name, sizeof(name), MPI_CHAR, names.data(), sizeof(name), MPI_CHAR,
                                MPI_COMM_WORLD));
  for (int leader_rank : distinct) {
    const char* n = names.data() + static_cast<size_t>(leader_rank) * sizeof(name);
    placement.node_names.emplace_back(n, strnlen(n, sizeof(name) - 1));
  }
  return placement;
}

bool placement_matches(const NodePlacement& placement, int gpus_per_node) {
  if (gpus_per_node < 1) return false;
  for (size_t r = 0; r < placement.node_of_rank.size(); ++r) {
    if (placement.node_of_rank[r] != static_cast<int>(r) / gpus_per_node) return false;
  }
  return true;
}

std::string describe_placement(const NodePlacement& placement) {
  std::string out = str_cat(placement.num_nodes, placement.num_nodes == 1 ? " node (" : " nodes (");
  for (int n = 0; n < placement.num_nodes; ++n) {
    std::vector<int> ranks;
    for (size_t r = 0; r < placement.node_of_rank.size(); ++r) {
      if (placement.node_of_rank[r] == n) ranks.push_back(static_cast<int>(r));
    }
    // Ranks as runs: "0-1,4".
    std::string list;
    for (size_t i = 0; i < ranks.size();) {
      size_t j = i;
      while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
      if (!list.empty()) list += ",";
      list += j == i ? std::to_string(ranks[i])
                     : str_cat(ranks[i], "-", ranks[j]);
      i = j + 1;
    }
    out += str_cat(n ? ", " : "", placement.node_names[n], ": ranks ", list);
  }
  return out + ")";
}

}  // namespace cadre::comm
