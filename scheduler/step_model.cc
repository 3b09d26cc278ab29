// The runtime's step, priced: nano-batch split and plans as the trainer makes them, then the step
// executor's program replayed on a compute and a communication stream per rank, collectives
// starting when every rank has issued them (runtime/step_executor.cc has the order this mirrors).
#include "scheduler/step_model.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <map>
#include <numeric>

#include "common/error.h"
#include "scheduler/cost_model.h"
#include "scheduler/planner.h"
#include "scheduler/simulator.h"

namespace cadre::scheduler {
namespace {

// One attention kernel call whose table time is `table_us`, of fused sequences x query heads on
// the GPU `sequences`.
double attention_call(const StepCalibration& cal, double table_us, double sequences,
                      bool forward) {
  return table_us * (forward ? cal.attention_forward_scale : cal.attention_backward_scale) +
         cal.attention_call_us +
         sequences *
             (forward ? cal.attention_forward_sequence_us : cal.attention_backward_sequence_us);
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Durations of one rank's work, per nano-batch (micro-batch-major) and layer.
struct RankCosts {
  std::vector<double> embed_f, embed_b, head;            // per nano
  std::vector<std::vector<double>> qkv_f, qkv_r, qkv_b;  // [nano][layer]
  std::vector<std::vector<double>> mlp_f, mlp_r, mlp_b;
  std::vector<std::vector<double>> attn_f, attn_b;  // [nano][layer] (same every layer)
  std::vector<bool> serves;                         // per nano: runs an attention call
  std::vector<bool> worker_nano;                    // per nano: has the model's work
  double optimizer = 0;
  int calls = 0;
};

// Exchange stage durations per nano: [stage 0..3] = fwd out, fwd back, bwd out, bwd back.
struct NanoExchanges {
  bool dispatched = false;
  std::vector<std::array<double, 4>> us;      // per rank
  std::vector<std::array<int64_t, 4>> bytes;  // per rank (sent + received)
};

}  // namespace

std::vector<std::vector<int>> split_nano_batches(const std::vector<int64_t>& lengths, int parts,
                                                 const std::vector<int>& pinned) {
  std::vector<int64_t> load(parts, 0);
  std::vector<int> group(lengths.size(), -1);
  for (int d : pinned) {
    if (group[d] == 0) continue;
    group[d] = 0;
    load[0] += lengths[d];
  }
  std::vector<int> order;
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (group[i] < 0) order.push_back(static_cast<int>(i));
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return lengths[a] > lengths[b]; });
  for (int d : order) {
    const int g = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    group[d] = g;
    load[g] += lengths[d];
  }
  std::vector<std::vector<int>> out(parts);
  for (size_t d = 0; d < lengths.size(); ++d) out[group[d]].push_back(static_cast<int>(d));
  return out;
}

StageBytes exchange_stage_bytes(const Plan& plan, int32_t rank, bool to_servers, bool with_kv,
                                int64_t q_bytes, int64_t kv_bytes) {
  StageBytes b;
  for (const PeerTransfer& t : plan.transfers) {
    const int32_t server = plan.server_ranks[t.server];
    if (server == t.owner) continue;
    const int64_t bytes = t.q_rows() * q_bytes + (with_kv ? t.kv_rows() * kv_bytes : 0);
    const int32_t from = to_servers ? t.owner : server;
    const int32_t to = to_servers ? server : t.owner;
    if (from == rank) b.sent += bytes;
    if (to == rank) b.received += bytes;
  }
  return b;
}

namespace {
double layer_parameters(const config::ModelConfig& m, int32_t tp) {
  const double h = m.hidden_size(), q = static_cast<double>(m.num_heads()) * m.head_dim();
  const double kv = static_cast<double>(m.num_kv_heads()) * m.head_dim();
  return (h * (q + 2 * kv) + q * h + 3.0 * h * m.ffn_hidden_size()) / std::max(1, tp) + 2 * h;
}
}  // namespace

double worker_parameters(const config::ModelConfig& m, int32_t tp) {
  const double h = m.hidden_size(), vocab = m.vocab_size();
  const double embedding = vocab * h / std::max(1, tp);
  return m.num_layers() * layer_parameters(m, tp) + h + embedding +
         (m.tie_embeddings() ? 0.0 : embedding);
}

std::vector<GradientBucket> gradient_buckets(const config::ModelConfig& m, int32_t tp,
                                             int64_t bucket_bytes) {
  // As runtime::GradientReducer: the final norm (and an untied head) ride with the last layers;
  // layers L-1 ... 0 in buckets of at least bucket_bytes; the embedding alone at the end.
  const double h = m.hidden_size(),
               embedding = static_cast<double>(m.vocab_size()) * h / std::max(1, tp);
  std::vector<GradientBucket> out;
  double pending = h + (m.tie_embeddings() ? 0.0 : embedding);
  for (int l = m.num_layers() - 1; l >= 0; --l) {
    pending += layer_parameters(m, tp);
    if (pending * 4 >= bucket_bytes || l == 0) {
      out.push_back({static_cast<int64_t>(pending * 4), l});
      pending = 0;
    }
  }
  out.push_back({static_cast<int64_t>(embedding * 4), -1});
  return out;
}

// Elements of the largest gradient tensor the optimizer phase copies to fp64 on one GPU: the
// largest parameter (plain AdamW), or the largest gradient bucket's slice (sharded).
double largest_gradient_elements(const config::RunConfig& config, int32_t tp, int32_t dp) {
  const auto& m = config.model();
  const double h = m.hidden_size();
  if (!config.training().shard_optimizer()) {
    return std::max({static_cast<double>(m.vocab_size()) * h, h * m.ffn_hidden_size(),
                     h * m.num_heads() * m.head_dim()}) /
           tp;
  }
  int64_t bucket = 0;
  for (const GradientBucket& b :
       gradient_buckets(m, tp, static_cast<int64_t>(config.training().grad_bucket_mib()) << 20)) {
    bucket = std::max(bucket, b.bytes);
  }
  return std::ceil(bucket / 4.0 / dp);
}

StepPrice price_training_step(const config::RunConfig& config,
                              const std::vector<MicroBatchDocuments>& micro_batches,
                              const StepCalibration& cal) {
  const auto& model = config.model();
  const auto& training = config.training();
  const auto& cluster = config.cluster();
  const int world = cluster.num_gpus();
  const bool dedicated = config.scheduler().server_mode() == "dedicated";
  const int workers = dedicated ? world - config.scheduler().num_dedicated_servers() : world;
  const bool cad = training.attention() == "cad";
  const int nano_count = cad && training.ping_pong() ? 2 : 1;
  const bool recompute = training.recompute() == "linear";
  const int layers = model.num_layers();
  const int tp = std::max(1, cluster.tensor_parallel());
  CADRE_CHECK(workers >= 1 && !micro_batches.empty(), "step model: ", workers, " workers and ",
              micro_batches.size(), " micro-batches; accepted: at least one of each");
  for (const auto& mb : micro_batches) {
    CADRE_CHECK(static_cast<int>(mb.size()) == workers, "step model: a micro-batch has ", mb.size(),
                " workers' documents; the cluster has ", workers, " workers");
  }
  // Planning prices as the trainer does (the cluster's attention table, unscaled) so the plans
  // are the runtime's; pricing uses the calibration's table and scales.
  const double heads_per_gpu =
      std::max(1, model.num_heads() / std::max(1, cluster.tensor_parallel()));
  CostModel planning(model, cluster, calibration_for(cluster, model),
                     kv_shipping_for(config.scheduler()));
  const CalibrationTable* measured =
      cluster.attention_calibration().empty() ? attention_table_for(cal, model, tp) : nullptr;
  CostModel pricing(model, cluster,
                    measured != nullptr ? *measured : calibration_for(cluster, model));
  const PlannerOptions options = planner_options(config);
  std::vector<int32_t> servers;
  for (int r = dedicated ? workers : 0; r < world; ++r) servers.push_back(r);
  const int64_t element = training.dtype() == "bf16" ? 2 : 4;
  // Bytes per row as the dispatcher ships them (the cost model's bf16 prices in the run's dtype):
  // Q and dQ at the query/key width, O and dO at the value width, K/V rows as shipped (latent or
  // expanded under MLA).
  const int64_t q_row = planning.q_bytes_per_token() * element / 2;
  const int64_t o_row = planning.o_bytes_per_token() * element / 2;
  const int64_t kv_row = planning.kv_bytes_per_token() * element / 2;
  auto seg = [&](const char* kind, const char* direction, int64_t tokens) {
    return cal.segment(kind, direction).us(segment_work(kind, model, tp, tokens));
  };
  auto link_us = [&](int64_t bytes) {
    const bool inter = world > cluster.gpus_per_node();
    const LinkCost* l = cal.link(inter ? "inter_node" : "intra_node");
    if (l != nullptr) return l->us(static_cast<double>(bytes));
    const double gbps =
        inter ? cluster.inter_node_bandwidth_gbps() : cluster.intra_node_bandwidth_gbps();
    return bytes > 0 ? bytes / (gbps * 1e3) : 0.0;
  };

  const int total_nanos = static_cast<int>(micro_batches.size()) * nano_count;
  std::vector<RankCosts> costs(world);
  std::vector<NanoExchanges> exchanges(total_nanos);
  std::vector<double> rank_attention_bytes(world, 0);
  std::vector<MemoryByComponent> rank_above(world);  // above the state, at each rank's peak
  const ElementwiseOps ops = elementwise_ops(config);
  const double weight_copies = saved_weight_copy_bytes(model, tp, training.recompute(), ops);
  std::vector<std::vector<int64_t>> nano_tokens(workers);
  const ActivationBytes act =
      activation_bytes_per_token_per_layer(model, tp, training.recompute(), ops);
  for (RankCosts& c : costs) {
    c.embed_f.assign(total_nanos, 0);
    c.embed_b.assign(total_nanos, 0);
    c.head.assign(total_nanos, 0);
    for (auto* v :
         {&c.qkv_f, &c.qkv_r, &c.qkv_b, &c.mlp_f, &c.mlp_r, &c.mlp_b, &c.attn_f, &c.attn_b}) {
      v->assign(total_nanos, std::vector<double>(layers, 0.0));
    }
    c.serves.assign(total_nanos, false);
    c.worker_nano.assign(total_nanos, false);
  }
  for (size_t m = 0; m < micro_batches.size(); ++m) {
    const MicroBatchDocuments& mb = micro_batches[m];
    std::vector<std::vector<std::vector<int>>> nano_docs(workers);
    for (int r = 0; r < workers; ++r) {
      std::vector<int> pinned;
      if (mb[r].first_continues) pinned.push_back(0);
      if (mb[r].last_continues) pinned.push_back(static_cast<int>(mb[r].lengths.size()) - 1);
      nano_docs[r] = split_nano_batches(mb[r].lengths, nano_count, pinned);
    }
    std::vector<double> micro_activation(world, 0);
    std::vector<std::vector<int64_t>> micro_nano_tokens(workers);
    for (int j = 0; j < nano_count; ++j) {
      const int index = static_cast<int>(m) * nano_count + j;
      std::vector<std::vector<int64_t>> lengths(workers);
      std::vector<bool> continues(workers, false);
      for (int r = 0; r < workers; ++r) {
        for (int d : nano_docs[r][j]) lengths[r].push_back(mb[r].lengths[d]);
        continues[r] = mb[r].first_continues && j == 0;
      }
      const Layout layout = layout_from_rank_pieces(lengths, continues);
      bool spanning = false;
      for (const auto& doc : layout.documents) spanning |= doc.pieces.size() > 1;
      for (int r = 0; r < workers; ++r) {
        const int64_t tokens = std::accumulate(lengths[r].begin(), lengths[r].end(), int64_t{0});
        RankCosts& c = costs[r];
        c.worker_nano[index] = true;
        c.embed_f[index] = seg("embedding", "forward", tokens);
        c.embed_b[index] = seg("embedding", "backward", tokens);
        c.head[index] = seg("head_loss", "step", tokens);
        for (int l = 0; l < layers; ++l) {
          c.qkv_f[index][l] = seg("qkv", "forward", tokens);
          c.mlp_f[index][l] = seg("out_mlp", "forward", tokens);
          c.qkv_b[index][l] = seg("qkv", "backward", tokens);
          c.mlp_b[index][l] = seg("out_mlp", "backward", tokens);
          if (recompute) {
            c.qkv_r[index][l] = seg("qkv", "recompute", tokens);
            c.mlp_r[index][l] = seg("out_mlp", "recompute", tokens);
          }
        }
        nano_tokens[r].push_back(tokens);
        micro_nano_tokens[r].push_back(tokens);
        micro_activation[r] += tokens * act.owner;
      }
      NanoExchanges& ex = exchanges[index];
      ex.us.assign(world, {0, 0, 0, 0});
      ex.bytes.assign(world, {0, 0, 0, 0});
      if (cad || spanning) {
        const Plan plan =
            cad ? plan_cad(layout, servers, world, planning, options) : plan_colocated(layout);
        ex.dispatched = true;
        for (size_t s = 0; s < plan.server_ranks.size(); ++s) {
          const int r = plan.server_ranks[s];
          const ServerBatch& batch = plan.batches[s];
          double f = 0, b = 0, sequences = 0;
          for (int32_t t : batch.tasks) {
            const CaTask& task = plan.tasks[t];
            f += pricing.attention_forward_us(task.q_end - task.q_begin, task.q_end);
            b += pricing.attention_backward_us(task.q_end - task.q_begin, task.q_end);
            if (task.q_end > task.q_begin) sequences += heads_per_gpu;
          }
          costs[r].serves[index] = true;
          for (int l = 0; l < layers; ++l) {
            costs[r].attn_f[index][l] = attention_call(cal, f, sequences, true);
            costs[r].attn_b[index][l] = attention_call(cal, b, sequences, false);
          }
          micro_activation[r] += batch.q_rows * act.query + batch.kv_rows * act.key;
          rank_attention_bytes[r] = std::max<double>(
              rank_attention_bytes[r],
              batch.q_rows * static_cast<double>(q_row + o_row) + batch.kv_rows * kv_row);
        }
        for (int r = 0; r < world; ++r) {
          // Forward out (Q, K/V), forward back (O), backward out (dO), backward back (dQ, dK/dV).
          const StageBytes st[4] = {exchange_stage_bytes(plan, r, true, true, q_row, kv_row),
                                    exchange_stage_bytes(plan, r, false, false, o_row, kv_row),
                                    exchange_stage_bytes(plan, r, true, false, o_row, kv_row),
                                    exchange_stage_bytes(plan, r, false, true, q_row, kv_row)};
          for (int k = 0; k < 4; ++k) {
            ex.bytes[r][k] = st[k].sent + st[k].received;
            ex.us[r][k] = link_us(std::max(st[k].sent, st[k].received));
          }
        }
        for (const PeerTransfer& t : plan.transfers) {
          if (plan.server_ranks[t.server] != t.owner)
            micro_activation[t.owner] += t.q_rows() * act.output;
        }
      } else {
        for (int r = 0; r < workers; ++r) {
          double f = 0, b = 0, sequences = 0;
          for (int64_t len : lengths[r]) {
            f += pricing.attention_forward_us(len, len);
            b += pricing.attention_backward_us(len, len);
            if (len > 0) sequences += heads_per_gpu;
          }
          costs[r].serves[index] = true;
          for (int l = 0; l < layers; ++l) {
            costs[r].attn_f[index][l] = attention_call(cal, f, sequences, true);
            costs[r].attn_b[index][l] = attention_call(cal, b, sequences, false);
          }
          const int64_t tokens = std::accumulate(lengths[r].begin(), lengths[r].end(), int64_t{0});
          micro_activation[r] += tokens * (act.query + act.key);
        }
      }
    }
    // What each rank holds above its state at each point where its peak can fall, this
    // micro-batch in flight (micro-batches run one after another: one in flight at a time).
    for (int r = 0; r < world; ++r) {
      MemoryByComponent base;
      base.activations_gib = layers * micro_activation[r] / kGiB;
      std::vector<MemoryByComponent> candidates;
      MemoryByComponent serving = base;
      serving.attention_gib = rank_attention_bytes[r] / kGiB;
      serving.phase = "attention";
      candidates.push_back(serving);
      if (r < workers) {
        const auto& nanos = micro_nano_tokens[r];
        const int64_t tokens = std::accumulate(nanos.begin(), nanos.end(), int64_t{0});
        base.weight_copies_gib = weight_copies * layers * nano_count / kGiB;
        base.residual_gib = residual_bytes(model, tp, tokens) / kGiB;  // gradient buffers
        for (int64_t n : nanos) {
          MemoryByComponent head = base;
          const int64_t chunk = training.loss_chunk_tokens() > 0
                                    ? std::min<int64_t>(training.loss_chunk_tokens(), n)
                                    : n;
          head.residual_gib += residual_bytes(model, tp, n) / kGiB;  // its last layer's output
          head.loss_gib = loss_chunk_bytes(model, tp, chunk, ops) / kGiB;
          head.phase = "head";
          candidates.push_back(head);
          MemoryByComponent backward = base;
          backward.backward_gib =
              backward_layer_bytes(model, tp, training.recompute(), n, ops) / kGiB;
          backward.phase = "backward";
          candidates.push_back(backward);
        }
      }
      for (const MemoryByComponent& c : candidates) {
        if (c.above_state_gib() > rank_above[r].above_state_gib()) rank_above[r] = c;
      }
    }
  }
  const double parameters = worker_parameters(model, tp);
  for (int r = 0; r < workers; ++r) {
    costs[r].optimizer =
        cal.segment("optimizer", "step").us(segment_work("optimizer", model, 1, 0, parameters));
  }

  // --- replay the executor's program ----------------------------------------------------------
  std::vector<double> C(world, 0), M(world, 0), busy(world, 0);
  StepPrice price;
  std::vector<double> rank_calls(world, 0);
  double r0_a2a = 0, r0_reduce = 0;
  std::vector<std::pair<double, double>> r0_comm, r0_grad, r0_compute;  // intervals on rank 0
  auto compute = [&](int r, double us, double* kind_total) {
    if (us <= 0) return;
    if (r == 0) r0_compute.push_back({C[r], C[r] + us});
    C[r] += us;
    busy[r] += us;
    rank_calls[r] += 1;
    if (r == 0 && kind_total) *kind_total += us;
  };
  // A collective on the communication streams: starts when every rank has issued it and its
  // stream is free; ends together. Returns its end.
  auto collective = [&](const std::vector<double>& durations, bool grad) {
    double start = 0, longest = 0;
    for (int r = 0; r < world; ++r) start = std::max(start, std::max(C[r], M[r]));
    for (double d : durations) longest = std::max(longest, d);
    for (int r = 0; r < world; ++r) M[r] = start + longest;
    if (longest > 0) {
      (grad ? r0_grad : r0_comm).push_back({start, start + longest});
      (grad ? r0_reduce : r0_a2a) += longest;
    }
    return start + longest;
  };
  // Exchange (nano, layer, stage) end times.
  std::map<std::tuple<int, int, int>, double> done;
  auto issue = [&](int nano, int layer, int stage) {
    const NanoExchanges& ex = exchanges[nano];
    if (!ex.dispatched || world == 1) {
      done[{nano, layer, stage}] = 0;
      return;
    }
    std::vector<double> d(world);
    for (int r = 0; r < world; ++r) d[r] = ex.us[r][stage];
    done[{nano, layer, stage}] = collective(d, false);
    price.a2a_bytes += ex.bytes[0][stage];
  };
  auto wait = [&](int nano, int layer, int stage) {
    const double end = done[{nano, layer, stage}];
    for (int r = 0; r < world; ++r) C[r] = std::max(C[r], end);
  };
  // Buckets: in-place servers share the exchanges' stream; dedicated workers reduce after
  // backward on their own (modelled as the same streams, started at the end).
  const auto buckets =
      gradient_buckets(model, tp, static_cast<int64_t>(training.grad_bucket_mib()) << 20);
  size_t next_bucket = 0;
  const LinkCost* ar = cal.link("all_reduce");
  auto bucket_us = [&](int64_t bytes) {
    const double n = workers;
    const double moved = n > 1 ? bytes * 2.0 * (n - 1) / n : 0.0;
    if (ar != nullptr) return ar->latency_us + moved / (ar->gbps * 1e3);
    return moved / (cluster.intra_node_bandwidth_gbps() * 1e3);
  };
  auto start_buckets = [&](int layer) {
    while (next_bucket < buckets.size() && buckets[next_bucket].last_layer >= 0 &&
           buckets[next_bucket].last_layer >= layer) {
      collective(std::vector<double>(world, bucket_us(buckets[next_bucket].bytes)), true);
      ++next_bucket;
    }
  };
  const bool overlap = training.overlap_grad_reduce() && !dedicated;
  double kind_attention = 0, kind_linear = 0, kind_recompute = 0, kind_head = 0, kind_opt = 0;
  for (size_t m = 0; m < micro_batches.size(); ++m) {
    const int base = static_cast<int>(m) * nano_count;
    const bool last_micro = m + 1 == micro_batches.size();
    for (int j = 0; j < nano_count; ++j) {
      for (int r = 0; r < world; ++r) compute(r, costs[r].embed_f[base + j], &kind_head);
    }
    for (int l = 0; l < layers; ++l) {
      for (int j = 0; j < nano_count; ++j) {
        const int n = base + j;
        if (l > 0) {
          wait(n, l - 1, 1);
          for (int r = 0; r < world; ++r) compute(r, costs[r].mlp_f[n][l - 1], &kind_linear);
        }
        for (int r = 0; r < world; ++r) compute(r, costs[r].qkv_f[n][l], &kind_linear);
        issue(n, l, 0);
      }
      for (int j = 0; j < nano_count; ++j) {
        const int n = base + j;
        wait(n, l, 0);
        for (int r = 0; r < world; ++r) compute(r, costs[r].attn_f[n][l], &kind_attention);
        issue(n, l, 1);
      }
    }
    for (int j = 0; j < nano_count; ++j) {
      const int n = base + j;
      wait(n, layers - 1, 1);
      for (int r = 0; r < world; ++r) compute(r, costs[r].mlp_f[n][layers - 1], &kind_linear);
      for (int r = 0; r < world; ++r) compute(r, costs[r].head[n], &kind_head);
    }
    for (int l = layers - 1; l >= 0; --l) {
      for (int j = 0; j < nano_count; ++j) {
        const int n = base + j;
        if (l < layers - 1) {
          wait(n, l + 1, 3);
          for (int r = 0; r < world; ++r) {
            compute(r, costs[r].qkv_r[n][l + 1], &kind_recompute);
            compute(r, costs[r].qkv_b[n][l + 1], &kind_linear);
          }
        }
        for (int r = 0; r < world; ++r) {
          compute(r, costs[r].mlp_r[n][l], &kind_recompute);
          compute(r, costs[r].mlp_b[n][l], &kind_linear);
        }
        issue(n, l, 2);
      }
      if (l < layers - 1 && overlap && last_micro) start_buckets(l + 1);
      for (int j = 0; j < nano_count; ++j) {
        const int n = base + j;
        wait(n, l, 2);
        for (int r = 0; r < world; ++r) compute(r, costs[r].attn_b[n][l], &kind_attention);
        issue(n, l, 3);
      }
    }
    for (int j = 0; j < nano_count; ++j) {
      const int n = base + j;
      wait(n, 0, 3);
      for (int r = 0; r < world; ++r) {
        compute(r, costs[r].qkv_r[n][0], &kind_recompute);
        compute(r, costs[r].qkv_b[n][0], &kind_linear);
      }
      if (j == nano_count - 1 && overlap && last_micro) start_buckets(0);
      for (int r = 0; r < world; ++r) compute(r, costs[r].embed_b[n], &kind_head);
    }
  }
  // The reducer's finish: the rest of the buckets, then every rank waits for all of them.
  while (next_bucket < buckets.size()) {
    collective(std::vector<double>(world, bucket_us(buckets[next_bucket].bytes)), true);
    ++next_bucket;
  }
  for (int r = 0; r < world; ++r) C[r] = std::max(C[r], M[r]);
  for (int r = 0; r < world; ++r) compute(r, costs[r].optimizer, &kind_opt);

  // Rank 0's exposed communication: its communication intervals outside its compute intervals.
  auto exposed = [&](bool grad) {
    double total = 0;
    for (const auto& [s, e] : grad ? r0_grad : r0_comm) {
      double covered = 0;
      for (const auto& [cs, ce] : r0_compute)
        covered += std::max(0.0, std::min(e, ce) - std::max(s, cs));
      total += (e - s) - std::min(e - s, covered);
    }
    return total;
  };
  price.a2a_us = r0_a2a;
  price.grad_reduce_us = r0_reduce;
  price.exposed_a2a_us = exposed(false);
  price.exposed_grad_reduce_us = exposed(true);
  price.attention_us = kind_attention;
  price.linear_us = kind_linear;
  price.recompute_us = kind_recompute;
  price.head_embedding_us = kind_head;
  price.optimizer_us = kind_opt;
  price.rank_step_us.resize(world);
  for (int r = 0; r < world; ++r) {
    const double overhead = cal.step_overhead_us + cal.call_overhead_us * rank_calls[r];
    price.rank_step_us[r] = std::max(C[r], M[r]) + overhead;
    if (price.rank_step_us[r] >= price.step_us) {
      price.step_us = price.rank_step_us[r];
      price.overhead_us = overhead;
      price.compute_us = busy[r];
    }
  }

  price.nano_tokens = std::move(nano_tokens);

  // --- memory -----------------------------------------------------------------------------------
  const bool shard = training.shard_optimizer();
  const int dp = std::max(1, workers / tp);
  const double optimizer_step =
      optimizer_step_bytes(shard, largest_gradient_elements(config, tp, dp)) / kGiB;
  for (int r = 0; r < world; ++r) {
    MemoryByComponent mem = rank_above[r];
    if (r < workers) {
      // weights_optimizer_bytes_per_parameter split by component: the fp32 weights and
      // gradient buckets (4 + 4), with ZeRO-1 the reduced slice beside the gradients (4 / dp), and
      // the rest (moments; with ZeRO-1 also the master slice and two masks) the optimizer's.
      const double total = weights_optimizer_bytes_per_parameter(shard, dp) * parameters;
      const double slice = shard ? 4 * parameters / dp : 0;
      mem.weights_gib = 4 * parameters / kGiB;
      mem.gradients_gib = (4 * parameters + slice) / kGiB;
      mem.optimizer_gib = (total - 8 * parameters - slice) / kGiB;
      if (optimizer_step > mem.above_state_gib()) {  // activations are gone by then
        MemoryByComponent step;
        step.weights_gib = mem.weights_gib;
        step.gradients_gib = mem.gradients_gib;
        step.optimizer_gib = mem.optimizer_gib;
        step.optimizer_step_gib = optimizer_step;
        step.phase = "optimizer";
        mem = step;
      }
    }
    mem.fixed_gib = cal.memory_fixed_gib;
    mem.peak_gib =
        mem.state_gib() + cal.activation_memory_scale * mem.above_state_gib() + mem.fixed_gib;
    if (mem.peak_gib > price.memory.peak_gib) price.memory = mem;
  }
  return price;
}

config::RunConfig profile_run_config(const profile::RunProfile& p) {
  config::RunConfig c;
  auto* m = c.mutable_model();
  m->set_preset(p.model().preset());
  m->set_num_layers(p.model().num_layers());
  m->set_hidden_size(p.model().hidden_size());
  m->set_num_heads(p.model().num_heads());
  m->set_num_kv_heads(p.model().num_kv_heads());
  m->set_head_dim(p.model().head_dim());
  m->set_ffn_hidden_size(p.model().ffn_hidden_size());
  m->set_vocab_size(p.model().vocab_size());
  m->set_tie_embeddings(p.model().tie_embeddings());
  c.mutable_cluster()->set_num_gpus(p.ranks());
  c.mutable_cluster()->set_gpus_per_node(p.ranks());
  c.mutable_cluster()->set_tensor_parallel(std::max(1, p.tensor_parallel()));
  auto* t = c.mutable_training();
  t->set_attention(p.attention().empty() ? "cad" : p.attention());
  t->set_ping_pong(p.ping_pong());
  t->set_recompute(p.recompute().empty() ? "none" : p.recompute());
  t->set_loss_chunk_tokens(p.loss_chunk_tokens());
  if (p.grad_bucket_mib() > 0) t->set_grad_bucket_mib(p.grad_bucket_mib());
  t->set_overlap_grad_reduce(p.overlap_grad_reduce());
  t->set_shard_optimizer(p.shard_optimizer());
  // Profiles from before the field are priced as the GPU runtime runs now (fused kernels).
  c.mutable_simulate()->set_elementwise_ops(p.elementwise_ops().empty() ? "fused"
                                                                        : p.elementwise_ops());
  t->set_micro_batches(std::max(1, p.micro_batches()));
  t->set_dtype(p.dtype().empty() ? "bf16" : p.dtype());
  if (p.server_mode() == "dedicated") {
    c.mutable_scheduler()->set_server_mode("dedicated");
    c.mutable_scheduler()->set_num_dedicated_servers(p.ranks() - p.workers());
  }
  c.mutable_data()->set_context_length(p.context_length());
  return c;
}

int fit_memory(const std::vector<profile::RunProfile>& profiles, StepCalibration* cal) {
  StepCalibration unscaled = *cal;
  unscaled.activation_memory_scale = 1;
  unscaled.memory_fixed_gib = 0;
  std::vector<double> modelled, residual;
  for (const auto& p : profiles) {
    double measured = 0;
    for (const auto& step : p.steps()) {
      for (const auto& r : step.ranks())
        measured = std::max<double>(measured, r.peak_allocated_bytes());
    }
    if (measured <= 0) continue;
    const config::RunConfig config = profile_run_config(p);
    double fixed_part = 0, scaled_part = 0, best = -1;
    for (const auto& step : p.steps()) {
      std::vector<MicroBatchDocuments> micro(std::max(1, p.micro_batches()),
                                             MicroBatchDocuments(p.workers()));
      for (const auto& r : step.ranks()) {
        if (!r.worker() || r.rank() >= p.workers()) continue;
        for (const auto& nb : r.nano_batches()) {
          auto& docs = micro.at(nb.micro_batch())[r.rank()].lengths;
          docs.insert(docs.end(), nb.doc_lengths().begin(), nb.doc_lengths().end());
        }
      }
      const StepPrice price = price_training_step(config, micro, unscaled);
      const MemoryByComponent& mem = price.memory;
      if (mem.peak_gib > best) {
        best = mem.peak_gib;
        fixed_part = mem.state_gib();
        scaled_part = mem.above_state_gib();
      }
    }
    if (scaled_part <= 0) continue;
    modelled.push_back(scaled_part);
    residual.push_back(measured / (1024.0 * 1024.0 * 1024.0) - fixed_part);
  }
  if (modelled.empty()) return 0;
  double lo = modelled[0], hi = modelled[0];
  for (double v : modelled) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  double scale = 0, fixed = 0;
  if (modelled.size() >= 2 && hi - lo > 1e-6 * hi) {
    double n = modelled.size(), sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (size_t i = 0; i < modelled.size(); ++i) {
      sx += modelled[i];
      sy += residual[i];
      sxx += modelled[i] * modelled[i];
      sxy += modelled[i] * residual[i];
    }
    scale = (n * sxy - sx * sy) / (n * sxx - sx * sx);
    fixed = (sy - scale * sx) / n;
  }
  if (scale <= 0) {  // one size (or a fit that makes no sense): the scale alone
    double sx = 0, sy = 0;
    for (size_t i = 0; i < modelled.size(); ++i) {
      sx += modelled[i];
      sy += residual[i];
    }
    scale = sy / sx;
    fixed = 0;
  }
  cal->activation_memory_scale = scale;
  cal->memory_fixed_gib = fixed;
  return static_cast<int>(modelled.size());
}

}  // namespace cadre::scheduler
