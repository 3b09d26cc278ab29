// Layouts, CA-task bookkeeping, and the derivation of every row movement of a Plan from its tasks.
#include "scheduler/plan.h"

#include <algorithm>
#include <unordered_map>
#include <numeric>
#include <utility>

#include "common/error.h"
#include "scheduler/plan.pb.h"

namespace cadre::scheduler {

namespace {

constexpr int32_t kPlanFormatVersion = 1;

// Appends a segment, merging it into the previous one when both sides continue contiguously
// (typical: consecutive pieces of one document on one rank).
void append_segment(std::vector<RowSegment>& segments, int64_t src_row, int64_t dst_row,
                    int64_t rows) {
  if (rows <= 0) return;
  if (!segments.empty()) {
    RowSegment& last = segments.back();
    if (last.src_row + last.rows == src_row && last.dst_row + last.rows == dst_row) {
      last.rows += rows;
      return;
    }
  }
  segments.push_back({src_row, dst_row, rows});
}

// Index of the first piece of `doc` whose doc_end is past `token`.
size_t first_piece_after(const PlacedDocument& doc, int64_t token) {
  auto it = std::upper_bound(doc.pieces.begin(), doc.pieces.end(), token,
                             [](int64_t t, const DocumentPiece& p) { return t < p.doc_end; });
  return static_cast<size_t>(it - doc.pieces.begin());
}

void validate_layout(const Layout& layout) {
  CADRE_CHECK(layout.num_ranks >= 1, "layout.num_ranks is ", layout.num_ranks,
              "; accepted: at least 1");
  CADRE_CHECK(static_cast<int64_t>(layout.tokens_per_rank.size()) == layout.num_ranks,
              "layout.tokens_per_rank has ", layout.tokens_per_rank.size(),
              " entries but layout.num_ranks is ", layout.num_ranks, "; they must match");
  int64_t total_tokens = 0;
  for (int32_t r = 0; r < layout.num_ranks; ++r) {
    CADRE_CHECK(layout.tokens_per_rank[r] >= 0 && layout.tokens_per_rank[r] <= kMaxPlanTokens,
                "layout.tokens_per_rank[", r, "] is ", layout.tokens_per_rank[r],
                "; accepted: 0..", kMaxPlanTokens);
    total_tokens += layout.tokens_per_rank[r];
    CADRE_CHECK(total_tokens <= kMaxPlanTokens, "layout holds more than ", kMaxPlanTokens,
                " tokens over its ranks; accepted: at most that many");
  }
  // Per rank: the pieces' local rows must be disjoint and inside the rank's token array.
  struct Rows {
    int32_t rank;
    int64_t begin;
    int64_t end;
  };
  std::vector<Rows> rows;
  for (size_t d = 0; d < layout.documents.size(); ++d) {
    const PlacedDocument& doc = layout.documents[d];
    CADRE_CHECK(doc.length_tokens >= 1, "document ", d, " has length ", doc.length_tokens,
                "; accepted: >= 1 token");
    int64_t expected_begin = 0;
    for (const DocumentPiece& p : doc.pieces) {
      CADRE_CHECK(p.rank >= 0 && p.rank < layout.num_ranks, "document ", d,
                  " has a piece on rank ", p.rank, "; accepted: 0..", layout.num_ranks - 1);
      CADRE_CHECK(p.doc_begin == expected_begin && p.doc_end > p.doc_begin, "document ", d,
                  " pieces must cover [0, ", doc.length_tokens,
                  ") in order without gaps; found a piece [", p.doc_begin, ", ", p.doc_end,
                  ") where one starting at ", expected_begin, " was expected");
      const int64_t len = p.doc_end - p.doc_begin;
      CADRE_CHECK(p.local_row >= 0 && p.local_row <= layout.tokens_per_rank[p.rank] - len,
                  "document ", d, " piece [", p.doc_begin, ", ", p.doc_end, ") at local row ",
                  p.local_row, " does not fit rank ", p.rank, "'s ",
                  layout.tokens_per_rank[p.rank], " tokens");
      rows.push_back({p.rank, p.local_row, p.local_row + len});
      expected_begin = p.doc_end;
    }
    CADRE_CHECK(expected_begin == doc.length_tokens, "document ", d, " pieces cover [0, ",
                expected_begin, ") but its length is ", doc.length_tokens);
  }
  auto by_rank_row = [](const Rows& a, const Rows& b) {
    return a.rank != b.rank ? a.rank < b.rank : a.begin < b.begin;
  };
  // Sequential packing already yields this order; sort only when it does not.
  if (!std::is_sorted(rows.begin(), rows.end(), by_rank_row)) {
    std::sort(rows.begin(), rows.end(), by_rank_row);
  }
  for (size_t i = 1; i < rows.size(); ++i) {
    CADRE_CHECK(rows[i].rank != rows[i - 1].rank || rows[i].begin >= rows[i - 1].end, "rank ",
                rows[i].rank, " has overlapping document pieces at local rows [", rows[i].begin,
                ", ", rows[i].end, ")");
  }
}

void validate_primary(const Plan& plan) {
  validate_layout(plan.layout);
  CADRE_CHECK(plan.world_size >= plan.layout.num_ranks, "plan.world_size is ", plan.world_size,
              " but the layout has ", plan.layout.num_ranks,
              " owner ranks; accepted: world_size >= owners");
  CADRE_CHECK(plan.world_size <= kMaxPlanWorldSize, "plan.world_size is ", plan.world_size,
              "; accepted: at most ", kMaxPlanWorldSize);
  CADRE_CHECK(!plan.server_ranks.empty(), "plan has no attention servers; accepted: >= 1");
  std::vector<char> seen(plan.world_size, 0);
  for (size_t s = 0; s < plan.server_ranks.size(); ++s) {
    const int32_t r = plan.server_ranks[s];
    CADRE_CHECK(r >= 0 && r < plan.world_size, "server ", s, " is rank ", r,
                "; accepted: 0..", plan.world_size - 1);
    CADRE_CHECK(!seen[r], "rank ", r, " is listed twice among the servers");
    seen[r] = 1;
  }
  // Every query token of every document is covered exactly once: sort the tasks by
  // (document, q_begin) and walk them.
  const int32_t num_docs = static_cast<int32_t>(plan.layout.documents.size());
  for (size_t t = 0; t < plan.tasks.size(); ++t) {
    const CaTask& task = plan.tasks[t];
    CADRE_CHECK(task.document >= 0 && task.document < num_docs, "task ", t,
                " references document ", task.document, "; accepted: 0..", num_docs - 1);
    const int64_t len = plan.layout.documents[task.document].length_tokens;
    CADRE_CHECK(task.q_begin >= 0 && task.q_begin < task.q_end && task.q_end <= len, "task ", t,
                " has queries [", task.q_begin, ", ", task.q_end, ") outside document ",
                task.document, " of length ", len);
    CADRE_CHECK(task.server >= 0 && task.server < static_cast<int32_t>(plan.server_ranks.size()),
                "task ", t, " is assigned to server ", task.server, "; accepted: 0..",
                plan.server_ranks.size() - 1);
  }
  std::vector<int32_t> order(plan.tasks.size());
  std::iota(order.begin(), order.end(), 0);
  auto by_document = [&](int32_t a, int32_t b) {
    const CaTask& x = plan.tasks[a];
    const CaTask& y = plan.tasks[b];
    return x.document != y.document ? x.document < y.document : x.q_begin < y.q_begin;
  };
  // Planners emit tasks in this order; sort only when they are not.
  if (!std::is_sorted(order.begin(), order.end(), by_document)) {
    std::sort(order.begin(), order.end(), by_document);
  }
  size_t next = 0;
  for (int32_t d = 0; d < num_docs; ++d) {
    int64_t covered = 0;
    for (; next < order.size() && plan.tasks[order[next]].document == d; ++next) {
      const CaTask& task = plan.tasks[order[next]];
      CADRE_CHECK(task.q_begin == covered, "document ", d, " queries ",
                  task.q_begin < covered ? "are covered twice at token "
                                         : "are not covered at token ",
                  std::min(task.q_begin, covered), "; every query token needs exactly one task");
      covered = task.q_end;
    }
    CADRE_CHECK(covered == plan.layout.documents[d].length_tokens, "document ", d,
                " queries are not covered from token ", covered, " to its end ",
                plan.layout.documents[d].length_tokens);
  }
}

bool same_segments(const std::vector<RowSegment>& a, const std::vector<RowSegment>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].src_row != b[i].src_row || a[i].dst_row != b[i].dst_row || a[i].rows != b[i].rows) {
      return false;
    }
  }
  return true;
}

}  // namespace

int64_t causal_pairs(int64_t q_begin, int64_t q_end) {
  const int64_t q = q_end - q_begin;
  return q * q_end - q * (q - 1) / 2;
}

int64_t PeerTransfer::q_rows() const {
  int64_t rows = 0;
  for (const RowSegment& s : q) rows += s.rows;
  return rows;
}

int64_t PeerTransfer::kv_rows() const {
  int64_t rows = 0;
  for (const RowSegment& s : kv) rows += s.rows;
  return rows;
}

Layout pack_sequential(const std::vector<int64_t>& lengths_tokens, int32_t num_ranks,
                       int64_t chunk_tokens) {
  CADRE_CHECK(num_ranks >= 1, "pack_sequential: num_ranks is ", num_ranks,
              "; accepted: >= 1");
  CADRE_CHECK(chunk_tokens >= 1, "pack_sequential: chunk_tokens is ", chunk_tokens,
              "; accepted: >= 1");
  Layout layout;
  layout.num_ranks = num_ranks;
  layout.tokens_per_rank.assign(num_ranks, 0);
  int32_t rank = 0;
  for (size_t i = 0; i < lengths_tokens.size() && rank < num_ranks; ++i) {
    CADRE_CHECK(lengths_tokens[i] >= 1, "pack_sequential: document ", i, " has length ",
                lengths_tokens[i], "; accepted: >= 1 token");
    PlacedDocument doc;
    doc.id = static_cast<int64_t>(i);
    int64_t placed = 0;
    while (placed < lengths_tokens[i] && rank < num_ranks) {
      const int64_t room = chunk_tokens - layout.tokens_per_rank[rank];
      const int64_t take = std::min(room, lengths_tokens[i] - placed);
      doc.pieces.push_back({rank, placed, placed + take, layout.tokens_per_rank[rank]});
      layout.tokens_per_rank[rank] += take;
      placed += take;
      if (layout.tokens_per_rank[rank] == chunk_tokens) ++rank;
    }
    // The batch ends when every chunk is full: the last document keeps the tokens that fit.
    doc.length_tokens = placed;
    layout.documents.push_back(std::move(doc));
  }
  return layout;
}

Layout layout_from_rank_documents(const std::vector<std::vector<int64_t>>& lengths_per_rank) {
  return layout_from_rank_pieces(lengths_per_rank,
                                 std::vector<bool>(lengths_per_rank.size(), false));
}

Layout layout_from_rank_pieces(const std::vector<std::vector<int64_t>>& lengths_per_rank,
                               const std::vector<bool>& continues) {
  CADRE_CHECK(!lengths_per_rank.empty(), "layout_from_rank_pieces: no ranks given");
  CADRE_CHECK(continues.size() == lengths_per_rank.size(), "layout_from_rank_pieces: ",
              continues.size(), " continuation flags for ", lengths_per_rank.size(), " ranks");
  Layout layout;
  layout.num_ranks = static_cast<int32_t>(lengths_per_rank.size());
  layout.tokens_per_rank.assign(layout.num_ranks, 0);
  for (int32_t r = 0; r < layout.num_ranks; ++r) {
    for (size_t i = 0; i < lengths_per_rank[r].size(); ++i) {
      const int64_t len = lengths_per_rank[r][i];
      CADRE_CHECK(len >= 1, "layout_from_rank_pieces: rank ", r,
                  " has a document of length ", len, "; accepted: >= 1 token");
      if (i == 0 && continues[r]) {
        CADRE_CHECK(!layout.documents.empty(), "layout_from_rank_pieces: rank ", r,
                    "'s first piece continues a document, but no earlier rank holds one");
        PlacedDocument& doc = layout.documents.back();
        doc.pieces.push_back({r, doc.length_tokens, doc.length_tokens + len,
                              layout.tokens_per_rank[r]});
        doc.length_tokens += len;
      } else {
        PlacedDocument doc;
        doc.id = static_cast<int64_t>(layout.documents.size());
        doc.length_tokens = len;
        doc.pieces.push_back({r, 0, len, layout.tokens_per_rank[r]});
        layout.documents.push_back(std::move(doc));
      }
      layout.tokens_per_rank[r] += len;
    }
    CADRE_CHECK(!continues[r] || !lengths_per_rank[r].empty(), "layout_from_rank_pieces: rank ",
                r, " is marked as continuing a document but holds no tokens");
  }
  return layout;
}

void finalize_plan(Plan& plan) {
  validate_primary(plan);
  const int32_t num_servers = static_cast<int32_t>(plan.server_ranks.size());
  const auto& docs = plan.layout.documents;

  plan.batches.assign(num_servers, ServerBatch{});
  // (server, document) -> index of that document's K/V prefix in the server's batch. When the
  // tasks are ordered by document (as planners emit them), a document's tasks on a server are
  // consecutive and the last prefix of each server is the only one to look at.
  const bool grouped = std::is_sorted(
      plan.tasks.begin(), plan.tasks.end(),
      [](const CaTask& a, const CaTask& b) { return a.document < b.document; });
  std::unordered_map<int64_t, int32_t> prefix_of;
  std::vector<int32_t> last_document(num_servers, -1);
  for (int32_t s = 0; s < num_servers; ++s) plan.batches[s].server_rank = plan.server_ranks[s];

  // Tasks in plan order, grouped per server; prefixes grow to the longest q_end.
  for (int32_t t = 0; t < static_cast<int32_t>(plan.tasks.size()); ++t) {
    const CaTask& task = plan.tasks[t];
    ServerBatch& batch = plan.batches[task.server];
    int32_t prefix_index;
    if (grouped) {
      if (last_document[task.server] != task.document) {
        last_document[task.server] = task.document;
        batch.prefixes.push_back({task.document, 0, 0});
      }
      prefix_index = static_cast<int32_t>(batch.prefixes.size()) - 1;
    } else {
      auto [it, inserted] = prefix_of.emplace(
          static_cast<int64_t>(task.server) * (static_cast<int64_t>(docs.size()) + 1) +
              task.document,
          static_cast<int32_t>(batch.prefixes.size()));
      if (inserted) batch.prefixes.push_back({task.document, 0, 0});
      prefix_index = it->second;
    }
    KvPrefix& prefix = batch.prefixes[prefix_index];
    prefix.prefix_tokens = std::max(prefix.prefix_tokens, task.q_end);
    batch.tasks.push_back(t);
    batch.q_row.push_back(batch.q_rows);
    batch.kv_prefix.push_back(prefix_index);
    batch.q_rows += task.q_end - task.q_begin;
  }
  for (ServerBatch& batch : plan.batches) {
    for (KvPrefix& prefix : batch.prefixes) {
      prefix.kv_row = batch.kv_rows;
      batch.kv_rows += prefix.prefix_tokens;
    }
    batch.cu_seqlens_q.assign(1, 0);
    batch.cu_seqlens_k.assign(1, 0);
    batch.max_seqlen_q = batch.max_seqlen_k = 0;
    for (int32_t t : batch.tasks) {
      const CaTask& task = plan.tasks[t];
      const int64_t q = task.q_end - task.q_begin;
      batch.cu_seqlens_q.push_back(batch.cu_seqlens_q.back() + q);
      int64_t keys = 0;  // many tasks of long documents on one server could overflow
      CADRE_CHECK(!__builtin_add_overflow(batch.cu_seqlens_k.back(), task.q_end, &keys),
                  "server ", batch.server_rank, "'s tasks expand to more than 2^63 keys");
      batch.cu_seqlens_k.push_back(keys);
      batch.max_seqlen_q = std::max(batch.max_seqlen_q, q);
      batch.max_seqlen_k = std::max(batch.max_seqlen_k, task.q_end);
    }
  }

  // Row movements, built server by server (an owner -> transfer index table reset per server),
  // then ordered owner-major.
  std::vector<PeerTransfer> transfers;
  std::vector<int32_t> slot(plan.layout.num_ranks, -1);
  std::vector<int32_t> touched;
  int32_t current_server = -1;
  auto transfer_for = [&](int32_t owner, int32_t server) -> PeerTransfer& {
    if (server != current_server) {
      for (int32_t o : touched) slot[o] = -1;
      touched.clear();
      current_server = server;
    }
    if (slot[owner] < 0) {
      slot[owner] = static_cast<int32_t>(transfers.size());
      touched.push_back(owner);
      transfers.push_back(PeerTransfer{owner, server, {}, {}});
    }
    return transfers[slot[owner]];
  };
  for (int32_t s = 0; s < num_servers; ++s) {
    const ServerBatch& batch = plan.batches[s];
    for (size_t i = 0; i < batch.tasks.size(); ++i) {
      const CaTask& task = plan.tasks[batch.tasks[i]];
      const PlacedDocument& doc = docs[task.document];
      for (size_t p = first_piece_after(doc, task.q_begin);
           p < doc.pieces.size() && doc.pieces[p].doc_begin < task.q_end; ++p) {
        const DocumentPiece& piece = doc.pieces[p];
        const int64_t begin = std::max(piece.doc_begin, task.q_begin);
        const int64_t end = std::min(piece.doc_end, task.q_end);
        append_segment(transfer_for(piece.rank, s).q, piece.local_row + (begin - piece.doc_begin),
                       batch.q_row[i] + (begin - task.q_begin), end - begin);
      }
    }
    for (const KvPrefix& prefix : batch.prefixes) {
      const PlacedDocument& doc = docs[prefix.document];
      for (size_t p = 0; p < doc.pieces.size() && doc.pieces[p].doc_begin < prefix.prefix_tokens;
           ++p) {
        const DocumentPiece& piece = doc.pieces[p];
        const int64_t end = std::min(piece.doc_end, prefix.prefix_tokens);
        append_segment(transfer_for(piece.rank, s).kv, piece.local_row,
                       prefix.kv_row + piece.doc_begin, end - piece.doc_begin);
      }
    }
  }
  std::stable_sort(transfers.begin(), transfers.end(),
                   [](const PeerTransfer& a, const PeerTransfer& b) { return a.owner < b.owner; });
  plan.transfers = std::move(transfers);
}

void validate_plan(const Plan& plan) {
  Plan derived;
  derived.layout = plan.layout;
  derived.server_ranks = plan.server_ranks;
  derived.world_size = plan.world_size;
  derived.tasks = plan.tasks;
  finalize_plan(derived);  // checks the primary data
  CADRE_CHECK(plan.batches.size() == derived.batches.size(), "plan has ", plan.batches.size(),
              " server batches but ", derived.batches.size(),
              " servers; was finalize_plan called?");
  for (size_t s = 0; s < derived.batches.size(); ++s) {
    const ServerBatch& a = plan.batches[s];
    const ServerBatch& b = derived.batches[s];
    CADRE_CHECK(a.server_rank == b.server_rank && a.tasks == b.tasks && a.q_row == b.q_row &&
                    a.kv_prefix == b.kv_prefix && a.q_rows == b.q_rows &&
                    a.kv_rows == b.kv_rows && a.cu_seqlens_q == b.cu_seqlens_q &&
                    a.cu_seqlens_k == b.cu_seqlens_k && a.max_seqlen_q == b.max_seqlen_q &&
                    a.max_seqlen_k == b.max_seqlen_k && a.prefixes.size() == b.prefixes.size(),
                "server batch ", s, " does not match the plan's tasks (stale or corrupt plan)");
    for (size_t i = 0; i < b.prefixes.size(); ++i) {
      CADRE_CHECK(a.prefixes[i].document == b.prefixes[i].document &&
                      a.prefixes[i].prefix_tokens == b.prefixes[i].prefix_tokens &&
                      a.prefixes[i].kv_row == b.prefixes[i].kv_row,
                  "server batch ", s, " K/V prefix ", i, " does not match the plan's tasks");
    }
  }
  CADRE_CHECK(plan.transfers.size() == derived.transfers.size(), "plan has ",
              plan.transfers.size(), " peer transfers but its tasks need ",
              derived.transfers.size(), " (stale or corrupt plan)");
  for (size_t i = 0; i < derived.transfers.size(); ++i) {
    const PeerTransfer& a = plan.transfers[i];
    const PeerTransfer& b = derived.transfers[i];
    CADRE_CHECK(a.owner == b.owner && a.server == b.server && same_segments(a.q, b.q) &&
                    same_segments(a.kv, b.kv),
                "peer transfer ", i, " (owner ", b.owner, " -> server ", b.server,
                ") does not match the plan's tasks (stale or corrupt plan)");
  }
}

std::string serialize_plan(const Plan& plan) {
  cadre::plan::PlanProto proto;
  proto.set_format_version(kPlanFormatVersion);
  auto* layout = proto.mutable_layout();
  layout->set_num_ranks(plan.layout.num_ranks);
  for (int64_t t : plan.layout.tokens_per_rank) layout->add_tokens_per_rank(t);
  for (const PlacedDocument& doc : plan.layout.documents) {
    auto* d = layout->add_documents();
    d->set_id(doc.id);
    d->set_length_tokens(doc.length_tokens);
    for (const DocumentPiece& p : doc.pieces) {
      auto* piece = d->add_pieces();
      piece->set_rank(p.rank);
      piece->set_doc_begin(p.doc_begin);
      piece->set_doc_end(p.doc_end);
      piece->set_local_row(p.local_row);
    }
  }
  for (int32_t r : plan.server_ranks) proto.add_server_ranks(r);
  proto.set_world_size(plan.world_size);
  for (const CaTask& task : plan.tasks) {
    proto.add_task_document(task.document);
    proto.add_task_q_begin(task.q_begin);
    proto.add_task_q_end(task.q_end);
    proto.add_task_server(task.server);
  }
  std::string bytes;
  CADRE_CHECK(proto.SerializeToString(&bytes), "serialize_plan: protobuf serialisation failed");
  return bytes;
}

Plan deserialize_plan(const std::string& bytes) {
  cadre::plan::PlanProto proto;
  CADRE_CHECK(proto.ParseFromString(bytes), "deserialize_plan: ", bytes.size(),
              " bytes are not a cadre.plan.PlanProto (corrupt or truncated plan)");
  CADRE_CHECK(proto.format_version() == kPlanFormatVersion,
              "deserialize_plan: plan format version ", proto.format_version(),
              "; accepted: ", kPlanFormatVersion);
  const int n = proto.task_document_size();
  CADRE_CHECK(proto.task_q_begin_size() == n && proto.task_q_end_size() == n &&
                  proto.task_server_size() == n,
              "deserialize_plan: task arrays have different lengths (", n, ", ",
              proto.task_q_begin_size(), ", ", proto.task_q_end_size(), ", ",
              proto.task_server_size(), "); the plan is corrupt");
  Plan plan;
  const auto& layout = proto.layout();
  plan.layout.num_ranks = layout.num_ranks();
  plan.layout.tokens_per_rank.assign(layout.tokens_per_rank().begin(),
                                     layout.tokens_per_rank().end());
  for (const auto& d : layout.documents()) {
    PlacedDocument doc;
    doc.id = d.id();
    doc.length_tokens = d.length_tokens();
    for (const auto& p : d.pieces()) {
      doc.pieces.push_back({p.rank(), p.doc_begin(), p.doc_end(), p.local_row()});
    }
    plan.layout.documents.push_back(std::move(doc));
  }
  plan.server_ranks.assign(proto.server_ranks().begin(), proto.server_ranks().end());
  plan.world_size = proto.world_size();
  plan.tasks.resize(n);
  for (int i = 0; i < n; ++i) {
    plan.tasks[i] = {proto.task_document(i), proto.task_q_begin(i), proto.task_q_end(i),
                     proto.task_server(i)};
  }
  finalize_plan(plan);  // validates the primary data and derives the rest
  return plan;
}

Plan plan_colocated(const Layout& layout) {
  Plan plan;
  plan.layout = layout;
  plan.world_size = layout.num_ranks;
  plan.server_ranks.resize(layout.num_ranks);
  std::iota(plan.server_ranks.begin(), plan.server_ranks.end(), 0);
  for (int32_t d = 0; d < static_cast<int32_t>(layout.documents.size()); ++d) {
    for (const DocumentPiece& p : layout.documents[d].pieces) {
      plan.tasks.push_back({d, p.doc_begin, p.doc_end, p.rank});
    }
  }
  finalize_plan(plan);
  return plan;
}

}  // namespace cadre::scheduler
