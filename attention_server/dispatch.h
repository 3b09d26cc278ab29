// One rank's side of CAD core attention for one Plan: pack rows for the servers, exchange them in
// one all-to-all-v, compute the fused batch if this rank is a server, and return results to their
// owners. Tensor index ops only, so the same code runs on host (MPI) and device (NCCL) tensors.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "attention_server/kernel.h"
#include "comm/timeline.h"
#include "comm/transport.h"
#include "scheduler/plan.h"

namespace cadre::attention_server {

// What the server half of this rank keeps between forward and backward.
struct ServerState {
  torch::Tensor q;    // fused query rows [server q rows, heads, D]
  torch::Tensor k;    // K prefix rows [server kv rows, kv_heads, D] (expanded per task on use)
  torch::Tensor v;
  torch::Tensor out;  // fused outputs
  torch::Tensor lse;  // [heads, server q rows]
};

struct ExchangeBytes {
  int64_t sent = 0;      // to other ranks (self excluded)
  int64_t received = 0;  // from other ranks (self excluded)
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
  torch::Tensor q, k, v, dout;
  torch::Tensor out, dq, dk_prefix, dv_prefix;
  int64_t heads = 0, kv_heads = 0, dim = 0;
  torch::TensorOptions options;
  bool served = false;
};

class CadDispatch {
 public:
  // Builds every index tensor once. Collective: all ranks of `transport` construct it together
  // and check that they hold the same plan (a mismatch throws on every rank).
  CadDispatch(const scheduler::Plan& plan, comm::Transport& transport, CoreAttentionKernel& kernel,
              double softmax_scale = 0);

  // q: [local tokens, heads, D]; k, v: [local tokens, kv_heads, D] (a dedicated server passes
  // zero rows of the right head shape). Returns outputs like q and the server state.
  torch::Tensor forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        ServerState* state);
  // dout like q; returns dq, dk, dv like q, k, v. dk/dv sum every server's contribution.
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
  int64_t local_tokens() const { return local_tokens_; }

 private:
  // Sends parts[p] (flattened, one dtype) to rank p; returns what each rank sent us, reshaped
  // to [rows, width] with recv_rows[p] rows.
  Exchange start_exchange(const std::vector<torch::Tensor>& parts,
                          const std::vector<int64_t>& recv_elements,
                          const torch::TensorOptions& options, ExchangeBytes* bytes,
                          const char* name);
  std::vector<torch::Tensor> finish_exchange(Exchange* exchange);
  // Moves the index tensors to `device` once (they are built on the host).
  void place_indices(const torch::Device& device);
  void check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

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
  int64_t kv_heads_for_backward_ = 0;  // KV heads seen in forward (dout does not carry them)
  comm::Timeline* timeline_ = nullptr;
  torch::Device indices_device_ = torch::kCPU;
};

}  // namespace cadre::attention_server
