// Whole tensors from tensor-parallel shards and back: checkpoints hold whole tensors, so a run
// saved under one grid resumes under another (docs/parallelism.md).
#pragma once

#include <torch/types.h>

#include "comm/transport.h"
#include "runtime/model.h"

namespace cadre::runtime {

// The whole tensor of which `shard` (a parameter's value, gradient or optimizer moment, shaped
// like p.value) is this rank's slice; collective over `tp` (the parameter's tensor-parallel
// group; nullptr or size 1: `shard` itself).
torch::Tensor gather_whole(const NamedParameter& p, const torch::Tensor& shard,
                           comm::Transport* tp);

// This rank's slice of `whole` for parameter p (a copy). Throws cadre::Error when `whole` is not
// shaped like the whole parameter.
torch::Tensor slice_shard(const NamedParameter& p, const torch::Tensor& whole);

}  // namespace cadre::runtime
