// The "flash" core-attention kernel (GPU build): LibTorch's FlashAttention-2 varlen forward and
// backward (aten::_flash_attention_forward / _backward) over a fused batch of CA-tasks.
//
// The operators are called through the dispatcher with arguments filled by schema name, so a
// LibTorch release that adds or renames an optional argument still works, and one that adds a
// required argument fails with a message naming it (and the schema) rather than a link error.
// Its causal mask is bottom-right aligned when a sequence has fewer queries than keys (checked
// against the reference: tests/attention_server/flash_kernel_gpu_test.cc), which is the mask a
// query shard [s, e) of a document attending to keys [0, e) needs.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <list>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "attention_server/cudnn_kernel.h"
#include "attention_server/flash_kernel.h"
#include "attention_server/kernel.h"
#include "attention_server/lse_merge.h"
#include "attention_server/prefix_chunks.h"
#include "comm/cuda_check.h"
#include "common/error.h"

namespace cadre::attention_server {
namespace {

using NamedArgs = std::unordered_map<std::string, c10::IValue>;

// An ATen operator called with arguments by name; missing ones take their schema default.
class NamedOperator {
 public:
  explicit NamedOperator(const char* name)
      : name_(name), handle_(c10::Dispatcher::singleton().findSchemaOrThrow(name, "")) {}

  std::vector<c10::IValue> call(const NamedArgs& args) const {
    const c10::FunctionSchema& schema = handle_.schema();
    std::vector<c10::IValue> stack;
    stack.reserve(schema.arguments().size());
    for (const c10::Argument& argument : schema.arguments()) {
      auto given = args.find(argument.name());
      if (given != args.end()) {
        stack.push_back(given->second);
      } else if (argument.default_value().has_value()) {
        stack.push_back(*argument.default_value());
      } else {
        CADRE_FAIL("LibTorch's ", name_, " has a required argument '", argument.name(),
                   "' that the flash kernel does not fill (schema: ", schema_text(),
                   "); attention_server/flash_kernel_gpu.cc must learn it");
      }
    }
    handle_.callBoxed(&stack);
    return stack;
  }

  bool has_argument(const std::string& name) const {
    for (const c10::Argument& argument : handle_.schema().arguments()) {
      if (argument.name() == name) return true;
    }
    return false;
  }

  std::string schema_text() const {
    std::ostringstream out;
    out << handle_.schema();
    return out.str();
  }

 private:
  std::string name_;
  c10::OperatorHandle handle_;
};

void check_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                  const VarlenBatch& batch) {
  CADRE_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(),
              "flash kernel: q, k, v must be CUDA tensors; got ", q.device(), ", ", k.device(),
              ", ", v.device());
  CADRE_CHECK(q.device() == k.device() && q.device() == v.device(),
              "flash kernel: q, k, v must be on one device; got ", q.device(), ", ", k.device(),
              ", ", v.device());
  CADRE_CHECK(q.scalar_type() == torch::kBFloat16 || q.scalar_type() == torch::kHalf,
              "flash kernel: dtype ", q.scalar_type(), " is not supported; accepted: bf16, fp16");
  CADRE_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "flash kernel: q, k, v must share a dtype; got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  CADRE_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
              "flash kernel: q, k, v must be [tokens, heads, head_dim]; got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  CADRE_CHECK(k.sizes() == v.sizes(), "flash kernel: k and v must have one shape; got ", k.sizes(),
              " and ", v.sizes());
  const int64_t head_dim = q.size(2);
  CADRE_CHECK(k.size(2) == head_dim, "flash kernel: q head_dim ", head_dim, " != k head_dim ",
              k.size(2));
  CADRE_CHECK(head_dim % 8 == 0 && head_dim <= 256, "flash kernel: head_dim ", head_dim,
              " is not supported; accepted: multiples of 8 up to 256 (64 and 128 tested)");
  CADRE_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "flash kernel: heads ", q.size(1),
              " must be a multiple of kv_heads ", k.size(1));
  for (const torch::Tensor* cu : {&batch.cu_seqlens_q, &batch.cu_seqlens_k}) {
    CADRE_CHECK(cu->defined() && cu->scalar_type() == torch::kInt && cu->dim() == 1 &&
                    cu->device() == q.device(),
                "flash kernel: cu_seqlens must be int32 [batch + 1] on ", q.device(), "; got ",
                cu->defined() ? str_cat(cu->scalar_type(), " ", cu->sizes(), " on ", cu->device())
                              : std::string("an undefined tensor"));
  }
  CADRE_CHECK(batch.cu_seqlens_q.size(0) == batch.cu_seqlens_k.size(0),
              "flash kernel: cu_seqlens_q and cu_seqlens_k differ in length (",
              batch.cu_seqlens_q.size(0), " vs ", batch.cu_seqlens_k.size(0), ")");
  CADRE_CHECK(q.size(0) == 0 || (batch.max_seqlen_q > 0 && batch.max_seqlen_k > 0),
              "flash kernel: max_seqlen_q and max_seqlen_k must be positive for a non-empty "
              "batch; got ",
              batch.max_seqlen_q, ", ", batch.max_seqlen_k);
}

torch::Tensor contiguous(const torch::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

double scale_for(double softmax_scale, int64_t head_dim) {
  return softmax_scale > 0 ? softmax_scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

// How a batch is split for short query shards in one direction (see flash_kernel.h). Built on
// the host from the batch's host cumulative lengths; its index tensors live on the device.
struct SplitPlan {
  // Prefix call: folded queries (q * group rows per chunk of a split sequence's prefix) against
  // k, v in place; every key row belongs to one of its sequences (rows outside split prefixes
  // form sequences without queries, whose dK/dV come back zero).
  torch::Tensor fold_rows;  // int64 [chunk rows]: the token row of each chunk row
  torch::Tensor cu_q_prefix, cu_k_prefix;
  std::vector<int64_t> cu_q_prefix_host, cu_k_prefix_host;
  int64_t max_q_prefix = 0, max_k_prefix = 0;
  // Rest call: every query row in order, against gathered keys: the diagonal block of a split
  // sequence, every key of an unsplit one (causal).
  torch::Tensor rest_rows;  // int64 [rest keys]: rows of k, v
  torch::Tensor cu_k_rest;
  std::vector<int64_t> cu_k_rest_host;
  int64_t max_k_rest = 0;
  // Forward merge (lse_merge.h): the split tokens, and for each its chunk rows.
  torch::Tensor merge_tokens, merge_offsets, merge_rows;  // int32
  int64_t merge_count = 0;
  // cuDNN forward (by_rows): both calls read through per-sequence row offsets, so only fold_rows
  // (each split shard's tokens once) and the merge above are used. Prefix: one sequence per
  // chunk, the shard's folded queries (shared by its chunks) against the chunk's keys in place,
  // output rows chunk after chunk. Diagonal: every query row against its diagonal block's keys
  // (split) or all its keys (unsplit) in place, causal.
  bool by_rows = false;
  RaggedRows prefix_rows, diagonal_rows;
};

enum class Direction { kForward, kBackward };

// Folded, unmasked prefix forward per key against the unsplit causal kernel. Fitted on H200 so
// that the estimate makes every choice the measurements made (docs/gpu.md): split the spread
// shard batches of 128-1K queries, keep uniform batches of 4K-64K keys unsplit, split 4 x 128K.
constexpr double kFoldedForwardEfficiency = 0.95;

torch::Tensor int32_on(const std::vector<int64_t>& values, const torch::Device& device) {
  return torch::tensor(values, torch::kLong).to(torch::kInt).pin_memory().to(device, true);
}
torch::Tensor int64_on(const std::vector<int64_t>& values, const torch::Device& device) {
  return torch::tensor(values, torch::kLong).pin_memory().to(device, true);
}

// Whether sequence (q queries, `keys` keys) may be split in `direction` (rules measured on H200,
// docs/gpu.md): backward whenever the prefix is long against the shard (there each key block
// meets too few query rows). Forward splits all eligible sequences or none, by the schedule
// estimate below.
bool split_sequence(int64_t q, int64_t keys, Direction direction,
                    const FlashKernelOptions& options) {
  if (q <= 0 || q >= keys) return false;
  const int64_t prefix = keys - q;
  if (direction == Direction::kBackward) {
    return q <= options.max_backward_split_queries &&
           prefix >= options.backward_min_prefix_ratio * q &&
           prefix >= options.backward_min_prefix_keys;
  }
  return q <= options.max_forward_split_queries;
}

// Forward time estimate of a FlashAttention-2 launch, in key-block units: thread blocks (one per
// 128-query block, sequence and head, issued in that order) placed greedily on `slots`
// concurrent slots, each taking its number of visible keys plus a fixed overhead.
class ScheduleEstimate {
 public:
  explicit ScheduleEstimate(int64_t slots) : free_(std::max<int64_t>(slots, 1), 0.0) {}
  void add(double keys) {
    std::pop_heap(free_.begin(), free_.end(), std::greater<double>());
    free_.back() += keys + kBlockOverheadKeys;
    std::push_heap(free_.begin(), free_.end(), std::greater<double>());
  }
  double makespan() const { return *std::max_element(free_.begin(), free_.end()); }

 private:
  static constexpr double kBlockOverheadKeys = 256;
  std::vector<double> free_;
};

constexpr int64_t kForwardBlockQueries = 128;

// One forward launch over sequences (q_i queries against keys_i keys): causal (bottom-right
// aligned, a query block sees the keys up to its last query) or unmasked (every key).
double forward_estimate(const std::vector<std::pair<int64_t, int64_t>>& sequences, int64_t heads,
                        int64_t slots, bool causal) {
  ScheduleEstimate estimate(slots);
  for (int64_t h = 0; h < heads; ++h) {
    for (auto [q, keys] : sequences) {
      for (int64_t m = 0; m * kForwardBlockQueries < q; ++m) {
        estimate.add(static_cast<double>(
            causal ? keys - q + std::min(q, (m + 1) * kForwardBlockQueries) : keys));
      }
    }
  }
  return estimate.makespan();
}

// (q, keys) of each sequence described by cumulative query and key counts.
std::vector<std::pair<int64_t, int64_t>> sequences_of(const std::vector<int64_t>& cu_q,
                                                      const std::vector<int64_t>& cu_k) {
  std::vector<std::pair<int64_t, int64_t>> sequences;
  for (size_t i = 0; i + 1 < cu_q.size(); ++i) {
    sequences.emplace_back(cu_q[i + 1] - cu_q[i], cu_k[i + 1] - cu_k[i]);
  }
  return sequences;
}

// Whether a forward split pays, from the two launches it would make (the prefix call's folded
// chunks, no mask, kv_heads heads; the rest call, causal) against the unsplit one: the split wins
// when a few long prefixes would otherwise leave their thread blocks running alone at the end of
// the launch. The folded prefix runs about 5% below the unsplit kernel per key (measured on
// uniform batches), hence the factor.
bool forward_split_pays(const VarlenBatch& batch, const std::vector<int64_t>& cu_q_prefix,
                        const std::vector<int64_t>& cu_k_prefix,
                        const std::vector<int64_t>& cu_k_rest, int64_t heads, int64_t group,
                        int64_t slots) {
  const double unsplit =
      forward_estimate(sequences_of(batch.cu_q_host, batch.cu_k_host), heads, slots, true);
  const double split =
      forward_estimate(sequences_of(cu_q_prefix, cu_k_prefix), heads / group, slots, false) /
          kFoldedForwardEfficiency +
      forward_estimate(sequences_of(batch.cu_q_host, cu_k_rest), heads, slots, true);
  return split < unsplit;
}

// The prefix call's chunks longest first, their output rows in that order: thread blocks start
// in sequence order, so the short chunks fill the SMs the long ones leave idle at the end of the
// launch (longest processing time first) rather than queueing behind them. merge_rows (offsets
// within their chunk, merge_chunk naming it) become output rows (unfolded). keep_order
// (CADRE_SPLIT_KEEP_ORDER=1, for measurements) leaves the chunks in batch order.
void order_longest_first(RaggedRows& rows, const std::vector<int64_t>& merge_chunk,
                         std::vector<int64_t>& merge_rows, int64_t group, bool keep_order) {
  const size_t n = rows.q_row.size();
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  if (!keep_order) {
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return rows.k_len[a] > rows.k_len[b]; });
  }
  RaggedRows sorted;
  std::vector<int64_t> start(n);
  for (size_t i : order) {
    start[i] = sorted.out_rows / group;
    sorted.q_row.push_back(rows.q_row[i]);
    sorted.q_len.push_back(rows.q_len[i]);
    sorted.k_row.push_back(rows.k_row[i]);
    sorted.k_len.push_back(rows.k_len[i]);
    sorted.o_row.push_back(sorted.out_rows);
    sorted.out_rows += rows.q_len[i];
  }
  rows = std::move(sorted);
  for (size_t j = 0; j < merge_rows.size(); ++j) merge_rows[j] += start[merge_chunk[j]];
}

// nullptr when nothing in the batch is split in this direction.
std::unique_ptr<SplitPlan> make_split_plan(const VarlenBatch& batch, int64_t heads,
                                           int64_t group, Direction direction,
                                           const FlashKernelOptions& options,
                                           const torch::Device& device) {
  const auto& cq = batch.cu_q_host;
  const auto& ck = batch.cu_k_host;
  // Forward cuts long prefixes into chunks; backward keeps one piece (it already splits keys
  // into independent blocks).
  const int64_t chunk = direction == Direction::kForward
                            ? std::max<int64_t>(options.prefix_chunk_keys, 1)
                            : std::numeric_limits<int64_t>::max();
  std::vector<int64_t> fold, cu_q{0}, cu_k{0}, rest, cu_rest{0};
  std::vector<int64_t> merge_tokens, merge_offsets{0}, merge_rows;  // forward only
  std::vector<int64_t> merge_chunk;  // by_rows: the prefix chunk of each merge row
  // (by_rows reads keys in place: `rest`, the gathered key rows, stays empty.)
  // cuDNN forward reads in place by row offsets (SplitPlan::by_rows).
  const bool by_rows = direction == Direction::kForward && options.cudnn_parts;
  RaggedRows prefix_rows, diagonal_rows;
  auto add_rows = [](RaggedRows& rows, int64_t q_row, int64_t q_len, int64_t k_row,
                     int64_t k_len, int64_t o_row) {
    rows.q_row.push_back(q_row);
    rows.q_len.push_back(q_len);
    rows.k_row.push_back(k_row);
    rows.k_len.push_back(k_len);
    rows.o_row.push_back(o_row);
  };
  bool any = false;
  auto add_prefix_sequence = [&](int64_t queries, int64_t key_end) {
    if (key_end == cu_k.back()) return;  // no keys: nothing to add
    cu_q.push_back(cu_q.back() + queries);
    cu_k.push_back(key_end);
  };
  for (size_t i = 0; i + 1 < cq.size(); ++i) {
    const int64_t q = cq[i + 1] - cq[i], keys = ck[i + 1] - ck[i];
    if (!split_sequence(q, keys, direction, options)) {
      if (by_rows && q > 0) add_rows(diagonal_rows, cq[i], q, ck[i], keys, cq[i]);
      // Its keys ride along in the prefix call without queries; the rest call gathers them all.
      add_prefix_sequence(0, ck[i + 1]);
      for (int64_t r = ck[i]; !by_rows && r < ck[i + 1]; ++r) rest.push_back(r);
      cu_rest.push_back(cu_rest.back() + keys);
      continue;
    }
    any = true;
    const int64_t prefix = keys - q;
    std::vector<int64_t> chunk_starts;  // first chunk row (unfolded) of each chunk
    int64_t chunk_begin = 0;
    const int64_t shard_folded_row = static_cast<int64_t>(fold.size()) * group;
    for (int64_t end : prefix_chunk_ends(prefix, chunk)) {
      add_prefix_sequence(q * group, ck[i] + end);
      if (by_rows) {
        // Every chunk reads the shard's folded queries, folded once. Output rows are placed
        // below, once the chunks are ordered; until then chunk_starts holds chunk indices.
        chunk_starts.push_back(static_cast<int64_t>(prefix_rows.q_row.size()));
        add_rows(prefix_rows, shard_folded_row, q * group, ck[i] + chunk_begin,
                 end - chunk_begin, 0);
      } else {
        chunk_starts.push_back(static_cast<int64_t>(fold.size()));
        for (int64_t t = cq[i]; t < cq[i + 1]; ++t) fold.push_back(t);
      }
      chunk_begin = end;
    }
    if (by_rows) {
      for (int64_t t = cq[i]; t < cq[i + 1]; ++t) fold.push_back(t);
      add_rows(diagonal_rows, cq[i], q, ck[i] + prefix, q, cq[i]);
    }
    for (int64_t t = cq[i]; direction == Direction::kForward && t < cq[i + 1]; ++t) {
      merge_tokens.push_back(t);
      for (int64_t start : chunk_starts) {
        if (by_rows) merge_chunk.push_back(start);
        merge_rows.push_back((by_rows ? 0 : start) + t - cq[i]);
      }
      merge_offsets.push_back(static_cast<int64_t>(merge_rows.size()));
    }
    // The diagonal block: no queries in the prefix call, gathered for the rest call.
    add_prefix_sequence(0, ck[i + 1]);
    for (int64_t r = ck[i] + prefix; !by_rows && r < ck[i + 1]; ++r) rest.push_back(r);
    cu_rest.push_back(cu_rest.back() + q);
  }
  if (!any) return nullptr;
  static const bool keep_order = std::getenv("CADRE_SPLIT_KEEP_ORDER") != nullptr;
  if (by_rows) order_longest_first(prefix_rows, merge_chunk, merge_rows, group, keep_order);
  // The prefix call's folded query rows and the merge's row indices are 32-bit: a batch whose
  // folded rows do not fit runs unsplit.
  if (cu_q.back() > std::numeric_limits<int32_t>::max()) return nullptr;
  if (direction == Direction::kForward && !options.force_forward_split && !options.cudnn_parts) {
    const int64_t slots =
        options.forward_slots > 0
            ? options.forward_slots
            : 2 * static_cast<int64_t>(
                      at::cuda::getDeviceProperties(device.index())->multiProcessorCount);
    if (!forward_split_pays(batch, cu_q, cu_k, cu_rest, heads, group, slots)) return nullptr;
  }
  auto max_step = [](const std::vector<int64_t>& cu) {
    int64_t m = 0;
    for (size_t i = 1; i < cu.size(); ++i) m = std::max(m, cu[i] - cu[i - 1]);
    return m;
  };
  auto plan = std::make_unique<SplitPlan>();
  if (by_rows) {
    plan->by_rows = true;
    plan->fold_rows = int64_on(fold, device);
    diagonal_rows.out_rows = cq.back();
    plan->prefix_rows = std::move(prefix_rows);
    plan->diagonal_rows = std::move(diagonal_rows);
    plan->merge_tokens = int32_on(merge_tokens, device);
    plan->merge_offsets = int32_on(merge_offsets, device);
    plan->merge_rows = int32_on(merge_rows, device);
    plan->merge_count = static_cast<int64_t>(merge_tokens.size());
    return plan;
  }
  plan->fold_rows = int64_on(fold, device);
  plan->cu_q_prefix = int32_on(cu_q, device);
  plan->cu_k_prefix = int32_on(cu_k, device);
  plan->cu_q_prefix_host = cu_q;
  plan->cu_k_prefix_host = cu_k;
  plan->cu_k_rest_host = cu_rest;
  plan->max_q_prefix = max_step(cu_q);
  plan->max_k_prefix = max_step(cu_k);
  plan->rest_rows = int64_on(rest, device);
  plan->cu_k_rest = int32_on(cu_rest, device);
  plan->max_k_rest = max_step(cu_rest);
  if (direction == Direction::kForward) {
    plan->merge_tokens = int32_on(merge_tokens, device);
    plan->merge_offsets = int32_on(merge_offsets, device);
    plan->merge_rows = int32_on(merge_rows, device);
    plan->merge_count = static_cast<int64_t>(merge_tokens.size());
  }
  return plan;
}

// [rows, heads, d] -> [rows(fold) * group, kv_heads, d]: row (t, g) at t * group + g, head h
// holding query head h * group + g (the heads that share KV head h). One gather from the
// head-transposed view of x (contiguous).
torch::Tensor fold_heads(const torch::Tensor& x, const torch::Tensor& rows, int64_t group) {
  const int64_t n = rows.size(0), kv_heads = x.size(1) / group, d = x.size(2);
  return x.view({x.size(0), kv_heads, group, d})
      .transpose(1, 2)
      .index_select(0, rows)
      .reshape({n * group, kv_heads, d});
}
// [rows * group, kv_heads, d] -> [rows, heads, d] (the inverse layout of fold_heads).
torch::Tensor unfold_heads(const torch::Tensor& x, int64_t group) {
  const int64_t n = x.size(0) / group, kv_heads = x.size(1), d = x.size(2);
  return x.view({n, group, kv_heads, d}).transpose(1, 2).reshape({n, kv_heads * group, d});
}
// lse [heads, total_q] -> [kv_heads, rows(fold) * group], matching fold_heads.
torch::Tensor fold_lse(const torch::Tensor& lse, const torch::Tensor& rows, int64_t group) {
  torch::Tensor picked = lse.index_select(1, rows);
  const int64_t n = picked.size(1), kv_heads = lse.size(0) / group;
  return picked.view({kv_heads, group, n}).transpose(1, 2).reshape({kv_heads, n * group});
}

// CADRE_SPLIT_PROFILE=1: CUDA events between the phases of a split call, synchronised and
// printed at its end (device time of each phase; a diagnostic that stalls the host, off by
// default).
class PhaseTimer {
 public:
  explicit PhaseTimer(int device) {
    static const bool on = std::getenv("CADRE_SPLIT_PROFILE") != nullptr;
    if (!on) return;
    on_ = true;
    stream_ = at::cuda::getCurrentCUDAStream(device).stream();
    mark();
  }
  ~PhaseTimer() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;
  void mark() {
    if (!on_) return;
    cudaEvent_t e = nullptr;
    CADRE_CUDA_CHECK(cudaEventCreate(&e));
    CADRE_CUDA_CHECK(cudaEventRecord(e, stream_));
    events_.push_back(e);
  }
  void report(const char* what) {
    if (!on_ || events_.size() < 2) return;
    CADRE_CUDA_CHECK(cudaEventSynchronize(events_.back()));
    std::ostringstream line;
    line << "cadre: " << what << ":";
    for (size_t i = 1; i < events_.size(); ++i) {
      float ms = 0;
      CADRE_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i - 1], events_[i]));
      line << " " << ms;
    }
    std::cerr << line.str() << "\n";
  }

 private:
  bool on_ = false;
  cudaStream_t stream_ = nullptr;  // null for the default stream
  std::vector<cudaEvent_t> events_;
};

class FlashKernel : public CoreAttentionKernel {
 public:
  explicit FlashKernel(const FlashKernelOptions& options)
      : options_(options),
        forward_op_("aten::_flash_attention_forward"),
        backward_op_("aten::_flash_attention_backward") {
#ifdef CADRE_WITH_CUDNN
    if (options.cudnn_parts) cudnn_ = make_cudnn_attention();
#endif
    CADRE_CHECK(!options.cudnn_parts || cudnn_ != nullptr,
                "flash kernel: cudnn_parts needs the GPU build with cuDNN");
  }

  std::string name() const override { return cudnn_ ? "cudnn-split" : "flash"; }
  KernelCounters counters() const override { return cudnn_ ? cudnn_->counters() : KernelCounters{}; }

  // Latent attention's value width (128) below the query/key width (192): FlashAttention-2
  // needs equal widths, so V (and, in backward, dO and O) are padded with zeros to the q/k
  // width and the results sliced back. Exact (the padded columns of O and dV are zero and add
  // nothing to dP or rowsum(dO * O)); it costs the PV and dV work of the padded width, 192/128
  // of the value half of the FLOPs, plus one copy of V, dO and O per call.
  ForwardResult forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const VarlenBatch& batch, double softmax_scale) override {
    if (v.dim() == 3 && q.dim() == 3 && v.size(2) < q.size(2)) {
      CADRE_CHECK(cudnn_ == nullptr, "cudnn-split: a value width below the query/key width is "
                  "not split; use the cudnn kernel (auto does) or flash");
      const int64_t dv = v.size(2);
      ForwardResult r = forward_equal(q, k, pad_to(v, q.size(2)), batch,
                                      scale_for(softmax_scale, q.size(2)));
      r.out = r.out.narrow(2, 0, dv).contiguous();
      return r;
    }
    return forward_equal(q, k, v, batch, softmax_scale);
  }

  BackwardResult backward(const torch::Tensor& dout, const torch::Tensor& q, const torch::Tensor& k,
                          const torch::Tensor& v, const torch::Tensor& out,
                          const torch::Tensor& lse, const VarlenBatch& batch,
                          double softmax_scale) override {
    if (v.dim() == 3 && q.dim() == 3 && v.size(2) < q.size(2)) {
      CADRE_CHECK(cudnn_ == nullptr, "cudnn-split: a value width below the query/key width is "
                  "not split; use the cudnn kernel (auto does) or flash");
      const int64_t d = q.size(2), dv = v.size(2);
      BackwardResult g = backward_equal(pad_to(dout, d), q, k, pad_to(v, d), pad_to(out, d), lse,
                                        batch, scale_for(softmax_scale, d));
      g.dv = g.dv.narrow(2, 0, dv).contiguous();
      return g;
    }
    return backward_equal(dout, q, k, v, out, lse, batch, softmax_scale);
  }

 private:
  static torch::Tensor pad_to(const torch::Tensor& x, int64_t width) {
    return torch::constant_pad_nd(x, {0, width - x.size(2)}, 0);
  }

  ForwardResult forward_equal(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const VarlenBatch& batch, double softmax_scale) {
    check_inputs(q, k, v, batch);
    c10::cuda::CUDAGuard guard(q.device());
    const int64_t heads = q.size(1);
    if (q.size(0) == 0) {
      return {torch::empty_like(q), torch::empty({heads, 0}, q.options().dtype(torch::kFloat))};
    }
    const SplitPlan* plan = split_plan(batch, heads, heads / k.size(1), Direction::kForward, q.device());
    if (plan == nullptr) {
      return call_forward(contiguous(q), contiguous(k), contiguous(v), batch.cu_seqlens_q,
                          batch.cu_seqlens_k, batch.max_seqlen_q, batch.max_seqlen_k, true,
                          softmax_scale, batch.cu_q_host, batch.cu_k_host);
    }
    return split_forward(*plan, contiguous(q), contiguous(k), contiguous(v), batch, softmax_scale);
  }

  // One call of the parts' kernel; the host cumulative lengths (possibly empty) serve cuDNN.
  ForwardResult call_forward(const torch::Tensor& q, const torch::Tensor& k,
                             const torch::Tensor& v, const torch::Tensor& cu_q,
                             const torch::Tensor& cu_k, int64_t max_q, int64_t max_k, bool causal,
                             double softmax_scale, const std::vector<int64_t>& cu_q_host,
                             const std::vector<int64_t>& cu_k_host) {
#ifdef CADRE_WITH_CUDNN
    if (cudnn_) {
      return cudnn_->forward_masked(q, k, v, parts_batch(cu_q, cu_k, max_q, max_k, cu_q_host, cu_k_host),
                                    softmax_scale, causal);
    }
#endif
    const int64_t heads = q.size(1);
    NamedArgs args{{"query", q},
                   {"key", k},
                   {"value", v},
                   {"cum_seq_q", cu_q},
                   {"cum_seq_k", cu_k},
                   {"max_q", max_q},
                   {"max_k", max_k},
                   {"dropout_p", 0.0},
                   {"is_causal", causal},
                   {"return_debug_mask", false},
                   {"scale", scale_for(softmax_scale, q.size(2))}};
    std::vector<c10::IValue> results = forward_op_.call(args);
    CADRE_CHECK(results.size() >= 2, "flash kernel: ", forward_op_.schema_text(), " returned ",
                results.size(), " values; expected output and logsumexp first");
    ForwardResult result{results[0].toTensor(), results[1].toTensor()};
    CADRE_CHECK(
        result.lse.dim() == 2 && result.lse.size(0) == heads && result.lse.size(1) == q.size(0),
        "flash kernel: LibTorch returned log-sum-exp of shape ", result.lse.sizes(),
        "; expected [heads, total_q] = [", heads, ", ", q.size(0), "]");
    return result;
  }

  // Prefix chunks (folded, no mask) and the rest (causal), merged by log-sum-exp.
  ForwardResult split_forward(const SplitPlan& plan, const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const VarlenBatch& batch,
                              double softmax_scale) {
#ifdef CADRE_WITH_CUDNN
    if (plan.by_rows) return split_forward_by_rows(plan, q, k, v, softmax_scale);
#endif
    const int64_t group = q.size(1) / k.size(1);
    PhaseTimer timer(q.device().index());
    ForwardResult rest = call_forward(q, k.index_select(0, plan.rest_rows),
                                      v.index_select(0, plan.rest_rows), batch.cu_seqlens_q,
                                      plan.cu_k_rest, batch.max_seqlen_q, plan.max_k_rest, true,
                                      softmax_scale, batch.cu_q_host, plan.cu_k_rest_host);
    timer.mark();
    const torch::Tensor folded = fold_heads(q, plan.fold_rows, group);
    timer.mark();
    ForwardResult prefix = call_forward(folded, k, v, plan.cu_q_prefix, plan.cu_k_prefix,
                                        plan.max_q_prefix, plan.max_k_prefix, false, softmax_scale,
                                        plan.cu_q_prefix_host, plan.cu_k_prefix_host);
    timer.mark();
    // The rest's output and log-sum-exp become the merge of every part, in place.
    ForwardResult result{contiguous(rest.out), contiguous(rest.lse)};
    const torch::Tensor part_out = contiguous(prefix.out), part_lse = contiguous(prefix.lse);
    LseMergeArgs args;
    args.dtype = q.scalar_type() == torch::kBFloat16 ? MergeDtype::kBFloat16 : MergeDtype::kHalf;
    args.out = result.out.data_ptr();
    args.lse = result.lse.data_ptr<float>();
    args.part_out = part_out.data_ptr();
    args.part_lse = part_lse.data_ptr<float>();
    args.tokens = plan.merge_tokens.data_ptr<int32_t>();
    args.offsets = plan.merge_offsets.data_ptr<int32_t>();
    args.rows = plan.merge_rows.data_ptr<int32_t>();
    args.num_tokens = plan.merge_count;
    args.total_q = q.size(0);
    args.part_rows = part_out.size(0);
    args.heads = static_cast<int>(q.size(1));
    args.kv_heads = static_cast<int>(k.size(1));
    args.head_dim = static_cast<int>(q.size(2));
    CADRE_CUDA_CHECK(launch_lse_merge(args, at::cuda::getCurrentCUDAStream(q.device().index())));
    timer.mark();
    timer.report("split forward (ms): diagonal gather+call, query fold, prefix call, lse "
                 "transposes+merge");
    return result;
  }

#ifdef CADRE_WITH_CUDNN
  // The cuDNN split forward: K/V read in place by both calls (no gather), each shard's queries
  // folded once for all its prefix chunks (the folded MHA form runs 3-9% faster on cuDNN than
  // the GQA form over the unfolded queries, measured on H200, docs/gpu.md). The diagonal call,
  // small, runs on a side stream beside the prefix call, filling the SMs its last wave leaves
  // idle (CADRE_SPLIT_SERIAL=1: before it, on one stream). The merge reads cuDNN's token-major
  // log-sum-exp; one transpose gives the [heads, total_q] result.
  ForwardResult split_forward_by_rows(const SplitPlan& plan, const torch::Tensor& q,
                                      const torch::Tensor& k, const torch::Tensor& v,
                                      double softmax_scale) {
    static const bool serial = std::getenv("CADRE_SPLIT_SERIAL") != nullptr;
    const c10::DeviceIndex device = q.device().index();
    const at::cuda::CUDAStream main = at::cuda::getCurrentCUDAStream(device);
    PhaseTimer timer(device);
    ForwardResult rest;
    at::cuda::CUDAEvent diagonal_done;
    if (serial) {
      rest = cudnn_->forward_rows(q, k, v, plan.diagonal_rows, softmax_scale, true);
    } else {
      const at::cuda::CUDAStream side = at::cuda::getStreamFromPool(false, device);
      at::cuda::CUDAEvent inputs_ready;
      inputs_ready.record(main);
      inputs_ready.block(side);
      {
        c10::cuda::CUDAStreamGuard on_side(side);
        rest = cudnn_->forward_rows(q, k, v, plan.diagonal_rows, softmax_scale, true);
      }
      diagonal_done.record(side);
      // Allocated on the side stream, used and freed on the main one.
      c10::cuda::CUDACachingAllocator::recordStream(rest.out.storage().data_ptr(), main);
      c10::cuda::CUDACachingAllocator::recordStream(rest.lse.storage().data_ptr(), main);
    }
    const int64_t group = q.size(1) / k.size(1);
    ForwardResult prefix = cudnn_->forward_rows(fold_heads(q, plan.fold_rows, group), k, v,
                                                plan.prefix_rows, softmax_scale, false);
    timer.mark();
    if (!serial) diagonal_done.block(main);
    // The rest's output and log-sum-exp become the merge of every part, in place.
    LseMergeArgs args;
    args.dtype = q.scalar_type() == torch::kBFloat16 ? MergeDtype::kBFloat16 : MergeDtype::kHalf;
    args.out = rest.out.data_ptr();
    args.lse = rest.lse.data_ptr<float>();
    args.part_out = prefix.out.data_ptr();
    args.part_lse = prefix.lse.data_ptr<float>();
    args.tokens = plan.merge_tokens.data_ptr<int32_t>();
    args.offsets = plan.merge_offsets.data_ptr<int32_t>();
    args.rows = plan.merge_rows.data_ptr<int32_t>();
    args.num_tokens = plan.merge_count;
    args.total_q = q.size(0);
    args.part_rows = prefix.out.size(0);
    args.heads = static_cast<int>(q.size(1));
    args.kv_heads = static_cast<int>(k.size(1));
    args.head_dim = static_cast<int>(q.size(2));
    args.token_major_lse = true;
    CADRE_CUDA_CHECK(launch_lse_merge(args, main.stream()));
    timer.mark();
    ForwardResult result{rest.out, rest.lse.t().contiguous()};
    timer.mark();
    timer.report(serial ? "split forward by rows (ms): diagonal and prefix calls, merge, lse "
                          "transpose"
                        : "split forward by rows (ms): prefix call (diagonal beside it), "
                          "merge, lse transpose");
    return result;
  }
#endif

  BackwardResult backward_equal(const torch::Tensor& dout, const torch::Tensor& q,
                                const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& out, const torch::Tensor& lse,
                                const VarlenBatch& batch, double softmax_scale) {
    check_inputs(q, k, v, batch);
    CADRE_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(),
                "flash kernel backward: dout and out must be shaped like q ", q.sizes(), "; got ",
                dout.sizes(), " and ", out.sizes());
    CADRE_CHECK(dout.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
                "flash kernel backward: dout and out must have q's dtype ", q.scalar_type());
    CADRE_CHECK(lse.scalar_type() == torch::kFloat && lse.dim() == 2 && lse.size(0) == q.size(1) &&
                    lse.size(1) == q.size(0),
                "flash kernel backward: lse must be fp32 [heads, total_q] = [", q.size(1), ", ",
                q.size(0), "]; got ", lse.scalar_type(), " ", lse.sizes());
    c10::cuda::CUDAGuard guard(q.device());
    if (q.size(0) == 0) {
      return {torch::zeros_like(q), torch::zeros_like(k), torch::zeros_like(v)};
    }
    const SplitPlan* plan =
        split_plan(batch, q.size(1), q.size(1) / k.size(1), Direction::kBackward, q.device());
    if (plan == nullptr) {
      return call_backward(contiguous(dout), contiguous(q), contiguous(k), contiguous(v),
                           contiguous(out), contiguous(lse), batch.cu_seqlens_q,
                           batch.cu_seqlens_k, batch.max_seqlen_q, batch.max_seqlen_k, true,
                           softmax_scale, batch.cu_q_host, batch.cu_k_host);
    }
    const int64_t group = q.size(1) / k.size(1);
    const torch::Tensor qc = contiguous(q), kc = contiguous(k), vc = contiguous(v);
    const torch::Tensor dc = contiguous(dout), oc = contiguous(out), lc = contiguous(lse);
    // Each part with the merged output and log-sum-exp: its gradients are exact partial sums.
    BackwardResult prefix = call_backward(
        fold_heads(dc, plan->fold_rows, group), fold_heads(qc, plan->fold_rows, group), kc, vc,
        fold_heads(oc, plan->fold_rows, group), fold_lse(lc, plan->fold_rows, group),
        plan->cu_q_prefix, plan->cu_k_prefix, plan->max_q_prefix, plan->max_k_prefix, false,
        softmax_scale, plan->cu_q_prefix_host, plan->cu_k_prefix_host);
    BackwardResult rest = call_backward(dc, qc, kc.index_select(0, plan->rest_rows),
                                        vc.index_select(0, plan->rest_rows), oc, lc,
                                        batch.cu_seqlens_q, plan->cu_k_rest, batch.max_seqlen_q,
                                        plan->max_k_rest, true, softmax_scale, batch.cu_q_host,
                                        plan->cu_k_rest_host);
    // The prefix call wrote zeros for the key rows it had no queries for: add the rest there.
    BackwardResult result;
    result.dk = prefix.dk.index_add_(0, plan->rest_rows, rest.dk);
    result.dv = prefix.dv.index_add_(0, plan->rest_rows, rest.dv);
    result.dq = rest.dq.to(torch::kFloat)
                    .index_add_(0, plan->fold_rows,
                                unfold_heads(prefix.dq, group).to(torch::kFloat))
                    .to(q.scalar_type());
    return result;
  }

  BackwardResult call_backward(const torch::Tensor& dout, const torch::Tensor& q,
                               const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& out, const torch::Tensor& lse,
                               const torch::Tensor& cu_q, const torch::Tensor& cu_k,
                               int64_t max_q, int64_t max_k, bool causal, double softmax_scale,
                               const std::vector<int64_t>& cu_q_host,
                               const std::vector<int64_t>& cu_k_host) {
#ifdef CADRE_WITH_CUDNN
    if (cudnn_) {
      return cudnn_->backward_masked(dout, q, k, v, out, lse,
                                     parts_batch(cu_q, cu_k, max_q, max_k, cu_q_host, cu_k_host),
                                     softmax_scale, causal);
    }
#endif
    // Without dropout the random-number state is never read; the operator still takes tensors.
    torch::Tensor no_rng = torch::zeros({2}, q.options().dtype(torch::kLong));
    NamedArgs args{{"grad_out", dout},
                   {"query", q},
                   {"key", k},
                   {"value", v},
                   {"out", out},
                   {"logsumexp", lse},
                   {"cum_seq_q", cu_q},
                   {"cum_seq_k", cu_k},
                   {"max_q", max_q},
                   {"max_k", max_k},
                   {"dropout_p", 0.0},
                   {"is_causal", causal},
                   {"rng_state", no_rng},
                   {"philox_seed", no_rng},
                   {"philox_offset", no_rng},
                   {"unused", no_rng},
                   {"scale", scale_for(softmax_scale, q.size(2))}};
    std::vector<c10::IValue> results = backward_op_.call(args);
    CADRE_CHECK(results.size() >= 3, "flash kernel: ", backward_op_.schema_text(), " returned ",
                results.size(), " values; expected dq, dk, dv");
    BackwardResult result{results[0].toTensor(), results[1].toTensor(), results[2].toTensor()};
    CADRE_CHECK(result.dq.sizes() == q.sizes() && result.dk.sizes() == k.sizes() &&
                    result.dv.sizes() == v.sizes(),
                "flash kernel: LibTorch returned gradients shaped ", result.dq.sizes(), ", ",
                result.dk.sizes(), ", ", result.dv.sizes(), "; expected ", q.sizes(), ", ",
                k.sizes(), ", ", v.sizes());
    return result;
  }

  // The split plan of `batch` (cached: a dispatch reuses one batch for every layer), or nullptr.
  const SplitPlan* split_plan(const VarlenBatch& batch, int64_t heads, int64_t group,
                              Direction direction, const torch::Device& device) {
    // Backward splits only to fold a group: without one (MHA) its parts cost what the whole did.
    if (!options_.split_short_shards || batch.cu_q_host.empty() ||
        (direction == Direction::kBackward && group < 2)) {
      return nullptr;
    }
    for (auto it = plans_.begin(); it != plans_.end(); ++it) {
      if (it->heads == heads && it->group == group && it->direction == direction &&
          it->device == device &&
          it->cu_q == batch.cu_q_host && it->cu_k == batch.cu_k_host) {
        plans_.splice(plans_.begin(), plans_, it);  // most recent first
        return plans_.front().plan.get();
      }
    }
    CADRE_CHECK(static_cast<int64_t>(batch.cu_q_host.size()) == batch.cu_seqlens_q.size(0) &&
                    batch.cu_k_host.size() == batch.cu_q_host.size(),
                "flash kernel: the batch's host cumulative lengths (", batch.cu_q_host.size(), ", ",
                batch.cu_k_host.size(), ") do not match its device ones (",
                batch.cu_seqlens_q.size(0), ")");
    plans_.push_front({batch.cu_q_host, batch.cu_k_host, heads, group, direction, device,
                       make_split_plan(batch, heads, group, direction, options_, device)});
    if (plans_.size() > kCachedPlans) plans_.pop_back();
    return plans_.front().plan.get();
  }

  static VarlenBatch parts_batch(const torch::Tensor& cu_q, const torch::Tensor& cu_k,
                                 int64_t max_q, int64_t max_k, const std::vector<int64_t>& cu_q_host,
                                 const std::vector<int64_t>& cu_k_host) {
    VarlenBatch b;
    b.cu_seqlens_q = cu_q;
    b.cu_seqlens_k = cu_k;
    b.max_seqlen_q = max_q;
    b.max_seqlen_k = max_k;
    b.cu_q_host = cu_q_host;
    b.cu_k_host = cu_k_host;
    return b;
  }

 private:
  struct CachedPlan {
    std::vector<int64_t> cu_q, cu_k;
    int64_t heads;
    int64_t group;
    Direction direction;
    torch::Device device;
    std::unique_ptr<SplitPlan> plan;  // nullptr: the batch runs unsplit
  };
  static constexpr size_t kCachedPlans = 16;

  FlashKernelOptions options_;
#ifdef CADRE_WITH_CUDNN
  std::unique_ptr<CudnnAttention> cudnn_;
#else
  std::unique_ptr<CoreAttentionKernel> cudnn_;  // always null without cuDNN
#endif
  std::list<CachedPlan> plans_;
  NamedOperator forward_op_;
  NamedOperator backward_op_;
};

}  // namespace

std::unique_ptr<CoreAttentionKernel> make_flash_kernel(const FlashKernelOptions& options) {
  CADRE_CHECK(options.max_forward_split_queries >= 0 &&
                  options.max_backward_split_queries >= 0 && options.prefix_chunk_keys >= 1 &&
                  options.backward_min_prefix_ratio >= 0 && options.backward_min_prefix_keys >= 0 &&
                  options.forward_slots >= 0,
              "flash kernel: prefix_chunk_keys must be positive and the split query limits, "
              "minimum prefix settings and forward slots non-negative");
  return std::make_unique<FlashKernel>(options);
}

std::string flash_kernel_schemas() {
  NamedOperator forward("aten::_flash_attention_forward");
  NamedOperator backward("aten::_flash_attention_backward");
  return forward.schema_text() + "\n" + backward.schema_text();
}

}  // namespace cadre::attention_server
