// The hand-scheduled forward/backward of one micro-batch: segments per layer, ping-pong order,
// optional recomputation, chunked loss. See step_executor.h for the segment structure.
#include "runtime/step_executor.h"

#include <torch/autograd.h>

#include <algorithm>
#include <string>

#include "common/error.h"

namespace cadre::runtime {
namespace {

class CadPhases : public AttentionPhases {
 public:
  explicit CadPhases(attention_server::CadDispatch& dispatch) : dispatch_(dispatch) {}
  void forward_send(const torch::Tensor& q, const torch::Tensor& k,
                    const torch::Tensor& v) override {
    flight_ = dispatch_.forward_send(q, k, v);
  }
  void forward_serve() override { dispatch_.forward_serve(&flight_, &state_); }
  torch::Tensor forward_finish() override { return dispatch_.forward_finish(&flight_); }
  void backward_send(const torch::Tensor& dout) override {
    flight_ = dispatch_.backward_send(dout);
  }
  void backward_serve() override { dispatch_.backward_serve(&flight_, state_); }
  std::vector<torch::Tensor> backward_finish() override {
    auto grads = dispatch_.backward_finish(&flight_);
    state_ = attention_server::ServerState{};  // the server's saved tensors are no longer needed
    return grads;
  }

 private:
  attention_server::CadDispatch& dispatch_;
  attention_server::Flight flight_;
  attention_server::ServerState state_;
};

class ColocatedPhases : public AttentionPhases {
 public:
  ColocatedPhases(const attention_server::VarlenBatch& batch,
                  attention_server::CoreAttentionKernel& kernel, comm::Timeline* timeline)
      : kernel_(kernel), timeline_(timeline), batch_(batch) {}
  void forward_send(const torch::Tensor& q, const torch::Tensor& k,
                    const torch::Tensor& v) override {
    q_ = q;
    k_ = k;
    v_ = v;
  }
  void forward_serve() override {
    const int span = timeline_ ? timeline_->begin_compute("attention fwd (local)") : -1;
    auto result = kernel_.forward(q_, k_, v_, batch_, 0.0);
    out_ = result.out;
    lse_ = result.lse;
    if (timeline_) timeline_->end_compute(span);
  }
  torch::Tensor forward_finish() override { return out_; }
  void backward_send(const torch::Tensor& dout) override { dout_ = dout.contiguous(); }
  void backward_serve() override {
    const int span = timeline_ ? timeline_->begin_compute("attention bwd (local)") : -1;
    auto g = kernel_.backward(dout_, q_, k_, v_, out_, lse_, batch_, 0.0);
    grads_ = {g.dq, g.dk, g.dv};
    q_ = k_ = v_ = out_ = lse_ = dout_ = torch::Tensor();
    if (timeline_) timeline_->end_compute(span);
  }
  std::vector<torch::Tensor> backward_finish() override { return std::move(grads_); }

 private:
  attention_server::CoreAttentionKernel& kernel_;
  comm::Timeline* timeline_;
  attention_server::VarlenBatch batch_;
  torch::Tensor q_, k_, v_, out_, lse_, dout_;
  std::vector<torch::Tensor> grads_;
};

struct LayerState {
  torch::Tensor x;                 // the layer's input (a leaf requiring grad once needed)
  std::vector<torch::Tensor> qkv;  // pre segment outputs, with their graph (kept mode)
  torch::Tensor o;                 // core attention's output (a leaf requiring grad)
  torch::Tensor out;               // post segment output, with its graph
  std::unique_ptr<AttentionPhases> attention;
};

struct NanoState {
  NanoBatch* batch = nullptr;
  std::string tag;
  RopeTables rope;
  torch::Tensor embedded;  // embedding output with its graph
  torch::Tensor x;         // forward: the current residual stream
  torch::Tensor grad;      // backward: gradient of the current layer's output
  torch::Tensor loss;      // fp32 scalar
  std::vector<LayerState> layers;
};

class Executor {
 public:
  Executor(const LlamaModel* model, const config::ModelConfig& config, torch::ScalarType dtype,
           const torch::Device& device, const ExecutorOptions& options)
      : model_(model), config_(config), dtype_(dtype), device_(device), options_(options) {}

  double run(std::vector<NanoBatch>& batches) {
    const int layers = config_.num_layers();
    std::vector<NanoState> nanos(batches.size());
    for (size_t i = 0; i < batches.size(); ++i) {
      nanos[i].batch = &batches[i];
      nanos[i].tag = batches.size() == 1 ? "" : (i == 0 ? " A" : " B");
      nanos[i].layers.resize(layers);
      nanos[i].loss = torch::zeros({}, torch::TensorOptions().device(device_));
      if (model_ != nullptr) {
        if (i == 0) parameters_needed(-1);
        const int span = begin("embed" + nanos[i].tag);
        nanos[i].rope = model_->rope(batches[i].positions);
        nanos[i].embedded = model_->embed(batches[i].tokens);
        nanos[i].x = nanos[i].embedded.detach();
        end(span);
      }
    }
    // Forward. With two nano-batches the compute stream runs  post(l-1)+pre(l) of A, of B, then
    // the servers' attention of A, of B, while the communication stream carries A's dispatch
    // (under B's linear layers), B's (under A's attention), A's return (under B's attention) and
    // B's return (under A's next linear layers).
    for (int l = 0; l < layers; ++l) {
      parameters_needed(l);
      for (NanoState& n : nanos) {
        if (l > 0) post_forward(n, l - 1);
        pre_forward(n, l);
      }
      for (NanoState& n : nanos) n.layers[l].attention->forward_serve();
    }
    parameters_needed(layers);
    for (NanoState& n : nanos) {
      post_forward(n, layers - 1);
      head(n);
    }
    // Backward, mirrored.
    for (int l = layers - 1; l >= 0; --l) {
      for (NanoState& n : nanos) {
        if (l < layers - 1) pre_backward(n, l + 1);
        post_backward(n, l);
      }
      // Layer l+1 is finished. Its gradient all-reduce is issued after this layer's sends, so
      // on a shared communication stream it runs under the servers' attention below instead of
      // delaying the sends the servers wait for.
      if (l < layers - 1) layer_done(l + 1);
      for (NanoState& n : nanos) n.layers[l].attention->backward_serve();
    }
    double loss = 0;
    for (NanoState& n : nanos) {
      pre_backward(n, 0);
      if (&n == &nanos.back()) layer_done(0);
      if (model_ != nullptr) {
        const int span = begin("embed bwd" + n.tag);
        torch::autograd::backward({n.embedded}, {n.grad});
        end(span);
      }
      loss += n.loss.item<double>();
    }
    return loss;
  }

 private:
  int begin(const std::string& name) {
    return options_.timeline ? options_.timeline->begin_compute(name) : -1;
  }
  void end(int span) {
    if (options_.timeline) options_.timeline->end_compute(span);
  }
  void parameters_needed(int layer) {
    if (model_ != nullptr && options_.parameters_needed) options_.parameters_needed(layer);
  }
  void layer_done(int layer) {
    if (options_.layer_gradients_ready) options_.layer_gradients_ready(layer);
  }
  int64_t server_heads() const {
    return options_.server_heads > 0 ? options_.server_heads : config_.num_heads();
  }
  int64_t server_kv_heads() const {
    return options_.server_kv_heads > 0 ? options_.server_kv_heads : config_.num_kv_heads();
  }
  int64_t server_qk_dim() const {
    return options_.server_qk_dim > 0 ? options_.server_qk_dim : config_.head_dim();
  }
  int64_t server_v_dim() const {
    return options_.server_v_dim > 0 ? options_.server_v_dim : config_.head_dim();
  }
  torch::Tensor empty_heads(int64_t heads, int64_t head_dim) const {
    return torch::empty({0, heads, head_dim}, torch::TensorOptions().dtype(dtype_).device(device_));
  }

  void pre_forward(NanoState& n, int l) {
    LayerState& s = n.layers[l];
    s.attention = n.batch->make_attention();
    const int span = begin("L" + std::to_string(l) + " qkv" + n.tag);
    if (model_ == nullptr) {
      s.attention->forward_send(empty_heads(server_heads(), server_qk_dim()),
                                empty_heads(server_kv_heads(), server_qk_dim()),
                                empty_heads(server_kv_heads(), server_v_dim()));
    } else if (options_.recompute) {
      torch::NoGradGuard no_grad;
      s.x = n.x;
      auto qkv = model_->attention_inputs(l, s.x, n.rope);
      s.attention->forward_send(qkv[0], qkv[1], qkv[2]);
    } else {
      s.x = n.x.detach().requires_grad_(true);
      s.qkv = model_->attention_inputs(l, s.x, n.rope);
      s.attention->forward_send(s.qkv[0].detach(), s.qkv[1].detach(), s.qkv[2].detach());
    }
    end(span);
  }

  void post_forward(NanoState& n, int l) {
    LayerState& s = n.layers[l];
    auto o = s.attention->forward_finish();
    if (model_ == nullptr) return;
    const int span = begin("L" + std::to_string(l) + " out+mlp" + n.tag);
    if (options_.recompute) {
      torch::NoGradGuard no_grad;
      s.o = o;
      n.x = model_->layer_output(l, s.x, s.o);
    } else {
      s.o = o.detach().requires_grad_(true);
      s.out = model_->layer_output(l, s.x, s.o);
      n.x = s.out.detach();
    }
    end(span);
  }

  void head(NanoState& n) {
    if (model_ == nullptr) return;
    const int span = begin("head+loss" + n.tag);
    // Each chunk is its own leaf, so its backward writes a chunk-sized gradient only.
    const int64_t rows = n.x.size(0);
    const int64_t chunk = options_.loss_chunk_tokens > 0 ? options_.loss_chunk_tokens
                                                         : std::max<int64_t>(rows, 1);
    n.grad = torch::zeros_like(n.x);
    if (model_->sequence_parallel()) {
      head_sequence_parallel(n, chunk);
      end(span);
      return;
    }
    for (int64_t a = 0; a < rows; a += chunk) {
      const int64_t len = std::min(chunk, rows - a);
      auto x = n.x.narrow(0, a, len).detach().requires_grad_(true);
      auto loss = model_->head_loss_sum(x, n.batch->targets.narrow(0, a, len));
      (loss * options_.loss_scale).backward();
      n.loss = n.loss + loss.detach().to(torch::kFloat);
      if (x.grad().defined()) n.grad.narrow(0, a, len).copy_(x.grad());
    }
    n.x = torch::Tensor();
    end(span);
  }

  // Sequence parallelism: this rank holds rows [begin, begin + count) of the nano-batch. Every
  // rank of the group runs the same number of chunks (the largest part's), each chunk gathering
  // rows [a, a + len) of every rank's part, whose targets are picked out of the whole batch's.
  void head_sequence_parallel(NanoState& n, int64_t chunk) {
    const RowSplit split = model_->sequence_split(n.batch->targets.size(0));
    const int me = model_->tensor_parallel()->rank();
    for (int64_t a = 0; a < split.max_count(); a += chunk) {
      RowSplit part;
      std::vector<int64_t> rows;
      for (size_t r = 0; r < split.counts.size(); ++r) {
        const int64_t len = std::max<int64_t>(0, std::min(chunk, split.counts[r] - a));
        part.counts.push_back(len);
        for (int64_t i = 0; i < len; ++i) rows.push_back(split.begin(static_cast<int>(r)) + a + i);
      }
      const int64_t mine = part.counts[me];
      auto x = n.x.narrow(0, std::min(a, n.x.size(0)), mine).detach().requires_grad_(true);
      auto targets = n.batch->targets.index_select(
          0, torch::tensor(rows, torch::kLong).to(n.batch->targets.device()));
      auto loss = model_->head_loss_sum(x, targets, &part);
      (loss * options_.loss_scale).backward();
      n.loss = n.loss + loss.detach().to(torch::kFloat);
      if (x.grad().defined() && mine > 0) n.grad.narrow(0, a, mine).copy_(x.grad());
    }
    n.x = torch::Tensor();
  }

  void post_backward(NanoState& n, int l) {
    LayerState& s = n.layers[l];
    if (model_ == nullptr) {
      s.attention->backward_send(empty_heads(server_heads(), server_v_dim()));
      return;
    }
    if (options_.recompute) {
      // Its own span, so that profiles price recomputation apart from the backward.
      const int recompute = begin("L" + std::to_string(l) + " out+mlp recompute" + n.tag);
      s.x = s.x.detach().requires_grad_(true);
      s.o = s.o.detach().requires_grad_(true);
      s.out = model_->layer_output(l, s.x, s.o);
      end(recompute);
    }
    const int span = begin("L" + std::to_string(l) + " out+mlp bwd" + n.tag);
    torch::autograd::backward({s.out}, {n.grad});
    s.out = torch::Tensor();
    auto dout = s.o.grad().defined() ? s.o.grad() : torch::zeros_like(s.o);
    s.o = torch::Tensor();
    s.attention->backward_send(dout);
    end(span);
  }

  void pre_backward(NanoState& n, int l) {
    LayerState& s = n.layers[l];
    auto grads = s.attention->backward_finish();
    s.attention.reset();
    if (model_ == nullptr) return;
    if (options_.recompute) {
      const int recompute = begin("L" + std::to_string(l) + " qkv recompute" + n.tag);
      s.qkv = model_->attention_inputs(l, s.x, n.rope);
      end(recompute);
    }
    const int span = begin("L" + std::to_string(l) + " qkv bwd" + n.tag);
    torch::autograd::backward(s.qkv, grads);
    n.grad = s.x.grad().defined() ? s.x.grad() : torch::zeros_like(s.x);
    s = LayerState{};
    end(span);
  }

  const LlamaModel* model_;
  const config::ModelConfig& config_;
  torch::ScalarType dtype_;
  torch::Device device_;
  ExecutorOptions options_;
};

}  // namespace

std::unique_ptr<AttentionPhases> make_cad_phases(attention_server::CadDispatch& dispatch) {
  return std::make_unique<CadPhases>(dispatch);
}

std::unique_ptr<AttentionPhases> make_colocated_phases(const attention_server::VarlenBatch& batch,
                                                       attention_server::CoreAttentionKernel& kernel,
                                                       comm::Timeline* timeline) {
  return std::make_unique<ColocatedPhases>(batch, kernel, timeline);
}

double run_forward_backward(const LlamaModel* model, const config::ModelConfig& model_config,
                            torch::ScalarType dtype, const torch::Device& device,
                            std::vector<NanoBatch>& nanos, const ExecutorOptions& options) {
  CADRE_CHECK(!nanos.empty(), "run_forward_backward needs at least one nano-batch");
  Executor executor(model, model_config, dtype, device, options);
  return executor.run(nanos);
}

}  // namespace cadre::runtime
