// The tensor-parallel ops as LibTorch autograd functions over comm::Transport collectives.
#include "runtime/tensor_parallel.h"

#include <torch/torch.h>

#include <algorithm>

#include "common/error.h"
#include "runtime/model.h"

namespace cadre::runtime {

RowSplit RowSplit::even(int64_t total, int parts) {
  CADRE_CHECK(parts >= 1 && total >= 0, "RowSplit::even of ", total, " rows over ", parts,
              " ranks; accepted: rows >= 0, ranks >= 1");
  RowSplit split;
  for (int r = 0; r < parts; ++r) split.counts.push_back(total / parts + (r < total % parts));
  return split;
}

int64_t RowSplit::begin(int rank) const {
  int64_t b = 0;
  for (int r = 0; r < rank; ++r) b += counts[r];
  return b;
}

int64_t RowSplit::total() const { return begin(static_cast<int>(counts.size())); }

int64_t RowSplit::max_count() const {
  return counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
}

bool RowSplit::uniform() const {
  const int64_t m = max_count();
  for (int64_t c : counts) {
    if (c != m) return false;
  }
  return true;
}

TensorParallelGroup::TensorParallelGroup(comm::Transport* tp, comm::Transport* kv_replicas,
                                         bool sequence_parallel)
    : tp_(tp), kv_replicas_(kv_replicas), sequence_parallel_(sequence_parallel) {}

comm::Transport& TensorParallelGroup::transport() const {
  CADRE_CHECK(tp_ != nullptr, "this rank has no tensor-parallel group (tensor_parallel = 1)");
  return *tp_;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

comm::DataType comm_type(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat:
      return comm::DataType::kFloat32;
    case torch::kBFloat16:
      return comm::DataType::kBFloat16;
    case torch::kHalf:
      return comm::DataType::kFloat16;
    default:
      CADRE_FAIL("tensor-parallel collectives carry fp32, bf16 or fp16 tensors; got ", type);
  }
}

comm::Transport* group_of(AutogradContext* ctx) {
  return reinterpret_cast<comm::Transport*>(ctx->saved_data["group"].toInt());
}

torch::Tensor all_reduced(const torch::Tensor& x, comm::Transport& group) {
  torch::Tensor out = x.contiguous().clone();
  all_reduce_tensor(out, group);
  return out;
}

// Rows of every rank, each padded to split.max_count() rows, gathered, unpadded.
torch::Tensor gather_rows_now(const torch::Tensor& x, comm::Transport& group,
                              const RowSplit& split) {
  const int parts = group.size();
  const int64_t chunk = split.max_count();
  auto shape = x.sizes().vec();
  CADRE_CHECK(x.size(0) == split.counts[group.rank()], "gather_rows: rank ", group.rank(),
              " holds ", x.size(0), " rows but the split gives it ", split.counts[group.rank()]);
  torch::Tensor send = x.contiguous();
  if (!split.uniform()) {
    shape[0] = chunk;
    send = torch::zeros(shape, x.options());
    send.narrow(0, 0, x.size(0)).copy_(x);
  }
  shape[0] = chunk * parts;
  torch::Tensor recv = torch::empty(shape, x.options());
  if (chunk > 0) {
    group.all_gather_async(send.data_ptr(), recv.data_ptr(), send.numel() * send.element_size())
        ->wait();
  }
  if (split.uniform()) return recv;
  std::vector<torch::Tensor> pieces;
  for (int r = 0; r < parts; ++r) pieces.push_back(recv.narrow(0, r * chunk, split.counts[r]));
  return torch::cat(pieces, 0);
}

// All rows in; the sum over ranks of this rank's rows out.
torch::Tensor reduce_scatter_rows_now(const torch::Tensor& x, comm::Transport& group,
                                      const RowSplit& split) {
  const int parts = group.size();
  const int64_t chunk = split.max_count();
  CADRE_CHECK(x.size(0) == split.total(), "reduce_scatter_rows: ", x.size(0),
              " rows but the split covers ", split.total());
  auto shape = x.sizes().vec();
  torch::Tensor send = x.contiguous();
  if (!split.uniform()) {
    shape[0] = chunk * parts;
    send = torch::zeros(shape, x.options());
    int64_t from = 0;
    for (int r = 0; r < parts; ++r) {
      send.narrow(0, r * chunk, split.counts[r]).copy_(x.narrow(0, from, split.counts[r]));
      from += split.counts[r];
    }
  }
  shape[0] = chunk;
  torch::Tensor recv = torch::empty(shape, x.options());
  if (chunk > 0) {
    group
        .reduce_scatter_sum(send.data_ptr(), recv.data_ptr(), recv.numel(),
                            comm_type(x.scalar_type()))
        ->wait();
  }
  return recv.narrow(0, 0, split.counts[group.rank()]);
}

class CopyToGroup : public torch::autograd::Function<CopyToGroup> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, comm::Transport* group) {
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {all_reduced(grads[0], *group_of(ctx)), torch::Tensor()};
  }
};

class ReduceFromGroup : public torch::autograd::Function<ReduceFromGroup> {
 public:
  static torch::Tensor forward(AutogradContext*, torch::Tensor x, comm::Transport* group) {
    return all_reduced(x, *group);
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    return {grads[0], torch::Tensor()};
  }
};

class GatherRows : public torch::autograd::Function<GatherRows> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, comm::Transport* group,
                               std::vector<int64_t> counts) {
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    ctx->saved_data["counts"] = counts;
    return gather_rows_now(x, *group, RowSplit{counts});
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    RowSplit split{ctx->saved_data["counts"].toIntVector()};
    return {reduce_scatter_rows_now(grads[0], *group_of(ctx), split), torch::Tensor(),
            torch::Tensor()};
  }
};

class ReduceScatterRows : public torch::autograd::Function<ReduceScatterRows> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, comm::Transport* group,
                               std::vector<int64_t> counts) {
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    ctx->saved_data["counts"] = counts;
    return reduce_scatter_rows_now(x, *group, RowSplit{counts});
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    RowSplit split{ctx->saved_data["counts"].toIntVector()};
    return {gather_rows_now(grads[0], *group_of(ctx), split), torch::Tensor(), torch::Tensor()};
  }
};

// Forward: per row, the global max (all-gather of the local maxima), the global sum of
// exp(logit - max) and the target's logit (all-reduce); loss = log(sum) + max - target logit.
// Backward: softmax of the local columns minus the one-hot of a target inside them.
class VocabParallelCrossEntropy : public torch::autograd::Function<VocabParallelCrossEntropy> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor logits, torch::Tensor targets,
                               int64_t vocab_begin, comm::Transport* group) {
    auto x = logits.to(torch::kFloat);
    const int64_t rows = x.size(0), width = x.size(1);
    auto local_max = rows > 0 ? std::get<0>(x.max(1)) : torch::zeros({0}, x.options());
    auto row_max = std::get<0>(all_gather_tensor(local_max.unsqueeze(0), *group).max(0));
    auto shifted = x - row_max.unsqueeze(1);
    auto exp = shifted.exp();
    auto local = targets - vocab_begin;
    auto inside = targets.ne(kIgnoreTarget) & local.ge(0) & local.lt(width);
    auto picked =
        shifted.gather(1, local.clamp(0, std::max<int64_t>(width - 1, 0)).unsqueeze(1)).squeeze(1) *
        inside.to(torch::kFloat);
    // One all-reduce for both per-row sums.
    auto sums = torch::stack({exp.sum(1), picked}, 0).contiguous();
    all_reduce_tensor(sums, *group);
    auto valid = targets.ne(kIgnoreTarget).to(torch::kFloat);
    auto loss_rows = (sums[0].log() - sums[1]) * valid;
    auto softmax = exp / sums[0].unsqueeze(1);
    ctx->save_for_backward({softmax, local, inside, valid});
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits.scalar_type());
    return loss_rows.sum();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto grad = saved[0].clone();
    const int64_t width = grad.size(1);
    if (grad.numel() > 0) {
      auto one_hot = torch::zeros_like(grad).scatter_(1, saved[1].clamp(0, width - 1).unsqueeze(1),
                                                      saved[2].to(torch::kFloat).unsqueeze(1));
      grad.sub_(one_hot);
    }
    grad.mul_(saved[3].unsqueeze(1) * grads[0]);
    const auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {grad.to(dtype), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

void all_reduce_tensor(torch::Tensor& x, comm::Transport& group) {
  CADRE_CHECK(x.is_contiguous(), "all_reduce_tensor needs a contiguous tensor");
  if (group.size() == 1 || x.numel() == 0) return;
  group.all_reduce_sum(x.data_ptr(), x.numel(), comm_type(x.scalar_type()))->wait();
}

torch::Tensor all_gather_tensor(const torch::Tensor& x, comm::Transport& group) {
  auto send = x.contiguous();
  auto shape = send.sizes().vec();
  shape[0] *= group.size();
  auto recv = torch::empty(shape, send.options());
  if (send.numel() > 0) {
    group.all_gather_async(send.data_ptr(), recv.data_ptr(), send.numel() * send.element_size())
        ->wait();
  }
  return recv;
}

torch::Tensor copy_to_tensor_parallel(const torch::Tensor& x, comm::Transport* group) {
  if (group == nullptr || group->size() == 1) return x;
  return CopyToGroup::apply(x, group);
}

torch::Tensor reduce_from_tensor_parallel(const torch::Tensor& x, comm::Transport* group) {
  if (group == nullptr || group->size() == 1) return x;
  return ReduceFromGroup::apply(x, group);
}

torch::Tensor gather_rows(const torch::Tensor& x, comm::Transport* group, const RowSplit& split) {
  if (group == nullptr || group->size() == 1) return x;
  return GatherRows::apply(x, group, split.counts);
}

torch::Tensor reduce_scatter_rows(const torch::Tensor& x, comm::Transport* group,
                                  const RowSplit& split) {
  if (group == nullptr || group->size() == 1) return x;
  return ReduceScatterRows::apply(x, group, split.counts);
}

torch::Tensor vocab_parallel_cross_entropy_sum(const torch::Tensor& logits,
                                               const torch::Tensor& targets, int64_t vocab_begin,
                                               comm::Transport* group) {
  if (group == nullptr || group->size() == 1) return cross_entropy_sum(logits, targets);
  CADRE_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
              "vocab-parallel cross-entropy needs logits [rows, vocab shard] and targets [rows];"
              " got ",
              logits.sizes(), " and ", targets.sizes());
  return VocabParallelCrossEntropy::apply(logits, targets, vocab_begin, group);
}

}  // namespace cadre::runtime
