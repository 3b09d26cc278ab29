// The training step: gather document lengths, lay out and plan, forward/backward through the
// step's core-attention op, average gradients across ranks, AdamW; plus checkpoints and metrics.
#include "runtime/trainer.h"

#include <torch/types.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "common/error.h"
#include "runtime/attention_op.h"
#include "runtime/checkpoint.h"
#include "scheduler/plan.h"
#include "scheduler/planner.h"

namespace cadre::runtime {
namespace {

scheduler::CalibrationTable calibration_for(const config::ClusterConfig& cluster) {
  if (cluster.attention_calibration().empty()) return scheduler::default_calibration();
  return scheduler::load_calibration_json(cluster.attention_calibration());
}

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

}  // namespace

Trainer::Trainer(const config::RunConfig& config, comm::Transport& transport)
    : config_(config), transport_(transport) {
  const auto& training = config.training();
  CADRE_CHECK(training.attention() == "cad" || training.attention() == "colocated",
              "training.attention is '", training.attention(), "'; accepted: cad, colocated");
  CADRE_CHECK(training.dtype() == "fp32", "training.dtype is '", training.dtype(),
              "'; the CPU trainer accepts fp32 (bf16 needs the GPU path, not built yet)");
  CADRE_CHECK(training.micro_batches() == 1, "training.micro_batches is ",
              training.micro_batches(), "; accepted: 1 (gradient accumulation is not built yet)");
  CADRE_CHECK(config.scheduler().server_mode() == "in_place",
              "scheduler.server_mode is '", config.scheduler().server_mode(),
              "'; cadre train accepts in_place (dedicated servers are not built into training yet)");
  CADRE_CHECK(training.steps() >= 1, "training.steps must be at least 1; got ", training.steps());
  CADRE_CHECK(training.warmup_steps() >= 0, "training.warmup_steps must be >= 0; got ",
              training.warmup_steps());
  CADRE_CHECK(training.learning_rate() > 0 && training.min_learning_rate() >= 0,
              "training.learning_rate must be > 0 and min_learning_rate >= 0; got ",
              training.learning_rate(), " and ", training.min_learning_rate());
  CADRE_CHECK(!transport.device_memory(),
              "the trainer runs on CPU tensors; it needs a host-memory transport (mpi), got ",
              transport.backend());

  model_ = std::make_unique<LlamaModel>(config.model(), training.seed());
  optimizer_ = std::make_unique<AdamW>(model_->parameter_tensors(), adamw_options(training));
  data_ = std::make_unique<DataLoader>(config.data(), config.model().vocab_size(),
                                       transport.rank(), transport.size());
  kernel_ = attention_server::make_kernel("cpu");
  cost_ = std::make_unique<scheduler::CostModel>(config.model(), config.cluster(),
                                                 calibration_for(config.cluster()));
}

StepMetrics Trainer::forward_backward() {
  const int rank = transport_.rank(), world = transport_.size();
  RankBatch batch = data_->next();
  const auto lengths = gather_lengths(transport_, batch.doc_lengths);

  StepMetrics metrics;
  metrics.step = step_ + 1;
  std::vector<double> owner_us(world, 0.0);
  for (int r = 0; r < world; ++r) {
    for (int64_t n : lengths[r]) {
      metrics.tokens += n;
      metrics.targets += std::max<int64_t>(0, n - 1);
      ++metrics.documents;
      owner_us[r] += cost_->attention_forward_backward_us(n, n);
    }
  }
  metrics.imbalance_before = max_over_mean(owner_us);
  metrics.imbalance_after = metrics.imbalance_before;

  // Every rank builds the same layout and plan from the same lengths.
  scheduler::Layout layout = scheduler::layout_from_rank_documents(lengths);
  scheduler::Plan plan;
  std::unique_ptr<CoreAttentionOp> attention;
  if (config_.training().attention() == "cad") {
    std::vector<int32_t> servers(world);
    for (int r = 0; r < world; ++r) servers[r] = r;
    scheduler::PlannerOptions options;
    options.tolerance = config_.scheduler().tolerance();
    options.min_shard_tokens = config_.scheduler().min_shard_tokens();
    options.gpus_per_node = config_.cluster().gpus_per_node();
    scheduler::PlanStats stats;
    plan = scheduler::plan_cad(layout, servers, world, *cost_, options, &stats);
    metrics.imbalance_before = stats.imbalance_before;
    metrics.imbalance_after = stats.imbalance_after;
    attention = make_cad_attention(plan, transport_, *kernel_);
  } else {
    attention = make_colocated_attention(layout, rank, *kernel_);
  }

  // Each rank's summed loss scaled by world / global targets: after the all-reduce's sum and
  // division by world, every gradient is that of the mean loss over all ranks' targets.
  auto loss_sum = model_->loss_sum(batch.tokens, batch.doc_lengths, *attention);
  const double scale = metrics.targets > 0 ? static_cast<double>(world) / metrics.targets : 0.0;
  (loss_sum * scale).backward();
  all_reduce_gradients();
  const double total = sum_over_ranks(transport_, loss_sum.item<double>());
  metrics.loss = metrics.targets > 0 ? total / metrics.targets : 0.0;
  return metrics;
}

void Trainer::all_reduce_gradients() {
  const int world = transport_.size();
  std::vector<torch::Tensor> grads;
  for (const auto& p : model_->parameters()) {
    if (!p.value.grad().defined()) p.value.mutable_grad() = torch::zeros_like(p.value);
    grads.push_back(p.value.grad());
  }
  torch::NoGradGuard no_grad;
  size_t first = 0;
  while (first < grads.size()) {
    size_t last = first;
    int64_t bytes = 0;
    std::vector<torch::Tensor> flat;
    while (last < grads.size() &&
           (last == first || bytes + grads[last].nbytes() <= kGradientBucketBytes)) {
      bytes += grads[last].nbytes();
      flat.push_back(grads[last].reshape({-1}));
      ++last;
    }
    auto bucket = torch::cat(flat).contiguous();
    transport_.all_reduce_sum(bucket.data_ptr(), bucket.numel(), comm::DataType::kFloat32)->wait();
    bucket.div_(world);
    int64_t offset = 0;
    for (size_t i = first; i < last; ++i) {
      const int64_t n = grads[i].numel();
      grads[i].copy_(bucket.narrow(0, offset, n).view(grads[i].sizes()));
      offset += n;
    }
    first = last;
  }
}

void Trainer::optimizer_step(StepMetrics* metrics) {
  const auto params = model_->parameter_tensors();
  const double lr = learning_rate_at(step_, config_.training());
  const double norm = clip_grad_norm(params, config_.training().grad_clip());
  optimizer_->step(lr);
  torch::NoGradGuard no_grad;
  for (const auto& p : params) {
    if (p.grad().defined()) p.grad().zero_();
  }
  ++step_;
  if (metrics != nullptr) {
    metrics->learning_rate = lr;
    metrics->grad_norm = norm;
  }
}

StepMetrics Trainer::train_step() {
  const auto start = std::chrono::steady_clock::now();
  StepMetrics metrics = forward_backward();
  optimizer_step(&metrics);
  metrics.step_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  metrics.tokens_per_second = metrics.step_ms > 0 ? metrics.tokens / (metrics.step_ms / 1e3) : 0;
  return metrics;
}

std::string Trainer::checkpoint_dir() const {
  if (!config_.training().checkpoint_dir().empty()) return config_.training().checkpoint_dir();
  return (std::filesystem::path(config_.output().dir()) / "checkpoints").string();
}

std::string Trainer::save_checkpoint() {
  const std::string dir = checkpoint_dir();
  std::string path = checkpoint_path(dir, step_);
  // Weights are identical on every rank, so rank 0 writes alone; a one-byte broadcast tells the
  // others whether it succeeded, so that every rank fails together.
  uint8_t ok = 1;
  std::string error;
  if (transport_.rank() == 0) {
    try {
      CheckpointState state;
      state.counters["step"] = step_;
      state.counters["data.batches"] = data_->position().batches;
      state.counters["data.file_document"] = data_->position().file_document;
      state.counters["adam.steps"] = optimizer_->steps();
      const auto& params = model_->parameters();
      for (size_t i = 0; i < params.size(); ++i) {
        state.tensors.emplace_back("model/" + params[i].name, params[i].value);
        state.tensors.emplace_back("adam.exp_avg/" + params[i].name, optimizer_->exp_avg()[i]);
        state.tensors.emplace_back("adam.exp_avg_sq/" + params[i].name,
                                   optimizer_->exp_avg_sq()[i]);
      }
      path = runtime::save_checkpoint(dir, step_, state, config_.training().keep_checkpoints());
    } catch (const Error& e) {
      ok = 0;
      error = e.message();
    }
  }
  transport_.broadcast(&ok, 1, 0);
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
  auto restore = [&](const std::string& name, const torch::Tensor& into) {
    auto it = by_name.find(name);
    CADRE_CHECK(it != by_name.end(), "checkpoint '", path, "' lacks tensor '", name,
                "' (was it written with another model config?)");
    CADRE_CHECK(it->second.sizes() == into.sizes() && it->second.scalar_type() == into.scalar_type(),
                "checkpoint '", path, "' tensor '", name, "' is ", it->second.sizes(),
                " but the model expects ", into.sizes());
    torch::NoGradGuard no_grad;
    into.copy_(it->second);
  };
  const auto& params = model_->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    restore("model/" + params[i].name, params[i].value);
    restore("adam.exp_avg/" + params[i].name, optimizer_->exp_avg()[i]);
    restore("adam.exp_avg_sq/" + params[i].name, optimizer_->exp_avg_sq()[i]);
  }
  CADRE_CHECK(by_name.size() == 3 * params.size(), "checkpoint '", path, "' holds ",
              by_name.size(), " tensors but this model has ", 3 * params.size(),
              " (parameters and two AdamW moments each); was it written with another model?");
  step_ = counter("step");
  optimizer_->set_steps(counter("adam.steps"));
  DataPosition position;
  position.batches = counter("data.batches");
  position.file_document = counter("data.file_document");
  data_->restore(position);
}

std::string format_step_line(const StepMetrics& m, int64_t total_steps) {
  char line[256];
  const double ktok = m.tokens_per_second / 1e3;
  std::snprintf(line, sizeof(line),
                "step %lld/%lld | loss %.4f | grad norm %.3f | lr %.2e | %.1f ms | %.1fk tok/s | "
                "attn imbalance %.2f -> %.2f",
                static_cast<long long>(m.step), static_cast<long long>(total_steps), m.loss,
                m.grad_norm, m.learning_rate, m.step_ms, ktok, m.imbalance_before,
                m.imbalance_after);
  return line;
}

std::string metrics_json(const StepMetrics& m, const std::string& attention) {
  std::ostringstream out;
  out.precision(9);
  out << "{\"step\":" << m.step << ",\"loss\":" << m.loss << ",\"grad_norm\":" << m.grad_norm
      << ",\"lr\":" << m.learning_rate << ",\"step_ms\":" << m.step_ms
      << ",\"tokens\":" << m.tokens << ",\"targets\":" << m.targets
      << ",\"documents\":" << m.documents << ",\"tokens_per_s\":" << m.tokens_per_second
      << ",\"attention\":\"" << attention << "\",\"imbalance_before\":" << m.imbalance_before
      << ",\"imbalance_after\":" << m.imbalance_after << "}";
  return out.str();
}

}  // namespace cadre::runtime
