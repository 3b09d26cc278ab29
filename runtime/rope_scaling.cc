// Rotary frequencies with optional Llama-3-style wavelength scaling.
#include "runtime/rope_scaling.h"

#include <cmath>

#include "common/error.h"

namespace cadre::runtime {

std::vector<double> rope_inverse_frequencies(const config::ModelConfig& m) {
  const int64_t dim = m.head_dim(), half = dim / 2;
  CADRE_CHECK(dim % 2 == 0 && dim > 0, "rotary embeddings need an even head_dim; got ", dim);
  std::vector<double> f(half);
  for (int64_t i = 0; i < half; ++i) {
    f[i] = std::pow(m.rope_theta(), -2.0 * static_cast<double>(i) / static_cast<double>(dim));
  }
  if (m.rope_scaling() == "none") return f;
  CADRE_CHECK(m.rope_scaling() == "llama3", "model.rope_scaling=\"", m.rope_scaling(),
              "\" is not a known scaling; accepted: none, llama3");
  const double s = m.rope_scaling_factor(), lo = m.rope_low_freq_factor();
  const double hi = m.rope_high_freq_factor();
  const double original = static_cast<double>(m.rope_original_max_positions());
  CADRE_CHECK(s > 0 && lo > 0 && hi > lo && original > 0,
              "model.rope_scaling=llama3 needs rope_scaling_factor > 0, 0 < rope_low_freq_factor "
              "< rope_high_freq_factor and rope_original_max_positions > 0; got factor ",
              s, ", low ", lo, ", high ", hi, ", original ", original);
  const double kPi = 3.14159265358979323846;
  for (double& x : f) {
    const double wavelength = 2 * kPi / x;
    if (wavelength < original / hi) continue;  // short wavelengths: unchanged
    if (wavelength > original / lo) {          // long wavelengths: interpolated positions
      x /= s;
      continue;
    }
    const double a = (original / wavelength - lo) / (hi - lo);
    x = (1 - a) * x / s + a * x;
  }
  return f;
}

RopeTables rope_tables(const torch::Tensor& positions,
                       const std::vector<double>& inverse_frequencies) {
  auto inv = torch::tensor(inverse_frequencies, torch::TensorOptions().dtype(torch::kDouble))
                 .to(positions.device());
  // Angles in double so that long positions keep their precision.
  auto angles = positions.to(torch::kDouble).unsqueeze(1) * inv.unsqueeze(0);
  return {angles.cos().to(torch::kFloat).unsqueeze(1), angles.sin().to(torch::kFloat).unsqueeze(1)};
}

}  // namespace cadre::runtime
