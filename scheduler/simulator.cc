// The step simulator: builds each strategy's micro-batches from the same documents, prices them
// with the cost model (attention per sequence shape, linear per token, transfers per link), and
// composes 1F1B pipelines and data-parallel stragglers.
#include "scheduler/simulator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <set>

#include "common/error.h"
#include "scheduler/cost_model.h"
#include "scheduler/doc_lengths.h"
#include "scheduler/planner.h"
#include "scheduler/step_calibration.h"
#include "scheduler/step_model.h"

namespace cadre::scheduler {

namespace {

constexpr double kBf16Bytes = 2, kFp32Bytes = 4;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

struct Cluster {
  int32_t gpus, tp, pp, dp, micro_batches, layers_per_stage;
  int32_t nano_batches = 1;  // CAD with ping-pong: 2
  int64_t context;
};

// The calibrated costs (scheduler/step_calibration.h) the strategies share: linear work per
// token (every segment a layer runs, recomputation included when training.recompute = linear, the
// LM head, loss and embedding), fixed per-call costs per micro-batch, attention scales, links, and
// what every step adds once (optimizer, host overhead, the exposed part of the gradient
// all-reduce).
struct Pricing {
  const CostModel* cost = nullptr;
  // CAD's planning and shipping: K/V rows as the dispatcher ships them (latent or expanded under
  // MLA); the baselines' K/V all-gathers move the latent (`cost`).
  const CostModel* cad_cost = nullptr;
  double linear_per_token = 0;  // one stage's layers + head/loss/embedding, per token
  double fixed_per_nano = 0;    // per nano-batch (one call of each layer segment)
  double attention_forward_scale = 1, attention_backward_scale = 1, attention_call_us = 0;
  double attention_sequence_us = 0;  // forward + backward, per sequence of a fused call (all heads)
  LinkCost intra, inter, all_reduce_intra;
  double optimizer_us = 0, overhead_us = 0;
  double gradient_bytes = 0;  // fp32 gradients of one stage on one TP rank
  int32_t gradient_buckets = 1;
  double backward_fraction = 0.7;  // of a micro-batch's compute, the backward (and recompute)
  double layer_forward_per_token = 0, layer_backward_per_token = 0;  // one layer
  double tp_per_token = 0, tp_fixed_per_nano = 0;  // TP/SP collectives, in linear_per_token
  double forward_share = 1 / 3.5;  // of attention: forward (backward is 2.5x its FLOPs)
  double activation_scale = 1, memory_fixed_gib = 0;
  double link_us(double bytes, bool inter_node) const {
    return (inter_node ? inter : intra).us(bytes);
  }
};

// One data-parallel rank's micro-batches: per micro-batch attention and linear time of one
// pipeline stage (all its layers), and tokens.
struct RankWork {
  std::vector<double> attention_us, linear_us;
  std::vector<int64_t> tokens;
  double comm_us = 0;        // exposed communication of the whole step on this rank
  double step_fixed_us = 0;  // optimizer, host overhead, exposed gradient all-reduce
  double bytes = 0;
  // CAD only, per micro-batch (empty: attention colocated with the tokens): query and K/V-prefix
  // rows this rank holds as a server, and its own query rows computed elsewhere.
  std::vector<int64_t> served_q_rows, served_kv_rows, queries_away;
};

// Saved activations of one micro-batch of one rank, per layer.
double micro_batch_activation_bytes(const RankWork& r, size_t m, const ActivationBytes& a) {
  const double tokens = static_cast<double>(r.tokens[m]);
  if (r.served_q_rows.empty()) return tokens * a.per_token();
  return tokens * a.owner + static_cast<double>(r.served_q_rows[m]) * a.query +
         static_cast<double>(r.served_kv_rows[m]) * a.key +
         static_cast<double>(r.queries_away[m]) * a.output;
}

// Composes 1F1B and data parallelism from per-rank micro-batch times.
StepCost compose(const std::string& strategy, const std::vector<RankWork>& ranks,
                 const Cluster& c) {
  StepCost cost;
  cost.strategy = strategy;
  double worst = 0, sum_total = 0, attn_max = 0, attn_sum = 0;
  for (const RankWork& r : ranks) {
    double attention = 0, linear = 0, longest = 0;
    for (size_t i = 0; i < r.attention_us.size(); ++i) {
      attention += r.attention_us[i];
      linear += r.linear_us[i];
      longest = std::max(longest, r.attention_us[i] + r.linear_us[i]);
    }
    const double bubble = (c.pp - 1) * longest;
    const double total = attention + linear + bubble + r.comm_us + r.step_fixed_us;
    cost.attention_us += attention / ranks.size();
    cost.linear_us += linear / ranks.size();
    cost.pp_bubble_us += bubble / ranks.size();
    cost.exposed_comm_us += r.comm_us / ranks.size();
    cost.step_fixed_us += r.step_fixed_us / ranks.size();
    cost.bytes_per_rank += r.bytes / ranks.size();
    worst = std::max(worst, total);
    sum_total += total;
    attn_max = std::max(attn_max, attention);
    attn_sum += attention;
  }
  cost.dp_straggler_us = worst - sum_total / ranks.size();
  cost.step_us = worst;
  cost.attention_imbalance = attn_sum > 0 ? attn_max * ranks.size() / attn_sum : 1.0;
  return cost;
}

double sequence_attention_us(const Pricing& p, int64_t q, int64_t kv, const Cluster& c) {
  if (q <= 0) return 0;
  return c.layers_per_stage * (p.attention_forward_scale * p.cost->attention_forward_us(q, kv) +
                               p.attention_backward_scale * p.cost->attention_backward_us(q, kv) +
                               p.attention_sequence_us);
}

Pricing make_pricing(const config::RunConfig& config, const StepCalibration& cal,
                     const CostModel& cost, const Cluster& c) {
  const auto& model = config.model();
  const auto& cl = config.cluster();
  const bool recompute = config.training().recompute() == "linear";
  Pricing p;
  p.cost = &cost;
  auto per_token = [&](const char* kind, const char* direction) {
    return cal.segment(kind, direction).us_per_unit * segment_work(kind, model, c.tp, 1);
  };
  p.layer_forward_per_token = per_token("qkv", "forward") + per_token("out_mlp", "forward");
  p.layer_backward_per_token =
      per_token("qkv", "backward") + per_token("out_mlp", "backward") +
      (recompute ? per_token("qkv", "recompute") + per_token("out_mlp", "recompute") : 0.0);
  const double head = per_token("head_loss", "step") + per_token("embedding", "forward") +
                      per_token("embedding", "backward");
  // Tensor and sequence parallelism (Megatron-style, as issue 11 builds it): per layer, an
  // all-gather of the sequence-sharded hidden states before attention's and the MLP's column-
  // parallel GEMMs and a reduce-scatter after their row-parallel ones, forward (4) and backward
  // (4), plus the recomputation's 2 all-gathers; each moves (TP - 1) / TP of tokens x hidden bf16
  // values per rank over the intra-node link. Not overlapped (Megatron's default).
  if (c.tp > 1) {
    const double collectives = 8 + (recompute ? 2 : 0);
    const double bytes_per_token = 2.0 * model.hidden_size() * (c.tp - 1) / c.tp;
    const LinkCost* l = cal.link("intra_node");
    const double gbps = l ? l->gbps : cl.intra_node_bandwidth_gbps();
    p.tp_per_token = c.layers_per_stage * collectives * bytes_per_token / (gbps * 1e3);
    p.tp_fixed_per_nano = c.layers_per_stage * collectives * (l ? l->latency_us : 0.0);
  }
  // The LM head and loss run on the last stage, the embedding on the first; the slowest stage
  // sets a pipeline's pace, so every stage is charged both (exact for PP = 1).
  p.linear_per_token =
      c.layers_per_stage * (p.layer_forward_per_token + p.layer_backward_per_token) + head +
      p.tp_per_token;
  double fixed = 0;
  for (const char* kind : {"qkv", "out_mlp"}) {
    fixed += cal.segment(kind, "forward").fixed_us + cal.segment(kind, "backward").fixed_us +
             (recompute ? cal.segment(kind, "recompute").fixed_us : 0.0);
  }
  // One forward and one backward attention kernel call per layer too.
  p.fixed_per_nano = c.layers_per_stage * (fixed + 2 * cal.attention_call_us) +
                     p.tp_fixed_per_nano + cal.segment("head_loss", "step").fixed_us +
                     cal.segment("embedding", "forward").fixed_us +
                     cal.segment("embedding", "backward").fixed_us;
  p.backward_fraction = p.layer_backward_per_token /
                        std::max(1e-12, p.layer_forward_per_token + p.layer_backward_per_token);
  p.attention_forward_scale = cal.attention_forward_scale;
  p.attention_backward_scale = cal.attention_backward_scale;
  p.attention_call_us = cal.attention_call_us;
  p.attention_sequence_us =
      (cal.attention_forward_sequence_us + cal.attention_backward_sequence_us) *
      std::max(1, model.num_heads() / std::max(1, c.tp));
  const LinkCost* intra = cal.link("intra_node");
  const LinkCost* inter = cal.link("inter_node");
  const LinkCost* reduce = cal.link("all_reduce");
  p.intra = intra ? *intra : LinkCost{0, cl.intra_node_bandwidth_gbps(), 0, "cluster"};
  p.inter = inter ? *inter : LinkCost{0, cl.inter_node_bandwidth_gbps(), 0, "cluster"};
  p.all_reduce_intra = reduce ? *reduce : p.intra;
  const double parameters = parameters_per_stage(model, c.pp) / c.tp;
  p.optimizer_us = cal.segment("optimizer", "step").us(parameters / 1e6);
  p.overhead_us = cal.step_overhead_us;
  p.gradient_bytes = 4 * parameters;
  p.gradient_buckets = std::max<int32_t>(
      1, static_cast<int32_t>(
             std::ceil(p.gradient_bytes /
                       (static_cast<double>(config.training().grad_bucket_mib()) * 1024 * 1024))));
  p.activation_scale = cal.activation_memory_scale;
  p.memory_fixed_gib = cal.memory_fixed_gib;
  return p;
}

// What every step adds once on every rank: the optimizer step, host overhead, and the part of
// the data-parallel gradient all-reduce that backward does not hide. The runtime starts each
// bucket as backward finishes its layers (training.overlap_grad_reduce), so the reduction
// overlaps the last micro-batch's backward; the embedding's bucket, last, is always exposed.
// Ring all-reduce: 2 (n - 1) / n of the bytes per rank; inter-node once the DP group spans nodes.
void add_step_costs(const Pricing& p, const Cluster& c, std::vector<RankWork>* ranks) {
  const double n = c.dp;
  const bool inter_node =
      static_cast<int64_t>(c.dp) * c.tp * c.pp > p.cost->cluster().gpus_per_node();
  const LinkCost& link = inter_node ? p.inter : p.all_reduce_intra;
  const double moved = n > 1 ? p.gradient_bytes * 2 * (n - 1) / n : 0.0;
  const double reduce_us = p.gradient_buckets * link.latency_us + moved / (link.gbps * 1e3);
  const double last_bucket = reduce_us / p.gradient_buckets;
  for (RankWork& r : *ranks) {
    const size_t last = r.linear_us.empty() ? 0 : r.linear_us.size() - 1;
    const double window = r.linear_us.empty()
                              ? 0.0
                              : p.backward_fraction * (r.linear_us[last] + r.attention_us[last]);
    const double exposed = c.dp > 1 ? std::max(last_bucket, reduce_us - window) : 0.0;
    r.step_fixed_us += p.optimizer_us + p.overhead_us + exposed;
  }
}

// Every strategy computes the same attention: a document piece [b, e) (a document split at a
// chunk or context boundary) attends to its whole prefix, q = e - b queries against e keys.

// fixed: documents packed back to back into DP x M chunks of `context` tokens, split at chunk
// boundaries; chunk i is micro-batch i / DP of rank i % DP (wave-major, so a document split at a
// chunk boundary lands on neighbouring ranks of one wave), which computes its pieces' attention.
std::vector<RankWork> fixed_packing(const std::vector<int64_t>& lengths, const Pricing& pricing,
                                    const Cluster& c) {
  Layout layout = pack_sequential(lengths, c.dp * c.micro_batches, c.context);
  std::vector<RankWork> ranks(c.dp);
  for (auto& r : ranks) {
    r.attention_us.assign(c.micro_batches, 0);
    r.linear_us.assign(c.micro_batches, pricing.fixed_per_nano);  // one call of each segment
    r.tokens.assign(c.micro_batches, 0);
  }
  const double linear_per_token = pricing.linear_per_token;
  for (const PlacedDocument& doc : layout.documents) {
    for (const DocumentPiece& p : doc.pieces) {
      RankWork& r = ranks[p.rank % c.dp];
      const int m = p.rank / c.dp;
      const int64_t len = p.doc_end - p.doc_begin;
      r.attention_us[m] += sequence_attention_us(pricing, len, p.doc_end, c);
      r.linear_us[m] += len * linear_per_token;
      r.tokens[m] += len;
    }
  }
  return ranks;
}

// wlb, WLB-LLM-like (Wang et al., arXiv 2503.17924; docs/simulation.md cites the sections):
// context-parallel groups of `cp` ranks process micro-batches ("bins") of variable length.
//  1. Outlier delay: documents of at least simulate.wlb_outlier_tokens are held back and released
//     so that every step carries an even share; in the steady state one step sees, modelled
//     here, the outliers dealt round-robin over the bins before anything else.
//  2. Variable-length packing: the other documents, costliest first, onto the least loaded bin
//     with room (up to 1.25 x cp x context tokens; cost = attention + linear work).
//  3. Context parallelism with per-document sharding: inside a group every rank works on every
//     document of the micro-batch; documents of at least simulate.wlb_shard_threshold_tokens are
//     split head-tail per document, the rest either per document too or per sequence, whichever
//     the costs say is faster (adaptive selection; details below).
// Documents longer than a bin are cut into bin-sized pieces (each attends to its prefix).
std::vector<RankWork> workload_balanced(const std::vector<int64_t>& lengths, const Pricing& pricing,
                                        const Cluster& c, int32_t cp, int64_t outlier_tokens,
                                        int64_t shard_tokens) {
  const CostModel& cost = *pricing.cost;
  const double linear_per_token = pricing.linear_per_token;
  const int32_t groups = c.dp / cp;
  const int32_t bins = groups * c.micro_batches;
  const int64_t group_context = static_cast<int64_t>(cp) * c.context;
  const int64_t cap = group_context + group_context / 4;
  struct Piece {
    int64_t len, end;  // tokens and the prefix they attend to
    double cost;
    bool outlier;
  };
  std::vector<Piece> pieces;
  int64_t budget = static_cast<int64_t>(bins) * group_context;
  for (int64_t len : lengths) {
    for (int64_t begin = 0; begin < len && budget > 0; begin += group_context) {
      const int64_t piece = std::min({group_context, len - begin, budget});
      pieces.push_back(
          {piece, begin + piece,
           sequence_attention_us(pricing, piece, begin + piece, c) + piece * linear_per_token,
           len >= outlier_tokens});
      budget -= piece;
    }
  }
  std::stable_sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) {
    return a.outlier != b.outlier ? a.outlier : a.cost > b.cost;
  });
  std::vector<double> load(bins, 0);
  std::vector<int64_t> tokens(bins, 0);
  std::vector<std::vector<const Piece*>> members(bins);
  std::set<std::pair<double, int32_t>> by_load;
  for (int32_t b = 0; b < bins; ++b) by_load.insert({0.0, b});
  int32_t next_outlier_bin = 0;
  for (const Piece& p : pieces) {
    int32_t chosen = -1;
    if (p.outlier) {
      chosen = next_outlier_bin;
      next_outlier_bin = (next_outlier_bin + 1) % bins;
      if (tokens[chosen] + p.len > cap) chosen = -1;
    }
    if (chosen < 0) {
      chosen = by_load.begin()->second;
      for (const auto& entry : by_load) {
        if (tokens[entry.second] + p.len <= cap) {
          chosen = entry.second;
          break;
        }
      }
    }
    by_load.erase({load[chosen], chosen});
    load[chosen] += p.cost;
    tokens[chosen] += p.len;
    members[chosen].push_back(&p);
    by_load.insert({load[chosen], chosen});
  }
  // Bin b is micro-batch b / groups of group b % groups. Inside the group every rank works on
  // every document (context parallelism), sharded one of two ways, whichever makes the group's
  // slowest rank faster (the paper's adaptive selection, with our costs as its estimate):
  //  - per-document: each document in 2 x cp head-tail shards (equal work, at the shards' rate);
  //  - per-sequence, for documents under the threshold (the long ones stay per-document): the
  //    bin's concatenation cut into 2 x cp equal chunks, rank k taking chunks k and 2cp - 1 - k
  //    (equal tokens; each piece of a document attends to its prefix, so attention differs).
  // Either way each rank all-gathers the group's K/V per layer (and reduce-scatters dK/dV).
  std::vector<RankWork> ranks(c.dp);
  for (auto& r : ranks) {
    r.attention_us.assign(c.micro_batches, 0);
    r.linear_us.assign(c.micro_batches, 0);
    r.tokens.assign(c.micro_batches, 0);
  }
  const bool inter_node = cp * c.tp > cost.cluster().gpus_per_node();
  const int64_t kv_bytes = cost.kv_bytes_per_token();
  auto shard_attention = [&](const Piece* p) {
    const int64_t shard = std::max<int64_t>(1, p->len / (2 * cp));
    const double full = sequence_attention_us(pricing, p->len, p->end, c);
    const double rate = cost.attention_forward_backward_us(shard, p->len) /
                        std::max(1e-12, cost.attention_forward_backward_us(p->len, p->len)) *
                        static_cast<double>(causal_pairs(0, p->len)) /
                        static_cast<double>(causal_pairs(p->len - shard, p->len));
    return full * std::max(1.0, rate) / cp;
  };
  for (int32_t b = 0; b < bins; ++b) {
    const int32_t g = b % groups, m = b / groups;
    int64_t bin_tokens = 0;
    for (const Piece* p : members[b]) bin_tokens += p->len;
    std::vector<double> attention(cp, 0);
    if (cp == 1) {
      for (const Piece* p : members[b])
        attention[0] += sequence_attention_us(pricing, p->len, p->end, c);
    } else {
      // Per-document for all.
      double per_document = 0;
      for (const Piece* p : members[b]) per_document += shard_attention(p);
      // Per-sequence for the short ones.
      std::vector<double> mixed(cp, 0);
      int64_t short_tokens = 0;
      for (const Piece* p : members[b]) {
        if (p->len >= shard_tokens) {
          const double a = shard_attention(p);
          for (int32_t k = 0; k < cp; ++k) mixed[k] += a;
        } else {
          short_tokens += p->len;
        }
      }
      const int32_t chunks = 2 * cp;
      const int64_t chunk = std::max<int64_t>(1, (short_tokens + chunks - 1) / chunks);
      int64_t at = 0;  // position in the concatenation of the short documents
      for (const Piece* p : members[b]) {
        if (p->len >= shard_tokens) continue;
        // The document's tokens [at, at + len) of the concatenation, cut at chunk boundaries.
        for (int64_t s0 = at; s0 < at + p->len;) {
          const int64_t c0 = s0 / chunk;
          const int64_t e0 = std::min(at + p->len, (c0 + 1) * chunk);
          const int32_t k = static_cast<int32_t>(c0 < cp ? c0 : chunks - 1 - c0);
          const int64_t doc_end = p->end - p->len + (e0 - at);
          mixed[std::clamp<int32_t>(k, 0, cp - 1)] +=
              sequence_attention_us(pricing, e0 - s0, doc_end, c);
          s0 = e0;
        }
        at += p->len;
      }
      const double worst_mixed = *std::max_element(mixed.begin(), mixed.end());
      if (per_document <= worst_mixed) {
        std::fill(attention.begin(), attention.end(), per_document);
      } else {
        attention = mixed;
      }
    }
    const double gather_bytes =
        cp > 1 ? 2.0 * (cp - 1) * (static_cast<double>(bin_tokens) / cp) * kv_bytes : 0.0;
    const double comm =
        gather_bytes > 0 ? c.layers_per_stage * pricing.link_us(gather_bytes, inter_node) : 0.0;
    for (int32_t k = 0; k < cp; ++k) {
      RankWork& r = ranks[g * cp + k];
      const int64_t tokens = bin_tokens / cp;
      r.attention_us[m] = attention[k];
      r.linear_us[m] = tokens * linear_per_token + pricing.fixed_per_nano;
      r.tokens[m] = tokens;
      r.comm_us += std::max(0.0, comm - attention[k]);
      r.bytes += gather_bytes * c.layers_per_stage;
    }
  }
  return ranks;
}

// cp: groups of `cp` ranks process micro-batches of cp x context tokens; every document is cut
// into 2 x cp head/tail shards so each rank of the group gets equal attention; each rank
// all-gathers the group's K/V per layer (and reduce-scatters dK/dV), overlapped with attention.
std::vector<RankWork> context_parallel(const std::vector<int64_t>& lengths, const Pricing& pricing,
                                       const Cluster& c, int32_t cp) {
  const CostModel& cost = *pricing.cost;
  const int32_t groups = c.dp / cp;
  Layout layout = pack_sequential(lengths, groups * c.micro_batches, c.context * cp);
  std::vector<RankWork> ranks(c.dp);
  for (auto& r : ranks) {
    r.attention_us.assign(c.micro_batches, 0);
    r.linear_us.assign(c.micro_batches, 0);
    r.tokens.assign(c.micro_batches, c.context);
  }
  const double linear_per_token = pricing.linear_per_token;
  std::vector<double> group_attention(groups * c.micro_batches, 0);
  for (const PlacedDocument& doc : layout.documents) {
    for (const DocumentPiece& p : doc.pieces) {
      const int64_t len = p.doc_end - p.doc_begin;
      // Head/tail sharding balances the group: each rank does 1/cp of the work, at the rate of
      // shards of len / (2 cp) queries.
      const int64_t shard = std::max<int64_t>(1, len / (2 * cp));
      const double whole = sequence_attention_us(pricing, len, p.doc_end, c);
      const double shard_rate = cost.attention_forward_backward_us(shard, len) /
                                std::max(1e-12, cost.attention_forward_backward_us(len, len)) *
                                static_cast<double>(causal_pairs(0, len)) /
                                static_cast<double>(causal_pairs(len - shard, len));
      group_attention[p.rank] += whole * std::max(1.0, shard_rate) / cp;
    }
  }
  const bool inter_node = static_cast<int64_t>(cp) * c.tp * c.pp > 0 &&
                          cp * c.tp > 8;  // a CP group beyond one 8-GPU node
  const int64_t kv_bytes = cost.kv_bytes_per_token();
  for (int32_t g = 0; g < groups; ++g) {
    for (int32_t m = 0; m < c.micro_batches; ++m) {
      const double attention = group_attention[g * c.micro_batches + m];
      // Per layer: all-gather (cp - 1) x context tokens of K/V forward, reduce-scatter of dK/dV
      // backward; hidden behind that layer's attention where it is long enough.
      const double bytes_per_layer = 2.0 * (cp - 1) * c.context * kv_bytes;
      const double comm = c.layers_per_stage * pricing.link_us(bytes_per_layer, inter_node);
      for (int32_t k = 0; k < cp; ++k) {
        RankWork& r = ranks[g * cp + k];
        r.attention_us[m] = attention;
        r.linear_us[m] = c.context * linear_per_token + pricing.fixed_per_nano;
        r.comm_us += std::max(0.0, comm - attention);
        r.bytes += bytes_per_layer * c.layers_per_stage;
      }
    }
  }
  return ranks;
}

// cad: for each micro-batch wave, the DP ranks' micro-batches (sequential packing, documents split
// at chunk boundaries keep their context) are planned with plan_cad over the DP ranks as attention
// servers; each rank's attention is its server load; the dispatch is priced and hidden by
// ping-pong behind the other nano-batch's compute.
std::vector<RankWork> cad(const std::vector<int64_t>& lengths, const Pricing& pricing,
                          const Cluster& c, const PlannerOptions& options, double* planning_ms) {
  const CostModel& cost = pricing.cad_cost != nullptr ? *pricing.cad_cost : *pricing.cost;
  Layout all = pack_sequential(lengths, c.dp * c.micro_batches, c.context);
  std::vector<RankWork> ranks(c.dp);
  const double linear_per_token = pricing.linear_per_token;
  std::vector<int32_t> servers(c.dp);
  std::iota(servers.begin(), servers.end(), 0);
  const bool inter_node = static_cast<int64_t>(c.dp) * c.tp * c.pp > cost.cluster().gpus_per_node();
  for (int32_t m = 0; m < c.micro_batches; ++m) {
    // Wave m: chunks [m * DP, (m + 1) * DP), chunk m * DP + r on rank r.
    Layout wave;
    wave.num_ranks = c.dp;
    wave.tokens_per_rank.assign(c.dp, 0);
    for (const PlacedDocument& doc : all.documents) {
      PlacedDocument part{doc.id, 0, {}};
      int64_t offset = -1;
      for (const DocumentPiece& p : doc.pieces) {
        if (p.rank / c.dp != m) continue;
        if (offset < 0) offset = p.doc_begin;
        // A document that began in the previous wave restarts its context here (rare: one per
        // wave boundary); within a wave it keeps its prefix across ranks.
        part.pieces.push_back(
            {p.rank % c.dp, p.doc_begin - offset, p.doc_end - offset, p.local_row});
        wave.tokens_per_rank[p.rank % c.dp] =
            std::max(wave.tokens_per_rank[p.rank % c.dp], p.local_row + p.doc_end - p.doc_begin);
      }
      if (part.pieces.empty()) continue;
      part.length_tokens = part.pieces.back().doc_end;
      // Pieces of one wave must be contiguous in the document; a document with pieces in other
      // waves in between is cut there (its earlier tokens were in another micro-batch).
      bool contiguous = true;
      for (size_t i = 1; i < part.pieces.size(); ++i) {
        contiguous &= part.pieces[i].doc_begin == part.pieces[i - 1].doc_end;
      }
      if (!contiguous) {
        for (const DocumentPiece& p : part.pieces) {
          wave.documents.push_back({doc.id,
                                    p.doc_end - p.doc_begin,
                                    {{p.rank, 0, p.doc_end - p.doc_begin, p.local_row}}});
        }
        continue;
      }
      wave.documents.push_back(std::move(part));
    }
    PlanStats stats;
    const auto start = std::chrono::steady_clock::now();
    Plan plan = plan_cad(wave, servers, c.dp, cost, options, &stats);
    *planning_ms +=
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::vector<double> server_us(c.dp, 0);
    for (const CaTask& t : plan.tasks) {
      server_us[t.server] += sequence_attention_us(pricing, t.q_end - t.q_begin, t.q_end, c);
    }
    // Bytes each rank moves per layer (forward; backward moves about as much again).
    std::vector<double> bytes(c.dp, 0);
    // Per rank, bytes it sends and receives in the stage that carries K/V (forward out, backward
    // back) and in the one that carries query rows only (forward back, backward out).
    std::vector<double> kv_sent(c.dp, 0), kv_received(c.dp, 0), q_sent(c.dp, 0),
        q_received(c.dp, 0);
    std::vector<int64_t> queries_away(c.dp, 0);
    for (const PeerTransfer& tr : plan.transfers) {
      if (tr.owner == tr.server) continue;
      queries_away[tr.owner] += tr.q_rows();
      // Q and dQ at the query/key width, O and dO at the value width.
      const double q = static_cast<double>(tr.q_rows()) * cost.q_bytes_per_token();
      const double o = static_cast<double>(tr.q_rows()) * cost.o_bytes_per_token();
      const double kv = static_cast<double>(tr.kv_rows()) * cost.kv_bytes_per_token();
      const double b = q + o + kv;
      bytes[tr.owner] += b;
      bytes[tr.server] += b;
      kv_sent[tr.owner] += q + kv;
      kv_received[tr.server] += q + kv;
      q_sent[tr.server] += o;
      q_received[tr.owner] += o;
    }
    for (int32_t r = 0; r < c.dp; ++r) {
      RankWork& rank = ranks[r];
      const double linear =
          wave.tokens_per_rank[r] * linear_per_token + c.nano_batches * pricing.fixed_per_nano;
      rank.attention_us.push_back(server_us[r]);
      rank.linear_us.push_back(linear);
      rank.tokens.push_back(wave.tokens_per_rank[r]);
      rank.served_q_rows.push_back(plan.batches[r].q_rows);
      rank.served_kv_rows.push_back(plan.batches[r].kv_rows);
      rank.queries_away.push_back(queries_away[r]);
      const double step_bytes = 2.0 * bytes[r] * c.layers_per_stage;
      // Ping-pong in the step executor's order (runtime/step_executor.cc): per layer and
      // direction, nano-batch A's dispatch runs under B's linear segment, B's under A's
      // attention, A's return under B's attention and B's return under A's next linear segment.
      // Each exchange moves half the micro-batch's bytes (one nano-batch), forward and backward
      // alike; what a segment cannot cover is exposed.
      const double layers = c.layers_per_stage;
      const double half_tokens = 0.5 * wave.tokens_per_rank[r];
      const double with_kv =
          pricing.link_us(0.5 * std::max(kv_sent[r], kv_received[r]), inter_node);
      const double rows = pricing.link_us(0.5 * std::max(q_sent[r], q_received[r]), inter_node);
      const double attn_f = 0.5 * server_us[r] / layers * pricing.forward_share;
      const double attn_b = 0.5 * server_us[r] / layers * (1 - pricing.forward_share);
      const double lin_f = half_tokens * pricing.layer_forward_per_token;
      const double lin_b = half_tokens * pricing.layer_backward_per_token;
      auto gap = [](double e, double hidden) { return std::max(0.0, e - hidden); };
      const double exposed =
          layers *
          (gap(with_kv, lin_f) + gap(with_kv, attn_f) + gap(rows, attn_f) + gap(rows, lin_f) +
           gap(rows, lin_b) + gap(rows, attn_b) + gap(with_kv, attn_b) + gap(with_kv, lin_b));
      rank.comm_us += c.nano_batches == 2 ? exposed : 4 * layers * (with_kv + rows);
      rank.bytes += step_bytes;
    }
  }
  // Pipeline stages included: under 1F1B the PP stages work on PP different waves at once, and
  // CAD's servers take attention from every stage, so the waves in flight share their attention
  // time. Modelled as every wave carrying the mean over waves (exact when M = PP).
  if (c.pp > 1) {
    for (RankWork& rank : ranks) {
      const double mean = std::accumulate(rank.attention_us.begin(), rank.attention_us.end(), 0.0) /
                          rank.attention_us.size();
      std::fill(rank.attention_us.begin(), rank.attention_us.end(), mean);
    }
  }
  return ranks;
}

}  // namespace

// Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
// Sec. 4.1) count 34·h bytes per token per layer (plus 5·a·s for the score matrix, which
// FlashAttention does not keep) for GPT with dropout. Adapted to Llama layers (RMSNorm, GQA,
// SwiGLU, no dropout, FlashAttention), bf16, per token and layer; docs/simulation.md has the table.
ElementwiseOps elementwise_ops(const config::RunConfig& config) {
  const std::string& ops = config.simulate().elementwise_ops();
  CADRE_CHECK(ops == "fused" || ops == "composite", "simulate.elementwise_ops is '", ops,
              "'; accepted: fused, composite");
  return ops == "fused" ? ElementwiseOps::kFused : ElementwiseOps::kComposite;
}

namespace {
// Whether the fused RMSNorm serves the model's norms (rows of hidden_size values).
bool fused_norm(const config::ModelConfig& model, ElementwiseOps ops) {
  return ops == ElementwiseOps::kFused && model.hidden_size() <= kFusedNormMaxColumns;
}
}  // namespace

ActivationBytes activation_bytes_per_token_per_layer(const config::ModelConfig& model, int32_t tp,
                                                     const std::string& recompute,
                                                     ElementwiseOps ops) {
  CADRE_CHECK(tp >= 1, "tensor_parallel is ", tp, "; accepted: >= 1");
  CADRE_CHECK(recompute == "none" || recompute == "linear", "training.recompute is '", recompute,
              "'; accepted: none, linear");
  const double h = model.hidden_size(), f = model.ffn_hidden_size(), d = model.head_dim();
  // TP splits heads; GQA KV heads go down to one per GPU (then replicated), as the cost model.
  const double heads = model.num_heads() / tp;
  const double kv_heads = std::max(1, model.num_kv_heads() / tp);
  ActivationBytes a;
  a.output = kBf16Bytes * heads * d;
  a.query = 2 * kBf16Bytes * heads * d + kFp32Bytes * heads;  // Q, O, log-sum-exp
  a.key = 2 * kBf16Bytes * kv_heads * d;                      // K, V
  if (recompute == "linear") {
    // The layer input (residual stream) only; the rest is recomputed from it and O.
    a.owner = kBf16Bytes * h / tp;
  } else {
    // runtime/model.cc under autograd: the layer input (2h), on this rank's rows under sequence
    // parallelism; the QKV and gate/up matmuls keep their (gathered, every row) input (2 x 2h).
    // RMSNorm, composite: each keeps its fp32 upcast (pow saves it, 4h) and its normalised bf16
    // output (the weight multiply saves it, 2h). Fused (RmsNormFunction): each keeps its bf16
    // input and an fp32 rstd per row; the first norm's input is the layer input (the same
    // storage, counted), the second's is the residual sum y = x + attention, which nothing else
    // keeps (2h + 4 bytes per row for both rstd).
    const double norms = fused_norm(model, ops) ? (kBf16Bytes * h + 2 * kFp32Bytes) / tp
                                                : 2 * (kFp32Bytes + kBf16Bytes) * h / tp;
    // SwiGLU, composite: gate and up (silu and the product save them), silu(gate) (the product
    // saves it) and the product (the down matmul saves it), 4 x 2f / TP; fused (SwigluFunction):
    // gate and up, and the product the down matmul keeps, 3 x 2f / TP. The output projection's
    // input is O, counted with core attention; the residual sums and RoPE's outputs are not
    // saved (its backward needs only the cos/sin tables, once per nano-batch).
    const double swiglu = (ops == ElementwiseOps::kFused ? 3 : 4) * kBf16Bytes * f / tp;
    a.owner = kBf16Bytes * h / tp + norms + 2 * kBf16Bytes * h + swiglu;
  }
  return a;
}

double parameters_per_stage(const config::ModelConfig& model, int32_t pp) {
  const double h = model.hidden_size();
  const double q_width = static_cast<double>(model.num_heads()) * model.head_dim();
  const double kv_width = static_cast<double>(model.num_kv_heads()) * model.head_dim();
  const double per_layer = h * q_width + 2 * h * kv_width + q_width * h +
                           3 * h * static_cast<double>(model.ffn_hidden_size()) + 2 * h;
  const double vocab = static_cast<double>(model.vocab_size()) * h;
  // Stage 0 holds the embedding; the last stage the LM head (or, tied, a copy of the embedding).
  const double vocab_matrices = pp == 1 && !model.tie_embeddings() ? 2 : 1;
  return per_layer * model.num_layers() / pp + vocab_matrices * vocab;
}

double layer_matrix_parameters(const config::ModelConfig& model, int32_t tp) {
  const double h = model.hidden_size();
  const double q_width = static_cast<double>(model.num_heads()) * model.head_dim();
  const double kv_width = static_cast<double>(model.num_kv_heads()) * model.head_dim();
  return (h * (q_width + 2 * kv_width) + q_width * h +
          3 * h * static_cast<double>(model.ffn_hidden_size())) /
         std::max(1, tp);
}

double weights_optimizer_bytes_per_parameter(bool shard_optimizer, int32_t dp) {
  CADRE_CHECK(dp >= 1, "data-parallel size is ", dp, "; accepted: >= 1");
  if (!shard_optimizer) return 4 * kFp32Bytes;  // weight, gradient, two moments
  return 2 * kFp32Bytes + 6 * kFp32Bytes / dp;  // + slice: gradient, master, moments, two masks
}

double saved_weight_copy_bytes(const config::ModelConfig& model, int32_t tp,
                               const std::string& recompute, ElementwiseOps ops) {
  if (recompute != "none") return 0;
  // The seven matrices (Q, K and V as one concatenated copy, the same bytes) cast to bf16 and
  // saved by their matmul; the composite norms' weight multiplies save a bf16 copy of each norm
  // weight too, the fused norms read the fp32 parameter.
  const double norm_weights = fused_norm(model, ops) ? 0.0 : 2.0 * model.hidden_size();
  return kBf16Bytes * (layer_matrix_parameters(model, tp) + norm_weights);
}

double loss_chunk_bytes(const config::ModelConfig& model, int32_t tp, int64_t chunk_tokens,
                        ElementwiseOps ops) {
  const double h = model.hidden_size(), vocab = model.vocab_size(), c = chunk_tokens;
  const double head_weight = kBf16Bytes * vocab * h / tp;  // the LM head's bf16 copy
  const double head_input = kBf16Bytes * c * h;            // saved by the head matmul (gathered)
  // Final RMSNorm's saved tensors for the chunk, on this rank's rows: composite, the fp32 upcast
  // and the normalised output; fused, an fp32 rstd per row (its input is a view of the last
  // layer's output, counted with the residual stream).
  const double norm =
      fused_norm(model, ops) ? kFp32Bytes * c / tp : (kFp32Bytes + kBf16Bytes) * c * h / tp;
  // (a) The loss's backward. Fused (CrossEntropyFunction, one rank's whole vocabulary): the bf16
  // logits it saved and the bf16 gradient it writes, and its fp32 log-sum-exp per row.
  // Composite (and the vocabulary-parallel loss at TP > 1): LogSoftmaxBackward with the fp32
  // log-probabilities it saved, their gradient (gather's backward scatters into fp32 zeros) and
  // the fp32 gradient of the logits it writes.
  const bool fused_loss = ops == ElementwiseOps::kFused && tp == 1;
  const double loss =
      fused_loss ? 2 * kBf16Bytes * c * vocab + kFp32Bytes * c : 3 * kFp32Bytes * c * vocab / tp;
  const double at_loss = loss + head_weight + head_input + norm;
  // (b) The head matmul's backward: the bf16 logit gradient, the weight copy and input it saved,
  // the input's gradient and the bf16 weight gradient it writes.
  const double at_matmul = kBf16Bytes * c * vocab / tp + 2 * head_weight + 2 * head_input + norm;
  // (c) The weight copy's backward (ToCopyBackward): the bf16 weight gradient and its fp32 copy,
  // with the input's gradient on its way to the norm.
  const double at_cast = head_weight + 2 * head_weight + head_input + norm;
  return std::max({at_loss, at_matmul, at_cast});
}

double backward_layer_bytes(const config::ModelConfig& model, int32_t tp,
                            const std::string& recompute, int64_t tokens, ElementwiseOps ops) {
  const double h = model.hidden_size(), f = model.ffn_hidden_size(), n = tokens;
  // At SwiGLU's backward (composite: the product's MulBackward; fused: SwigluFunction's) the
  // gradient of its output and the two it writes are in flight (3 x 2f); without recomputation
  // the product itself was already saved and the down matmul's backward has released it (-2f).
  const double in_flight = 3 * kBf16Bytes * f / tp;
  if (recompute != "linear") return n * (in_flight - kBf16Bytes * f / tp);
  // Recomputed out+mlp with autograd: the second RMSNorm's saved tensors (composite: fp32 upcast
  // and normalised output, 6h; fused: its input y and an fp32 rstd per row, 2h + 4; rows split by
  // SP), the gathered gate/up input (2h), SwiGLU's saved tensors (composite: gate, up and
  // silu(gate), 3 x 2f; fused: gate and up, 2 x 2f), the segment's output (2h, rows split), plus
  // the gradients above; and the bf16 copies of the output projection and MLP weights.
  const double norm = fused_norm(model, ops) ? (kBf16Bytes * h + kFp32Bytes) / tp
                                             : (kFp32Bytes + kBf16Bytes) * h / tp;
  const double swiglu = (ops == ElementwiseOps::kFused ? 2 : 3) * kBf16Bytes * f / tp;
  const double q_width = static_cast<double>(model.num_heads()) * model.head_dim();
  const double weights = kBf16Bytes * (q_width * h + 3 * h * f) / tp;
  return n * (norm + kBf16Bytes * h / tp + kBf16Bytes * h + swiglu + in_flight) + weights;
}

double optimizer_step_bytes(bool shard_optimizer, double largest) {
  // clip_grad_norm / grad_sum_squares: grad.to(fp64) and its square (runtime/optimizer.cc);
  // sharded, the slice in fp64, its square, the mask in fp64 and their product.
  return (shard_optimizer ? 4 : 2) * 8 * largest;
}

double residual_bytes(const config::ModelConfig& model, int32_t tp, int64_t tokens) {
  return kBf16Bytes * static_cast<double>(model.hidden_size()) / tp * tokens;
}

const std::vector<std::string>& simulator_strategies() {
  static const std::vector<std::string> names = {"cad", "fixed", "cp", "wlb", "ideal"};
  return names;
}

SimulationResult simulate_step(const config::RunConfig& config,
                               const std::vector<std::string>& strategies, int32_t batches) {
  const auto& cl = config.cluster();
  const auto& model = config.model();
  Cluster c;
  c.gpus = cl.num_gpus();
  c.tp = cl.tensor_parallel();
  c.pp = cl.pipeline_parallel();
  CADRE_CHECK(c.gpus % (c.tp * c.pp) == 0, "cluster.num_gpus ", c.gpus,
              " is not divisible by tensor_parallel x pipeline_parallel = ", c.tp * c.pp);
  c.dp = c.gpus / (c.tp * c.pp);
  c.micro_batches = c.pp > 1 ? std::max(config.training().micro_batches(), 2 * c.pp)
                             : std::max(1, config.training().micro_batches());
  c.layers_per_stage = model.num_layers() / c.pp;
  c.context = config.data().context_length();
  CADRE_CHECK(batches >= 1, "simulate.batches is ", batches, "; accepted: >= 1");
  for (const std::string& s : strategies) {
    CADRE_CHECK(std::find(simulator_strategies().begin(), simulator_strategies().end(), s) !=
                    simulator_strategies().end(),
                "unknown strategy '", s, "'; accepted: cad, fixed, cp, wlb, ideal");
  }
  // Attention table: cluster.attention_calibration, else the calibration's table for the model's
  // kernel shape, else the built-in one.
  const StepCalibration calibration = step_calibration_for(cl);
  const CalibrationTable* measured =
      cl.attention_calibration().empty() ? attention_table_for(calibration, model, c.tp) : nullptr;
  const CalibrationTable table = measured != nullptr ? *measured : calibration_for(cl, model);
  CostModel cost(model, cl, table);
  const CostModel cad_cost(model, cl, table, kv_shipping_for(config.scheduler()));
  Pricing pricing = make_pricing(config, calibration, cost, c);
  pricing.cad_cost = &cad_cost;
  c.nano_batches = config.training().ping_pong() ? 2 : 1;
  PlannerOptions options = planner_options(config);
  options.gpus_per_node = std::max(1, cl.gpus_per_node() / (c.tp * c.pp));
  int32_t cp = cl.context_parallel() > 1 ? cl.context_parallel() : std::min(c.dp, 8);
  while (cp > 1 && c.dp % cp != 0) --cp;

  SimulationResult result;
  result.gpus = c.gpus;
  result.data_parallel = c.dp;
  result.micro_batches = c.micro_batches;
  result.tokens_per_step = static_cast<int64_t>(c.dp) * c.micro_batches * c.context;
  result.recompute = config.training().recompute();
  const ElementwiseOps ops = elementwise_ops(config);
  const ActivationBytes activation =
      activation_bytes_per_token_per_layer(model, c.tp, result.recompute, ops);
  const bool shard = config.training().shard_optimizer();
  const double weights_optimizer_gib = weights_optimizer_bytes_per_parameter(shard, c.dp) *
                                       parameters_per_stage(model, c.pp) / c.tp / kGiB;
  const double optimizer_peak =
      optimizer_step_bytes(shard, largest_gradient_elements(config, c.tp, c.dp));
  const double layer_weight_copies = saved_weight_copy_bytes(model, c.tp, result.recompute, ops);
  for (const std::string& strategy : strategies) {
    StepCost mean;
    mean.strategy = strategy;
    for (int32_t b = 0; b < batches; ++b) {
      std::vector<int64_t> lengths =
          draw_global_batch(config.data(), result.tokens_per_step, config.data().seed() + b);
      std::vector<RankWork> ranks;
      double planning_ms = 0;
      if (strategy == "fixed") {
        ranks = fixed_packing(lengths, pricing, c);
      } else if (strategy == "wlb") {
        ranks = workload_balanced(lengths, pricing, c, cp,
                                  config.simulate().wlb_outlier_tokens() > 0
                                      ? config.simulate().wlb_outlier_tokens()
                                      : c.context,
                                  config.simulate().wlb_shard_threshold_tokens() > 0
                                      ? config.simulate().wlb_shard_threshold_tokens()
                                      : c.context / 2);
      } else if (strategy == "cp") {
        ranks = context_parallel(lengths, pricing, c, cp);
      } else if (strategy == "cad") {
        ranks = cad(lengths, pricing, c, options, &planning_ms);
      } else {  // ideal: every rank gets the average of the fixed packing's work
        ranks = fixed_packing(lengths, pricing, c);
        double attention = 0, linear = 0;
        for (const RankWork& r : ranks) {
          attention += std::accumulate(r.attention_us.begin(), r.attention_us.end(), 0.0);
          linear += std::accumulate(r.linear_us.begin(), r.linear_us.end(), 0.0);
        }
        for (RankWork& r : ranks) {
          r.attention_us.assign(1, attention / ranks.size());
          r.linear_us.assign(1, linear / ranks.size());
        }
      }
      add_step_costs(pricing, c, &ranks);
      StepCost one = compose(strategy, ranks, c);
      if (strategy == "ideal") {
        one.step_us -= one.pp_bubble_us;
        one.pp_bubble_us = 0;
      }
      // Peak above the weights and optimizer state (docs/simulation.md, "Memory estimate"):
      // under 1F1B stage 0 holds min(PP, M) micro-batches in flight and peaks in its first
      // backward layer; the last stage holds one and peaks in the LM head's last chunk or its
      // first backward layer (with PP = 1 they are one stage); or the optimizer's temporaries.
      // Priced at the largest micro-batch of any rank.
      int64_t max_tokens = 0;
      double max_micro_batch = 0;
      for (const RankWork& r : ranks) {
        for (size_t m = 0; m < r.tokens.size(); ++m) {
          max_tokens = std::max(max_tokens, r.tokens[m]);
          max_micro_batch = std::max(
              max_micro_batch, c.layers_per_stage * micro_batch_activation_bytes(r, m, activation));
        }
      }
      // Nano-batches split a micro-batch evenly here (the runtime runs two for CAD with
      // ping-pong, one otherwise). Per micro-batch in flight without recomputation: every
      // layer's bf16 weight copies, per nano-batch.
      const int32_t nanos = strategy == "cad" ? c.nano_batches : 1;
      const int64_t nano_tokens = (max_tokens + nanos - 1) / nanos;
      const double weight_copies = layer_weight_copies * c.layers_per_stage * nanos;
      const int64_t loss_chunk = config.training().loss_chunk_tokens() > 0
                                     ? std::min(config.training().loss_chunk_tokens(), nano_tokens)
                                     : nano_tokens;
      const double held = max_micro_batch + weight_copies + residual_bytes(model, c.tp, max_tokens);
      const double backward = backward_layer_bytes(model, c.tp, result.recompute, nano_tokens, ops);
      const double head =
          residual_bytes(model, c.tp, nano_tokens) + loss_chunk_bytes(model, c.tp, loss_chunk, ops);
      const double first_stage =
          (std::min(c.pp, c.micro_batches) - 1) * (max_micro_batch + weight_copies) + held +
          backward;
      const double last_stage = held + std::max(head, backward);
      one.peak_activation_gib =
          pricing.activation_scale * std::max({first_stage, last_stage, optimizer_peak}) / kGiB +
          pricing.memory_fixed_gib;
      one.planning_ms = planning_ms;
      const double w = 1.0 / batches;
      mean.step_us += w * one.step_us;
      mean.attention_us += w * one.attention_us;
      mean.linear_us += w * one.linear_us;
      mean.pp_bubble_us += w * one.pp_bubble_us;
      mean.dp_straggler_us += w * one.dp_straggler_us;
      mean.exposed_comm_us += w * one.exposed_comm_us;
      mean.step_fixed_us += w * one.step_fixed_us;
      mean.attention_imbalance += w * one.attention_imbalance;
      mean.bytes_per_rank += w * one.bytes_per_rank;
      mean.peak_activation_gib = std::max(mean.peak_activation_gib, one.peak_activation_gib);
      mean.planning_ms += w * one.planning_ms;
    }
    mean.attention_imbalance -= 1.0;  // started at 1
    mean.weights_optimizer_gib = weights_optimizer_gib;
    mean.peak_memory_gib = mean.peak_activation_gib + weights_optimizer_gib;
    mean.fits_memory = mean.peak_memory_gib <= cl.gpu_memory_gib();
    mean.tokens_per_s = result.tokens_per_step / (mean.step_us * 1e-6);
    result.costs.push_back(mean);
  }
  return result;
}

}  // namespace cadre::scheduler
