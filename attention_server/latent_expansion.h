// Multi-head latent attention's per-head key/value expansion (DeepSeek-V2/V3's kv_b_proj) as
// plain tensor math, so that an attention server can expand the compact latent it received
// (CAD's `latent` shipping, docs/latent_attention.md) and return the latent's gradient and the
// up-projection's weight gradient in backward. Weight-free of any module: the caller passes the
// weight (this rank's head group of the layer's up-projection, in the compute dtype).
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace cadre::attention_server {

// The widths of one layer's latent and of the heads it expands to.
struct LatentLayout {
  int64_t latent_dim = 0;  // c, the normalised K/V latent (model.kv_latent_dim, or its TPLA slice)
  int64_t nope_dim = 0;    // per-head non-rotary key part (model.head_dim)
  int64_t rope_dim = 0;    // decoupled rotary key, shared by all heads (model.rope_head_dim)
  int64_t v_dim = 0;       // per-head value (model.v_head_dim)
  // What one token ships: [c ; rotated rotary key].
  int64_t row_width() const { return latent_dim + rope_dim; }
  int64_t qk_dim() const { return nope_dim + rope_dim; }
};

// latent: [rows, 1, latent_dim + rope_dim] ([c ; k_rope], k_rope already rotated);
// w: [heads * (nope_dim + v_dim), latent_dim], head h's rows [h*(nope+v), h*(nope+v) + nope) make
// its key part and the next v_dim rows its value (DeepSeek's kv_b_proj layout).
// Returns k [rows, heads, nope_dim + rope_dim] (the rotary key broadcast to every head) and
// v [rows, heads, v_dim], in latent's dtype.
struct ExpandedKv {
  torch::Tensor k, v;
};
ExpandedKv expand_latent(const LatentLayout& layout, const torch::Tensor& latent,
                         const torch::Tensor& w);

// The backward of expand_latent: from dk, dv (shaped like its outputs) the gradient of the
// latent rows (dc = sum over heads of dk_nope W_UK + dv W_UV; d k_rope = sum over heads of the
// rotary part of dk) and of w (dkv^T c), both accumulated in fp32 and returned in fp32 (fp64
// for fp64 inputs, so that the float64 reference path keeps full precision). Throws
// cadre::Error naming the expected shape when latent, w, dk or dv do not fit `layout`.
struct LatentGrads {
  torch::Tensor dlatent;  // [rows, 1, latent_dim + rope_dim], fp32 (fp64 for fp64 inputs)
  torch::Tensor dw;       // like w, fp32 (fp64 for fp64 inputs)
};
LatentGrads expand_latent_backward(const LatentLayout& layout, const torch::Tensor& latent,
                                   const torch::Tensor& w, const torch::Tensor& dk,
                                   const torch::Tensor& dv);

}  // namespace cadre::attention_server
