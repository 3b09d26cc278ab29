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
  // With `shard` (ZeRO-1, training.shard_optimizer) each bucket is padded to a multiple of the
  // group's size and reduce-scattered instead: rank r ends with the average of slice r of every
  // bucket (shard_gradient), and the parameters' .grad() views keep only this rank's local sums.
  GradientReducer(const LlamaModel& model, comm::Transport& dp, int64_t bucket_bytes,
                  comm::Timeline* timeline = nullptr, void* stream = nullptr, bool shard = false);
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

  // What a sharded optimizer needs of the buckets: each member's element offset in its bucket,
  // the bucket's padded length, and this rank's averaged slice of it after finish().
  struct Member {
    const NamedParameter* parameter;
    int64_t offset;
  };
  size_t bucket_count() const { return buckets_.size(); }
  const std::vector<Member>& bucket_members(size_t b) const { return buckets_[b].members; }
  int64_t padded_elements(size_t b) const { return buckets_[b].flat.numel(); }
  // The bucket's flat buffer (every member's .grad() is a view of it).
  torch::Tensor& bucket_flat(size_t b) { return buckets_[b].flat; }
  torch::Tensor& shard_gradient(size_t b) { return buckets_[b].shard; }
  bool sharded() const { return shard_; }

 private:
  struct Bucket {
    torch::Tensor flat;   // padded to a multiple of the group's size when sharded
    torch::Tensor shard;  // sharded: this rank's slice of the reduced bucket
    std::vector<std::string> names;
    std::vector<Member> members;
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
  bool shard_;
  std::vector<Bucket> buckets_;
  size_t next_ = 0;  // first bucket not started
  int expected_layer_ = -1;
};

}  // namespace cadre::runtime
