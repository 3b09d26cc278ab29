// The CAD and colocated core-attention ops as LibTorch autograd functions.
#include <torch/torch.h>

#include <algorithm>
#include <memory>

#include "attention_server/dispatch.h"
#include "common/error.h"
#include "runtime/attention_op.h"

namespace cadre::runtime {

namespace {

using attention_server::CadDispatch;
using attention_server::CoreAttentionKernel;
using attention_server::ServerState;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Forward dispatches Q/K/V to the servers; backward dispatches dO and gathers dQ, dK, dV. The
// server half's tensors ride in the autograd context, so one dispatch serves every layer.
// In latent mode k and v are the latent rows and the weight w, the state keeps the latent prefix
// rows and w, and the gradients are dq, dlatent, dw: the same function.
class CadFunction : public torch::autograd::Function<CadFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor q, torch::Tensor k,
                               torch::Tensor v, CadDispatch* dispatch) {
    ServerState state;
    torch::Tensor out = dispatch->forward(q, k, v, &state);
    ctx->saved_data["dispatch"] = reinterpret_cast<int64_t>(dispatch);
    ctx->save_for_backward({state.q, state.k, state.v, state.out, state.lse});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto* dispatch = reinterpret_cast<CadDispatch*>(ctx->saved_data["dispatch"].toInt());
    auto saved = ctx->get_saved_variables();
    ServerState state{saved[0], saved[1], saved[2], saved[3], saved[4]};
    auto grads = dispatch->backward(grad_outputs[0], state);
    return {grads[0], grads[1], grads[2], torch::Tensor()};
  }
};

class CadAttention : public CoreAttentionOp {
 public:
  CadAttention(const scheduler::Plan& plan, comm::Transport& transport,
               CoreAttentionKernel& kernel, double softmax_scale,
               const attention_server::LatentLayout* latent)
      : dispatch_(plan, transport, kernel, softmax_scale, latent) {}
  torch::Tensor operator()(const torch::Tensor& q, const torch::Tensor& k,
                           const torch::Tensor& v) override {
    return CadFunction::apply(q, k, v, &dispatch_);
  }

 private:
  CadDispatch dispatch_;
};

// `batch` with its cumulative-length tensors on `device` (host copies and maxima as they are).
attention_server::VarlenBatch on_device(const attention_server::VarlenBatch& batch,
                                        const torch::Device& device) {
  attention_server::VarlenBatch moved = batch;
  moved.cu_seqlens_q = batch.cu_seqlens_q.to(device);
  moved.cu_seqlens_k = batch.cu_seqlens_k.to(device);
  return moved;
}

// Local varlen attention over this rank's own documents.
class ColocatedFunction : public torch::autograd::Function<ColocatedFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor q, torch::Tensor k,
                               torch::Tensor v, CoreAttentionKernel* kernel,
                               const attention_server::VarlenBatch* batch, double scale) {
    auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
    auto result = kernel->forward(qc, kc, vc, on_device(*batch, q.device()), scale);
    ctx->saved_data["kernel"] = reinterpret_cast<int64_t>(kernel);
    ctx->saved_data["batch"] = reinterpret_cast<int64_t>(batch);
    ctx->saved_data["scale"] = scale;
    ctx->save_for_backward({qc, kc, vc, result.out, result.lse});
    return result.out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto* kernel = reinterpret_cast<CoreAttentionKernel*>(ctx->saved_data["kernel"].toInt());
    auto* batch =
        reinterpret_cast<const attention_server::VarlenBatch*>(ctx->saved_data["batch"].toInt());
    auto saved = ctx->get_saved_variables();
    auto grads = kernel->backward(grad_outputs[0].contiguous(), saved[0], saved[1], saved[2],
                                  saved[3], saved[4], on_device(*batch, saved[0].device()),
                                  ctx->saved_data["scale"].toDouble());
    return {grads.dq, grads.dk, grads.dv, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

class ColocatedAttention : public CoreAttentionOp {
 public:
  ColocatedAttention(const scheduler::Layout& layout, int rank, CoreAttentionKernel& kernel,
                     double softmax_scale)
      : kernel_(kernel), softmax_scale_(softmax_scale) {
    CADRE_CHECK(rank >= 0 && rank < layout.num_ranks, "colocated attention: rank ", rank,
                " owns no tokens in a layout of ", layout.num_ranks, " ranks");
    local_tokens_ = layout.tokens_per_rank[rank];
    // This rank's documents in local-row order; each must be whole and contiguous.
    std::vector<std::pair<int64_t, int64_t>> docs;  // (local_row, length)
    for (size_t d = 0; d < layout.documents.size(); ++d) {
      const auto& doc = layout.documents[d];
      bool here = false;
      for (const auto& p : doc.pieces) here |= p.rank == rank;
      if (!here) continue;
      CADRE_CHECK(doc.pieces.size() == 1, "colocated attention: document ", d,
                  " spans ranks; use make_cad_attention with plan_colocated for split documents");
      docs.emplace_back(doc.pieces[0].local_row, doc.length_tokens);
    }
    std::sort(docs.begin(), docs.end());
    std::vector<int64_t> lengths;
    int64_t row = 0;
    for (const auto& [local_row, length] : docs) {
      CADRE_CHECK(local_row == row, "colocated attention: rank ", rank,
                  " has a gap or overlap at local row ", row);
      row += length;
      lengths.push_back(length);
    }
    CADRE_CHECK(row == local_tokens_, "colocated attention: rank ", rank, "'s documents cover ",
                row, " of its ", local_tokens_, " tokens");
    batch_ = attention_server::whole_documents_batch(lengths);
  }

  torch::Tensor operator()(const torch::Tensor& q, const torch::Tensor& k,
                           const torch::Tensor& v) override {
    CADRE_CHECK(q.dim() == 3 && q.size(0) == local_tokens_ && k.dim() == 3 &&
                    k.size(0) == local_tokens_ && v.dim() == 3 && v.size(0) == local_tokens_ &&
                    v.size(1) == k.size(1),
                "colocated attention: expected q [", local_tokens_, ", heads, Dqk], k [",
                local_tokens_, ", kv_heads, Dqk] and v [", local_tokens_,
                ", kv_heads, Dv]; got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
    return ColocatedFunction::apply(q, k, v, &kernel_, &batch_, softmax_scale_);
  }

 private:
  CoreAttentionKernel& kernel_;
  double softmax_scale_;
  int64_t local_tokens_ = 0;
  attention_server::VarlenBatch batch_;
};

}  // namespace

std::unique_ptr<CoreAttentionOp> make_cad_attention(const scheduler::Plan& plan,
                                                    comm::Transport& transport,
                                                    attention_server::CoreAttentionKernel& kernel,
                                                    double softmax_scale,
                                                    const attention_server::LatentLayout* latent) {
  return std::make_unique<CadAttention>(plan, transport, kernel, softmax_scale, latent);
}

std::unique_ptr<CoreAttentionOp> make_colocated_attention(
    const scheduler::Layout& layout, int rank, attention_server::CoreAttentionKernel& kernel,
    double softmax_scale) {
  return std::make_unique<ColocatedAttention>(layout, rank, kernel, softmax_scale);
}

}  // namespace cadre::runtime
