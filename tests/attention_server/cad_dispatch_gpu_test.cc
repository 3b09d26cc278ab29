// CAD attention forward and backward on 2 ranks over NCCL with the flash kernel (GPU build,
// mpirun -np 2), against a single-process float64 reference of each document's causal attention.
// The plan is written out by hand (the planner and the runtime's CAD op are tested on CPU; this
// test checks the GPU pieces end to end): documents split into head and tail shards served on
// different ranks, a document whose K/V gradients come back from two servers and are summed at the
// owner, packing and unpacking with LibTorch index ops on device tensors, no host round trip.
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <memory>
#include <vector>

#include "attention_server/flash_kernel.h"
#include "comm/nccl_transport.h"
#include "tests/gpu_mpi_main.h"
#include "common/error.h"

namespace cadre::attention_server {
namespace {

comm::NcclTransport* g_transport = nullptr;

constexpr int64_t kHeads = 8, kKvHeads = 2, kHeadDim = 128;

struct Document {
  int owner;
  int64_t length;
  int64_t local_row;  // first row in the owner's local arrays
};

struct Task {
  int document;
  int64_t q_begin, q_end;
  int server;
};

// Rank 0 holds A (1500 tokens); rank 1 holds B (700) then C (300).
const std::vector<Document> kDocuments = {{0, 1500, 0}, {1, 700, 0}, {1, 300, 700}};
// A: head on rank 0, tail on rank 1. B: two shards on different servers, so its dK/dV come back
// from both and are summed at the owner. C: whole, served remotely.
const std::vector<Task> kTasks = {
    {0, 0, 900, 0}, {0, 900, 1500, 1}, {1, 0, 350, 1}, {1, 350, 700, 0}, {2, 0, 300, 1}};

// Sends flat bf16 tensors (one per peer) and returns the flat pieces received from each peer,
// whose element counts the plan determines.
std::vector<torch::Tensor> exchange(const std::vector<torch::Tensor>& send_per_peer,
                                    const std::vector<int64_t>& recv_elements,
                                    const torch::TensorOptions& options) {
  const int size = g_transport->size();
  comm::AllToAllLayout layout;
  int64_t send_at = 0, recv_at = 0;
  for (int peer = 0; peer < size; ++peer) {
    int64_t send_bytes = send_per_peer[peer].numel() * 2, recv_bytes = recv_elements[peer] * 2;
    layout.send_counts.push_back(send_bytes);
    layout.send_displs.push_back(send_at);
    layout.recv_counts.push_back(recv_bytes);
    layout.recv_displs.push_back(recv_at);
    send_at += send_bytes;
    recv_at += recv_bytes;
  }
  torch::Tensor send = torch::cat(send_per_peer).contiguous();
  torch::Tensor recv = torch::empty({recv_at / 2}, options);
  g_transport->all_to_all_v(send.data_ptr(), recv.data_ptr(), layout)->wait();
  std::vector<torch::Tensor> pieces;
  int64_t at = 0;
  for (int peer = 0; peer < size; ++peer) {
    pieces.push_back(recv.narrow(0, at, recv_elements[peer]));
    at += recv_elements[peer];
  }
  return pieces;
}

torch::Tensor rows(int64_t begin, int64_t end, const torch::Device& device) {
  return torch::arange(begin, end, torch::TensorOptions().dtype(torch::kLong).device(device));
}

int64_t q_elements(const Task& t) { return (t.q_end - t.q_begin) * kHeads * kHeadDim; }
int64_t kv_elements(const Task& t) { return t.q_end * kKvHeads * kHeadDim; }

// Float64 causal attention of one whole document and its gradients.
std::vector<torch::Tensor> reference(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, const torch::Tensor& dout) {
  auto q64 = q.to(torch::kDouble).requires_grad_(true);
  auto k64 = k.to(torch::kDouble).requires_grad_(true);
  auto v64 = v.to(torch::kDouble).requires_grad_(true);
  const int64_t n = q.size(0);
  auto ke = k64.repeat_interleave(kHeads / kKvHeads, 1),
       ve = v64.repeat_interleave(kHeads / kKvHeads, 1);
  auto scores = torch::einsum("qhd,khd->hqk", {q64, ke}) / std::sqrt(static_cast<double>(kHeadDim));
  auto mask =
      torch::ones({n, n}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).triu(1);
  scores = scores.masked_fill(mask, -INFINITY);
  auto out = torch::einsum("hqk,khd->qhd", {torch::softmax(scores, -1), ve});
  auto grads = torch::autograd::grad({out}, {q64, k64, v64}, {dout.to(torch::kDouble)});
  return {out.detach(), grads[0], grads[1], grads[2]};
}

double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.to(torch::kDouble);
  if (!torch::isfinite(g).all().item<bool>()) return INFINITY;
  double norm = want.norm().item<double>();
  return (g - want).norm().item<double>() / (norm > 0 ? norm : 1.0);
}

TEST(CadDispatch, ForwardBackwardMatchReferenceOnTwoRanks) {
  if (g_transport == nullptr) GTEST_SKIP() << "needs 2 ranks with one GPU each";
  if (g_transport->size() != 2) GTEST_SKIP() << "written for exactly 2 ranks";
  const int rank = g_transport->rank();
  const torch::Device device(torch::kCUDA, g_transport->device());
  g_transport->set_compute_stream(at::cuda::getCurrentCUDAStream().stream());
  auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(device);

  // Every rank draws every document's tensors (CPU generator, same seed) and keeps its own rows.
  torch::manual_seed(42);
  std::vector<std::vector<torch::Tensor>> docs;  // q, k, v, dout per document
  for (const Document& d : kDocuments) {
    docs.push_back({torch::randn({d.length, kHeads, kHeadDim}).to(bf16),
                    torch::randn({d.length, kKvHeads, kHeadDim}).to(bf16),
                    torch::randn({d.length, kKvHeads, kHeadDim}).to(bf16),
                    torch::randn({d.length, kHeads, kHeadDim}).to(bf16)});
  }
  int64_t local_tokens = 0;
  for (const Document& d : kDocuments) {
    if (d.owner == rank) local_tokens = std::max(local_tokens, d.local_row + d.length);
  }
  auto local = [&](int which, int64_t heads) {
    torch::Tensor t = torch::empty({local_tokens, heads, kHeadDim}, bf16);
    for (size_t i = 0; i < kDocuments.size(); ++i) {
      if (kDocuments[i].owner == rank)
        t.narrow(0, kDocuments[i].local_row, kDocuments[i].length).copy_(docs[i][which]);
    }
    return t;
  };
  torch::Tensor q = local(0, kHeads), k = local(1, kKvHeads), v = local(2, kKvHeads),
                dout = local(3, kHeads);

  // Pack (owner side): per server, for each of its tasks of my documents in task order,
  // Q rows [q_begin, q_end) then K and V rows [0, q_end).
  auto owned_by = [&](const Task& t, int owner) { return kDocuments[t.document].owner == owner; };
  std::vector<torch::Tensor> send(2);
  std::vector<int64_t> recv_elements(2, 0);
  for (int peer = 0; peer < 2; ++peer) {
    std::vector<torch::Tensor> pieces{torch::empty({0}, bf16)};
    for (const Task& t : kTasks) {
      const Document& d = kDocuments[t.document];
      if (t.server == peer && d.owner == rank) {
        auto q_rows = rows(d.local_row + t.q_begin, d.local_row + t.q_end, device);
        auto kv_rows = rows(d.local_row, d.local_row + t.q_end, device);
        pieces.push_back(q.index_select(0, q_rows).flatten());
        pieces.push_back(k.index_select(0, kv_rows).flatten());
        pieces.push_back(v.index_select(0, kv_rows).flatten());
      }
      if (t.server == rank && owned_by(t, peer))
        recv_elements[peer] += q_elements(t) + 2 * kv_elements(t);
    }
    send[peer] = torch::cat(pieces);
  }
  std::vector<torch::Tensor> received = exchange(send, recv_elements, bf16);

  // Server side: the fused batch of my tasks in task order.
  std::vector<const Task*> mine;
  std::vector<torch::Tensor> fq, fk, fv;
  std::vector<int64_t> cq{0}, ck{0};
  std::vector<int64_t> taken(2, 0);
  for (const Task& t : kTasks) {
    if (t.server != rank) continue;
    int owner = kDocuments[t.document].owner;
    torch::Tensor& piece = received[owner];
    int64_t nq = t.q_end - t.q_begin;
    fq.push_back(piece.narrow(0, taken[owner], q_elements(t)).view({nq, kHeads, kHeadDim}));
    taken[owner] += q_elements(t);
    fk.push_back(piece.narrow(0, taken[owner], kv_elements(t)).view({t.q_end, kKvHeads, kHeadDim}));
    taken[owner] += kv_elements(t);
    fv.push_back(piece.narrow(0, taken[owner], kv_elements(t)).view({t.q_end, kKvHeads, kHeadDim}));
    taken[owner] += kv_elements(t);
    cq.push_back(cq.back() + nq);
    ck.push_back(ck.back() + t.q_end);
    mine.push_back(&t);
  }
  VarlenBatch batch = make_varlen_batch(cq, ck, device);
  torch::Tensor sq = torch::cat(fq), sk = torch::cat(fk), sv = torch::cat(fv);
  auto kernel = make_flash_kernel();
  ForwardResult fwd = kernel->forward(sq, sk, sv, batch, 0.0);

  // Return outputs (server -> owner, Q layout reversed); unpack into local order.
  auto server_to_owner = [&](const std::vector<torch::Tensor>& per_task_rows, bool with_kv,
                             const std::vector<torch::Tensor>& dk_rows,
                             const std::vector<torch::Tensor>& dv_rows) {
    std::vector<torch::Tensor> out_send(2);
    std::vector<int64_t> back_elements(2, 0);
    for (int peer = 0; peer < 2; ++peer) {
      std::vector<torch::Tensor> pieces{torch::empty({0}, bf16)};
      for (size_t i = 0; i < mine.size(); ++i) {
        if (kDocuments[mine[i]->document].owner != peer) continue;
        pieces.push_back(per_task_rows[i].flatten());
        if (with_kv) {
          pieces.push_back(dk_rows[i].flatten());
          pieces.push_back(dv_rows[i].flatten());
        }
      }
      out_send[peer] = torch::cat(pieces);
      for (const Task& t : kTasks) {
        if (t.server == peer && kDocuments[t.document].owner == rank) {
          back_elements[peer] += q_elements(t) + (with_kv ? 2 * kv_elements(t) : 0);
        }
      }
    }
    return exchange(out_send, back_elements, bf16);
  };
  std::vector<torch::Tensor> out_rows;
  for (size_t i = 0; i < mine.size(); ++i) {
    out_rows.push_back(fwd.out.narrow(0, cq[i], cq[i + 1] - cq[i]));
  }
  std::vector<torch::Tensor> out_back = server_to_owner(out_rows, false, {}, {});
  torch::Tensor out = torch::full({local_tokens, kHeads, kHeadDim}, NAN, bf16);  // poisoned
  std::vector<int64_t> at(2, 0);
  for (const Task& t : kTasks) {
    const Document& d = kDocuments[t.document];
    if (d.owner != rank) continue;
    int64_t nq = t.q_end - t.q_begin;
    out.index_copy_(
        0, rows(d.local_row + t.q_begin, d.local_row + t.q_end, device),
        out_back[t.server].narrow(0, at[t.server], q_elements(t)).view({nq, kHeads, kHeadDim}));
    at[t.server] += q_elements(t);
  }

  // Backward: dO to servers (Q layout), then dQ, dK, dV back; dK/dV summed at the owner in fp32.
  std::vector<torch::Tensor> dout_send(2);
  std::vector<int64_t> dout_elements(2, 0);
  for (int peer = 0; peer < 2; ++peer) {
    std::vector<torch::Tensor> pieces{torch::empty({0}, bf16)};
    for (const Task& t : kTasks) {
      const Document& d = kDocuments[t.document];
      if (t.server == peer && d.owner == rank) {
        pieces.push_back(
            dout.index_select(0, rows(d.local_row + t.q_begin, d.local_row + t.q_end, device))
                .flatten());
      }
      if (t.server == rank && owned_by(t, peer)) dout_elements[peer] += q_elements(t);
    }
    dout_send[peer] = torch::cat(pieces);
  }
  std::vector<torch::Tensor> dout_received = exchange(dout_send, dout_elements, bf16);
  std::vector<torch::Tensor> fdo;
  std::fill(taken.begin(), taken.end(), 0);
  for (const Task* t : mine) {
    int owner = kDocuments[t->document].owner;
    int64_t nq = t->q_end - t->q_begin;
    fdo.push_back(
        dout_received[owner].narrow(0, taken[owner], q_elements(*t)).view({nq, kHeads, kHeadDim}));
    taken[owner] += q_elements(*t);
  }
  BackwardResult bwd = kernel->backward(torch::cat(fdo), sq, sk, sv, fwd.out, fwd.lse, batch, 0.0);
  std::vector<torch::Tensor> dq_rows, dk_rows, dv_rows;
  for (size_t i = 0; i < mine.size(); ++i) {
    dq_rows.push_back(bwd.dq.narrow(0, cq[i], cq[i + 1] - cq[i]));
    dk_rows.push_back(bwd.dk.narrow(0, ck[i], ck[i + 1] - ck[i]));
    dv_rows.push_back(bwd.dv.narrow(0, ck[i], ck[i + 1] - ck[i]));
  }
  std::vector<torch::Tensor> grads_back = server_to_owner(dq_rows, true, dk_rows, dv_rows);
  torch::Tensor dq = torch::full({local_tokens, kHeads, kHeadDim}, NAN, bf16);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device);
  torch::Tensor dk = torch::zeros({local_tokens, kKvHeads, kHeadDim}, f32),
                dv = torch::zeros_like(dk);
  std::fill(at.begin(), at.end(), 0);
  for (const Task& t : kTasks) {
    const Document& d = kDocuments[t.document];
    if (d.owner != rank) continue;
    torch::Tensor& piece = grads_back[t.server];
    int64_t nq = t.q_end - t.q_begin;
    dq.index_copy_(0, rows(d.local_row + t.q_begin, d.local_row + t.q_end, device),
                   piece.narrow(0, at[t.server], q_elements(t)).view({nq, kHeads, kHeadDim}));
    at[t.server] += q_elements(t);
    auto kv_rows = rows(d.local_row, d.local_row + t.q_end, device);
    dk.index_add_(0, kv_rows,
                  piece.narrow(0, at[t.server], kv_elements(t))
                      .view({t.q_end, kKvHeads, kHeadDim})
                      .to(torch::kFloat));
    at[t.server] += kv_elements(t);
    dv.index_add_(0, kv_rows,
                  piece.narrow(0, at[t.server], kv_elements(t))
                      .view({t.q_end, kKvHeads, kHeadDim})
                      .to(torch::kFloat));
    at[t.server] += kv_elements(t);
  }

  // Check my documents' rows against the single-process reference.
  for (size_t i = 0; i < kDocuments.size(); ++i) {
    const Document& d = kDocuments[i];
    if (d.owner != rank) continue;
    std::vector<torch::Tensor> ref = reference(docs[i][0], docs[i][1], docs[i][2], docs[i][3]);
    double e_out = relative_error(out.narrow(0, d.local_row, d.length), ref[0]);
    double e_dq = relative_error(dq.narrow(0, d.local_row, d.length), ref[1]);
    double e_dk = relative_error(dk.narrow(0, d.local_row, d.length), ref[2]);
    double e_dv = relative_error(dv.narrow(0, d.local_row, d.length), ref[3]);
    std::cout << "[cad dispatch] rank " << rank << " document " << i << " (" << d.length
              << " tokens): out " << e_out << " dq " << e_dq << " dk " << e_dk << " dv " << e_dv
              << "\n";
    EXPECT_LE(e_out, 1e-2) << "document " << i;
    EXPECT_LE(e_dq, 2e-2) << "document " << i;
    EXPECT_LE(e_dk, 2e-2) << "document " << i;
    EXPECT_LE(e_dv, 2e-2) << "document " << i;
  }
  g_transport->set_compute_stream(nullptr);
}

}  // namespace
}  // namespace cadre::attention_server

int main(int argc, char** argv) {
  return cadre::testing::run_gpu_mpi_tests(argc, argv, [](cadre::comm::NcclTransport* t, bool) {
    cadre::attention_server::g_transport = t;
  });
}
