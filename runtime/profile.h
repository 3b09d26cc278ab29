// Training profiles: one step's compute and communication spans (the timeline) joined with what
// the trainer knows of the step (each nano-batch's documents and plan, the gradient buckets), as
// per-segment, per-attention-batch, per-exchange and per-bucket records (scheduler/profile.proto)
// that `cadre calibrate` fits the simulator's cost model to. docs/simulation.md, "Profiles".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/timeline.h"
#include "comm/transport.h"
#include "scheduler/config.pb.h"
#include "scheduler/plan.h"
#include "scheduler/profile.pb.h"

namespace cadre::runtime {

// One nano-batch of one micro-batch as the trainer ran it on this rank.
struct NanoRecord {
  int micro_batch = 0;
  int nano = 0;
  std::vector<int64_t> doc_lengths;  // this rank's documents (pieces) of the nano-batch
  bool dispatched = false;           // its core attention ran through a CadDispatch of `plan`
  scheduler::Plan plan;              // when dispatched
};

// What the trainer records of a step besides the timeline.
struct StepRecord {
  int nano_count = 1;                 // nano-batches per micro-batch
  std::vector<NanoRecord> nanos;      // micro-batch-major
  std::vector<int64_t> bucket_bytes;  // gradient all-reduce buckets, in start order
};

// Span names the profile knows (the step executor, dispatch, reducer and trainer write them).
inline constexpr const char* kOptimizerSpan = "optimizer step";

// Builds this rank's entry of one step from its spans and record (pure; the tests call it).
// `element_bytes`: bytes per activation value on the wire (2 for bf16, 4 for fp32). Throws
// cadre::Error if the spans do not match the record (a span of an unknown layer or nano-batch).
profile::ProfileRankStep rank_step_profile(const config::RunConfig& config, int rank,
                                           int64_t element_bytes,
                                           const std::vector<comm::Span>& spans,
                                           const StepRecord& record);

// Peak bytes the CUDA caching allocator has allocated and reserved on the current device since
// the process started (0, 0 in the CPU build or on CPU).
void device_memory_peaks(bool cuda, int64_t* allocated, int64_t* reserved);

// Collects every step's entry on this rank; write() gathers all ranks' to rank 0, which writes
// the profile (JSON, scheduler/profile.proto) atomically.
class ProfileWriter {
 public:
  ProfileWriter(const config::RunConfig& config, int rank, int64_t element_bytes);
  void add_step(int64_t step, double step_ms, double rank_wall_ms, int64_t kernel_graphs_built,
                int64_t kernel_choices_measured, bool cuda, const std::vector<comm::Span>& spans,
                const StepRecord& record);
  // Collective over `control`. `workers`, `parameters` (of a worker) and `description` describe
  // the run.
  void write(comm::Transport& control, const std::string& path, int workers, int64_t parameters,
             const std::string& description) const;

 private:
  config::RunConfig config_;
  int rank_;
  int64_t element_bytes_;
  bool cuda_ = false;                        // the steps ran on a GPU (add_step says)
  std::vector<profile::ProfileStep> steps_;  // this rank's entry only
};

// The profile header (everything but the steps) of a run.
profile::RunProfile profile_header(const config::RunConfig& config, int ranks, int workers,
                                   int64_t parameters, const std::string& description);

}  // namespace cadre::runtime
