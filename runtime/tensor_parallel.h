// Tensor-parallel collectives as differentiable ops (Megatron-LM's f/g pair and the sequence-
// parallel gather/scatter), the row split that sequence parallelism uses, and the vocabulary-
// parallel cross-entropy. A TensorParallelGroup of size 1 makes every op the identity.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "comm/transport.h"

namespace cadre::runtime {

// How the rows [0, total) of a nano-batch are dealt to the ranks of a group: rank r holds rows
// [begin(r), begin(r) + counts[r]). The even split gives the first total % parts ranks one row
// more.
struct RowSplit {
  std::vector<int64_t> counts;
  static RowSplit even(int64_t total, int parts);
  int64_t begin(int rank) const;
  int64_t total() const;
  int64_t max_count() const;
  bool uniform() const;  // every rank holds max_count() rows
};

// The tensor-parallel group of this rank plus what the layers need to know about it. `tp` spans
// the T ranks (nullptr: T = 1); `kv_replicas` spans the ranks that hold the same K/V heads when T
// exceeds model.num_kv_heads (nullptr otherwise). Both must outlive the group and every autograd
// graph built with it.
class TensorParallelGroup {
 public:
  TensorParallelGroup(comm::Transport* tp, comm::Transport* kv_replicas, bool sequence_parallel);
  int size() const { return tp_ ? tp_->size() : 1; }
  int rank() const { return tp_ ? tp_->rank() : 0; }
  bool sequence_parallel() const { return sequence_parallel_ && size() > 1; }
  comm::Transport& transport() const;
  comm::Transport* kv_replicas() const { return kv_replicas_; }

 private:
  comm::Transport* tp_;
  comm::Transport* kv_replicas_;
  bool sequence_parallel_;
};

// Forward identity, backward all-reduce over `group` (Megatron's f): the input of a
// column-parallel layer (without sequence parallelism), or a replicated weight whose gradient
// each rank sees only in part.
torch::Tensor copy_to_tensor_parallel(const torch::Tensor& x, comm::Transport* group);
// Forward all-reduce, backward identity (Megatron's g): the output of a row-parallel layer.
torch::Tensor reduce_from_tensor_parallel(const torch::Tensor& x, comm::Transport* group);
// Sequence parallelism: forward all-gather of rows (this rank's split.counts[rank] rows in, all
// split.total() rows out, in rank order), backward reduce-scatter.
torch::Tensor gather_rows(const torch::Tensor& x, comm::Transport* group, const RowSplit& split);
// Forward reduce-scatter of rows (all rows in, the sum of this rank's rows out), backward
// all-gather.
torch::Tensor reduce_scatter_rows(const torch::Tensor& x, comm::Transport* group,
                                  const RowSplit& split);

// Sum over rows with a target of -log softmax(logits)[target], where `logits` holds this rank's
// vocabulary columns [vocab_begin, vocab_begin + logits.size(1)) of every row and the other ranks
// of `group` the rest; kIgnoreTarget rows add 0. The same value on every rank; the full logits
// are never gathered (max, sum of exponentials and the target's logit are reduced per row).
// Differentiable in `logits`.
torch::Tensor vocab_parallel_cross_entropy_sum(const torch::Tensor& logits,
                                               const torch::Tensor& targets, int64_t vocab_begin,
                                               comm::Transport* group);

// In-place sum of a tensor over `group` (blocking on MPI; stream-ordered on NCCL).
void all_reduce_tensor(torch::Tensor& x, comm::Transport& group);
// Every rank's equally shaped `x` concatenated along dim 0 in rank order.
torch::Tensor all_gather_tensor(const torch::Tensor& x, comm::Transport& group);

}  // namespace cadre::runtime
