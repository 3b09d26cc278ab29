// Rotary frequencies of a model: theta^(-2i/head_dim), optionally rescaled by wavelength as
// Llama 3.1/3.2 do (model.rope_scaling "llama3"), and the cos/sin tables built from them.
#pragma once

#include <torch/types.h>

#include <vector>

#include "runtime/model.h"
#include "scheduler/config.pb.h"

namespace cadre::runtime {

// One inverse frequency per rotated pair i < head_dim / 2, in double. With "llama3", for the
// wavelength w = 2 pi / f of each frequency f, L = rope_original_max_positions, s =
// rope_scaling_factor, lo = rope_low_freq_factor, hi = rope_high_freq_factor:
//   w < L / hi: f;   w > L / lo: f / s;   otherwise (1 - a) f / s + a f with a = (L / w - lo) / (hi
//   - lo).
// Throws cadre::Error for an unknown rope_scaling or factors outside their ranges.
std::vector<double> rope_inverse_frequencies(const config::ModelConfig& model);

// cos and sin of position x inverse frequency, fp32 [tokens, 1, head_dim / 2], as rope_tables.
RopeTables rope_tables(const torch::Tensor& positions,
                       const std::vector<double>& inverse_frequencies);

}  // namespace cadre::runtime
