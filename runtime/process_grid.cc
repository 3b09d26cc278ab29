// The process grid's coordinates and sub-communicators.
#include "runtime/process_grid.h"

#include "common/error.h"

namespace cadre::runtime {

GridCoordinates grid_coordinates(int rank, int tensor_parallel, int pipeline_parallel) {
  GridCoordinates c;
  c.tensor = rank % tensor_parallel;
  c.pipeline = (rank / tensor_parallel) % pipeline_parallel;
  c.data = rank / (tensor_parallel * pipeline_parallel);
  return c;
}

ProcessGrid::ProcessGrid(comm::Transport& world, const GridOptions& o) {
  const int T = o.tensor_parallel, P = o.pipeline_parallel, rank = world.rank();
  CADRE_CHECK(T >= 1, "cluster.tensor_parallel=", T, "; accepted: an integer >= 1");
  CADRE_CHECK(P == 1, "cluster.pipeline_parallel=", P,
              " but cadre train does not build pipeline parallelism yet; accepted: 1");
  CADRE_CHECK(o.workers >= 1 && o.workers <= world.size(), "grid of ", o.workers,
              " workers in a world of ", world.size());
  CADRE_CHECK(o.workers % (T * P) == 0, "cluster.tensor_parallel=", T, " does not divide the ",
              o.workers, " worker ranks (the world size",
              o.workers < world.size() ? " less the dedicated attention servers" : "",
              "); accepted: a tensor_parallel that divides ", o.workers);
  const int servers = world.size() - o.workers;
  CADRE_CHECK(servers % T == 0, "scheduler.num_dedicated_servers=", servers,
              " is not a multiple of cluster.tensor_parallel=", T,
              " (each dedicated server serves one head group); accepted: a multiple of ", T);
  tensor_size_ = T;
  data_size_ = o.workers / (T * P);
  servers_per_group_ = servers / T;
  worker_ = rank < o.workers;
  if (worker_) {
    const GridCoordinates c = grid_coordinates(rank, T, P);
    tensor_rank_ = c.tensor;
    data_rank_ = c.data;
  } else {
    tensor_rank_ = (rank - o.workers) % T;
    data_rank_ = -1;
  }
  if (T == 1) {
    // Today's layout, no new communicator: the exchange spans the world; the workers reduce
    // over the world, or over their own group when there are dedicated servers.
    attention_ = &world;
    if (servers > 0) {
      data_owned_ = world.split(worker_ ? 0 : 1, rank);
      data_parallel_ = data_owned_.get();
    } else {
      data_parallel_ = &world;
    }
    return;
  }
  // Tensor-parallel groups: consecutive ranks (a server is alone in its color).
  tensor_ = world.split(worker_ ? rank / T : data_size_ + (rank - o.workers), rank);
  if (!worker_) tensor_.reset();
  // One exchange per TP index: its workers in DP order, then its servers.
  attention_owned_ = world.split(tensor_rank_, rank);
  attention_ = attention_owned_.get();
  if (servers > 0) {
    data_owned_ = attention_->split(worker_ ? 0 : 1, rank);
    data_parallel_ = data_owned_.get();
  } else {
    data_parallel_ = attention_;
  }
  if (worker_ && o.kv_heads > 0 && T > o.kv_heads && T % o.kv_heads == 0) {
    const int replicas = T / o.kv_heads;
    kv_replicas_ = tensor_->split(tensor_rank_ / replicas, tensor_rank_);
  }
}

ProcessGrid::~ProcessGrid() = default;

}  // namespace cadre::runtime
