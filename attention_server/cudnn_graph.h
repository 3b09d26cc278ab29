// A small owner of cuDNN backend descriptors (GPU build with cuDNN only): operation graphs of
// tensors, pointwise, matmul, reduction and reshape operations built from cudnn_graph.h's
// backend API, finalized into one execution plan, executed with a variant pack. No LibTorch here:
// callers pass raw device pointers. Only cudnn_kernel.cc uses it.
#pragma once

#include <cudnn.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cadre::attention_server::cudnn {

// Throws cadre::Error naming the call, cuDNN's status and its last error message.
void check(cudnnStatus_t status, const char* call);

// The cuDNN library this process loaded (cudnnGetVersion()) and the headers it was built with.
int64_t runtime_version();
int64_t header_version();

// An owned backend descriptor (destroyed with the owner; destructors never throw).
class Descriptor {
 public:
  Descriptor() = default;
  explicit Descriptor(cudnnBackendDescriptorType_t type);
  ~Descriptor();
  Descriptor(Descriptor&& other) noexcept : desc_(other.desc_) { other.desc_ = nullptr; }
  Descriptor& operator=(Descriptor&& other) noexcept;
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  cudnnBackendDescriptor_t get() const { return desc_; }
  cudnnBackendDescriptor_t* address() { return &desc_; }

 private:
  cudnnBackendDescriptor_t desc_ = nullptr;
};

// One tensor of a graph. Dims and strides in elements, 4-D for attention; a ragged tensor names
// the int32 [batch + 1, 1, 1, 1] tensor of its sequences' element offsets.
struct TensorSpec {
  std::vector<int64_t> dims;
  std::vector<int64_t> strides;
  cudnnDataType_t dtype = CUDNN_DATA_FLOAT;
  bool is_virtual = false;
  bool by_value = false;  // a host scalar passed at execution
  int64_t ragged_offset_uid = 0;  // 0 = not ragged
};

// Builds an operation graph, then finalizes it into execution plans: the first max_candidates
// engines the heuristics rank that accept it. The first is selected; a caller that times them
// (autotuning) selects another with select().
class Graph {
 public:
  explicit Graph(cudnnHandle_t handle) : handle_(handle) {}

  // Returns the tensor's unique id (1, 2, ...).
  int64_t tensor(const TensorSpec& spec);
  const TensorSpec& spec(int64_t uid) const { return specs_.at(uid - 1); }

  // y = mode(x[, b[, t]]). axis >= 0 sets CUDNN_ATTR_POINTWISE_AXIS (GEN_INDEX and the index
  // arithmetic of masks). t is BINARY_SELECT's condition: y = t ? x : b.
  void pointwise(cudnnPointwiseMode_t mode, int64_t x, int64_t b, int64_t t, int64_t y,
                 cudnnDataType_t compute = CUDNN_DATA_FLOAT, int64_t axis = -1);
  // c = a @ b over the last two dims (batched over the others); the overrides (0 = none) are
  // int32 [batch, 1, 1, 1] tensors of per-sequence m, n, k; padding (when set) fills rows and
  // columns past them.
  void matmul(int64_t a, int64_t b, int64_t c, int64_t m_override, int64_t n_override,
              int64_t k_override, bool set_padding = false, double padding = 0.0);
  void reduction(cudnnReduceTensorOp_t mode, int64_t x, int64_t y);
  void reshape(int64_t x, int64_t y);

  // Finalizes the graph and its candidate plans; throws cadre::Error with cuDNN's reasons when
  // no engine supports the graph. `label` names the graph in messages.
  void finalize(const std::string& label, int max_candidates = 1);
  int candidates() const { return static_cast<int>(plans_.size()); }
  void select(int candidate);
  // Keeps only the selected plan (frees the others' resources).
  void drop_unselected();
  // The selected plan's workspace, and the largest any candidate needs.
  int64_t workspace_bytes() const { return plans_.at(selected_).workspace_bytes; }
  int64_t max_workspace_bytes() const;
  const std::string& engine() const { return plans_.at(selected_).engine; }

  // Runs the plan on the handle's stream: uids and pointers of every non-virtual tensor
  // (device pointers; host pointers for by-value scalars). Uids of tensors no operation uses
  // (0, or declared but left out of this graph) are skipped; a used one missing throws.
  void execute(const std::vector<int64_t>& uids, const std::vector<void*>& pointers,
               void* workspace) const;

 private:
  cudnnBackendDescriptor_t tensor_desc(int64_t uid) const { return tensors_.at(uid - 1).get(); }
  // The descriptor of a tensor an operation uses, marking it (and its ragged offsets) used.
  cudnnBackendDescriptor_t operand(int64_t uid);
  void add_operation(Descriptor op) { operations_.push_back(std::move(op)); }

  cudnnHandle_t handle_;
  std::vector<TensorSpec> specs_;
  std::vector<char> used_;  // per uid - 1: an operation reads or writes it
  std::vector<Descriptor> tensors_;
  std::vector<Descriptor> operations_;
  std::vector<Descriptor> op_descriptors_;  // pointwise/matmul/reduction descriptors
  Descriptor op_graph_;
  struct Candidate {
    Descriptor plan;
    int64_t workspace_bytes = 0;
    std::string engine;
  };
  std::vector<Candidate> plans_;
  int selected_ = 0;
};

// Contiguous strides of dims in the given order of dims, outermost first (e.g. {0, 2, 1, 3} for
// a [b, h, s, d] tensor laid out as [b, s, h, d]).
std::vector<int64_t> strides_in_order(const std::vector<int64_t>& dims,
                                      const std::vector<int>& outer_to_inner);

}  // namespace cadre::attention_server::cudnn
