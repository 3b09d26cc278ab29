// The Plan of one step: documents laid out over ranks, CA-tasks assigned to servers, and the
// exact row movements (per owner rank x server) that the attention server and comm execute.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cadre::scheduler {

// Bounds every plan is checked against (far above any real step: 512 ranks x 512K tokens is
// 2^28 tokens), so that no row arithmetic on a plan read from bytes can overflow.
constexpr int32_t kMaxPlanWorldSize = 1 << 20;
constexpr int64_t kMaxPlanTokens = int64_t{1} << 40;  // per rank and in total

// A contiguous run of one document's tokens held by one rank: document tokens
// [doc_begin, doc_end) are rows [local_row, local_row + doc_end - doc_begin) of that rank's
// local token array.
struct DocumentPiece {
  int32_t rank = 0;
  int64_t doc_begin = 0;
  int64_t doc_end = 0;
  int64_t local_row = 0;
};

// One document (its own causal attention) and where its tokens live. Pieces are ordered by
// doc_begin and cover [0, length_tokens) exactly once.
struct PlacedDocument {
  int64_t id = 0;
  int64_t length_tokens = 0;
  std::vector<DocumentPiece> pieces;
};

// How a step's documents are laid out over the ranks that own tokens (workers).
struct Layout {
  int32_t num_ranks = 0;
  std::vector<int64_t> tokens_per_rank;  // local token count of each rank
  std::vector<PlacedDocument> documents;
};

// Packs documents back to back into num_ranks chunks of chunk_tokens each, splitting a document
// at chunk boundaries (DistCA's sequential packing). Documents that do not fit are dropped; a
// rank may be left partly (or wholly) empty.
Layout pack_sequential(const std::vector<int64_t>& lengths_tokens, int32_t num_ranks,
                       int64_t chunk_tokens);

// Builds a Layout from explicit per-rank document lists (each rank's documents are whole and
// packed back to back in order).
Layout layout_from_rank_documents(const std::vector<std::vector<int64_t>>& lengths_per_rank);

// The same, where continues[r] says that rank r's first piece is the continuation of the last
// document of the nearest earlier rank holding pieces (a document cut at a rank boundary, as
// DistCA's sequential packing does): that document gains a piece on rank r. Throws
// cadre::Error when a continuation has nothing before it to continue.
Layout layout_from_rank_pieces(const std::vector<std::vector<int64_t>>& lengths_per_rank,
                               const std::vector<bool>& continues);

// Core-attention task: queries [q_begin, q_end) of document `document` (an index into
// Layout::documents) attending to keys/values [0, q_end) under a causal mask.
struct CaTask {
  int32_t document = 0;
  int64_t q_begin = 0;
  int64_t q_end = 0;
  int32_t server = 0;  // index into Plan::server_ranks
};

// Query-key pairs of a task under the causal mask: q*kv - q(q-1)/2 with q = e - s, kv = e.
int64_t causal_pairs(int64_t q_begin, int64_t q_end);

// Rows moved between an owner rank's local token array and a server's receive buffer:
// rows [src_row, src_row + rows) at the sender land at [dst_row, dst_row + rows) at the receiver.
struct RowSegment {
  int64_t src_row = 0;
  int64_t dst_row = 0;
  int64_t rows = 0;
};

// Everything owner rank `owner` sends to server `server` (index into Plan::server_ranks) for one
// layer: Q rows for tasks (into the server's fused query buffer) and K/V rows of document
// prefixes (into the server's K/V-prefix buffer; each prefix is sent once per server, however
// many tasks of that document the server has). Outputs and dQ return along `q` reversed;
// dK/dV return along `kv` reversed and are summed at the owner.
struct PeerTransfer {
  int32_t owner = 0;
  int32_t server = 0;
  std::vector<RowSegment> q;
  std::vector<RowSegment> kv;
  int64_t q_rows() const;
  int64_t kv_rows() const;
};

// A document prefix [0, prefix_tokens) resident on a server.
struct KvPrefix {
  int32_t document = 0;
  int64_t prefix_tokens = 0;
  int64_t kv_row = 0;  // first row in the server's K/V-prefix buffer
};

// What one server computes: its tasks fused into one variable-length batch.
struct ServerBatch {
  int32_t server_rank = 0;
  std::vector<int32_t> tasks;     // indices into Plan::tasks, in fused order
  std::vector<int64_t> q_row;     // per task: first row in the fused query buffer
  std::vector<int32_t> kv_prefix; // per task: index into `prefixes`
  std::vector<KvPrefix> prefixes;
  int64_t q_rows = 0;             // total rows of the fused query buffer
  int64_t kv_rows = 0;            // total rows of the K/V-prefix buffer
  // Varlen metadata of the fused batch, with K/V expanded per task (task i uses keys
  // [0, q_end_i) of its document): cu_seqlens_q[i+1]-cu_seqlens_q[i] = q_end-q_begin,
  // cu_seqlens_k[i+1]-cu_seqlens_k[i] = q_end. Causal masks are bottom-right aligned.
  std::vector<int64_t> cu_seqlens_q;
  std::vector<int64_t> cu_seqlens_k;
  int64_t max_seqlen_q = 0;
  int64_t max_seqlen_k = 0;
};

// The plan of one step. Deterministic and identical on every rank.
struct Plan {
  Layout layout;
  // Ranks that act as attention servers: all ranks (in place) or a dedicated pool.
  std::vector<int32_t> server_ranks;
  int32_t world_size = 0;  // total ranks (workers + dedicated servers)
  std::vector<CaTask> tasks;
  // Derived by finalize_plan:
  std::vector<ServerBatch> batches;        // one per server, same order as server_ranks
  std::vector<PeerTransfer> transfers;     // non-empty (owner, server) pairs, owner-major order
};

// Derives batches and transfers from layout, server_ranks and tasks. Throws cadre::Error if the
// tasks do not cover every query token of every document exactly once, reference a document or
// server that does not exist, or are otherwise inconsistent.
void finalize_plan(Plan& plan);

// Checks every invariant of a finalized plan (coverage, bounds, consistency of the derived
// layouts with the tasks); throws cadre::Error naming the first violation.
void validate_plan(const Plan& plan);

// Serialisation through scheduler/plan.proto (cadre.plan.PlanProto).
std::string serialize_plan(const Plan& plan);
Plan deserialize_plan(const std::string& bytes);  // validates; throws on corrupt input

// The plan where every document's attention stays with the rank owning its queries
// (colocated / fixed packing): one task per document piece, server = owner.
Plan plan_colocated(const Layout& layout);

}  // namespace cadre::scheduler
