// One rank's training loop: data, layout and plan of each step, the model's forward and backward
// through `cad` or `colocated` core attention (hand-scheduled by the step executor: ping-pong,
// recomputation, chunked loss), data-parallel gradient all-reduce, AdamW, metrics, timelines and
// checkpoints. Every rank runs the same Trainer with the same config.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attention_server/kernel.h"
#include "comm/timeline.h"
#include "comm/transport.h"
#include "runtime/data.h"
#include "runtime/gradient_reducer.h"
#include "runtime/model.h"
#include "runtime/optimizer.h"
#include "runtime/profile.h"
#include "runtime/process_grid.h"
#include "runtime/sharded_optimizer.h"
#include "runtime/tensor_parallel.h"
#include "scheduler/config.pb.h"
#include "scheduler/cost_model.h"

namespace cadre::runtime {

// What one step did, identical on every rank (timings: the slowest rank's step time; the
// communication figures are rank 0's timeline).
struct StepMetrics {
  int64_t step = 0;           // 1-based: the number of optimizer steps taken after this one
  double loss = 0;            // mean next-token loss over every rank's targets
  double grad_norm = 0;       // global norm before clipping
  double learning_rate = 0;
  double step_ms = 0;         // wall time of the step, max over ranks
  int64_t tokens = 0;         // tokens of all ranks
  int64_t targets = 0;        // positions with a target, all ranks
  int32_t documents = 0;
  double tokens_per_second = 0;
  double model_tflop = 0;     // model FLOPs of the step (linear, head and causal attention; x3)
  double mfu = 0;             // model_tflop / (step time * GPUs * cluster.peak_tflops)
  double imbalance_before = 1;  // max/mean per-rank attention time if each rank kept its own
  double imbalance_after = 1;   // max/mean over servers of the step's plans (cad), else = before
  double a2a_ms = 0;          // rank 0: time the CAD all-to-alls were in flight (union)
  double exposed_a2a_ms = 0;  // rank 0: the part of it with the compute stream idle
  double allreduce_ms = 0;    // rank 0: gradient all-reduce time (union of its buckets)
  double exposed_allreduce_ms = 0;  // rank 0: the part of it with the compute stream idle
  int64_t a2a_bytes = 0;      // rank 0: bytes sent + received by CAD dispatch in the step
  // Rows (tokens) per layer that the step's CAD plans move forward (Q and K/V) between two ranks
  // of one node and between nodes (cluster.gpus_per_node decides), all ranks: the link classes
  // in use.
  int64_t cad_intra_node_rows = 0;
  int64_t cad_inter_node_rows = 0;
  // CAD dispatch counters of one layer, all ranks (every TP index's exchange): rows shipped to
  // another rank's server (a query row per task, a K/V row per server that needs it) and the
  // bytes sent along them in forward and backward (query rows: Q, O, dO, dQ; K/V rows: K and V,
  // or MLA's latent, and their gradients). Bytes over rows are the bytes per query token and
  // per K/V token that summary_json reports.
  int64_t cad_query_rows = 0;
  int64_t cad_kv_rows = 0;
  int64_t cad_query_bytes = 0;
  int64_t cad_kv_bytes = 0;
  int32_t nano_batches = 1;
  // The core-attention kernel during the step: graphs built on any rank and shape classes whose
  // kernel choice any rank timed (auto) — each a one-time stall; graphs this rank reused (cudnn);
  // this rank's calls and those of them on flash.
  int64_t kernel_graphs_built = 0;
  int64_t kernel_choices_measured = 0;
  int64_t kernel_graph_hits = 0;
  int64_t kernel_calls = 0;
  int64_t kernel_flash_calls = 0;
  // Peak memory of each rank so far (runtime/memory_stats.h: allocator peak on GPU, resident
  // set on CPU), in rank order, and its maximum.
  std::vector<int64_t> peak_memory_bytes_per_rank;
  int64_t peak_memory_bytes = 0;
  bool peak_memory_on_device = false;  // allocator statistics (true) or resident memory
};

class Trainer {
 public:
  // `config` must have every model size set (launch::finalize_config does that). `control`
  // carries small host-memory collectives (lengths, losses, flags: MPI); `data` carries tensors
  // (MPI for CPU training, NCCL for GPU training) and may be the same transport. With
  // scheduler.server_mode = dedicated the last num_dedicated_servers ranks are attention servers
  // only. Throws cadre::Error for settings this trainer does not support, naming what it accepts.
  Trainer(const config::RunConfig& config, comm::Transport& control, comm::Transport& data);
  Trainer(const config::RunConfig& config, comm::Transport& transport)
      : Trainer(config, transport, transport) {}
  ~Trainer();

  // Forward and backward of the next step's data (training.micro_batches micro-batches); leaves
  // every parameter's .grad() holding the data-parallel average (identical on all workers).
  // Returns the step's metrics without grad_norm/learning_rate.
  StepMetrics forward_backward();
  // Clips, applies AdamW at the step's learning rate, zeroes gradients, advances the step.
  void optimizer_step(StepMetrics* metrics);
  // forward_backward + optimizer_step, timed.
  StepMetrics train_step();

  // Writes the state after the current step (rank 0 writes; all ranks wait for it). Returns the
  // path.
  std::string save_checkpoint();
  // Loads model, optimizer, data position and step from `path` (every rank reads it).
  void load_checkpoint(const std::string& path);
  // The checkpoint directory: training.checkpoint_dir, else output.dir/checkpoints.
  std::string checkpoint_dir() const;

  // The timeline of the last step on this rank (empty unless timing was on for it).
  const std::vector<comm::Span>& last_timeline() const { return last_spans_; }
  // What the last step ran on this rank besides its timeline (documents, plans, buckets): the
  // training profile joins the two (runtime/profile.h).
  const StepRecord& last_record() const { return last_record_; }
  // Writes every rank's timeline of the last step as one Chrome trace (collective; rank 0
  // writes).
  void write_trace(const std::string& path);

  int64_t step() const { return step_; }
  bool is_worker() const { return model_ != nullptr; }
  // Only on workers.
  const LlamaModel& model() const { return *model_; }
  const ProcessGrid& grid() const { return *grid_; }
  // The whole tensor of parameter i's gradient (gathered over the tensor-parallel group:
  // collective over it; the local gradient when T = 1; with the sharded optimizer the reduced
  // slices gathered over the data-parallel group first). For tests.
  torch::Tensor whole_gradient(size_t i) const;
  // The whole tensor of parameter i (collective over the tensor-parallel group).
  torch::Tensor whole_parameter(size_t i) const;
  const config::RunConfig& config() const { return config_; }
  const torch::Device& device() const { return device_; }
  // A one-line description: device, dtype, kernel, transport, ranks, server mode, ping-pong.
  std::string describe() const;

 private:
  config::RunConfig config_;
  comm::Transport& control_;
  comm::Transport& data_transport_;
  std::unique_ptr<ProcessGrid> grid_;         // T x D workers (+ dedicated servers)
  std::unique_ptr<TensorParallelGroup> tp_group_;
  comm::Transport* dp_ = nullptr;             // the data-parallel group (grid_)
  int num_workers_ = 0;
  torch::Device device_ = torch::kCPU;
  torch::ScalarType dtype_ = torch::kFloat;
  std::unique_ptr<LlamaModel> model_;        // null on dedicated server ranks
  // MLA under CAD with in-place servers and scheduler.mla_shipping = latent: the dispatch ships
  // latent rows and the servers expand them (docs/latent_attention.md).
  bool latent_shipping_ = false;
  attention_server::LatentLayout latent_layout_;
  std::unique_ptr<AdamW> optimizer_;         // null with training.shard_optimizer
  std::unique_ptr<ShardedAdamW> sharded_;    // training.shard_optimizer (after reducer_)
  std::unique_ptr<DataLoader> data_;
  std::unique_ptr<attention_server::CoreAttentionKernel> kernel_;
  std::unique_ptr<scheduler::CostModel> cost_;
  std::unique_ptr<comm::Timeline> timeline_;
  void* dp_stream_ = nullptr;  // the workers' communication stream when it is not data's
  std::unique_ptr<GradientReducer> reducer_;  // workers only; after timeline_ (destroyed first)
  std::vector<comm::Span> last_spans_;
  StepRecord last_record_;
  int64_t step_ = 0;
  // data_fingerprint(config.data), computed on first use (checkpoints save and check it).
  uint64_t data_fingerprint_value();
  std::optional<uint64_t> data_fingerprint_;
};

// "step 3/20 | loss 5.1234 | grad norm 0.812 | lr 3.00e-03 | 12.3 ms | 41.6k tok/s | MFU 41.2% |
//  attn imbalance 1.42 -> 1.01 | a2a 3.1 ms, exposed 0.4 ms"
std::string format_step_line(const StepMetrics& metrics, int64_t total_steps);
// One JSON object (no newline) with every field of `metrics` and the attention mode.
std::string metrics_json(const StepMetrics& metrics, const std::string& attention);

// A JSON object (with newline) summarising a run: the config essentials and the means over the
// measured steps (tokens/s: their tokens over their time; every step after the first two when there are more than three, for warm-up).
std::string summary_json(const std::vector<StepMetrics>& steps, const config::RunConfig& config,
                         const std::string& description);

// CUDA devices visible to this process (0 in the CPU build).
int cuda_device_count();

// Model FLOPs of training one micro-batch of documents (forward + backward = 3 x forward):
// every linear layer and the LM head, plus causal core attention (4 * heads * head_dim per
// query-key pair and layer, forward).
double training_flops(const config::ModelConfig& model, const std::vector<int64_t>& doc_lengths);

}  // namespace cadre::runtime
