// The process grid of `cadre train`: world = T x P x D worker ranks (tensor-, pipeline- and
// data-parallel; P = 1 until pipeline parallelism is built), T consecutive ranks forming one
// tensor-parallel group inside a node, plus optional dedicated attention servers after the
// workers. Builds the sub-communicators from the transport's split (MPI and NCCL alike).
#pragma once

#include <memory>

#include "comm/transport.h"

namespace cadre::runtime {

// Where a worker rank sits: rank = (data * P + pipeline) * T + tensor.
struct GridCoordinates {
  int tensor = 0, pipeline = 0, data = 0;
};
GridCoordinates grid_coordinates(int rank, int tensor_parallel, int pipeline_parallel);

struct GridOptions {
  int tensor_parallel = 1;
  int pipeline_parallel = 1;  // only 1 is built
  int workers = 0;            // the first `workers` ranks; the rest are dedicated servers
  int kv_heads = 0;           // model.num_kv_heads: K/V heads are replicated when T exceeds it
};

class ProcessGrid {
 public:
  // Collective over `world` (every rank of the job, the tensors' transport). Validates the
  // shape (workers divisible by T x P, dedicated servers divisible by T) and throws cadre::Error
  // naming the field otherwise.
  ProcessGrid(comm::Transport& world, const GridOptions& options);
  ~ProcessGrid();

  int tensor_size() const { return tensor_size_; }
  int data_size() const { return data_size_; }
  // A dedicated server's TP index is the head group it serves: (rank - workers) % T.
  int tensor_rank() const { return tensor_rank_; }
  int data_rank() const { return data_rank_; }  // -1 on dedicated servers
  bool worker() const { return worker_; }

  // The T ranks of this worker's tensor-parallel group (nullptr when T = 1 or on a server).
  comm::Transport* tensor() const { return tensor_.get(); }
  // The ranks of this worker's TP group holding the same K/V heads when T > kv_heads (nullptr
  // otherwise).
  comm::Transport* kv_replicas() const { return kv_replicas_.get(); }
  // The workers that share this worker's TP index: gradient reduction, optimizer sharding.
  comm::Transport& data_parallel() const { return *data_parallel_; }
  // CAD's core-attention exchange: the workers sharing this TP index, then the dedicated servers
  // of that head group. Plans index its ranks (DP index, then servers).
  comm::Transport& attention() const { return *attention_; }
  int attention_servers() const { return servers_per_group_; }

 private:
  int tensor_size_ = 1, data_size_ = 1, tensor_rank_ = 0, data_rank_ = 0;
  int servers_per_group_ = 0;
  bool worker_ = true;
  std::unique_ptr<comm::Transport> tensor_, kv_replicas_, attention_owned_, data_owned_;
  comm::Transport* attention_ = nullptr;
  comm::Transport* data_parallel_ = nullptr;
};

}  // namespace cadre::runtime
