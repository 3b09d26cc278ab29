// The independent reference of the CAD attention tests: dense causal attention of one whole
// document through plain LibTorch ops (autograd gives its gradients).
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace cadre::runtime::testing {

// q: [n, heads, D]; k, v: [n, kv_heads, D]; returns [n, heads, D].
inline torch::Tensor reference_attention(const torch::Tensor& q, const torch::Tensor& k,
                                         const torch::Tensor& v) {
  const int64_t n = q.size(0), group = q.size(1) / k.size(1);
  auto qh = q.transpose(0, 1);
  auto kh = k.repeat_interleave(group, 1).transpose(0, 1);
  auto vh = v.repeat_interleave(group, 1).transpose(0, 1);
  auto scores = torch::matmul(qh, kh.transpose(1, 2)) / std::sqrt(static_cast<double>(q.size(2)));
  scores = scores.masked_fill(torch::ones({n, n}, torch::kBool).triu(1),
                              -std::numeric_limits<double>::infinity());
  return torch::matmul(torch::softmax(scores, -1), vh).transpose(0, 1);
}

}  // namespace cadre::runtime::testing
