// The Megatron datasets a data config names (data.path, or data.blend's weighted prefixes),
// validated without reading them: no LibTorch, so the config loader (and its fuzz target) uses it.
#pragma once

#include <string>
#include <vector>

#include "scheduler/config.pb.h"

namespace cadre::runtime {

// data.path / data.blend of data.format "megatron" as (weight, prefix) pairs, each prefix's .idx
// and .bin checked to exist. Throws cadre::Error naming the field, the entry and what is accepted.
struct WeightedPrefix {
  double weight = 1;
  std::string prefix;
};
std::vector<WeightedPrefix> megatron_sources(const config::DataConfig& data);

}  // namespace cadre::runtime
