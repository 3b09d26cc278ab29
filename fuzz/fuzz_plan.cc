// libFuzzer target: the Plan decoder. A PlanProto from arbitrary bytes is either refused
// (cadre::Error) or accepted; an accepted plan is checked here, independently of
// scheduler/plan.cc, for every invariant the attention server and comm rely on (ranks, offsets
// and counts in range, every query token covered exactly once), and must survive a
// serialise/deserialise round trip unchanged. An accepted invalid plan aborts (fails CI).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/error.h"
#include "scheduler/plan.h"

namespace {

using cadre::scheduler::Plan;

[[noreturn]] void invalid(const char* what) {
  std::fprintf(stderr, "fuzz_plan: deserialize_plan accepted an invalid plan: %s\n", what);
  std::abort();
}

void require(bool ok, const char* what) {
  if (!ok) invalid(what);
}

bool within(int64_t begin, int64_t count, int64_t size) {
  return begin >= 0 && count >= 0 && begin <= size && count <= size - begin;
}

void check_plan(const Plan& plan) {
  const auto& layout = plan.layout;
  require(layout.num_ranks >= 1 && layout.num_ranks <= plan.world_size, "owner count");
  require(static_cast<int64_t>(layout.tokens_per_rank.size()) == layout.num_ranks, "tokens_per_rank size");
  int64_t total_tokens = 0;
  for (int64_t t : layout.tokens_per_rank) {
    require(t >= 0 && t <= (int64_t{1} << 40), "tokens per rank");
    total_tokens += t;
  }
  const int32_t servers = static_cast<int32_t>(plan.server_ranks.size());
  require(servers >= 1, "no servers");
  for (int32_t r : plan.server_ranks) require(r >= 0 && r < plan.world_size, "server rank");
  // Pieces inside their rank's tokens, documents covered by their pieces.
  for (const auto& doc : layout.documents) {
    int64_t next = 0;
    require(doc.length_tokens >= 1, "document length");
    for (const auto& p : doc.pieces) {
      require(p.rank >= 0 && p.rank < layout.num_ranks, "piece rank");
      require(p.doc_begin == next && p.doc_end > p.doc_begin, "piece order");
      require(within(p.local_row, p.doc_end - p.doc_begin, layout.tokens_per_rank[p.rank]), "piece rows");
      next = p.doc_end;
    }
    require(next == doc.length_tokens, "document coverage");
  }
  // Tasks: document, server, queries in range; each document's queries covered exactly once.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> spans(layout.documents.size());
  for (const auto& t : plan.tasks) {
    require(t.document >= 0 && t.document < static_cast<int32_t>(layout.documents.size()), "task document");
    require(t.server >= 0 && t.server < servers, "task server");
    require(t.q_begin >= 0 && t.q_begin < t.q_end &&
                t.q_end <= layout.documents[t.document].length_tokens, "task queries");
    spans[t.document].push_back({t.q_begin, t.q_end});
  }
  for (size_t d = 0; d < spans.size(); ++d) {
    auto& s = spans[d];
    std::sort(s.begin(), s.end());
    int64_t next = 0;
    for (const auto& [b, e] : s) {
      require(b == next, "query coverage");
      next = e;
    }
    require(next == layout.documents[d].length_tokens, "query coverage to the end");
  }
  // Server batches: task indices, rows and varlen metadata in range.
  require(plan.batches.size() == plan.server_ranks.size(), "batch count");
  for (size_t s = 0; s < plan.batches.size(); ++s) {
    const auto& b = plan.batches[s];
    require(b.server_rank == plan.server_ranks[s], "batch rank");
    require(b.q_row.size() == b.tasks.size() && b.kv_prefix.size() == b.tasks.size(), "batch arrays");
    require(b.cu_seqlens_q.size() == b.tasks.size() + 1 && b.cu_seqlens_k.size() == b.tasks.size() + 1,
            "cu_seqlens size");
    require(b.cu_seqlens_q[0] == 0 && b.cu_seqlens_k[0] == 0, "cu_seqlens start");
    for (size_t i = 0; i < b.tasks.size(); ++i) {
      require(b.tasks[i] >= 0 && b.tasks[i] < static_cast<int32_t>(plan.tasks.size()), "batch task");
      const auto& t = plan.tasks[b.tasks[i]];
      require(t.server == static_cast<int32_t>(s), "task on another server's batch");
      const int64_t q = t.q_end - t.q_begin;
      require(within(b.q_row[i], q, b.q_rows), "q rows");
      require(b.cu_seqlens_q[i + 1] - b.cu_seqlens_q[i] == q, "cu_seqlens_q step");
      require(b.cu_seqlens_k[i + 1] - b.cu_seqlens_k[i] == t.q_end, "cu_seqlens_k step");
      require(q <= b.max_seqlen_q && t.q_end <= b.max_seqlen_k, "max seqlen");
      require(b.kv_prefix[i] >= 0 && b.kv_prefix[i] < static_cast<int32_t>(b.prefixes.size()), "kv prefix index");
      const auto& prefix = b.prefixes[b.kv_prefix[i]];
      require(prefix.document == t.document && prefix.prefix_tokens >= t.q_end, "kv prefix covers the task");
    }
    require(b.cu_seqlens_q.back() == b.q_rows, "q_rows total");
    for (const auto& prefix : b.prefixes) {
      require(prefix.document >= 0 && prefix.document < static_cast<int32_t>(layout.documents.size()), "prefix document");
      require(prefix.prefix_tokens <= layout.documents[prefix.document].length_tokens, "prefix length");
      require(within(prefix.kv_row, prefix.prefix_tokens, b.kv_rows), "kv rows");
    }
  }
  // Row movements: owner rows inside the owner's tokens, server rows inside its buffers.
  for (const auto& tr : plan.transfers) {
    require(tr.owner >= 0 && tr.owner < layout.num_ranks, "transfer owner");
    require(tr.server >= 0 && tr.server < servers, "transfer server");
    const auto& b = plan.batches[tr.server];
    for (const auto& seg : tr.q) {
      require(seg.rows >= 1, "q segment rows");
      require(within(seg.src_row, seg.rows, layout.tokens_per_rank[tr.owner]), "q segment source");
      require(within(seg.dst_row, seg.rows, b.q_rows), "q segment destination");
    }
    for (const auto& seg : tr.kv) {
      require(seg.rows >= 1, "kv segment rows");
      require(within(seg.src_row, seg.rows, layout.tokens_per_rank[tr.owner]), "kv segment source");
      require(within(seg.dst_row, seg.rows, b.kv_rows), "kv segment destination");
    }
  }
  (void)total_tokens;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Plan plan;
  try {
    plan = cadre::scheduler::deserialize_plan(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const cadre::Error&) {
    return 0;  // refused, with a message
  }
  check_plan(plan);
  try {
    cadre::scheduler::validate_plan(plan);
    const Plan again = cadre::scheduler::deserialize_plan(cadre::scheduler::serialize_plan(plan));
    require(cadre::scheduler::serialize_plan(again) == cadre::scheduler::serialize_plan(plan),
            "round trip changed the plan");
  } catch (const cadre::Error& e) {
    std::fprintf(stderr, "fuzz_plan: an accepted plan fails validate_plan or its round trip: %s\n",
                 e.what());
    std::abort();
  }
  return 0;
}
