// The CUDA-event timeline (GPU build): a pair of events per span, recorded on the compute or the
// communication stream, resolved against an origin event after the step.
#include <cuda_runtime.h>

#include <algorithm>

#include "comm/cuda_check.h"
#include "comm/timeline.h"
#include "common/error.h"

namespace cadre::comm {
namespace {

class CudaTimeline : public Timeline {
 public:
  CudaTimeline(void* compute, void* communication)
      : compute_(static_cast<cudaStream_t>(compute)),
        communication_(static_cast<cudaStream_t>(communication)) {
    CADRE_CUDA_CHECK(cudaEventCreate(&origin_));
  }
  ~CudaTimeline() override {
    cudaEventDestroy(origin_);
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  }

  void begin_step() override {
    open_.clear();
    used_ = 0;
    CADRE_CUDA_CHECK(cudaEventRecord(origin_, compute_));
  }
  int begin_compute(const std::string& name) override {
    return open(Lane::kCompute, name, compute_);
  }
  void end_compute(int span) override { close(span, compute_); }
  int begin_communication(const std::string& name, void* stream) override {
    // The operation starts once the compute stream's work so far is done; start the span there.
    cudaStream_t comm = stream != nullptr ? static_cast<cudaStream_t>(stream) : communication_;
    cudaEvent_t ready = event();
    CADRE_CUDA_CHECK(cudaEventRecord(ready, compute_));
    CADRE_CUDA_CHECK(cudaStreamWaitEvent(comm, ready, 0));
    const int span = open(Lane::kCommunication, name, comm);
    open_[span].stream = comm;
    return span;
  }
  void communication_enqueued(int span) override { close(span, open_.at(span).stream); }
  void communication_waited(int) override {}

  std::vector<Span> resolve() override {
    std::vector<Span> spans;
    for (const Open& o : open_) {
      if (o.end == nullptr) continue;
      CADRE_CUDA_CHECK(cudaEventSynchronize(o.end));
      float start_ms = 0, end_ms = 0;
      CADRE_CUDA_CHECK(cudaEventElapsedTime(&start_ms, origin_, o.start));
      CADRE_CUDA_CHECK(cudaEventElapsedTime(&end_ms, origin_, o.end));
      spans.push_back({o.lane, o.name, start_ms * 1e3, end_ms * 1e3});
    }
    return spans;
  }

 private:
  struct Open {
    Lane lane;
    std::string name;
    cudaEvent_t start = nullptr;
    cudaEvent_t end = nullptr;
    cudaStream_t stream = nullptr;  // where a communication span ends
  };
  cudaEvent_t event() {
    if (used_ == pool_.size()) {
      cudaEvent_t e;
      CADRE_CUDA_CHECK(cudaEventCreate(&e));
      pool_.push_back(e);
    }
    return pool_[used_++];
  }
  int open(Lane lane, const std::string& name, cudaStream_t stream) {
    Open o{lane, name, event(), nullptr, stream};
    CADRE_CUDA_CHECK(cudaEventRecord(o.start, stream));
    open_.push_back(o);
    return static_cast<int>(open_.size()) - 1;
  }
  void close(int span, cudaStream_t stream) {
    CADRE_CHECK(span >= 0 && span < static_cast<int>(open_.size()), "timeline: unknown span ",
                span);
    open_[span].end = event();
    CADRE_CUDA_CHECK(cudaEventRecord(open_[span].end, stream));
  }

  cudaStream_t compute_;
  cudaStream_t communication_;
  cudaEvent_t origin_;
  std::vector<cudaEvent_t> pool_;
  size_t used_ = 0;
  std::vector<Open> open_;
};

}  // namespace

std::unique_ptr<Timeline> make_cuda_timeline(void* compute_stream, void* communication_stream) {
  return std::make_unique<CudaTimeline>(compute_stream, communication_stream);
}

}  // namespace cadre::comm
