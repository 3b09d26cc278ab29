// Data-parallel gradient all-reduce that overlaps with backward. Every parameter's .grad() is a
// view into one of a few flat fp32 buffers ("buckets"), so the all-reduce runs in place on the
// buffer with no packing copy. Buckets follow the order in which backward finishes parameters
// (the final norm and an untied LM head with the last decoder layer, then the layers down to the
// first, the embedding last); a bucket's all-reduce starts as soon as its last layer is reported
// ready, on the transport's communication stream, while the compute stream goes on with earlier
// layers. finish() starts the rest, waits for all of them and divides by the number of ranks.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/timeline.h"
#include "comm/transport.h"
#include "runtime/model.h"

namespace cadre::runtime {

class GradientReducer {
 public:
  // One all-reduce call takes at most this many elements (the MPI transport's int count).
  static constexpr int64_t kMaxBucketElements = 2147483647;

  // Allocates the buckets (zeros, on each parameter's device) and points every parameter's grad
  // at its slice; a bucket closes once it holds at least `bucket_bytes` (whole layers only).
  // `model` and `dp` must outlive the reducer. `stream` is passed to the timeline's
  // begin_communication (see comm/timeline.h).
  GradientReducer(const LlamaModel& model, comm::Transport& dp, int64_t bucket_bytes,
                  comm::Timeline* timeline = nullptr, void* stream = nullptr);
  ~GradientReducer();

  // Starts a step's reduction; layer_ready is then called for layers L-1 ... 0 in that order,
  // each once the layer's gradients are final, and finish() after the whole backward. After a
  // step that threw midway, begin() waits for its reductions and zeroes the gradients.
  void begin();
  void layer_ready(int layer);
  void finish();

  // Buckets and their sizes, for tests and the docs: parameter names per bucket.
  std::vector<std::vector<std::string>> bucket_names() const;
  // Bytes of each bucket's flat buffer, in start order (the training profile records them).
  std::vector<int64_t> bucket_bytes() const;

 private:
  struct Bucket {
    torch::Tensor flat;
    std::vector<std::string> names;
    int last_layer = -1;  // the bucket starts when this layer is ready; -1: at finish()
    std::unique_ptr<comm::Work> work;
    int span = -1;
    bool seen_done = false;  // completion seen while polling (its span is closed)
  };
  void start(Bucket& bucket);

  const LlamaModel& model_;
  comm::Transport& dp_;
  comm::Timeline* timeline_;
  void* stream_;
  std::vector<Bucket> buckets_;
  size_t next_ = 0;  // first bucket not started
  int expected_layer_ = -1;
};

}  // namespace cadre::runtime
