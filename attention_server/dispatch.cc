// CAD dispatch for one rank: index tensors built once from the Plan's transfers, then per call
// one all-to-all-v out (Q + K/V rows), the fused kernel, and one all-to-all-v back.
#include "attention_server/dispatch.h"

#include <ATen/ATen.h>

#include <functional>
#include <string>

#include "common/error.h"

namespace cadre::attention_server {

namespace {

torch::Tensor rows_tensor(const std::vector<int64_t>& rows) {
  return torch::tensor(rows, torch::TensorOptions().dtype(torch::kLong));
}

// A small tensor where the transport can read it (device memory for NCCL).
torch::Tensor for_transport(comm::Transport& transport, const torch::Tensor& host) {
  return transport.device_memory() ? host.to(torch::Device(torch::kCUDA)) : host;
}

// True on every rank if every rank passes `ok`; lets a bad input fail everywhere, not hang.
bool all_ranks_ok(comm::Transport& transport, bool ok) {
  auto flag = for_transport(transport, torch::full({1}, ok ? 0.0f : 1.0f));
  transport.all_reduce_sum(flag.data_ptr(), 1, comm::DataType::kFloat32)->wait();
  return flag.to(torch::kCPU).item<float>() == 0.0f;
}

}  // namespace

CadDispatch::CadDispatch(const scheduler::Plan& plan, comm::Transport& transport,
                         CoreAttentionKernel& kernel, double softmax_scale,
                         const LatentLayout* latent)
    : plan_(plan),
      transport_(transport),
      kernel_(kernel),
      softmax_scale_(softmax_scale),
      rank_(transport.rank()),
      world_(transport.size()) {
  std::string problem;
  if (plan.world_size != world_) {
    problem = str_cat("the plan is for ", plan.world_size, " ranks but the transport has ", world_,
                      "; plan and launch must agree");
  } else {
    try {
      scheduler::validate_plan(plan);
    } catch (const Error& e) {
      problem = str_cat("invalid plan: ", e.message());
    }
  }
  // Every rank must hold the same plan: compare a hash of its bytes.
  const uint64_t hash =
      problem.empty() ? std::hash<std::string>{}(scheduler::serialize_plan(plan)) : 0;
  auto mine = for_transport(transport, torch::tensor({static_cast<int64_t>(hash)}));
  auto all = for_transport(transport, torch::zeros({world_}, torch::kLong));
  transport.all_gather(mine.data_ptr(), all.data_ptr(), sizeof(int64_t));
  auto hashes = all.to(torch::kCPU);
  for (int r = 0; r < world_ && problem.empty(); ++r) {
    if (hashes[r].item<int64_t>() != static_cast<int64_t>(hash)) {
      problem = str_cat("rank ", r, " holds a different plan than rank ", rank_,
                        " (plans must be identical on every rank)");
    }
  }
  CADRE_CHECK(problem.empty(), "CAD attention on rank ", rank_, ": ", problem);
  if (latent != nullptr) {
    // Every rank holds the same (checked) plan, so these throw on every rank alike.
    CADRE_CHECK(latent->latent_dim > 0 && latent->nope_dim > 0 && latent->rope_dim >= 0 &&
                    latent->v_dim > 0,
                "CAD attention: latent layout needs latent_dim, nope_dim, v_dim > 0 and rope_dim "
                ">= 0; got latent ", latent->latent_dim, ", nope ", latent->nope_dim, ", rope ",
                latent->rope_dim, ", v ", latent->v_dim);
    for (int32_t server_rank : plan.server_ranks) {
      CADRE_CHECK(server_rank < plan.layout.num_ranks,
                  "CAD attention: latent K/V shipping needs every attention server to own tokens "
                  "(and so the layer's weights), but server rank ", server_rank,
                  " is a dedicated server (the layout has ", plan.layout.num_ranks,
                  " token-owning ranks); ship expanded K/V (no latent layout) to dedicated servers");
    }
    latent_ = *latent;
  }

  for (size_t s = 0; s < plan.server_ranks.size(); ++s) {
    if (plan.server_ranks[s] == rank_) server_ = static_cast<int32_t>(s);
  }
  local_tokens_ = rank_ < plan.layout.num_ranks ? plan.layout.tokens_per_rank[rank_] : 0;

  std::vector<std::vector<int64_t>> q_send(world_), kv_send(world_), q_recv(world_),
      kv_recv(world_);
  for (const scheduler::PeerTransfer& tr : plan.transfers) {
    const int32_t server_rank = plan.server_ranks[tr.server];
    if (tr.owner == rank_) {
      for (const auto& seg : tr.q)
        for (int64_t i = 0; i < seg.rows; ++i) q_send[server_rank].push_back(seg.src_row + i);
      for (const auto& seg : tr.kv)
        for (int64_t i = 0; i < seg.rows; ++i) kv_send[server_rank].push_back(seg.src_row + i);
    }
    if (server_rank == rank_) {
      for (const auto& seg : tr.q)
        for (int64_t i = 0; i < seg.rows; ++i) q_recv[tr.owner].push_back(seg.dst_row + i);
      for (const auto& seg : tr.kv)
        for (int64_t i = 0; i < seg.rows; ++i) kv_recv[tr.owner].push_back(seg.dst_row + i);
    }
  }
  for (int p = 0; p < world_; ++p) {
    q_send_rows_.push_back(rows_tensor(q_send[p]));
    kv_send_rows_.push_back(rows_tensor(kv_send[p]));
    q_recv_rows_.push_back(rows_tensor(q_recv[p]));
    kv_recv_rows_.push_back(rows_tensor(kv_recv[p]));
    q_send_count_.push_back(static_cast<int64_t>(q_send[p].size()));
    kv_send_count_.push_back(static_cast<int64_t>(kv_send[p].size()));
    q_recv_count_.push_back(static_cast<int64_t>(q_recv[p].size()));
    kv_recv_count_.push_back(static_cast<int64_t>(kv_recv[p].size()));
  }
  auto self_rows = [&](const std::vector<int64_t>& src, const std::vector<int64_t>& dst,
                       int64_t src_total, int64_t dst_total) {
    SelfRows r;
    r.rows = static_cast<int64_t>(src.size());
    r.contiguous = r.rows > 0 && dst.size() == src.size();
    for (int64_t i = 1; i < r.rows && r.contiguous; ++i) {
      r.contiguous = src[i] == src[0] + i && dst[i] == dst[0] + i;
    }
    if (r.contiguous) {
      r.src = src[0];
      r.dst = dst[0];
      r.whole = r.src == 0 && r.dst == 0 && r.rows == src_total && r.rows == dst_total;
    }
    return r;
  };
  if (server_ >= 0) {
    const scheduler::ServerBatch& sb = plan.batches[server_];
    self_q_ = self_rows(q_send[rank_], q_recv[rank_], local_tokens_, sb.q_rows);
    self_kv_ = self_rows(kv_send[rank_], kv_recv[rank_], local_tokens_, sb.kv_rows);
  }
  if (server_ >= 0) {
    const scheduler::ServerBatch& b = plan.batches[server_];
    std::vector<int64_t> expand;
    for (size_t i = 0; i < b.tasks.size(); ++i) {
      const scheduler::CaTask& task = plan.tasks[b.tasks[i]];
      const scheduler::KvPrefix& prefix = b.prefixes[b.kv_prefix[i]];
      for (int64_t t = 0; t < task.q_end; ++t) expand.push_back(prefix.kv_row + t);
    }
    kv_expand_rows_ = rows_tensor(expand);
    expand_is_identity_ = static_cast<int64_t>(expand.size()) == b.kv_rows;
    for (size_t i = 0; i < expand.size() && expand_is_identity_; ++i) {
      expand_is_identity_ = expand[i] == static_cast<int64_t>(i);
    }
    batch_ = make_varlen_batch(b.cu_seqlens_q, b.cu_seqlens_k);  // maxima as b's
    server_q_rows_ = b.q_rows;
    server_kv_rows_ = b.kv_rows;
  }
}

std::string CadDispatch::input_problem(const torch::Tensor& q, const torch::Tensor& k,
                                       const torch::Tensor& v) const {
  if (latent_) {
    const LatentLayout& l = *latent_;
    const int64_t per_head = l.nope_dim + l.v_dim;
    if (q.dim() != 3 || q.size(0) != local_tokens_ || q.size(2) != l.qk_dim()) {
      return str_cat("latent mode: q must be [", local_tokens_, " tokens, heads, nope + rope = ",
                     l.qk_dim(), "]; got ", q.sizes());
    }
    if (k.dim() != 3 || k.size(0) != local_tokens_ || k.size(1) != 1 ||
        k.size(2) != l.row_width()) {
      return str_cat("latent mode: the latent rows (k) must be [", local_tokens_,
                     " tokens, 1, latent + rope = ", l.row_width(), "]; got ", k.sizes());
    }
    if (v.dim() != 2 || v.size(0) != q.size(1) * per_head || v.size(1) != l.latent_dim) {
      return str_cat("latent mode: the up-projection weight (v) must be [heads * (nope + v_dim) = ",
                     q.size(1), " * ", per_head, ", latent = ", l.latent_dim, "]; got ",
                     v.sizes());
    }
    if (q.device() != k.device() || q.device() != v.device()) {
      return str_cat("latent mode: q, the latent rows and w must be on one device; got ",
                     q.device(), ", ", k.device(), ", ", v.device());
    }
  } else if (q.dim() != 3 || k.dim() != 3 || v.dim() != 3) {
    return str_cat("q, k, v must be [tokens, heads, head_dim]; got ", q.sizes(), ", ", k.sizes(),
                   ", ", v.sizes());
  } else if (q.size(0) != local_tokens_ || k.size(0) != local_tokens_ ||
             v.size(0) != local_tokens_) {
    return str_cat("the plan gives this rank ", local_tokens_, " tokens but q, k, v have ",
                   q.size(0), ", ", k.size(0), ", ", v.size(0), " rows");
  } else if (k.size(1) != v.size(1) || q.size(2) != k.size(2) || v.size(2) == 0 ||
             k.size(1) == 0 || q.size(1) % k.size(1) != 0) {
    return str_cat("head shapes do not fit: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes(),
                   " (q and k share a head dim, k and v their KV heads; v's head dim may differ; "
                   "query heads must be a multiple of KV heads)");
  }
  if (q.scalar_type() != k.scalar_type() || q.scalar_type() != v.scalar_type()) {
    return str_cat("q, k, v dtypes differ: ", q.scalar_type(), ", ", k.scalar_type(), ", ",
                   v.scalar_type());
  }
  return "";
}

void CadDispatch::check_inputs(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v) {
  const std::string problem = input_problem(q, k, v);
  if (!inputs_checked_) {
    // Collective on the first call, so one rank's bad input stops every rank.
    const bool everyone_ok = all_ranks_ok(transport_, problem.empty());
    CADRE_CHECK(problem.empty(), "CAD attention on rank ", rank_, ": ", problem);
    CADRE_CHECK(everyone_ok, "CAD attention: another rank rejected its inputs (see its message)");
    inputs_checked_ = true;
  }
  CADRE_CHECK(problem.empty(), "CAD attention on rank ", rank_, ": ", problem);
}

int64_t CadDispatch::remote_rows(const std::vector<int64_t>& counts) const {
  int64_t rows = 0;
  for (int p = 0; p < world_; ++p) {
    if (p != rank_) rows += counts[p];
  }
  return rows;
}

int64_t CadDispatch::k_row_elements(const Flight& flight) const {
  return latent_ ? latent_->row_width() : flight.kv_heads * flight.qk_dim;
}

int64_t CadDispatch::v_row_elements(const Flight& flight) const {
  return latent_ ? 0 : flight.kv_heads * flight.v_dim;
}

Exchange CadDispatch::start_exchange(const std::vector<torch::Tensor>& parts,
                                     const std::vector<int64_t>& recv_elements,
                                     const torch::TensorOptions& options, ExchangeBytes* bytes,
                                     const char* name, const std::vector<int64_t>* kv_elements) {
  const int64_t element = static_cast<int64_t>(c10::elementSize(options.dtype().toScalarType()));
  comm::AllToAllLayout layout;
  std::vector<torch::Tensor> flat;
  int64_t send_offset = 0, recv_offset = 0;
  for (int p = 0; p < world_; ++p) {
    // This rank's own rows never enter the exchange (the phases copy them directly).
    const int64_t send_bytes = p == rank_ ? 0 : parts[p].numel() * element;
    const int64_t recv_bytes = p == rank_ ? 0 : recv_elements[p] * element;
    if (send_bytes > 0) flat.push_back(parts[p].reshape({-1}));
    layout.send_counts.push_back(send_bytes);
    layout.send_displs.push_back(send_offset);
    layout.recv_counts.push_back(recv_bytes);
    layout.recv_displs.push_back(recv_offset);
    send_offset += send_bytes;
    recv_offset += recv_bytes;
    if (p != rank_) {
      const int64_t kv_bytes =
          kv_elements != nullptr && send_bytes > 0 ? (*kv_elements)[p] * element : 0;
      bytes->sent += send_bytes;
      bytes->received += recv_bytes;
      bytes->kv_sent += kv_bytes;
      bytes->query_sent += send_bytes - kv_bytes;
    }
  }
  Exchange ex;
  ex.send = flat.empty() ? torch::empty({0}, options) : torch::cat(flat).contiguous();
  ex.recv = torch::empty({recv_offset / element}, options);
  ex.recv_elements = recv_elements;
  // Exchanges that move nothing (one rank, or a rank that keeps all of its work) are not spans.
  const bool record = timeline_ != nullptr && send_offset + recv_offset > 0;
  if (record) ex.timeline_span = timeline_->begin_communication(name);
  ex.work = transport_.all_to_all_v(ex.send.data_ptr(), ex.recv.data_ptr(), layout);
  if (record) timeline_->communication_enqueued(ex.timeline_span);
  return ex;
}

std::vector<torch::Tensor> CadDispatch::finish_exchange(Exchange* ex) {
  CADRE_CHECK(ex->work != nullptr, "CAD attention: an exchange was finished twice or never started");
  ex->work->wait();
  ex->work.reset();
  if (timeline_ != nullptr && ex->timeline_span >= 0) {
    timeline_->communication_waited(ex->timeline_span);
  }
  std::vector<torch::Tensor> out;
  int64_t offset = 0;
  for (int p = 0; p < world_; ++p) {
    if (p == rank_) {
      out.push_back(torch::Tensor());  // own rows: see the phases
      continue;
    }
    out.push_back(ex->recv.narrow(0, offset, ex->recv_elements[p]));
    offset += ex->recv_elements[p];
  }
  ex->send = torch::Tensor();  // the transport is done with it
  return out;
}

torch::Tensor CadDispatch::forward(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, ServerState* state) {
  Flight flight = forward_send(q, k, v);
  forward_serve(&flight, state);
  return forward_finish(&flight);
}

std::vector<torch::Tensor> CadDispatch::backward(const torch::Tensor& dout,
                                                 const ServerState& state) {
  Flight flight = backward_send(dout);
  backward_serve(&flight, state);
  return backward_finish(&flight);
}

void CadDispatch::copy_self(const SelfRows& self, torch::Tensor& dst, const torch::Tensor& dst_rows,
                            const torch::Tensor& src, const torch::Tensor& src_rows) const {
  if (self.rows == 0) return;
  if (self.contiguous) {
    dst.narrow(0, self.dst, self.rows).copy_(src.narrow(0, self.src, self.rows));
  } else {
    dst.index_copy_(0, dst_rows, src.index_select(0, src_rows));
  }
}

void CadDispatch::place_indices(const torch::Device& device) {
  if (indices_device_ == device) return;
  for (auto* rows : {&q_send_rows_, &kv_send_rows_, &q_recv_rows_, &kv_recv_rows_}) {
    for (auto& t : *rows) t = t.to(device);
  }
  if (kv_expand_rows_.defined()) kv_expand_rows_ = kv_expand_rows_.to(device);
  if (batch_.cu_seqlens_q.defined()) {
    batch_.cu_seqlens_q = batch_.cu_seqlens_q.to(device);
    batch_.cu_seqlens_k = batch_.cu_seqlens_k.to(device);
  }
  indices_device_ = device;
}

Flight CadDispatch::forward_send(const torch::Tensor& q_in, const torch::Tensor& k_in,
                                 const torch::Tensor& v_in) {
  check_inputs(q_in, k_in, v_in);
  place_indices(q_in.device());
  auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  Flight flight;
  flight.heads = q.size(1);
  flight.kv_heads = k.size(1);  // latent mode: 1 (one latent row per token)
  flight.qk_dim = q.size(2);
  flight.v_dim = latent_ ? latent_->v_dim : v.size(2);
  flight.options = q.options();
  kv_heads_for_backward_ = flight.kv_heads;
  qk_dim_for_backward_ = flight.qk_dim;
  v_dim_for_backward_ = flight.v_dim;
  if (latent_) {
    w_sizes_for_backward_ = v.sizes().vec();
    w_options_for_backward_ = v.options();
  }
  const int64_t q_row = flight.heads * flight.qk_dim, k_row = k_row_elements(flight),
                v_row = v_row_elements(flight);

  // Owners -> servers: Q rows per task, K/V rows (latent mode: latent rows) per document prefix.
  std::vector<torch::Tensor> parts;
  std::vector<int64_t> recv_elements;
  for (int p = 0; p < world_; ++p) {
    if (p == rank_) {
      parts.push_back(torch::empty({0}, q.options()));
    } else {
      std::vector<torch::Tensor> rows{q.index_select(0, q_send_rows_[p]).reshape({-1}),
                                      k.index_select(0, kv_send_rows_[p]).reshape({-1})};
      if (!latent_) rows.push_back(v.index_select(0, kv_send_rows_[p]).reshape({-1}));
      parts.push_back(torch::cat(rows));
    }
    recv_elements.push_back(q_recv_count_[p] * q_row + kv_recv_count_[p] * (k_row + v_row));
  }
  std::vector<int64_t> kv_elements(world_);
  for (int p = 0; p < world_; ++p) kv_elements[p] = kv_send_count_[p] * (k_row + v_row);
  flight.q = q;
  flight.k = k;
  flight.v = v;
  forward_bytes_ = ExchangeBytes{};
  flight.exchange = start_exchange(parts, recv_elements, q.options(), &forward_bytes_,
                                   "a2a fwd: q,kv out", &kv_elements);
  return flight;
}

void CadDispatch::forward_serve(Flight* flight, ServerState* state) {
  CADRE_CHECK(!flight->served, "CAD attention: forward_serve called twice for one flight");
  const int64_t heads = flight->heads, kv_heads = flight->kv_heads, qk_dim = flight->qk_dim,
                v_dim = flight->v_dim;
  const int64_t k_row = k_row_elements(*flight), v_row = v_row_elements(*flight);
  const auto& options = flight->options;
  auto received = finish_exchange(&flight->exchange);

  // Server: scatter into the fused buffers, expand K/V per task, compute.
  std::vector<torch::Tensor> back(world_);
  if (server_ >= 0) {
    const int span = timeline_ != nullptr ? timeline_->begin_compute("attention fwd (server)") : -1;
    // K prefix rows as they travel: [rows, kv_heads, Dqk], or latent rows [rows, 1, latent+rope].
    const std::vector<int64_t> k_shape{-1, latent_ ? 1 : kv_heads,
                                       latent_ ? latent_->row_width() : qk_dim};
    auto q_fused =
        self_q_.whole ? flight->q : torch::empty({server_q_rows_, heads, qk_dim}, options);
    auto k_prefix = self_kv_.whole ? flight->k
                                   : torch::empty({server_kv_rows_, k_shape[1], k_shape[2]}, options);
    torch::Tensor v_prefix;
    if (!latent_) {
      v_prefix = self_kv_.whole ? flight->v
                                : torch::empty({server_kv_rows_, kv_heads, v_dim}, options);
    }
    for (int p = 0; p < world_; ++p) {
      const int64_t nq = q_recv_count_[p] * heads * qk_dim;
      const int64_t nk = kv_recv_count_[p] * k_row, nv = kv_recv_count_[p] * v_row;
      if (p == rank_) {
        if (!self_q_.whole) copy_self(self_q_, q_fused, q_recv_rows_[p], flight->q, q_send_rows_[p]);
        if (!self_kv_.whole) {
          copy_self(self_kv_, k_prefix, kv_recv_rows_[p], flight->k, kv_send_rows_[p]);
          if (!latent_) copy_self(self_kv_, v_prefix, kv_recv_rows_[p], flight->v, kv_send_rows_[p]);
        }
        continue;
      }
      if (q_recv_count_[p] > 0) {
        q_fused.index_copy_(0, q_recv_rows_[p],
                            received[p].narrow(0, 0, nq).view({-1, heads, qk_dim}));
      }
      if (kv_recv_count_[p] > 0) {
        k_prefix.index_copy_(0, kv_recv_rows_[p], received[p].narrow(0, nq, nk).view(k_shape));
        if (!latent_) {
          v_prefix.index_copy_(0, kv_recv_rows_[p],
                               received[p].narrow(0, nq + nk, nv).view({-1, kv_heads, v_dim}));
        }
      }
    }
    const torch::Tensor& expand = kv_expand_rows_;
    const VarlenBatch& batch = batch_;
    state->q = q_fused;
    state->k = k_prefix;  // kept as prefixes; expanded per task for each kernel call
    torch::Tensor k_rows = k_prefix, v_rows = v_prefix;
    if (latent_) {
      // Expanded once per prefix row (not per task row), then gathered per task like ordinary
      // K/V. The server keeps only the latent rows and w: backward recomputes the expansion
      // (a matmul) instead of holding [rows, heads, Dqk + Dv] per prefix row until then.
      state->v = flight->v;  // w
      ExpandedKv expanded = expand_latent(*latent_, k_prefix, flight->v);
      k_rows = expanded.k;
      v_rows = expanded.v;
    } else {
      state->v = v_prefix;
    }
    ForwardResult result =
        kernel_.forward(state->q, expand_is_identity_ ? k_rows : k_rows.index_select(0, expand),
                        expand_is_identity_ ? v_rows : v_rows.index_select(0, expand), batch,
                        softmax_scale_);
    state->out = result.out;
    state->lse = result.lse;
    flight->out = result.out;
    for (int p = 0; p < world_; ++p) {
      back[p] = p == rank_ ? torch::empty({0}, options)
                           : result.out.index_select(0, q_recv_rows_[p]);
    }
    if (timeline_ != nullptr) timeline_->end_compute(span);
  } else {
    *state = ServerState{};
    for (int p = 0; p < world_; ++p) back[p] = torch::empty({0}, options);
  }
  // Outputs back to their owners.
  std::vector<int64_t> back_elements(world_);
  for (int p = 0; p < world_; ++p) back_elements[p] = q_send_count_[p] * heads * v_dim;
  flight->exchange =
      start_exchange(back, back_elements, options, &forward_bytes_, "a2a fwd: out back");
  flight->q = flight->k = flight->v = torch::Tensor();
  flight->served = true;
}

torch::Tensor CadDispatch::forward_finish(Flight* flight) {
  CADRE_CHECK(flight->served, "CAD attention: forward_finish before forward_serve");
  const int64_t heads = flight->heads, v_dim = flight->v_dim;
  auto returned = finish_exchange(&flight->exchange);
  if (self_q_.whole) {
    auto out = flight->out;
    flight->out = torch::Tensor();
    return out;
  }
  auto out = torch::empty({local_tokens_, heads, v_dim}, flight->options);
  for (int p = 0; p < world_; ++p) {
    if (q_send_count_[p] == 0) continue;
    if (p == rank_) {
      // Own rows: the reverse of the forward copy (server rows -> owner rows).
      copy_self(self_q_.reversed(), out, q_send_rows_[p], flight->out, q_recv_rows_[p]);
      continue;
    }
    out.index_copy_(0, q_send_rows_[p], returned[p].view({-1, heads, v_dim}));
  }
  flight->out = torch::Tensor();
  return out;
}

Flight CadDispatch::backward_send(const torch::Tensor& dout_in) {
  auto dout = dout_in.contiguous();
  const int64_t kv_heads = kv_heads_for_backward_;
  CADRE_CHECK(kv_heads > 0, "CAD attention backward called before forward");
  CADRE_CHECK(dout.dim() == 3 && dout.size(0) == local_tokens_ && dout.size(2) == v_dim_for_backward_,
              "CAD attention backward: dout ", dout.sizes(), " does not match this rank's ",
              local_tokens_, " tokens and the forward's value head dim ", v_dim_for_backward_);
  place_indices(dout.device());
  Flight flight;
  flight.heads = dout.size(1);
  flight.kv_heads = kv_heads;
  flight.qk_dim = qk_dim_for_backward_;
  flight.v_dim = dout.size(2);
  flight.options = dout.options();
  const int64_t heads = flight.heads, v_dim = flight.v_dim;

  // dO rows out to the servers, along the Q segments.
  std::vector<torch::Tensor> parts;
  std::vector<int64_t> recv_elements;
  for (int p = 0; p < world_; ++p) {
    parts.push_back(p == rank_ ? torch::empty({0}, dout.options())
                               : dout.index_select(0, q_send_rows_[p]));
    recv_elements.push_back(q_recv_count_[p] * heads * v_dim);
  }
  flight.dout = dout;
  backward_bytes_ = ExchangeBytes{};
  flight.exchange =
      start_exchange(parts, recv_elements, dout.options(), &backward_bytes_, "a2a bwd: dout out");
  return flight;
}

void CadDispatch::backward_serve(Flight* flight, const ServerState& state) {
  CADRE_CHECK(!flight->served, "CAD attention: backward_serve called twice for one flight");
  const int64_t heads = flight->heads, qk_dim = flight->qk_dim, v_dim = flight->v_dim;
  const int64_t k_row = k_row_elements(*flight), v_row = v_row_elements(*flight);
  const auto& options = flight->options;
  auto received = finish_exchange(&flight->exchange);

  // Server: fused backward, dK/dV summed per prefix row (latent mode: then through the
  // expansion's backward to d(latent) per prefix row and the weight gradient).
  std::vector<torch::Tensor> back(world_);
  if (server_ >= 0) {
    const int span = timeline_ != nullptr ? timeline_->begin_compute("attention bwd (server)") : -1;
    auto dout_fused =
        self_q_.whole ? flight->dout : torch::empty({server_q_rows_, heads, v_dim}, options);
    for (int p = 0; p < world_; ++p) {
      if (q_recv_count_[p] == 0) continue;
      if (p == rank_) {
        if (!self_q_.whole) {
          copy_self(self_q_, dout_fused, q_recv_rows_[p], flight->dout, q_send_rows_[p]);
        }
        continue;
      }
      dout_fused.index_copy_(0, q_recv_rows_[p], received[p].view({-1, heads, v_dim}));
    }
    const VarlenBatch& batch = batch_;
    const torch::Tensor& expand = kv_expand_rows_;
    torch::Tensor k_rows = state.k, v_rows = state.v;
    if (latent_) {
      ExpandedKv expanded = expand_latent(*latent_, state.k, state.v);  // recomputed, see forward
      k_rows = expanded.k;
      v_rows = expanded.v;
    }
    BackwardResult grads = kernel_.backward(
        dout_fused, state.q, expand_is_identity_ ? k_rows : k_rows.index_select(0, expand),
        expand_is_identity_ ? v_rows : v_rows.index_select(0, expand), state.out, state.lse,
        batch, softmax_scale_);
    // Per prefix row. Latent mode sums in the expansion's accumulation dtype (fp32, fp64 for
    // fp64), since its backward reads them in that dtype anyway.
    const auto sum_options =
        latent_ ? options.dtype(options.dtype() == torch::kDouble ? torch::kDouble : torch::kFloat)
                : options;
    auto per_prefix = [&](const torch::Tensor& g) {
      if (expand_is_identity_) return g;
      return torch::zeros({server_kv_rows_, g.size(1), g.size(2)}, sum_options)
          .index_add_(0, expand, g.to(sum_options.dtype()));
    };
    auto dk_prefix = per_prefix(grads.dk);
    auto dv_prefix = per_prefix(grads.dv);
    if (latent_) {
      LatentGrads latent_grads =
          expand_latent_backward(*latent_, state.k, state.v, dk_prefix, dv_prefix);
      dk_prefix = latent_grads.dlatent;  // [server kv rows, 1, latent + rope]
      dv_prefix = torch::Tensor();
      flight->dw = latent_grads.dw;
    }
    for (int p = 0; p < world_; ++p) {
      if (p == rank_) {
        back[p] = torch::empty({0}, options);
        continue;
      }
      // Exchanged in the compute dtype (the owner sums the contributions in fp32).
      std::vector<torch::Tensor> rows{
          grads.dq.index_select(0, q_recv_rows_[p]).reshape({-1}),
          dk_prefix.index_select(0, kv_recv_rows_[p]).reshape({-1}).to(options.dtype())};
      if (!latent_) rows.push_back(dv_prefix.index_select(0, kv_recv_rows_[p]).reshape({-1}));
      back[p] = torch::cat(rows);
    }
    flight->dq = grads.dq;
    flight->dk_prefix = dk_prefix;
    flight->dv_prefix = dv_prefix;
    if (timeline_ != nullptr) timeline_->end_compute(span);
  } else {
    for (int p = 0; p < world_; ++p) back[p] = torch::empty({0}, options);
  }
  // dQ back to the query owners; dK/dV (latent mode: d(latent)) summed at their owners.
  std::vector<int64_t> back_elements(world_), kv_elements(world_);
  for (int p = 0; p < world_; ++p) {
    back_elements[p] = q_send_count_[p] * heads * qk_dim + kv_send_count_[p] * (k_row + v_row);
    kv_elements[p] = kv_recv_count_[p] * (k_row + v_row);  // what this server returns
  }
  flight->exchange = start_exchange(back, back_elements, options, &backward_bytes_,
                                    "a2a bwd: dq,dkv back", &kv_elements);
  flight->dout = torch::Tensor();
  flight->served = true;
}

std::vector<torch::Tensor> CadDispatch::backward_finish(Flight* flight) {
  CADRE_CHECK(flight->served, "CAD attention: backward_finish before backward_serve");
  const int64_t heads = flight->heads, kv_heads = flight->kv_heads, qk_dim = flight->qk_dim,
                v_dim = flight->v_dim;
  const int64_t k_row = k_row_elements(*flight), v_row = v_row_elements(*flight);
  const auto& options = flight->options;
  auto returned = finish_exchange(&flight->exchange);
  // Latent mode sums d(latent) in fp32 (fp64 for fp64) and casts once at the end.
  const auto sum_options =
      latent_ ? options.dtype(options.dtype() == torch::kDouble ? torch::kDouble : torch::kFloat)
              : options;
  const std::vector<int64_t> k_shape{local_tokens_, latent_ ? 1 : kv_heads,
                                     latent_ ? latent_->row_width() : qk_dim};
  // A rank whose own rows are the whole of both buffers gets no rows from anyone else.
  auto dq = self_q_.whole ? flight->dq : torch::empty({local_tokens_, heads, qk_dim}, options);
  auto dk = self_kv_.whole ? flight->dk_prefix : torch::zeros(k_shape, sum_options);
  torch::Tensor dv;
  if (!latent_) {
    dv = self_kv_.whole ? flight->dv_prefix : torch::zeros({local_tokens_, kv_heads, v_dim}, options);
  }
  for (int p = 0; p < world_; ++p) {
    const int64_t nq = q_send_count_[p] * heads * qk_dim;
    const int64_t nk = kv_send_count_[p] * k_row, nv = kv_send_count_[p] * v_row;
    if (p == rank_) {
      if (!self_q_.whole && q_send_count_[p] > 0) {
        copy_self(self_q_.reversed(), dq, q_send_rows_[p], flight->dq, q_recv_rows_[p]);
      }
      if (!self_kv_.whole && kv_send_count_[p] > 0) {
        if (self_kv_.contiguous) {
          dk.narrow(0, self_kv_.src, self_kv_.rows)
              .add_(flight->dk_prefix.narrow(0, self_kv_.dst, self_kv_.rows));
          if (!latent_) {
            dv.narrow(0, self_kv_.src, self_kv_.rows)
                .add_(flight->dv_prefix.narrow(0, self_kv_.dst, self_kv_.rows));
          }
        } else {
          dk.index_add_(0, kv_send_rows_[p], flight->dk_prefix.index_select(0, kv_recv_rows_[p]));
          if (!latent_) {
            dv.index_add_(0, kv_send_rows_[p], flight->dv_prefix.index_select(0, kv_recv_rows_[p]));
          }
        }
      }
      continue;
    }
    if (q_send_count_[p] > 0) {
      dq.index_copy_(0, q_send_rows_[p], returned[p].narrow(0, 0, nq).view({-1, heads, qk_dim}));
    }
    if (kv_send_count_[p] > 0) {
      dk.index_add_(0, kv_send_rows_[p],
                    returned[p].narrow(0, nq, nk).view({-1, k_shape[1], k_shape[2]})
                        .to(sum_options.dtype()));
      if (!latent_) {
        dv.index_add_(0, kv_send_rows_[p],
                      returned[p].narrow(0, nq + nk, nv).view({-1, kv_heads, v_dim}));
      }
    }
  }
  flight->dq = flight->dk_prefix = flight->dv_prefix = torch::Tensor();
  if (!latent_) return {dq, dk, dv};
  // dw: this rank's server's weight gradient (zeros where it served nothing), in w's dtype.
  auto dw = flight->dw.defined() ? flight->dw.to(w_options_for_backward_.dtype())
                                 : torch::zeros(w_sizes_for_backward_, w_options_for_backward_);
  flight->dw = torch::Tensor();
  return {dq, dk.to(options.dtype()), dw};
}

}  // namespace cadre::attention_server
