// A step's timeline on one rank: spans of work on the compute and communication lanes, timed by
// the host clock (CPU) or by CUDA events on the compute and communication streams (GPU), so that
// what ran when, and how much communication compute hid, can be measured and written as a Chrome
// trace. The runtime records; nothing here knows of models or plans.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cadre::comm {

enum class Lane { kCompute, kCommunication };

// A finished span, in microseconds from the step's origin.
struct Span {
  Lane lane = Lane::kCompute;
  std::string name;
  double start_us = 0;
  double end_us = 0;
};

class Timeline {
 public:
  virtual ~Timeline() = default;

  // Forgets earlier spans and takes the origin now (host) or at this point of the compute stream.
  virtual void begin_step() = 0;

  // Compute lane: the work enqueued between begin and end on the compute stream.
  virtual int begin_compute(const std::string& name) = 0;
  virtual void end_compute(int span) = 0;

  // Communication lane. Call begin_communication just before a transport operation is started;
  // it orders the communication stream after the compute stream (GPU), so the span starts when
  // the operation can start. Call communication_enqueued right after starting it and
  // communication_waited after its Work::wait(): the GPU timeline ends the span with the former
  // (an event on the communication stream), the host timeline with the latter.
  // `stream` (a cudaStream_t) names another communication stream than the timeline's own (a
  // sub-group's transport); nullptr means the timeline's.
  virtual int begin_communication(const std::string& name, void* stream = nullptr) = 0;
  virtual void communication_enqueued(int span) = 0;
  virtual void communication_waited(int span) = 0;

  // Waits for the recorded work and returns every span of this step.
  virtual std::vector<Span> resolve() = 0;
};

// Host clock. Spans end when end_compute / communication_waited are called.
std::unique_ptr<Timeline> make_host_timeline();

// CUDA events on `compute_stream` and `communication_stream` (cudaStream_t; nullptr is the legacy
// default stream). GPU build only: the CPU build throws cadre::Error.
std::unique_ptr<Timeline> make_cuda_timeline(void* compute_stream, void* communication_stream);

// Total length of the union of spans on `lane` (overlapping spans count once).
double busy_us(const std::vector<Span>& spans, Lane lane);

// Communication time not covered by any compute span: the part of the union of communication
// spans (those whose name starts with `prefix`, all if empty) outside the union of compute spans.
double exposed_communication_us(const std::vector<Span>& spans, const std::string& prefix = "");

// Chrome trace JSON ("traceEvents", complete events "ph":"X") of every rank's spans: one process
// per rank, thread 1 compute and thread 2 communication. Written atomically (temporary file,
// fsync, rename). Throws cadre::Error if the file cannot be written.
void write_chrome_trace(const std::string& path, const std::vector<std::vector<Span>>& per_rank,
                        const std::string& title);

// Spans to bytes and back (to gather them across ranks).
std::string serialize_spans(const std::vector<Span>& spans);
std::vector<Span> deserialize_spans(const std::string& bytes);

}  // namespace cadre::comm
