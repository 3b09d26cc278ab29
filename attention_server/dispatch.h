// One rank's side of CAD core attention for one Plan: pack rows for the servers, exchange them in
// one all-to-all-v, compute the fused batch if this rank is a server, and return results to their
// owners. Tensor index ops only, so the same code runs on host (MPI) and device (NCCL) tensors.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "attention_server/kernel.h"
#include "attention_server/latent_expansion.h"
#include "comm/timeline.h"
#include "comm/transport.h"
#include "scheduler/plan.h"

namespace cadre::attention_server {

// What the server half of this rank keeps between forward and backward.
struct ServerState {
  torch::Tensor q;    // fused query rows [server q rows, heads, Dqk]
  torch::Tensor k;    // K prefix rows [server kv rows, kv_heads, Dqk] (expanded per task on use);
                      // latent mode: the latent prefix rows [server kv rows, 1, latent + rope]
  torch::Tensor v;    // V prefix rows [server kv rows, kv_heads, Dv]; latent mode: the weight w
  torch::Tensor out;  // fused outputs [server q rows, heads, Dv]
  torch::Tensor lse;  // [heads, server q rows]
};

struct ExchangeBytes {
  int64_t sent = 0;      // to other ranks (self excluded)
  int64_t received = 0;  // from other ranks (self excluded)
  // `sent` split by the rows it travels along: query rows (Q, O, dO, dQ) and K/V rows (K and V,
  // or the latent, and their gradients). Summed over ranks and divided by shipped_*_rows(), they
  // give the bytes per query token and per K/V token.
  int64_t query_sent = 0;
  int64_t kv_sent = 0;
};

// An all-to-all-v in flight and the buffers it reads and writes (kept alive until it is waited).
struct Exchange {
  Exchange() = default;
  Exchange(Exchange&&) = default;
  Exchange& operator=(Exchange&& other) {
    settle();
    work = std::move(other.work);
    timeline_span = other.timeline_span;
    send = std::move(other.send);
    recv = std::move(other.recv);
    recv_elements = std::move(other.recv_elements);
    return *this;
  }
  // An exchange abandoned in flight (an exception between the phases) still waits for its
  // transfer before its buffers go back to the allocator.
  ~Exchange() { settle(); }
  void settle() noexcept {
    if (!work) return;
    try {
      work->wait();
    } catch (...) {
    }
    work.reset();
  }
  std::unique_ptr<comm::Work> work;
  int timeline_span = -1;
  torch::Tensor send, recv;
  std::vector<int64_t> recv_elements;  // per source rank
};

// One forward or backward of one layer between its phases (see CadDispatch::forward_send).
struct Flight {
  Exchange exchange;
  // This rank's own rows skip the exchange: the owner's inputs (q, k, v or dout) and the
  // server's results (out or dq, dk, dv per prefix row) are kept here and copied directly.
  // Latent mode: k holds the latent rows, v the weight w, dk_prefix d(latent) per prefix row
  // (fp32, or fp64 for fp64 inputs), dv_prefix is unused and dw is the server's weight gradient.
  torch::Tensor q, k, v, dout;
  torch::Tensor out, dq, dk_prefix, dv_prefix, dw;
  int64_t heads = 0, kv_heads = 0;
  int64_t qk_dim = 0;  // head dim of q and k (and dq, dk)
  int64_t v_dim = 0;   // head dim of v, out, dout (and dv)
  torch::TensorOptions options;
  bool served = false;
};

class CadDispatch {
 public:
  // Builds every index tensor once. Collective: all ranks of `transport` construct it together
  // and check that they hold the same plan (a mismatch throws on every rank).
  // `latent` (copied; nullptr: ordinary K/V shipping) selects MLA's latent shipping (see below);
  // it needs every server to own tokens (a dedicated server holds no weights to expand with),
  // and throws cadre::Error on every rank for a plan with dedicated servers.
  CadDispatch(const scheduler::Plan& plan, comm::Transport& transport, CoreAttentionKernel& kernel,
              double softmax_scale = 0, const LatentLayout* latent = nullptr);

  // q: [local tokens, heads, Dqk]; k: [local tokens, kv_heads, Dqk]; v: [local tokens, kv_heads,
  // Dv] (Dv may differ from Dqk; a dedicated server passes zero rows of the right head shapes).
  // Returns outputs [local tokens, heads, Dv] and the server state.
  //
  // Latent mode: q: [local tokens, heads, nope + rope]; k: the latent rows [local tokens, 1,
  // latent + rope] ([c ; rotated k_rope]); v: the up-projection weight w [heads * (nope + v_dim),
  // latent] of this rank's head group in the compute dtype, the same on every rank. Only q and
  // latent rows travel; each server expands its latent prefix rows once (expand_latent) and
  // recomputes the expansion in backward instead of keeping the expanded K/V.
  // Returns outputs [local tokens, heads, v_dim].
  torch::Tensor forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        ServerState* state);
  // dout like the output; returns dq, dk, dv like q, k, v. dk/dv sum every server's contribution.
  // Latent mode: {dq, dlatent, dw}: dlatent sums every server's contribution in fp32 at the owner
  // (exchanged in the compute dtype) and is returned in the compute dtype; dw is this rank's
  // server's weight gradient in w's dtype (zeros on a rank that served nothing), to be summed
  // over ranks by the data-parallel gradient reduction.
  std::vector<torch::Tensor> backward(const torch::Tensor& dout, const ServerState& state);

  // The same in three phases, so that a caller can run other work between them (ping-pong):
  //   send:   pack this rank's rows and start the all-to-all-v to the servers;
  //   serve:  wait for it, run the fused kernel if this rank is a server, start the return;
  //   finish: wait for the return and unpack.
  // Every rank must call the phases of its flights in the same order (they are collectives).
  // forward(...) is forward_send + forward_serve + forward_finish.
  Flight forward_send(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);
  void forward_serve(Flight* flight, ServerState* state);
  torch::Tensor forward_finish(Flight* flight);
  Flight backward_send(const torch::Tensor& dout);
  void backward_serve(Flight* flight, const ServerState& state);
  std::vector<torch::Tensor> backward_finish(Flight* flight);

  // Skips the collective check of the first call's input shapes (callers that build q, k, v
  // themselves to the plan's shapes, like the trainer, avoid its host synchronisation).
  void mark_inputs_checked() { inputs_checked_ = true; }
  // Records the exchanges (and the server's kernel) on `timeline` (nullptr: no recording).
  void set_timeline(comm::Timeline* timeline) { timeline_ = timeline; }

  // Bytes this rank moved in the last forward and backward exchanges.
  const ExchangeBytes& forward_bytes() const { return forward_bytes_; }
  const ExchangeBytes& backward_bytes() const { return backward_bytes_; }
  // Rows this rank, as owner, ships to other ranks' servers per layer: query rows (one per task)
  // and K/V rows (one per server that needs them).
  int64_t shipped_q_rows() const { return remote_rows(q_send_count_); }
  int64_t shipped_kv_rows() const { return remote_rows(kv_send_count_); }
  int64_t local_tokens() const { return local_tokens_; }
  const LatentLayout* latent() const { return latent_ ? &*latent_ : nullptr; }

 private:
  // Sends parts[p] (flattened, one dtype) to rank p; returns what each rank sent us, reshaped
  // to [rows, width] with recv_rows[p] rows. kv_elements[p] of parts[p] travel along K/V rows
  // (nullptr: none), the rest along query rows.
  Exchange start_exchange(const std::vector<torch::Tensor>& parts,
                          const std::vector<int64_t>& recv_elements,
                          const torch::TensorOptions& options, ExchangeBytes* bytes,
                          const char* name, const std::vector<int64_t>* kv_elements = nullptr);
  // Sum of counts[p] over the other ranks p.
  int64_t remote_rows(const std::vector<int64_t>& counts) const;
  std::vector<torch::Tensor> finish_exchange(Exchange* exchange);
  // Moves the index tensors to `device` once (they are built on the host).
  void place_indices(const torch::Device& device);
  void check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);
  // What one input's problem is, or "" (ordinary and latent mode).
  std::string input_problem(const torch::Tensor& q, const torch::Tensor& k,
                            const torch::Tensor& v) const;
  // Elements per K row and per V row of the forward exchange (latent mode: one latent row, no V).
  int64_t k_row_elements(const Flight& flight) const;
  int64_t v_row_elements(const Flight& flight) const;

  const scheduler::Plan& plan_;
  comm::Transport& transport_;
  CoreAttentionKernel& kernel_;
  double softmax_scale_;
  int rank_;
  int world_;
  int32_t server_ = -1;  // this rank's server index, or -1
  int64_t local_tokens_ = 0;
  // As owner, per destination rank: local rows of Q (in the server's order) and of K/V.
  std::vector<torch::Tensor> q_send_rows_, kv_send_rows_;
  std::vector<int64_t> q_send_count_, kv_send_count_;
  // As server, per source rank: rows of the fused Q buffer and of the K/V-prefix buffer.
  std::vector<torch::Tensor> q_recv_rows_, kv_recv_rows_;
  std::vector<int64_t> q_recv_count_, kv_recv_count_;
  torch::Tensor kv_expand_rows_;  // K/V-prefix row of every expanded key row
  bool expand_is_identity_ = false;  // every prefix serves one task: no expansion copy
  // This rank's own rows as owner (src) and server (dst): when both are one contiguous run they
  // are copied with one slice copy, and when that run is the whole of both buffers the server
  // buffer simply is the owner's tensor (one GPU, or a rank that keeps all of its own work).
  struct SelfRows {
    bool contiguous = false;
    bool whole = false;
    int64_t src = 0, dst = 0, rows = 0;
    // The same rows copied back (server -> owner); never the whole-buffer alias.
    SelfRows reversed() const { return {contiguous, false, dst, src, rows}; }
  };
  SelfRows self_q_, self_kv_;
  // dst[dst_rows] = src[src_rows] for this rank's own rows (run as described by `self`).
  void copy_self(const SelfRows& self, torch::Tensor& dst, const torch::Tensor& dst_rows,
                 const torch::Tensor& src, const torch::Tensor& src_rows) const;
  VarlenBatch batch_;
  int64_t server_q_rows_ = 0, server_kv_rows_ = 0;
  ExchangeBytes forward_bytes_, backward_bytes_;
  bool inputs_checked_ = false;
  std::optional<LatentLayout> latent_;
  // Seen in forward (dout does not carry them): KV heads, q/k head dim, v head dim, and in
  // latent mode the shape and options of w (for a zero dw on a rank that served nothing).
  int64_t kv_heads_for_backward_ = 0;
  int64_t qk_dim_for_backward_ = 0, v_dim_for_backward_ = 0;
  std::vector<int64_t> w_sizes_for_backward_;
  torch::TensorOptions w_options_for_backward_;
  comm::Timeline* timeline_ = nullptr;
  torch::Device indices_device_ = torch::kCPU;
};

}  // namespace cadre::attention_server
