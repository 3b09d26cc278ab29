// Gathering and slicing tensor-parallel shards.
#include "runtime/parameter_shards.h"

#include "common/error.h"
#include "runtime/tensor_parallel.h"

namespace cadre::runtime {

torch::Tensor gather_whole(const NamedParameter& p, const torch::Tensor& shard,
                           comm::Transport* tp) {
  if (tp == nullptr || tp->size() == 1 || p.shard_parts == 1) return shard;
  // Every rank's shard, then one per slice index: slice i lives on ranks
  // [i * replicas, (i + 1) * replicas) (K/V heads replicated when T exceeds them).
  auto all = all_gather_tensor(shard.contiguous().unsqueeze(0), *tp);
  const int64_t replicas = tp->size() / p.shard_parts;
  std::vector<torch::Tensor> slices;
  for (int64_t i = 0; i < p.shard_parts; ++i) slices.push_back(all[i * replicas]);
  return torch::cat(slices, p.shard_dim);
}

torch::Tensor slice_shard(const NamedParameter& p, const torch::Tensor& whole) {
  CADRE_CHECK(whole.sizes().vec() == p.full_shape, "tensor '", p.name, "' is ", whole.sizes(),
              " but the model expects ", c10::IntArrayRef(p.full_shape));
  if (p.shard_parts == 1) return whole.clone();
  const int64_t width = whole.size(p.shard_dim) / p.shard_parts;
  return whole.narrow(p.shard_dim, p.shard_index * width, width).clone();
}

}  // namespace cadre::runtime
