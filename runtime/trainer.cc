// The training step: gather document lengths, lay out and plan, forward/backward through the
// step's core-attention op, average gradients across ranks, AdamW; plus checkpoints and metrics.
#include "runtime/trainer.h"

#include <torch/types.h>
#ifdef CADRE_WITH_CUDA
#include <torch/cuda.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "attention_server/dispatch.h"
#include "comm/nccl_transport.h"
#include "common/error.h"
#include "runtime/attention_op.h"
#include "runtime/checkpoint.h"
#include "runtime/hf_weights.h"
#include "runtime/memory_stats.h"
#include "runtime/parameter_shards.h"
#include "runtime/data_fingerprint.h"
#include "runtime/fused_ops.h"
#include "runtime/step_executor.h"
#include "scheduler/plan.h"
#include "scheduler/planner.h"
#include "scheduler/step_model.h"

namespace cadre::runtime {
namespace {

// Every rank's document lengths, in rank order (two all-gathers: counts, then padded lists).
std::vector<std::vector<int64_t>> gather_lengths(comm::Transport& transport,
                                                 const std::vector<int64_t>& mine) {
  const int world = transport.size();
  int64_t count = static_cast<int64_t>(mine.size());
  std::vector<int64_t> counts(world);
  transport.all_gather(&count, counts.data(), sizeof(int64_t));
  const int64_t width = std::max<int64_t>(1, *std::max_element(counts.begin(), counts.end()));
  std::vector<int64_t> padded(mine);
  padded.resize(width, 0);
  std::vector<int64_t> all(width * world);
  transport.all_gather(padded.data(), all.data(), width * sizeof(int64_t));
  std::vector<std::vector<int64_t>> per_rank(world);
  for (int r = 0; r < world; ++r) {
    per_rank[r].assign(all.begin() + r * width, all.begin() + r * width + counts[r]);
  }
  return per_rank;
}

// Sum over ranks of one double, added in rank order (the same bits on every rank).
double sum_over_ranks(comm::Transport& transport, double mine) {
  std::vector<double> all(transport.size());
  transport.all_gather(&mine, all.data(), sizeof(double));
  double total = 0;
  for (double x : all) total += x;
  return total;
}

double max_over_mean(const std::vector<double>& values) {
  double max = 0, sum = 0;
  for (double v : values) {
    max = std::max(max, v);
    sum += v;
  }
  return sum > 0 ? max / (sum / values.size()) : 1.0;
}

bool has_spanning_document(const scheduler::Layout& layout) {
  for (const auto& doc : layout.documents) {
    if (doc.pieces.size() > 1) return true;
  }
  return false;
}

// Lengths of documents `docs` of a batch.
std::vector<int64_t> document_lengths(const RankBatch& batch, const std::vector<int>& docs) {
  std::vector<int64_t> lengths;
  for (int d : docs) lengths.push_back(batch.doc_lengths[d]);
  return lengths;
}

// Local rows of documents `docs` of a batch laid out back to back.
torch::Tensor document_rows(const std::vector<int64_t>& lengths, const std::vector<int>& docs) {
  std::vector<int64_t> start(lengths.size() + 1, 0);
  for (size_t d = 0; d < lengths.size(); ++d) start[d + 1] = start[d] + lengths[d];
  std::vector<int64_t> rows;
  for (int d : docs) {
    for (int64_t r = start[d]; r < start[d + 1]; ++r) rows.push_back(r);
  }
  return torch::tensor(rows, torch::kLong);
}

bool cuda_available() {
#ifdef CADRE_WITH_CUDA
  return torch::cuda::is_available();
#else
  return false;
#endif
}

// Per-server attention time (cost model) of a plan, added into `per_server`.
void add_server_times(const scheduler::Plan& plan, const scheduler::CostModel& cost,
                      std::vector<double>* per_server) {
  for (const scheduler::CaTask& t : plan.tasks) {
    (*per_server)[t.server] += cost.attention_forward_backward_us(t.q_end - t.q_begin, t.q_end);
  }
}

// Rows per layer each plan moves between distinct ranks, by link class.
void add_link_rows(const scheduler::Plan& plan, const scheduler::CostModel& cost,
                   StepMetrics* metrics) {
  for (const scheduler::PeerTransfer& t : plan.transfers) {
    const int32_t server = plan.server_ranks[t.server];
    if (t.owner == server) continue;
    const int64_t rows = t.q_rows() + t.kv_rows();
    if (cost.link_between(t.owner, server) == scheduler::LinkClass::kInterNode) {
      metrics->cad_inter_node_rows += rows;
    } else {
      metrics->cad_intra_node_rows += rows;
    }
  }
}

}  // namespace

double training_flops(const config::ModelConfig& m, const std::vector<int64_t>& doc_lengths) {
  const double h = m.hidden_size(), d = m.head_dim(), heads = m.num_heads();
  const double kv = m.num_kv_heads(), ffn = m.ffn_hidden_size(), vocab = m.vocab_size();
  double per_token_layer = 2.0 * (h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * ffn);
  // Core attention's multiply-adds per causal pair and head: QK^T over the query/key width and
  // PV over the value width (4 d for ordinary attention).
  double pair_flops = 4.0 * heads * d;
  if (m.kv_latent_dim() > 0) {
    const double qk = attention_qk_dim(m), v = attention_v_dim(m), c = m.kv_latent_dim();
    const double r = m.rope_head_dim(), cq = m.q_latent_dim();
    const double query = cq > 0 ? h * cq + cq * heads * qk : h * heads * qk;
    per_token_layer =
        2.0 * (query + h * (c + r) + c * heads * (d + v) + heads * v * h + 3 * h * ffn);
    pair_flops = 2.0 * heads * (qk + v);
  }
  double tokens = 0, pairs = 0;
  for (int64_t n : doc_lengths) {
    tokens += static_cast<double>(n);
    pairs += 0.5 * static_cast<double>(n) * static_cast<double>(n + 1);
  }
  const double forward = m.num_layers() * (per_token_layer * tokens + pair_flops * pairs) +
                         2.0 * h * vocab * tokens;
  return 3.0 * forward;
}

Trainer::Trainer(const config::RunConfig& config, comm::Transport& control, comm::Transport& data)
    : config_(config), control_(control), data_transport_(data) {
  const auto& training = config.training();
  const int world = control.size(), rank = control.rank();
  CADRE_CHECK(data.size() == world && data.rank() == rank,
              "the control and data transports must span the same ranks");
  CADRE_CHECK(training.attention() == "cad" || training.attention() == "colocated",
              "training.attention is '", training.attention(), "'; accepted: cad, colocated");
  CADRE_CHECK(training.micro_batches() >= 1, "training.micro_batches is ",
              training.micro_batches(), "; accepted: an integer >= 1");
  CADRE_CHECK(training.steps() >= 1, "training.steps must be at least 1; got ", training.steps());
  CADRE_CHECK(training.warmup_steps() >= 0, "training.warmup_steps must be >= 0; got ",
              training.warmup_steps());
  CADRE_CHECK(training.learning_rate() > 0 && training.min_learning_rate() >= 0,
              "training.learning_rate must be > 0 and min_learning_rate >= 0; got ",
              training.learning_rate(), " and ", training.min_learning_rate());

  // Device and precision.
  const std::string& device = training.device();
  CADRE_CHECK(device == "auto" || device == "cpu" || device == "cuda", "training.device is '",
              device, "'; accepted: auto, cpu, cuda");
  const bool cuda = device == "cuda" || (device == "auto" && cuda_available());
  CADRE_CHECK(!cuda || cuda_available(), "training.device=cuda but ",
#ifdef CADRE_WITH_CUDA
              "no GPU is visible to this process",
#else
              "this is the CPU build (rebuild against a CUDA LibTorch; see docs/gpu.md)",
#endif
              "; accepted: training.device=cpu or auto");
  CADRE_CHECK(data.device_memory() == cuda, "training runs on ", cuda ? "cuda" : "cpu",
              " but the data transport is ", data.backend(),
              "; accepted: nccl for cuda, mpi for cpu");
  CADRE_CHECK(training.dtype() == "fp32" || training.dtype() == "bf16", "training.dtype is '",
              training.dtype(), "'; accepted: fp32, bf16");
  CADRE_CHECK(cuda || training.dtype() == "fp32", "training.dtype=bf16 runs on GPUs only (this "
              "run is on cpu); accepted on cpu: fp32");
  dtype_ = training.dtype() == "bf16" ? torch::kBFloat16 : torch::kFloat;
  // fp32 on a GPU runs the reference kernel (dense scores per document): for tests and checks.
  CADRE_CHECK(!cuda || dtype_ != torch::kFloat || config.data().context_length() <= 16384,
              "training.dtype=fp32 on cuda uses the reference attention kernel, whose dense scores "
              "do not fit at data.context_length=", config.data().context_length(),
              "; accepted: training.dtype=bf16 (FlashAttention-2), or context_length <= 16384");
#ifdef CADRE_WITH_CUDA
  if (cuda) {
    const int index = data.backend() == "nccl"
                          ? static_cast<const comm::NcclTransport&>(data).device()
                          : 0;
    device_ = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
#endif

  // Workers and dedicated servers.
  const auto& sched = config.scheduler();
  const bool dedicated = sched.server_mode() == "dedicated";
  CADRE_CHECK(sched.server_mode() == "in_place" || dedicated, "scheduler.server_mode is '",
              sched.server_mode(), "'; accepted: in_place, dedicated");
  const int servers = dedicated ? sched.num_dedicated_servers() : 0;
  CADRE_CHECK(!dedicated || training.attention() == "cad",
              "dedicated attention servers need training.attention=cad");
  CADRE_CHECK(!dedicated || (servers >= 1 && servers < world), "scheduler.num_dedicated_servers=",
              servers, " with ", world, " ranks; accepted: 1 .. ", world - 1,
              " (at least one worker)");
  num_workers_ = world - servers;
  const bool worker = rank < num_workers_;
  // The process grid: T consecutive ranks per tensor-parallel group, inside one node.
  const int tp = config.cluster().tensor_parallel();
  CADRE_CHECK(tp >= 1 && config.cluster().gpus_per_node() % tp == 0, "cluster.tensor_parallel=",
              tp, " does not divide cluster.gpus_per_node=", config.cluster().gpus_per_node(),
              " (a tensor-parallel group stays inside one node); accepted: a divisor of ",
              config.cluster().gpus_per_node());
  GridOptions grid_options;
  grid_options.tensor_parallel = tp;
  grid_options.pipeline_parallel = config.cluster().pipeline_parallel();
  grid_options.workers = num_workers_;
  grid_options.kv_heads = config.model().num_kv_heads();
  grid_ = std::make_unique<ProcessGrid>(data, grid_options);
  dp_ = &grid_->data_parallel();
  tp_group_ = std::make_unique<TensorParallelGroup>(grid_->tensor(), grid_->kv_replicas(),
                                                    training.sequence_parallel());

  if (worker) {
    model_ = std::make_unique<LlamaModel>(config.model(), training.seed(), device_,
                                          tp_group_.get());
    model_->set_compute_dtype(dtype_);
    if (!training.init_from().empty()) load_hf_weights(*model_, training.init_from());
  }
  if (config.model().kv_latent_dim() > 0 && training.attention() == "cad" && !dedicated &&
      config.scheduler().mla_shipping() == "latent") {
    // Dedicated servers hold no weights: they get expanded per-head K/V instead.
    latent_shipping_ = true;
    if (model_) {
      model_->set_latent_outputs(true);
      latent_layout_ = model_->latent_layout();
    }
  }
  if (worker) {
    if (!training.shard_optimizer()) {
      optimizer_ = std::make_unique<AdamW>(model_->parameter_tensors(), adamw_options(training));
    }
    // Every rank of a tensor-parallel group trains the same documents: its data-parallel index's.
    data_ = std::make_unique<DataLoader>(config.data(), config.model().vocab_size(),
                                         grid_->data_rank(), grid_->data_size());
  }
  // GPU kernels take bf16/fp16 only; fp32 and CPU training run the reference.
  const bool gpu_kernel = device_.is_cuda() && dtype_ != torch::kFloat;
  const std::string& kernel_name = training.attention_kernel();
  CADRE_CHECK(gpu_kernel || kernel_name == "auto" || kernel_name == "reference",
              "training.attention_kernel=", kernel_name, " needs bf16 training on a CUDA device (",
              device_.is_cuda() ? "training.dtype is fp32" : "this run is on the CPU",
              "); accepted here: auto, reference");
  kernel_ = attention_server::make_kernel(gpu_kernel ? kernel_name : "reference");
  cost_ = std::make_unique<scheduler::CostModel>(
      config.model(), config.cluster(),
      scheduler::calibration_for(config.cluster(), config.model()),
      scheduler::kv_shipping_for(config.scheduler()));
#ifdef CADRE_WITH_CUDA
  if (device_.is_cuda()) {
    const auto& nccl = static_cast<const comm::NcclTransport&>(data);
    // Under tensor parallelism the exchange runs on its TP index's communicator (its own
    // stream); the workers' sub-group (dedicated mode) has a communication stream of its own.
    const auto& exchange = static_cast<const comm::NcclTransport&>(grid_->attention());
    timeline_ = comm::make_cuda_timeline(nccl.compute_stream(), exchange.communication_stream());
    if (dp_ != &grid_->attention()) {
      dp_stream_ = static_cast<comm::NcclTransport&>(*dp_).communication_stream();
    }
  }
#endif
  if (!timeline_) timeline_ = comm::make_host_timeline();
  if (worker) {
    reducer_ = std::make_unique<GradientReducer>(
        *model_, *dp_, static_cast<int64_t>(training.grad_bucket_mib()) << 20, timeline_.get(),
        dp_stream_, training.shard_optimizer());
    if (training.shard_optimizer()) {
      sharded_ = std::make_unique<ShardedAdamW>(*model_, *reducer_, *dp_, adamw_options(training));
    }
  }
}

Trainer::~Trainer() = default;

std::string Trainer::describe() const {
  const auto& t = config_.training();
  const bool dedicated = config_.scheduler().server_mode() == "dedicated";
  const bool ping_pong = t.attention() == "cad" && t.ping_pong();
  return str_cat(control_.size(), " ranks (", num_workers_, " workers",
                 dedicated ? str_cat(", ", control_.size() - num_workers_, " attention servers")
                           : std::string(t.attention() == "cad" ? ", in-place servers" : ""),
                 "), ", device_.is_cuda() ? "cuda" : "cpu", " ", t.dtype(), ", kernel ",
                 kernel_->name(), ", transport ", data_transport_.backend(), ", attention ",
                 t.attention(), ", ping-pong ", ping_pong ? "on" : "off", ", recompute ",
                 t.recompute(), ", micro-batches ", t.micro_batches(),
                 grid_->tensor_size() > 1
                     ? str_cat(", grid TP ", grid_->tensor_size(), " x DP ", grid_->data_size(),
                               " (sequence parallel ",
                               t.sequence_parallel() ? "on" : "off", ")")
                     : std::string(),
                 t.shard_optimizer() ? ", sharded optimizer" : "",
                 config_.model().kv_latent_dim() > 0
                     ? str_cat(config_.model().tpla() ? ", TPLA" : ", MLA",
                               t.attention() == "cad"
                                   ? (latent_shipping_ ? " shipping latent" : " shipping expanded K/V")
                                   : "")
                     : std::string());
}

StepMetrics Trainer::forward_backward() {
  const auto& training = config_.training();
  const bool cad = training.attention() == "cad";
  const bool dedicated = config_.scheduler().server_mode() == "dedicated";
  const int nano_count = cad && training.ping_pong() ? 2 : 1;
  const int micro_batches = training.micro_batches();

  StepMetrics metrics;
  metrics.step = step_ + 1;
  metrics.nano_batches = nano_count;

  // Every micro-batch's documents, known to every rank (servers contribute none).
  struct Micro {
    RankBatch batch;
    std::vector<std::vector<int>> nano_docs;  // this rank's docs per nano-batch
    std::vector<scheduler::Layout> nano_layouts;  // every worker's pieces per nano-batch
  };
  std::vector<Micro> micros(micro_batches);
  // Layouts and plans are over the data-parallel groups: the ranks of a tensor-parallel group
  // hold the same documents (their first rank's lengths stand for the group's).
  const int tp = grid_->tensor_size(), dp = grid_->data_size();
  std::vector<double> owner_us(dp, 0.0);
  std::vector<int64_t> all_docs;
  for (Micro& mb : micros) {
    if (is_worker()) mb.batch = data_->next();
    std::vector<int> pinned;  // pieces of documents cut at a rank boundary (packing "span")
    if (mb.batch.first_continues) pinned.push_back(0);
    if (mb.batch.last_continues) {
      pinned.push_back(static_cast<int>(mb.batch.doc_lengths.size()) - 1);
    }
    mb.nano_docs = scheduler::split_nano_batches(mb.batch.doc_lengths, nano_count, pinned);
    for (int j = 0; j < nano_count; ++j) {
      // First entry: whether this rank's first piece here continues the previous rank's last.
      std::vector<int64_t> mine{mb.batch.first_continues && j == 0 ? 1 : 0};
      for (int64_t n : document_lengths(mb.batch, mb.nano_docs[j])) mine.push_back(n);
      auto gathered = gather_lengths(control_, mine);
      std::vector<std::vector<int64_t>> lengths(dp);
      std::vector<bool> continues(dp, false);
      for (int r = 0; r < dp; ++r) {
        const auto& group = gathered[r * tp];
        continues[r] = group.at(0) != 0;
        lengths[r].assign(group.begin() + 1, group.end());
      }
      scheduler::Layout layout = scheduler::layout_from_rank_pieces(lengths, continues);
      for (const auto& doc : layout.documents) {
        metrics.tokens += doc.length_tokens;
        metrics.targets += std::max<int64_t>(0, doc.length_tokens - 1);
        ++metrics.documents;
        all_docs.push_back(doc.length_tokens);
        for (const auto& piece : doc.pieces) {
          owner_us[piece.rank] +=
              cost_->attention_forward_backward_us(piece.doc_end - piece.doc_begin, piece.doc_end);
        }
      }
      mb.nano_layouts.push_back(std::move(layout));
    }
  }
  metrics.imbalance_before = max_over_mean(owner_us);
  metrics.imbalance_after = metrics.imbalance_before;
  metrics.model_tflop = training_flops(config_.model(), all_docs) / 1e12;

  // Each worker's summed loss is scaled by workers / global targets: after the all-reduce's sum
  // and division by the workers, every gradient is that of the mean loss over all targets.
  ExecutorOptions options;
  options.recompute = training.recompute() == "linear";
  options.loss_chunk_tokens = training.loss_chunk_tokens();
  options.loss_scale = metrics.targets > 0 ? static_cast<double>(dp) / metrics.targets : 0.0;
  options.server_qk_dim = attention_qk_dim(config_.model());
  options.server_v_dim = attention_v_dim(config_.model());
  if (model_) {
    options.server_heads = model_->local_heads();
    options.server_kv_heads = model_->local_kv_heads();
  } else {
    // A dedicated server serves one head group: its TP index's heads (every head under TPLA,
    // over its TP index's latent slice).
    const auto& m = config_.model();
    options.server_heads = attention_heads_per_rank(m, tp);
    options.server_kv_heads = m.kv_latent_dim() > 0 ? options.server_heads
                              : m.num_kv_heads() % tp == 0 ? m.num_kv_heads() / tp : 1;
  }
  options.timeline = timeline_.get();
  if (sharded_) {
    ShardedAdamW* sharded = sharded_.get();
    options.parameters_needed = [sharded](int layer) { sharded->ensure_layer(layer); };
  }
  timeline_->begin_step();
  last_record_ = StepRecord{};
  last_record_.nano_count = nano_count;
  if (reducer_) last_record_.bucket_bytes = reducer_->bucket_bytes();

  // Servers and the plan's ranks are those of this TP index's exchange: the DP groups, then the
  // dedicated servers of this head group.
  comm::Transport& exchange = grid_->attention();
  const int exchange_ranks = exchange.size();
  std::vector<int32_t> servers;
  for (int r = dedicated ? dp : 0; r < exchange_ranks; ++r) servers.push_back(r);
  const scheduler::PlannerOptions planner_options = scheduler::planner_options(config_);
  std::vector<double> server_us(servers.size(), 0.0);
  double local_loss = 0;
  if (reducer_) reducer_->begin();
  for (Micro& mb : micros) {
    // The last micro-batch's backward finishes the gradients: its layers start their all-reduce
    // (in-place servers: on the same communicator and stream as the all-to-alls, in issue order).
    options.layer_gradients_ready = nullptr;
    // With dedicated servers the workers reduce on a communicator of their own; NCCL does not
    // promise progress for two communicators' kernels in flight at once, so there the buckets
    // start after backward.
    if (reducer_ && training.overlap_grad_reduce() && !dedicated && &mb == &micros.back()) {
      GradientReducer* reducer = reducer_.get();
      options.layer_gradients_ready = [reducer](int layer) { reducer->layer_ready(layer); };
    }
    std::vector<scheduler::Plan> plans(nano_count);
    std::vector<std::unique_ptr<attention_server::CadDispatch>> dispatches(nano_count);
    std::vector<NanoBatch> nanos(nano_count);
    for (int j = 0; j < nano_count; ++j) {
      NanoBatch& nano = nanos[j];
      // This rank's lengths of nano-batch j (a dedicated server has none).
      const std::vector<int64_t> mine = document_lengths(mb.batch, mb.nano_docs[j]);
      if (is_worker()) {
        auto tokens = mb.batch.tokens.index_select(0, document_rows(mb.batch.doc_lengths,
                                                                    mb.nano_docs[j]));
        torch::Tensor positions = document_positions(mine);
        torch::Tensor targets = document_targets(tokens, mine);
        // Pieces of documents cut at rank boundaries are in nano-batch 0, first and last.
        if (j == 0 && mb.batch.first_continues) {
          positions.narrow(0, 0, mine.front()).add_(mb.batch.first_offset);
        }
        if (j == 0 && mb.batch.last_continues) {
          targets[targets.size(0) - 1] = mb.batch.last_target;
        }
        nano.tokens = tokens.to(device_);
        nano.positions = positions.to(device_);
        nano.targets = targets.to(device_);
      }
      const scheduler::Layout& layout = mb.nano_layouts[j];
      if (cad || has_spanning_document(layout)) {
        // colocated with documents cut at rank boundaries: each rank serves its own queries and
        // fetches the K/V of the part of its document held by the rank before.
        plans[j] = cad ? scheduler::plan_cad(layout, servers, exchange_ranks, *cost_,
                                             planner_options)
                       : scheduler::plan_colocated(layout);
        if (cad) add_server_times(plans[j], *cost_, &server_us);
        if (cad) add_link_rows(plans[j], *cost_, &metrics);
        dispatches[j] = std::make_unique<attention_server::CadDispatch>(
            plans[j], exchange, *kernel_, 0.0, cad && latent_shipping_ ? &latent_layout_ : nullptr);
        dispatches[j]->set_timeline(timeline_.get());
        dispatches[j]->mark_inputs_checked();  // the model builds q, k, v to the plan's shapes
        auto* dispatch = dispatches[j].get();
        nano.make_attention = [dispatch]() { return make_cad_phases(*dispatch); };
      } else {
        // One varlen batch of this rank's documents serves every layer.
        const attention_server::VarlenBatch batch = attention_server::whole_documents_batch(mine, device_);
        auto* kernel = kernel_.get();
        auto* timeline = timeline_.get();
        nano.make_attention = [batch, kernel, timeline]() {
          return make_colocated_phases(batch, *kernel, timeline);
        };
      }
    }
    for (int j = 0; j < nano_count; ++j) {
      last_record_.nanos.push_back({static_cast<int>(&mb - micros.data()), j,
                                    document_lengths(mb.batch, mb.nano_docs[j]),
                                    dispatches[j] != nullptr, plans[j]});
    }
    local_loss +=
        run_forward_backward(model_.get(), config_.model(), dtype_, device_, nanos, options);
    for (auto& d : dispatches) {
      if (d) {
        metrics.a2a_bytes += config_.model().num_layers() *
                             (d->forward_bytes().sent + d->forward_bytes().received +
                              d->backward_bytes().sent + d->backward_bytes().received);
        metrics.cad_query_rows += d->shipped_q_rows();
        metrics.cad_kv_rows += d->shipped_kv_rows();
        metrics.cad_query_bytes += d->forward_bytes().query_sent + d->backward_bytes().query_sent;
        metrics.cad_kv_bytes += d->forward_bytes().kv_sent + d->backward_bytes().kv_sent;
      }
    }
  }
  if (cad) metrics.imbalance_after = max_over_mean(server_us);
  for (int64_t* count : {&metrics.cad_query_rows, &metrics.cad_kv_rows, &metrics.cad_query_bytes,
                         &metrics.cad_kv_bytes}) {
    *count = static_cast<int64_t>(sum_over_ranks(control_, static_cast<double>(*count)));
  }
  if (reducer_) reducer_->finish();
  // Every rank of a tensor-parallel group computed its group's loss: count its first rank's.
  const double total =
      sum_over_ranks(control_, grid_->worker() && grid_->tensor_rank() == 0 ? local_loss : 0.0);
  metrics.loss = metrics.targets > 0 ? total / metrics.targets : 0.0;
  return metrics;
}

torch::Tensor Trainer::whole_gradient(size_t i) const {
  const NamedParameter& p = model_->parameters().at(i);
  if (sharded_) return gather_whole(p, sharded_->gather_gradients().at(i), grid_->tensor());
  torch::Tensor grad = p.value.grad().defined() ? p.value.grad() : torch::zeros_like(p.value);
  return gather_whole(p, grad.detach(), grid_->tensor());
}

torch::Tensor Trainer::whole_parameter(size_t i) const {
  if (sharded_) sharded_->finish_gather();
  const NamedParameter& p = model_->parameters().at(i);
  return gather_whole(p, p.value.detach(), grid_->tensor());
}

void Trainer::optimizer_step(StepMetrics* metrics) {
  const double lr = learning_rate_at(step_, config_.training());
  // The optimizer's span on the timeline (the training profile prices it).
  const int span = is_worker() ? timeline_->begin_compute(kOptimizerSpan) : 0;
  const bool sharded = config_.training().shard_optimizer();
  if (grid_->tensor_size() > 1 || sharded) {
    // The norm of the whole model's gradient: each element once (replicated copies count on the
    // first rank holding them), summed in rank order over the tensor-parallel group, or over
    // every worker when the gradients are sharded over the data-parallel group too.
    double mine = 0;
    if (is_worker() && sharded) {
      mine = sharded_->grad_sum_squares();
    } else if (is_worker()) {
      std::vector<bool> counted;
      for (const auto& p : model_->parameters()) counted.push_back(p.counted);
      mine = grad_sum_squares(model_->parameter_tensors(), counted);
    }
    std::vector<double> all(control_.size());
    control_.all_gather(&mine, all.data(), sizeof(double));
    if (is_worker()) {
      const int first = sharded ? 0 : control_.rank() - grid_->tensor_rank();
      const int last = sharded ? num_workers_ : first + grid_->tensor_size();
      double sum = 0;
      for (int r = first; r < last; ++r) sum += all[r];
      const auto params = model_->parameter_tensors();
      const double norm = std::sqrt(sum);
      if (sharded) {
        // The buckets now receive the updated weights (gathered while the next forward runs);
        // each is zeroed once copied into its parameters.
        sharded_->clip(norm, config_.training().grad_clip());
        sharded_->step(lr);
        // With dedicated servers the workers' group is a communicator of its own beside the
        // exchange's; as for the gradient buckets, its collectives do not stay in flight while
        // the exchange runs (NCCL does not promise progress of two communicators at once).
        if (config_.scheduler().server_mode() == "dedicated") sharded_->finish_gather();
      } else {
        clip_gradients(params, norm, config_.training().grad_clip());
        optimizer_->step(lr);
        torch::NoGradGuard no_grad;
        for (const auto& p : params) {
          if (p.grad().defined()) p.grad().zero_();
        }
      }
      if (metrics != nullptr) metrics->grad_norm = norm;
    }
  } else if (is_worker()) {
    const auto params = model_->parameter_tensors();
    const double norm = clip_grad_norm(params, config_.training().grad_clip());
    optimizer_->step(lr);
    torch::NoGradGuard no_grad;
    for (const auto& p : params) {
      if (p.grad().defined()) p.grad().zero_();
    }
    if (metrics != nullptr) metrics->grad_norm = norm;
  }
  if (is_worker()) timeline_->end_compute(span);
  ++step_;
  if (metrics != nullptr) metrics->learning_rate = lr;
}

StepMetrics Trainer::train_step() {
  const attention_server::KernelCounters kernel_before = kernel_->counters();
  const auto start = std::chrono::steady_clock::now();
  StepMetrics metrics = forward_backward();
  optimizer_step(&metrics);
  last_spans_ = timeline_->resolve();  // waits for the device
  const double mine =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  // The step takes as long as its slowest rank; the grad norm is known to workers (rank 0 is one).
  std::vector<double> all(control_.size());
  control_.all_gather(&mine, all.data(), sizeof(double));
  metrics.step_ms = *std::max_element(all.begin(), all.end());
  // Each rank's peak memory, and its attention kernel's graph builds and kernel-choice timings
  // this step (either stalls the whole step: counted over all ranks), in one gather.
  const attention_server::KernelCounters kernel_after = kernel_->counters();
  const int64_t here[3] = {peak_memory_bytes(device_),
                           kernel_after.graphs_built - kernel_before.graphs_built,
                           kernel_after.choices_measured - kernel_before.choices_measured};
  std::vector<int64_t> per_rank(3 * control_.size());
  control_.all_gather(here, per_rank.data(), sizeof(here));
  metrics.peak_memory_on_device = device_.is_cuda();
  metrics.peak_memory_bytes_per_rank.assign(control_.size(), 0);
  for (int r = 0; r < control_.size(); ++r) {
    metrics.peak_memory_bytes_per_rank[r] = per_rank[3 * r];
    metrics.kernel_graphs_built += per_rank[3 * r + 1];
    metrics.kernel_choices_measured += per_rank[3 * r + 2];
  }
  metrics.peak_memory_bytes = *std::max_element(metrics.peak_memory_bytes_per_rank.begin(),
                                                metrics.peak_memory_bytes_per_rank.end());
  control_.broadcast(&metrics.grad_norm, sizeof(double), 0);
  metrics.tokens_per_second = metrics.step_ms > 0 ? metrics.tokens / (metrics.step_ms / 1e3) : 0;
  metrics.mfu = metrics.step_ms > 0
                    ? metrics.model_tflop / (metrics.step_ms / 1e3) /
                          (control_.size() * config_.cluster().peak_tflops())
                    : 0;
  // Communication figures from rank 0's timeline, shared so every rank reports the same.
  double comm[5] = {0, 0, 0, 0, 0};
  if (control_.rank() == 0) {
    std::vector<comm::Span> a2a, reduce;
    for (const comm::Span& s : last_spans_) {
      if (s.lane != comm::Lane::kCommunication) continue;
      (s.name.compare(0, 3, "a2a") == 0 ? a2a : reduce).push_back(s);
    }
    comm[0] = comm::busy_us(a2a, comm::Lane::kCommunication) / 1e3;
    comm[1] = comm::exposed_communication_us(last_spans_, "a2a") / 1e3;
    comm[2] = comm::busy_us(reduce, comm::Lane::kCommunication) / 1e3;
    comm[3] = static_cast<double>(metrics.a2a_bytes);
    comm[4] = comm::exposed_communication_us(last_spans_, "grad") / 1e3;
  }
  control_.broadcast(comm, sizeof(comm), 0);
  metrics.a2a_ms = comm[0];
  metrics.exposed_a2a_ms = comm[1];
  metrics.allreduce_ms = comm[2];
  metrics.a2a_bytes = static_cast<int64_t>(comm[3]);
  metrics.exposed_allreduce_ms = comm[4];
  metrics.kernel_graph_hits = kernel_after.graph_cache_hits - kernel_before.graph_cache_hits;
  metrics.kernel_calls = kernel_after.calls - kernel_before.calls;
  metrics.kernel_flash_calls = kernel_after.flash_calls - kernel_before.flash_calls;
  return metrics;
}

void Trainer::write_trace(const std::string& path) {
  const std::string mine = comm::serialize_spans(last_spans_);
  int64_t length = static_cast<int64_t>(mine.size());
  std::vector<int64_t> lengths(control_.size());
  control_.all_gather(&length, lengths.data(), sizeof(int64_t));
  const int64_t width = std::max<int64_t>(1, *std::max_element(lengths.begin(), lengths.end()));
  std::string padded = mine;
  padded.resize(width, '\0');
  std::string all(width * control_.size(), '\0');
  control_.all_gather(padded.data(), all.data(), width);
  if (control_.rank() != 0) return;
  std::vector<std::vector<comm::Span>> per_rank;
  for (int r = 0; r < control_.size(); ++r) {
    per_rank.push_back(comm::deserialize_spans(all.substr(r * width, lengths[r])));
  }
  write_chrome_trace(path, per_rank, "cadre train step " + std::to_string(step_) + ": " +
                                         describe());
}

std::string Trainer::checkpoint_dir() const {
  if (!config_.training().checkpoint_dir().empty()) return config_.training().checkpoint_dir();
  return (std::filesystem::path(config_.output().dir()) / "checkpoints").string();
}

uint64_t Trainer::data_fingerprint_value() {
  if (!data_fingerprint_) data_fingerprint_ = data_fingerprint(config_.data());
  return *data_fingerprint_;
}

std::string Trainer::save_checkpoint() {
  const std::string dir = checkpoint_dir();
  std::string path = checkpoint_path(dir, step_);
  // Weights are identical on every rank, so rank 0 writes alone; a one-byte broadcast tells the
  // others whether it succeeded, so that every rank fails together.
  uint8_t ok = 1;
  std::string error;
  // Whole tensors: every tensor-parallel group gathers its shards (collective over the group).
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  if (sharded_) sharded_->finish_gather();
  if (is_worker()) {
    const auto& params = model_->parameters();
    comm::Transport* tp = grid_->tensor();
    // Sharded moments are first gathered over the data-parallel group (collective over it).
    const std::vector<torch::Tensor> exp_avg = sharded_ ? sharded_->gather_moments(0)
                                                        : optimizer_->exp_avg();
    const std::vector<torch::Tensor> exp_avg_sq = sharded_ ? sharded_->gather_moments(1)
                                                           : optimizer_->exp_avg_sq();
    for (size_t i = 0; i < params.size(); ++i) {
      auto value = gather_whole(params[i], params[i].value.detach(), tp);
      auto m = gather_whole(params[i], exp_avg[i], tp);
      auto v = gather_whole(params[i], exp_avg_sq[i], tp);
      if (control_.rank() != 0) continue;
      tensors.emplace_back("model/" + params[i].name, value);
      tensors.emplace_back("adam.exp_avg/" + params[i].name, m);
      tensors.emplace_back("adam.exp_avg_sq/" + params[i].name, v);
    }
  }
  if (control_.rank() == 0) {
    try {
      CheckpointState state;
      state.counters["step"] = step_;
      state.counters["data.batches"] = data_->position().batches;
      state.counters["data.file_document"] = data_->position().file_document;
      state.counters["data.file_token_offset"] = data_->position().file_token_offset;
      state.counters["adam.steps"] = sharded_ ? sharded_->steps() : optimizer_->steps();
      state.counters["data.fingerprint"] = static_cast<int64_t>(data_fingerprint_value());
      state.tensors = std::move(tensors);
      path = runtime::save_checkpoint(dir, step_, state, config_.training().keep_checkpoints());
    } catch (const Error& e) {
      ok = 0;
      error = e.message();
    }
  }
  control_.broadcast(&ok, 1, 0);
  CADRE_CHECK(ok == 1, "rank 0 could not write checkpoint '", path, "'",
              error.empty() ? std::string() : ": " + error);
  return path;
}

void Trainer::load_checkpoint(const std::string& path) {
  CheckpointState state = read_checkpoint(path);
  std::map<std::string, torch::Tensor> by_name(state.tensors.begin(), state.tensors.end());
  auto counter = [&](const std::string& name) {
    auto it = state.counters.find(name);
    CADRE_CHECK(it != state.counters.end(), "checkpoint '", path, "' lacks counter '", name, "'");
    return it->second;
  };
  // The file holds whole tensors; each rank keeps its tensor-parallel slice.
  auto restore = [&](const std::string& name, const NamedParameter& p, const torch::Tensor& into) {
    auto it = by_name.find(name);
    CADRE_CHECK(it != by_name.end(), "checkpoint '", path, "' lacks tensor '", name,
                "' (was it written with another model config?)");
    CADRE_CHECK(it->second.sizes().vec() == p.full_shape &&
                    it->second.scalar_type() == into.scalar_type(),
                "checkpoint '", path, "' tensor '", name, "' is ", it->second.sizes(), " of ",
                it->second.scalar_type(), " but the model expects ",
                c10::IntArrayRef(p.full_shape), " of ", into.scalar_type(),
                " (was it written with another model config?)");
    torch::NoGradGuard no_grad;
    into.copy_(slice_shard(p, it->second));
  };
  step_ = counter("step");
  if (!is_worker()) return;  // a dedicated server holds no model, optimizer or data
  // Checkpoints written before fingerprints existed carry none and are accepted.
  auto fingerprint = state.counters.find("data.fingerprint");
  if (fingerprint != state.counters.end()) {
    const uint64_t theirs = static_cast<uint64_t>(fingerprint->second);
    CADRE_CHECK(theirs == data_fingerprint_value(), "checkpoint '", path,
                "' was trained on other data (data fingerprint ", theirs, ") than this run's ",
                describe_data(config_.data()), " (fingerprint ", data_fingerprint_value(),
                "); accepted: --resume with the token file contents and data settings the "
                "checkpoint was written with, or a new run without --resume");
  }
  if (sharded_) sharded_->finish_gather();
  const auto& params = model_->parameters();
  std::vector<torch::Tensor> exp_avg, exp_avg_sq;
  for (const auto& p : params) {
    exp_avg.push_back(sharded_ ? torch::zeros_like(p.value).detach() : torch::Tensor());
    exp_avg_sq.push_back(sharded_ ? torch::zeros_like(p.value).detach() : torch::Tensor());
  }
  if (!sharded_) {
    exp_avg = optimizer_->exp_avg();
    exp_avg_sq = optimizer_->exp_avg_sq();
  }
  for (size_t i = 0; i < params.size(); ++i) {
    restore("model/" + params[i].name, params[i], params[i].value);
    restore("adam.exp_avg/" + params[i].name, params[i], exp_avg[i]);
    restore("adam.exp_avg_sq/" + params[i].name, params[i], exp_avg_sq[i]);
  }
  if (sharded_) {
    // This rank keeps its data-parallel slice of the moments and of the master weights.
    sharded_->set_moments(0, exp_avg);
    sharded_->set_moments(1, exp_avg_sq);
    sharded_->reset_master();
  }
  CADRE_CHECK(by_name.size() == 3 * params.size(), "checkpoint '", path, "' holds ",
              by_name.size(), " tensors but this model has ", 3 * params.size(),
              " (parameters and two AdamW moments each); was it written with another model?");
  if (sharded_) {
    sharded_->set_steps(counter("adam.steps"));
  } else {
    optimizer_->set_steps(counter("adam.steps"));
  }
  DataPosition position;
  position.batches = counter("data.batches");
  position.file_document = counter("data.file_document");
  // Absent from checkpoints written before packing "fill" existed: those stopped between documents.
  auto offset = state.counters.find("data.file_token_offset");
  position.file_token_offset = offset == state.counters.end() ? 0 : offset->second;
  data_->restore(position);
}

namespace {
// JSON has no NaN or infinity: a non-finite number is written as null.
struct Num {
  double v;
};
std::ostream& operator<<(std::ostream& out, Num n) {
  if (std::isfinite(n.v)) return out << n.v;
  return out << "null";
}
}  // namespace

int cuda_device_count() {
#ifdef CADRE_WITH_CUDA
  return static_cast<int>(torch::cuda::device_count());
#else
  return 0;
#endif
}

std::string summary_json(const std::vector<StepMetrics>& steps, const config::RunConfig& config,
                         const std::string& description) {
  CADRE_CHECK(!steps.empty(), "summary_json needs at least one step");
  const size_t skip = steps.size() > 3 ? 2 : 0;
  double n = 0, step_ms = 0, tps = 0, mfu = 0, a2a = 0, exposed = 0, reduce = 0, before = 0,
         after = 0, bytes = 0, exposed_reduce = 0;
  double query_rows = 0, kv_rows = 0, query_bytes = 0, kv_bytes = 0;
  int64_t graphs_built = 0, graphs_built_measured = 0, graph_hits = 0, choices = 0,
          choices_measured_steps = 0, kernel_calls = 0, flash_calls = 0;
  // Steady state: the measured steps that built no attention-kernel graph and timed no kernel
  // choice.
  double steady_ms = 0;
  int64_t steady_steps = 0;
  std::string steady_numbers;  // their step numbers, as a JSON list's items
  for (const StepMetrics& m : steps) {
    graphs_built += m.kernel_graphs_built;
    graph_hits += m.kernel_graph_hits;
    choices += m.kernel_choices_measured;
    kernel_calls += m.kernel_calls;
    flash_calls += m.kernel_flash_calls;
  }
  for (size_t i = skip; i < steps.size(); ++i) {
    const StepMetrics& m = steps[i];
    n += 1;
    step_ms += m.step_ms;
    tps += static_cast<double>(m.tokens);
    mfu += m.mfu;
    a2a += m.a2a_ms;
    exposed += m.exposed_a2a_ms;
    reduce += m.allreduce_ms;
    exposed_reduce += m.exposed_allreduce_ms;
    before += m.imbalance_before;
    after += m.imbalance_after;
    bytes += static_cast<double>(m.a2a_bytes);
    graphs_built_measured += m.kernel_graphs_built;
    choices_measured_steps += m.kernel_choices_measured;
    if (m.kernel_graphs_built == 0 && m.kernel_choices_measured == 0) {
      steady_ms += m.step_ms;
      steady_steps += 1;
      steady_numbers += (steady_numbers.empty() ? "" : ",") + std::to_string(m.step);
    }
    query_rows += static_cast<double>(m.cad_query_rows);
    kv_rows += static_cast<double>(m.cad_kv_rows);
    query_bytes += static_cast<double>(m.cad_query_bytes);
    kv_bytes += static_cast<double>(m.cad_kv_bytes);
  }
  auto per_row = [](double b, double rows) { return rows > 0 ? b / rows : 0.0; };
  // What the planner prices per token (bf16 on the wire; forward Q out and O back, K/V out;
  // backward mirrors it), beside the measured bytes (in training.dtype).
  const scheduler::CostModel cost(config.model(), config.cluster(),
                                  scheduler::calibration_for(config.cluster(), config.model()),
                                  scheduler::kv_shipping_for(config.scheduler()));
  std::ostringstream out;
  out.precision(6);
  const auto& t = config.training();
  out << "{\"description\":\"" << description << "\",\"model\":\"" << config.model().preset()
      << "\",\"distribution\":\"" << config.data().distribution()
      << "\",\"context_length\":" << config.data().context_length() << ",\"attention\":\""
      << t.attention() << "\",\"ping_pong\":" << (t.ping_pong() ? "true" : "false")
      << ",\"server_mode\":\"" << config.scheduler().server_mode() << "\",\"recompute\":\""
      << t.recompute() << "\",\"steps\":" << steps.size() << ",\"measured_steps\":" << n
      << ",\"step_ms\":" << step_ms / n << ",\"tokens_per_s\":" << tps / (step_ms / 1e3)
      << ",\"mfu\":" << mfu / n << ",\"a2a_ms\":" << a2a / n
      << ",\"exposed_a2a_ms\":" << exposed / n << ",\"hidden_a2a_fraction\":"
      << (a2a > 0 ? 1.0 - exposed / a2a : 0.0) << ",\"allreduce_ms\":" << reduce / n
      << ",\"exposed_allreduce_ms\":" << exposed_reduce / n << ",\"overlap_grad_reduce\":"
      << (t.overlap_grad_reduce() ? "true" : "false") << ",\"packing\":\""
      << config.data().packing() << "\""
      << ",\"a2a_bytes\":" << bytes / n
      << ",\"cad_bytes_per_query_token\":" << per_row(query_bytes, query_rows)
      << ",\"cad_bytes_per_kv_token\":" << per_row(kv_bytes, kv_rows)
      << ",\"cad_query_rows\":" << query_rows / n << ",\"cad_kv_rows\":" << kv_rows / n
      << ",\"dtype\":\"" << t.dtype() << "\""
      << ",\"cost_model_bf16_bytes_per_query_token\":"
      << 2 * (cost.q_bytes_per_token() + cost.o_bytes_per_token())
      << ",\"cost_model_bf16_bytes_per_kv_token\":" << 2 * cost.kv_bytes_per_token()
      << ",\"imbalance_before\":" << before / n
      << ",\"imbalance_after\":" << after / n << ",\"attention_kernel\":\""
      << t.attention_kernel() << "\",\"kernel_graphs_built\":" << graphs_built
      << ",\"kernel_graphs_built_in_measured_steps\":" << graphs_built_measured
      << ",\"kernel_choices_measured\":" << choices
      << ",\"kernel_choices_measured_in_measured_steps\":" << choices_measured_steps
      << ",\"kernel_calls\":" << kernel_calls << ",\"kernel_flash_calls\":" << flash_calls
      << ",\"steady_steps\":" << steady_steps << ",\"steady_step_ms\":"
      << (steady_steps > 0 ? steady_ms / static_cast<double>(steady_steps) : 0.0)
      << ",\"steady_step_numbers\":[" << steady_numbers << "]"
      << ",\"kernel_graph_cache_hits\":" << graph_hits
      << ",\"first_loss\":" << Num{steps.front().loss}
      << ",\"last_loss\":" << Num{steps.back().loss}
      << ",\"tensor_parallel\":" << config.cluster().tensor_parallel()
      << ",\"sequence_parallel\":"
      << (t.sequence_parallel() && config.cluster().tensor_parallel() > 1 ? "true" : "false")
      << ",\"shard_optimizer\":" << (t.shard_optimizer() ? "true" : "false")
      << ",\"elementwise_ops\":\"" << fused::elementwise_ops(steps.back().peak_memory_on_device)
      << "\",\"peak_memory_kind\":\""
      << (steps.back().peak_memory_on_device ? "allocator" : "resident")
      << "\",\"peak_memory_bytes\":" << steps.back().peak_memory_bytes
      << ",\"peak_memory_bytes_per_rank\":[";
  const auto& peaks = steps.back().peak_memory_bytes_per_rank;
  for (size_t r = 0; r < peaks.size(); ++r) out << (r ? "," : "") << peaks[r];
  out << "]}\n";
  return out.str();
}

std::string format_step_line(const StepMetrics& m, int64_t total_steps) {
  char line[384];
  const double ktok = m.tokens_per_second / 1e3;
  int n = std::snprintf(line, sizeof(line),
                        "step %lld/%lld | loss %.4f | grad norm %.3f | lr %.2e | %.1f ms | "
                        "%.1fk tok/s | MFU %.1f%% | attn imbalance %.2f -> %.2f",
                        static_cast<long long>(m.step), static_cast<long long>(total_steps),
                        m.loss, m.grad_norm, m.learning_rate, m.step_ms, ktok, 100 * m.mfu,
                        m.imbalance_before, m.imbalance_after);
  if (m.a2a_ms > 0 && n > 0 && n < static_cast<int>(sizeof(line))) {
    n += std::snprintf(line + n, sizeof(line) - n, " | a2a %.1f ms, exposed %.1f ms", m.a2a_ms,
                       m.exposed_a2a_ms);
  }
  if (m.peak_memory_bytes > 0 && n > 0 && n < static_cast<int>(sizeof(line))) {
    n += std::snprintf(line + n, sizeof(line) - n, " | peak mem %.2f GiB",
                       static_cast<double>(m.peak_memory_bytes) / (1 << 30));
  }
  if (m.cad_intra_node_rows + m.cad_inter_node_rows > 0 && n > 0 &&
      n < static_cast<int>(sizeof(line))) {
    std::snprintf(line + n, sizeof(line) - n, " | rows/layer intra-node %lld, inter-node %lld",
                  static_cast<long long>(m.cad_intra_node_rows),
                  static_cast<long long>(m.cad_inter_node_rows));
  }
  return line;
}

std::string metrics_json(const StepMetrics& m, const std::string& attention) {
  std::ostringstream out;
  out.precision(9);
  out << "{\"step\":" << m.step << ",\"loss\":" << Num{m.loss} << ",\"grad_norm\":" << Num{m.grad_norm}
      << ",\"lr\":" << m.learning_rate << ",\"step_ms\":" << m.step_ms
      << ",\"tokens\":" << m.tokens << ",\"targets\":" << m.targets
      << ",\"documents\":" << m.documents << ",\"tokens_per_s\":" << m.tokens_per_second
      << ",\"model_tflop\":" << m.model_tflop << ",\"mfu\":" << m.mfu
      << ",\"attention\":\"" << attention << "\",\"nano_batches\":" << m.nano_batches
      << ",\"imbalance_before\":" << m.imbalance_before
      << ",\"imbalance_after\":" << m.imbalance_after << ",\"a2a_ms\":" << m.a2a_ms
      << ",\"exposed_a2a_ms\":" << m.exposed_a2a_ms << ",\"allreduce_ms\":" << m.allreduce_ms
      << ",\"exposed_allreduce_ms\":" << m.exposed_allreduce_ms
      << ",\"a2a_bytes\":" << m.a2a_bytes << ",\"cad_intra_node_rows\":" << m.cad_intra_node_rows
      << ",\"cad_inter_node_rows\":" << m.cad_inter_node_rows
      << ",\"cad_query_rows\":" << m.cad_query_rows << ",\"cad_kv_rows\":" << m.cad_kv_rows
      << ",\"cad_query_bytes\":" << m.cad_query_bytes << ",\"cad_kv_bytes\":" << m.cad_kv_bytes
      << ",\"peak_memory_bytes\":" << m.peak_memory_bytes
      << ",\"peak_memory_bytes_per_rank\":[";
  for (size_t r = 0; r < m.peak_memory_bytes_per_rank.size(); ++r) {
    out << (r ? "," : "") << m.peak_memory_bytes_per_rank[r];
  }
  out << "]}";
  return out.str();
}

}  // namespace cadre::runtime
