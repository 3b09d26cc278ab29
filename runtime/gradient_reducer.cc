// Bucketed data-parallel gradient all-reduce, started layer by layer during backward.
#include "runtime/gradient_reducer.h"

#include <map>
#include <string>

#include "common/error.h"

namespace cadre::runtime {
namespace {

// The decoder layer of a parameter named "layers.<i>.<what>", or -1 (embedding, norms, head).
int layer_of(const std::string& name) {
  const std::string prefix = "layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  return std::stoi(name.substr(prefix.size()));
}

}  // namespace

GradientReducer::GradientReducer(const LlamaModel& model, comm::Transport& dp,
                                 int64_t bucket_bytes, comm::Timeline* timeline, void* stream,
                                 bool shard)
    : model_(model), dp_(dp), timeline_(timeline), stream_(stream), shard_(shard) {
  CADRE_CHECK(bucket_bytes > 0, "gradient bucket size must be positive; got ", bucket_bytes);
  const auto& params = model.parameters();
  // Parameters of each layer, and the rest, in model order.
  std::map<int, std::vector<const NamedParameter*>, std::greater<int>> by_layer;
  for (const NamedParameter& p : params) {
    CADRE_CHECK(p.value.scalar_type() == torch::kFloat, "gradient reducer: parameter ", p.name,
                " is ", p.value.scalar_type(), "; the master weights must be fp32");
    by_layer[layer_of(p.name)].push_back(&p);
  }
  // Buckets in the order backward finishes their parameters. The final norm and an untied LM
  // head are final once the loss has run, before any layer: they ride in the first bucket. Then
  // layers L-1 ... 0 in buckets of at least bucket_bytes (whole layers, never more elements than
  // one all-reduce call takes); the embedding, which backward reaches last, alone at the end.
  std::vector<std::pair<int, std::vector<const NamedParameter*>>> groups;
  std::vector<const NamedParameter*> pending, embedding;
  for (const NamedParameter* p : by_layer[-1]) {
    (p->name == "embedding" ? embedding : pending).push_back(p);
  }
  auto elements = [](const std::vector<const NamedParameter*>& members) {
    int64_t n = 0;
    for (const NamedParameter* p : members) n += p->value.numel();
    return n;
  };
  int64_t pending_elements = elements(pending);
  int lowest = -1;  // the lowest layer in pending
  for (auto& [layer, members] : by_layer) {
    if (layer < 0) continue;
    const int64_t n = elements(members);
    CADRE_CHECK(n <= kMaxBucketElements, "gradient reducer: layer ", layer, " has ", n,
                " parameters; one all-reduce takes at most ", kMaxBucketElements);
    if (lowest >= 0 && pending_elements + n > kMaxBucketElements) {
      groups.emplace_back(lowest, std::move(pending));
      pending.clear();
      pending_elements = 0;
    }
    pending.insert(pending.end(), members.begin(), members.end());
    pending_elements += n;
    lowest = layer;
    if (pending_elements * 4 >= bucket_bytes || layer == 0) {
      groups.emplace_back(layer, std::move(pending));
      pending.clear();
      pending_elements = 0;
    }
  }
  if (!pending.empty()) groups.emplace_back(-1, std::move(pending));  // a model without layers
  if (!embedding.empty()) {
    CADRE_CHECK(elements(embedding) <= kMaxBucketElements, "gradient reducer: the embedding has ",
                elements(embedding), " parameters; one all-reduce takes at most ",
                kMaxBucketElements);
    groups.emplace_back(-1, std::move(embedding));
  }

  torch::NoGradGuard no_grad;
  for (auto& [last_layer, members] : groups) {
    Bucket bucket;
    bucket.last_layer = last_layer;
    const int64_t count = elements(members);
    const int64_t ranks = dp.size();
    const int64_t padded = shard ? (count + ranks - 1) / ranks * ranks : count;
    const auto options = members.front()->value.options().requires_grad(false);
    bucket.flat = torch::zeros({padded}, options);
    if (shard) bucket.shard = torch::zeros({padded / ranks}, options);
    int64_t offset = 0;
    for (const NamedParameter* p : members) {
      CADRE_CHECK(p->value.device() == bucket.flat.device(), "gradient reducer: parameter ",
                  p->name, " is on ", p->value.device(), " but its bucket is on ",
                  bucket.flat.device());
      const int64_t n = p->value.numel();
      torch::Tensor view = bucket.flat.narrow(0, offset, n).view(p->value.sizes());
      // Keep what an earlier backward accumulated (normally nothing).
      if (p->value.grad().defined()) view.copy_(p->value.grad());
      p->value.mutable_grad() = view;
      bucket.names.push_back(p->name);
      bucket.members.push_back({p, offset});
      offset += n;
    }
    buckets_.push_back(std::move(bucket));
  }
}

GradientReducer::~GradientReducer() {
  // A step that threw midway may leave reductions in flight; their buffers must outlive them.
  for (Bucket& b : buckets_) {
    if (!b.work) continue;
    try {
      b.work->wait();
    } catch (...) {
      // The transport reports its own failure; nothing more can be done in a destructor.
    }
  }
}

void GradientReducer::begin() {
  // A step that failed midway can leave reductions in flight and gradients half accumulated:
  // wait for the former and clear the latter before anything else touches the buckets.
  bool interrupted = false;
  for (Bucket& b : buckets_) {
    if (!b.work) continue;
    b.work->wait();
    b.work.reset();
    interrupted = true;
  }
  if (interrupted) {
    torch::NoGradGuard no_grad;
    for (Bucket& b : buckets_) b.flat.zero_();
  }
  next_ = 0;
  expected_layer_ = model_.config().num_layers() - 1;
}

void GradientReducer::start(Bucket& bucket) {
  bucket.seen_done = false;
  if (timeline_) bucket.span = timeline_->begin_communication("grad all-reduce", stream_);
  if (shard_) {
    bucket.work = dp_.reduce_scatter_sum(bucket.flat.data_ptr(), bucket.shard.data_ptr(),
                                         bucket.shard.numel(), comm::DataType::kFloat32);
  } else {
    bucket.work = dp_.all_reduce_sum(bucket.flat.data_ptr(), bucket.flat.numel(),
                                     comm::DataType::kFloat32);
  }
  if (timeline_) timeline_->communication_enqueued(bucket.span);
}

void GradientReducer::layer_ready(int layer) {
  CADRE_CHECK(layer == expected_layer_, "gradient reducer: layer ", layer,
              " reported ready, expected layer ", expected_layer_,
              " (layers report once each, from the last to the first, after begin())");
  --expected_layer_;
  // Poll the buckets in flight: MPI progresses a non-blocking all-reduce only inside MPI calls
  // (no progress thread), and the host timeline ends a span when its completion is seen.
  for (size_t i = 0; i < next_; ++i) {
    Bucket& b = buckets_[i];
    if (b.work && !b.seen_done && b.work->done()) {
      b.seen_done = true;
      if (timeline_) timeline_->communication_waited(b.span);
    }
  }
  while (next_ < buckets_.size() && buckets_[next_].last_layer >= 0 &&
         buckets_[next_].last_layer >= layer) {
    start(buckets_[next_++]);
  }
}

void GradientReducer::finish() {
  // Either every layer was reported (overlapped) or none was (everything starts here).
  const int layers = model_.config().num_layers();
  CADRE_CHECK(expected_layer_ == -1 || expected_layer_ == layers - 1,
              "gradient reducer: finish() before layer ", expected_layer_, " was reported ready");
  while (next_ < buckets_.size()) start(buckets_[next_++]);
  const double ranks = dp_.size();
  torch::NoGradGuard no_grad;
  for (Bucket& b : buckets_) {
    b.work->wait();
    b.work.reset();
    if (timeline_ && !b.seen_done) timeline_->communication_waited(b.span);
    if (shard_) {
      if (ranks > 1) b.shard.div_(ranks);
    } else if (ranks > 1) {
      b.flat.div_(ranks);
    }
  }
}

std::vector<std::vector<std::string>> GradientReducer::bucket_names() const {
  std::vector<std::vector<std::string>> names;
  for (const Bucket& b : buckets_) names.push_back(b.names);
  return names;
}

std::vector<int64_t> GradientReducer::bucket_bytes() const {
  std::vector<int64_t> bytes;
  for (const Bucket& b : buckets_) bytes.push_back(b.flat.numel() * b.flat.element_size());
  return bytes;
}

}  // namespace cadre::runtime
