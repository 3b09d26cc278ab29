// The CAD planner: greedy rebalancing of core-attention work across servers, moving whole tasks or
// head/tail query shards, cheapest transfer time per unit of work first (algorithm: README.md).
#include "scheduler/planner.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <unordered_map>
#include <utility>

#include "common/error.h"

namespace cadre::scheduler {

namespace {

struct WorkTask {
  int32_t document;
  int64_t q_begin;
  int64_t q_end;
  int32_t server;
  double cost_us;  // forward + backward attention time of one layer
};

// Where a candidate move would send work.
struct Move {
  int32_t task = -1;
  int64_t q_begin = 0;  // the shard that moves
  int64_t q_end = 0;
  double work_us = 0;
  double score = std::numeric_limits<double>::infinity();  // transfer time per unit of work
};

class Planner {
 public:
  Planner(const Layout& layout, const std::vector<int32_t>& server_ranks, int32_t world_size,
          const CostModel& cost, const PlannerOptions& options)
      : layout_(layout),
        server_ranks_(server_ranks),
        world_size_(world_size),
        cost_(cost),
        options_(options),
        num_servers_(static_cast<int32_t>(server_ranks.size())) {
    CADRE_CHECK(num_servers_ >= 1, "plan_cad: no attention servers given; accepted: >= 1");
    CADRE_CHECK(options.tolerance > 0, "plan_cad: tolerance is ", options.tolerance,
                "; accepted: > 0");
    CADRE_CHECK(options.min_shard_tokens >= 1, "plan_cad: min_shard_tokens is ",
                options.min_shard_tokens, "; accepted: >= 1");
    CADRE_CHECK(options.gpus_per_node >= 1, "plan_cad: gpus_per_node is ", options.gpus_per_node,
                "; accepted: >= 1");
    server_of_rank_.assign(world_size, -1);
    for (int32_t s = 0; s < num_servers_; ++s) {
      const int32_t r = server_ranks[s];
      CADRE_CHECK(r >= 0 && r < world_size, "plan_cad: server rank ", r, " outside world of ",
                  world_size, " ranks");
      server_of_rank_[r] = s;
    }
    // A query row moves Q out and O back (widths differ under MLA), a K/V row its K and V.
    query_row_bytes_ = cost.q_bytes_per_token() + cost.o_bytes_per_token();
    kv_bytes_ = cost.kv_bytes_per_token();
  }

  Plan run(PlanStats* stats) {
    load_.assign(num_servers_, 0);
    on_server_.assign(num_servers_, {});
    // Colocated attention per owner rank: the "before" picture.
    std::vector<double> owner_load(layout_.num_ranks, 0);
    std::vector<WorkTask> pieces;
    for (int32_t d = 0; d < static_cast<int32_t>(layout_.documents.size()); ++d) {
      for (const DocumentPiece& p : layout_.documents[d].pieces) {
        const double c = task_cost(p.doc_begin, p.doc_end);
        owner_load[p.rank] += c;
        pieces.push_back({d, p.doc_begin, p.doc_end, p.rank, c});
      }
    }
    const bool owners_serve = std::all_of(pieces.begin(), pieces.end(), [&](const WorkTask& t) {
      return server_of_rank_[t.server] >= 0;
    });
    first_piece_task_.assign(layout_.documents.size() + 1, 0);
    for (const WorkTask& t : pieces) ++first_piece_task_[t.document + 1];
    for (size_t d = 0; d < layout_.documents.size(); ++d) {
      first_piece_task_[d + 1] += first_piece_task_[d];
    }
    if (owners_serve) {
      for (WorkTask& t : pieces) t.server = server_of_rank_[t.server];
    } else {
      // Dedicated servers: longest-processing-time-first onto the least loaded server.
      std::vector<int32_t> order(pieces.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return pieces[a].cost_us > pieces[b].cost_us;
      });
      std::set<std::pair<double, int32_t>> by_load;
      std::vector<double> assigned(num_servers_, 0);
      for (int32_t s = 0; s < num_servers_; ++s) by_load.insert({0.0, s});
      for (int32_t i : order) {
        const int32_t s = by_load.begin()->second;
        by_load.erase(by_load.begin());
        pieces[i].server = s;
        assigned[s] += pieces[i].cost_us;
        by_load.insert({assigned[s], s});
      }
    }
    for (const WorkTask& t : pieces) add_task(t);
    rebalance();

    Plan plan;
    plan.layout = layout_;
    plan.server_ranks = server_ranks_;
    plan.world_size = world_size_;
    // Tasks ordered by (document, q_begin): the original pieces already are; the shards split off
    // later are sorted and merged in.
    auto by_document = [&](int32_t a, int32_t b) {
      const WorkTask& x = tasks_[a];
      const WorkTask& y = tasks_[b];
      return x.document != y.document ? x.document < y.document : x.q_begin < y.q_begin;
    };
    std::vector<int32_t> order(tasks_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
    const auto shards = order.begin() + first_piece_task_.back();
    std::sort(shards, order.end(), by_document);
    std::inplace_merge(order.begin(), shards, order.end(), by_document);
    plan.tasks.reserve(order.size());
    for (int32_t i : order) {
      const WorkTask& t = tasks_[i];
      plan.tasks.push_back({t.document, t.q_begin, t.q_end, t.server});
    }
    finalize_plan(plan);
    if (stats) fill_stats(plan, owner_load, stats);
    return plan;
  }

 private:
  double task_cost(int64_t q_begin, int64_t q_end) const {
    const int64_t q = q_end - q_begin;
    return cost_.attention_forward_backward_us(q, q_end);
  }

  void add_task(const WorkTask& t) {
    const int32_t index = static_cast<int32_t>(tasks_.size());
    tasks_.push_back(t);
    on_server_[t.server].push_back(index);
    load_[t.server] += t.cost_us;
    total_us_ += t.cost_us;
  }

  // Records that `server` now holds K/V [0, q_end) of a document because a task moved there.
  void note_resident(int32_t server, int32_t document, int64_t q_end) {
    int64_t& prefix = moved_resident_[key(server, document)];
    prefix = std::max(prefix, q_end);
  }

  // The K/V prefix of a document that a server already needs: its original pieces still computed
  // there, and whatever moved there.
  int64_t resident(int32_t server, int32_t document) const {
    int64_t prefix = 0;
    for (int32_t i = first_piece_task_[document]; i < first_piece_task_[document + 1]; ++i) {
      if (tasks_[i].server == server) prefix = std::max(prefix, tasks_[i].q_end);
    }
    auto it = moved_resident_.find(key(server, document));
    return it == moved_resident_.end() ? prefix : std::max(prefix, it->second);
  }

  int64_t key(int32_t server, int32_t document) const {
    return static_cast<int64_t>(server) * static_cast<int64_t>(layout_.documents.size() + 1) +
           document;
  }

  // Tokens of [begin, end) of a document that the server's own rank holds.
  int64_t owned_tokens(int32_t server, int32_t document, int64_t begin, int64_t end) const {
    const int32_t rank = server_ranks_[server];
    if (rank >= layout_.num_ranks || end <= begin) return 0;
    int64_t owned = 0;
    for (const DocumentPiece& p : layout_.documents[document].pieces) {
      if (p.rank != rank) continue;
      owned += std::max<int64_t>(0, std::min(end, p.doc_end) - std::max(begin, p.doc_begin));
    }
    return owned;
  }

  // Transfer time (one layer, forward: Q out and O back, plus K/V the server lacks) of moving
  // queries [begin, end) of a document to `server`, as seen from server `from`'s node.
  double transfer_us(int32_t from, int32_t server, int32_t document, int64_t begin,
                     int64_t end) const {
    const int64_t q_remote = (end - begin) - owned_tokens(server, document, begin, end);
    const int64_t held = resident(server, document);
    int64_t kv_remote = 0;
    if (end > held) kv_remote = (end - held) - owned_tokens(server, document, held, end);
    const int64_t bytes = q_remote * query_row_bytes_ + kv_remote * kv_bytes_;
    const LinkClass link = cost_.link_between(server_ranks_[from] / 1, server_ranks_[server]);
    // A move within one rank's tokens still costs a little, so real gains win ties.
    return cost_.transfer_us(bytes, link == LinkClass::kSelf ? LinkClass::kIntraNode : link);
  }

  // Query length of a tail shard [e - q, e) (or head shard [b, b + q)) of about `pairs` pairs.
  static int64_t tail_length_for_pairs(int64_t q_end, double pairs) {
    const double b = 2.0 * static_cast<double>(q_end) + 1.0;
    const double disc = std::max(0.0, b * b - 8.0 * pairs);
    return static_cast<int64_t>(std::llround((b - std::sqrt(disc)) / 2.0));
  }
  static int64_t head_length_for_pairs(int64_t q_begin, double pairs) {
    const double a = static_cast<double>(q_begin) + 0.5;
    return static_cast<int64_t>(std::llround(-a + std::sqrt(a * a + 2.0 * pairs)));
  }

  void consider(Move& best, int32_t from, int32_t to, int32_t index, int64_t begin, int64_t end,
                double work_us) {
    if (work_us <= 0) return;
    const double score = transfer_us(from, to, tasks_[index].document, begin, end) / work_us;
    if (score < best.score || (score == best.score && work_us > best.work_us)) {
      best = {index, begin, end, work_us, score};
    }
  }

  // The cheapest move of about want_us of work from `from` to `to`; failing that, any whole task
  // that still narrows the gap between the two (gap_us = load[from] - load[to]).
  Move best_move(int32_t from, int32_t to, double want_us, double gap_us) {
    Move best = best_sized_move(from, to, want_us);
    if (best.task >= 0) return best;
    for (int32_t index : on_server_[from]) {
      const WorkTask& t = tasks_[index];
      if (t.cost_us < gap_us) consider(best, from, to, index, t.q_begin, t.q_end, t.cost_us);
    }
    return best;
  }

  Move best_sized_move(int32_t from, int32_t to, double want_us) {
    Move best;
    const int64_t min_shard = options_.min_shard_tokens;
    for (int32_t index : on_server_[from]) {
      const WorkTask& t = tasks_[index];
      if (t.cost_us <= want_us) {
        consider(best, from, to, index, t.q_begin, t.q_end, t.cost_us);
        continue;
      }
      const int64_t len = t.q_end - t.q_begin;
      if (len < 2 * min_shard) continue;
      const double pairs_wanted =
          want_us / t.cost_us * static_cast<double>(causal_pairs(t.q_begin, t.q_end));
      const int64_t tail =
          std::clamp(tail_length_for_pairs(t.q_end, pairs_wanted), min_shard, len - min_shard);
      consider(best, from, to, index, t.q_end - tail, t.q_end, task_cost(t.q_end - tail, t.q_end));
      const int64_t head =
          std::clamp(head_length_for_pairs(t.q_begin, pairs_wanted), min_shard, len - min_shard);
      consider(best, from, to, index, t.q_begin, t.q_begin + head,
               task_cost(t.q_begin, t.q_begin + head));
    }
    return best;
  }

  void apply(const Move& move, int32_t to) {
    WorkTask& t = tasks_[move.task];
    const int32_t from = t.server;
    if (move.q_begin == t.q_begin && move.q_end == t.q_end) {
      auto& list = on_server_[from];
      list.erase(std::find(list.begin(), list.end(), move.task));
      load_[from] -= t.cost_us;
      t.server = to;
      on_server_[to].push_back(move.task);
      load_[to] += t.cost_us;
      note_resident(to, t.document, t.q_end);
      return;
    }
    // Split: the task keeps the rest, the moved shard becomes a new task on `to`.
    const double old_cost = t.cost_us;
    WorkTask shard{t.document, move.q_begin, move.q_end, to, move.work_us};
    if (move.q_begin == t.q_begin) {
      t.q_begin = move.q_end;
    } else {
      t.q_end = move.q_begin;
    }
    t.cost_us = task_cost(t.q_begin, t.q_end);
    load_[from] += t.cost_us - old_cost;
    total_us_ += t.cost_us - old_cost;
    ++splits_;
    add_task(shard);
    note_resident(to, shard.document, shard.q_end);
  }

  void rebalance() {
    if (total_us_ <= 0) return;
    std::set<std::pair<double, int32_t>> by_load;
    for (int32_t s = 0; s < num_servers_; ++s) by_load.insert({load_[s], s});
    const int64_t max_iterations = 64LL * num_servers_ + 4LL * static_cast<int64_t>(tasks_.size());
    const int32_t per_node = options_.gpus_per_node;
    for (int64_t iteration = 0; iteration < max_iterations && !by_load.empty(); ++iteration) {
      // Splitting changes total work slightly (small shards run at lower rates): track the mean.
      const double mean = total_us_ / num_servers_;
      const int32_t from = by_load.rbegin()->second;
      if (load_[from] <= mean * (1.0 + options_.tolerance)) break;
      // Receiver: the least loaded server of the same node if it is below the mean, else the
      // least loaded anywhere.
      int32_t to = -1;
      const int32_t node = server_ranks_[from] / per_node;
      for (int32_t s = 0; s < num_servers_; ++s) {
        if (s == from || server_ranks_[s] / per_node != node) continue;
        if (by_load.count({load_[s], s}) && (to < 0 || load_[s] < load_[to])) to = s;
      }
      if (to < 0 || load_[to] >= mean) to = by_load.begin()->second;
      if (to == from || load_[to] >= mean) break;
      const double want = std::min(load_[from] - mean, mean - load_[to]);
      const Move move = best_move(from, to, want, load_[from] - load_[to]);
      if (move.task < 0) {
        by_load.erase({load_[from], from});  // nothing movable: leave it as it is
        continue;
      }
      by_load.erase({load_[from], from});
      by_load.erase({load_[to], to});
      apply(move, to);
      by_load.insert({load_[from], from});
      by_load.insert({load_[to], to});
    }
  }

  void fill_stats(const Plan& plan, const std::vector<double>& owner_load, PlanStats* stats) const {
    auto imbalance = [](const std::vector<double>& loads) {
      double total = 0, peak = 0;
      for (double l : loads) {
        total += l;
        peak = std::max(peak, l);
      }
      return total > 0 ? peak * loads.size() / total : 1.0;
    };
    stats->imbalance_before = imbalance(owner_load);
    stats->imbalance_after = imbalance(load_);
    std::vector<int64_t> moved(world_size_, 0);
    int64_t total = 0;
    for (const PeerTransfer& tr : plan.transfers) {
      const int32_t server_rank = server_ranks_[tr.server];
      if (server_rank == tr.owner) continue;
      // Forward: Q out and O back, K/V out. Backward mirrors it; counted per layer forward.
      const int64_t bytes = tr.q_rows() * query_row_bytes_ + tr.kv_rows() * kv_bytes_;
      moved[tr.owner] += bytes;
      moved[server_rank] += bytes;
      total += bytes;
    }
    stats->bytes_moved_max_rank = *std::max_element(moved.begin(), moved.end());
    stats->bytes_moved_total = total;
    stats->tasks = static_cast<int32_t>(plan.tasks.size());
    stats->splits = splits_;
  }

  const Layout& layout_;
  const std::vector<int32_t>& server_ranks_;
  int32_t world_size_;
  const CostModel& cost_;
  PlannerOptions options_;
  int32_t num_servers_;
  int64_t query_row_bytes_ = 0;  // Q out plus O back
  int64_t kv_bytes_ = 0;
  std::vector<int32_t> server_of_rank_;
  std::vector<WorkTask> tasks_;
  std::vector<std::vector<int32_t>> on_server_;
  std::vector<double> load_;
  double total_us_ = 0;
  // Tasks [first_piece_task_[d], first_piece_task_[d + 1]) are document d's original pieces.
  std::vector<int32_t> first_piece_task_;
  std::unordered_map<int64_t, int64_t> moved_resident_;  // (server, document) -> prefix moved in
  int32_t splits_ = 0;
};

}  // namespace

PlannerOptions planner_options(const config::RunConfig& config) {
  PlannerOptions options;
  options.tolerance = config.scheduler().tolerance();
  options.min_shard_tokens = config.scheduler().min_shard_tokens();
  options.gpus_per_node = config.cluster().gpus_per_node();
  return options;
}

Plan plan_cad(const Layout& layout, const std::vector<int32_t>& server_ranks, int32_t world_size,
              const CostModel& cost, const PlannerOptions& options, PlanStats* stats) {
  CADRE_CHECK(world_size >= layout.num_ranks, "plan_cad: world_size ", world_size,
              " is smaller than the layout's ", layout.num_ranks, " ranks");
  Planner planner(layout, server_ranks, world_size, cost, options);
  return planner.run(stats);
}

}  // namespace cadre::scheduler
