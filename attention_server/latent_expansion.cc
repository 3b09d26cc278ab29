// MLA's server-side K/V expansion (kv_b_proj applied to the shipped latent rows) and its backward,
// as three matmuls: k_nope | v = c W^T per head, the rotary key broadcast to every head.
#include "attention_server/latent_expansion.h"

#include <ATen/ATen.h>

#include "common/error.h"

namespace cadre::attention_server {

namespace {

// Heads of `w` for `layout`, after checking latent and w against it.
int64_t check_latent_and_weight(const LatentLayout& layout, const torch::Tensor& latent,
                                const torch::Tensor& w) {
  CADRE_CHECK(layout.latent_dim > 0 && layout.nope_dim > 0 && layout.rope_dim >= 0 &&
                  layout.v_dim > 0,
              "latent layout needs latent_dim, nope_dim, v_dim > 0 and rope_dim >= 0; got latent ",
              layout.latent_dim, ", nope ", layout.nope_dim, ", rope ", layout.rope_dim, ", v ",
              layout.v_dim);
  CADRE_CHECK(latent.dim() == 3 && latent.size(1) == 1 && latent.size(2) == layout.row_width(),
              "latent rows must be [rows, 1, latent_dim + rope_dim = ", layout.row_width(),
              "]; got ", latent.sizes());
  const int64_t per_head = layout.nope_dim + layout.v_dim;
  CADRE_CHECK(w.dim() == 2 && w.size(1) == layout.latent_dim && w.size(0) > 0 &&
                  w.size(0) % per_head == 0,
              "the up-projection weight must be [heads * (nope_dim + v_dim) = heads * ", per_head,
              ", latent_dim = ", layout.latent_dim, "]; got ", w.sizes());
  CADRE_CHECK(w.scalar_type() == latent.scalar_type() && w.device() == latent.device(),
              "latent rows and the up-projection weight must share dtype and device; got ",
              latent.scalar_type(), " on ", latent.device(), " and ", w.scalar_type(), " on ",
              w.device());
  return w.size(0) / per_head;
}

// fp32 for fp32 and narrower inputs, fp64 for fp64 (the reference path keeps full precision).
torch::ScalarType accumulation_dtype(const torch::Tensor& t) {
  return t.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

}  // namespace

ExpandedKv expand_latent(const LatentLayout& layout, const torch::Tensor& latent,
                         const torch::Tensor& w) {
  const int64_t heads = check_latent_and_weight(layout, latent, w);
  const int64_t rows = latent.size(0);
  auto flat = latent.select(1, 0);                          // [rows, latent + rope]
  auto c = flat.narrow(1, 0, layout.latent_dim);            // [rows, latent]
  auto k_rope = flat.narrow(1, layout.latent_dim, layout.rope_dim);  // [rows, rope]
  auto kv = torch::matmul(c, w.t()).view({rows, heads, layout.nope_dim + layout.v_dim});
  ExpandedKv out;
  out.k = torch::cat({kv.narrow(2, 0, layout.nope_dim),
                      k_rope.unsqueeze(1).expand({rows, heads, layout.rope_dim})},
                     2);
  out.v = kv.narrow(2, layout.nope_dim, layout.v_dim).contiguous();
  return out;
}

LatentGrads expand_latent_backward(const LatentLayout& layout, const torch::Tensor& latent,
                                   const torch::Tensor& w, const torch::Tensor& dk,
                                   const torch::Tensor& dv) {
  const int64_t heads = check_latent_and_weight(layout, latent, w);
  const int64_t rows = latent.size(0);
  CADRE_CHECK(dk.dim() == 3 && dk.size(0) == rows && dk.size(1) == heads &&
                  dk.size(2) == layout.qk_dim(),
              "dk must be [rows = ", rows, ", heads = ", heads, ", nope_dim + rope_dim = ",
              layout.qk_dim(), "]; got ", dk.sizes());
  CADRE_CHECK(dv.dim() == 3 && dv.size(0) == rows && dv.size(1) == heads &&
                  dv.size(2) == layout.v_dim,
              "dv must be [rows = ", rows, ", heads = ", heads, ", v_dim = ", layout.v_dim,
              "]; got ", dv.sizes());
  const auto acc = accumulation_dtype(latent);
  // d(kv) in kv_b_proj's layout: per head [dk_nope ; dv], flattened over heads.
  auto dkv = torch::cat({dk.narrow(2, 0, layout.nope_dim).to(acc), dv.to(acc)}, 2)
                 .reshape({rows, heads * (layout.nope_dim + layout.v_dim)});
  auto c = latent.select(1, 0).narrow(1, 0, layout.latent_dim).to(acc);
  auto dc = torch::matmul(dkv, w.to(acc));                                          // [rows, latent]
  auto dk_rope = dk.narrow(2, layout.nope_dim, layout.rope_dim).to(acc).sum(1);    // [rows, rope]
  LatentGrads grads;
  grads.dlatent = torch::cat({dc, dk_rope}, 1).unsqueeze(1);
  grads.dw = torch::matmul(dkv.t(), c);  // [heads * (nope + v), latent]
  return grads;
}

}  // namespace cadre::attention_server
