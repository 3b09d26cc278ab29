// Core attention of one layer over a rank's local tokens, differentiable through LibTorch
// autograd: `cad` dispatches CA-tasks to attention servers per the step's Plan; `colocated`
// computes each rank's own documents locally. Same interface, same numbers.
#pragma once

#include <torch/types.h>

#include <memory>

#include "attention_server/kernel.h"
#include "attention_server/latent_expansion.h"
#include "comm/transport.h"
#include "scheduler/plan.h"

namespace cadre::runtime {

// q: [local_tokens, heads, head_dim]; k: [local_tokens, kv_heads, head_dim]; v: [local_tokens,
// kv_heads, v_head_dim] (v_head_dim may differ from head_dim), rows in this rank's Layout order
// (Plan::layout). Returns the attention output [local_tokens, heads, v_head_dim]. Backward
// (through autograd) returns dq, dk, dv. A dedicated server rank (no local tokens) passes empty
// tensors and serves its batch inside the call.
// A CAD op built with a LatentLayout takes (q, latent, w) instead: q [local_tokens, heads,
// nope + rope], latent [local_tokens, 1, latent + rope], w [heads * (nope + v_dim), latent]
// (attention_server::CadDispatch, latent mode); it returns [local_tokens, heads, v_dim] and
// backward gives dq, dlatent and dw (this rank's server's part of the weight gradient).
class CoreAttentionOp {
 public:
  virtual ~CoreAttentionOp() = default;
  virtual torch::Tensor operator()(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v) = 0;
};

// Dispatches through `transport` (which must span Plan::world_size ranks). The plan, transport
// and kernel must outlive the op and every autograd graph built with it.
std::unique_ptr<CoreAttentionOp> make_cad_attention(const scheduler::Plan& plan,
                                                    comm::Transport& transport,
                                                    attention_server::CoreAttentionKernel& kernel,
                                                    double softmax_scale = 0,
                                                    const attention_server::LatentLayout* latent =
                                                        nullptr);

// Local attention of this rank's documents. Requires that no document spans ranks (throws
// cadre::Error naming the document otherwise; use make_cad_attention with plan_colocated then).
std::unique_ptr<CoreAttentionOp> make_colocated_attention(
    const scheduler::Layout& layout, int rank, attention_server::CoreAttentionKernel& kernel,
    double softmax_scale = 0);

}  // namespace cadre::runtime
