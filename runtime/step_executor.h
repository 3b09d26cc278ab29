// The forward and backward of one micro-batch, scheduled layer by layer by hand rather than by
// the autograd engine, so that (1) two nano-batches can ping-pong: one's core-attention
// all-to-all runs on the communication stream while the other's linear layers or attention run
// on the compute stream, in both directions; (2) the non-attention layers can be recomputed in
// backward (training.recompute = linear) while core attention never is; (3) the LM head and loss
// run in chunks. Each layer is two autograd segments around core attention:
//   pre  (layer input x -> q, k, v: RMSNorm, projections, RoPE)
//   core attention (AttentionPhases: send, serve, finish in each direction)
//   post (x, o -> next x: output projection, residual, RMSNorm, SwiGLU MLP, residual)
// and backward calls autograd on each segment with the gradient of its outputs. Parameters
// accumulate their fp32 gradients across segments and nano-batches.
#pragma once

#include <torch/types.h>

#include <functional>
#include <memory>
#include <vector>

#include "attention_server/dispatch.h"
#include "attention_server/kernel.h"
#include "comm/timeline.h"
#include "runtime/model.h"
#include "scheduler/config.pb.h"

namespace cadre::runtime {

// Core attention of one layer of one nano-batch, in the three phases of each direction. Every
// rank calls the phases of all its layers and nano-batches in the same order.
class AttentionPhases {
 public:
  virtual ~AttentionPhases() = default;
  virtual void forward_send(const torch::Tensor& q, const torch::Tensor& k,
                            const torch::Tensor& v) = 0;
  virtual void forward_serve() = 0;
  virtual torch::Tensor forward_finish() = 0;
  virtual void backward_send(const torch::Tensor& dout) = 0;
  virtual void backward_serve() = 0;
  // dq, dk, dv like q, k, v (the three inputs of forward_send, whatever they are: CAD's latent
  // mode gives dq, dlatent, dw). v's head dim, and so out's and dout's, may differ from q's.
  virtual std::vector<torch::Tensor> backward_finish() = 0;
};

// CAD: the phases of `dispatch` (which must outlive the phases).
std::unique_ptr<AttentionPhases> make_cad_phases(attention_server::CadDispatch& dispatch);

// Colocated: this rank's own documents (`batch`, from attention_server::whole_documents_batch)
// with `kernel`, no dispatch.
std::unique_ptr<AttentionPhases> make_colocated_phases(const attention_server::VarlenBatch& batch,
                                                       attention_server::CoreAttentionKernel& kernel,
                                                       comm::Timeline* timeline);

// One nano-batch of this rank: its tokens and how its core attention runs.
struct NanoBatch {
  torch::Tensor tokens;     // int64 [n] on the model's device (n may be 0)
  torch::Tensor positions;  // int64 [n], position of each token in its document
  torch::Tensor targets;    // int64 [n], next token or kIgnoreTarget
  std::function<std::unique_ptr<AttentionPhases>()> make_attention;  // one per layer
};

struct ExecutorOptions {
  bool recompute = false;          // recompute pre/post segments in backward
  int64_t loss_chunk_tokens = 0;   // 0: the whole nano-batch at once
  double loss_scale = 1.0;         // backward runs on loss_sum * loss_scale
  comm::Timeline* timeline = nullptr;
  // Called with layers L-1, ..., 0, each once that layer's parameters have received their last
  // gradient of this run (every nano-batch's backward through it) and the next layer's
  // core-attention sends have been issued: the trainer starts their data-parallel all-reduce
  // there. Empty: not called.
  std::function<void(int layer)> layer_gradients_ready;
  // Query and K/V heads a dedicated server's empty inputs carry (its head group under tensor
  // parallelism); 0: model_config's.
  int64_t server_heads = 0, server_kv_heads = 0;
  // Head dims of a dedicated server's empty inputs: q and k (server_qk_dim), v and dout
  // (server_v_dim; MLA's expanded form has 192 and 128); 0: model_config's head_dim.
  int64_t server_qk_dim = 0, server_v_dim = 0;
  // Called before the forward first uses the parameters of a layer: -1 before the embedding,
  // l before layer l, num_layers before the head (the sharded optimizer's gathers finish
  // there). Empty: not called.
  std::function<void(int layer)> parameters_needed;
};

// Runs forward and backward of `nanos` (1 = no overlap; 2 = ping-pong) through `model`,
// accumulating parameter gradients. Returns the summed loss of every nano-batch (fp32, not
// scaled). With model == nullptr the rank is a dedicated attention server: it runs only the
// attention phases, in the same order, on empty inputs shaped by `model_config` in `dtype` on
// `device`; it returns 0.
double run_forward_backward(const LlamaModel* model, const config::ModelConfig& model_config,
                            torch::ScalarType dtype, const torch::Device& device,
                            std::vector<NanoBatch>& nanos, const ExecutorOptions& options);

}  // namespace cadre::runtime
