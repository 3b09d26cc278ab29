// Which node each rank runs on, as the MPI launcher placed them (MPI_COMM_TYPE_SHARED groups the
// ranks of one node); `cadre train` checks it against cluster.gpus_per_node and logs it.
#pragma once

#include <string>
#include <vector>

namespace cadre::comm {

struct NodePlacement {
  int node = 0;                        // this rank's node, 0-based (nodes ordered by lowest rank)
  int num_nodes = 1;
  int local_rank = 0;                  // rank among the processes of this node
  int local_size = 1;                  // processes on this node
  std::vector<int> node_of_rank;       // per world rank
  std::vector<std::string> node_names; // per node: MPI_Get_processor_name of its lowest rank
};

// Collective over MPI_COMM_WORLD (initialises MPI if needed).
NodePlacement detect_node_placement();

// Whether the placement is the one the planner and cost model assume: rank r on node
// r / gpus_per_node (ranks filled node by node, gpus_per_node ranks on each).
bool placement_matches(const NodePlacement& placement, int gpus_per_node);

// "2 nodes (cadre-node0: ranks 0-1, cadre-node1: ranks 2-3)"
std::string describe_placement(const NodePlacement& placement);

}  // namespace cadre::comm
