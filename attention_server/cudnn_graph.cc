// cuDNN backend descriptors for Cadre's attention graphs (see cudnn_graph.h). Every descriptor
// is owned by a Descriptor; every backend call is checked and reports cuDNN's own message.
#include "attention_server/cudnn_graph.h"

#include <cudnn_graph.h>

#include <algorithm>
#include <numeric>
#include <sstream>
#include <utility>

#include "common/error.h"

namespace cadre::attention_server::cudnn {
namespace {

std::string last_error() {
  char message[1024] = {0};
  cudnnGetLastErrorString(message, sizeof(message));
  return message;
}

void set(cudnnBackendDescriptor_t desc, cudnnBackendAttributeName_t name,
         cudnnBackendAttributeType_t type, int64_t count, const void* value, const char* what) {
  cudnnStatus_t status = cudnnBackendSetAttribute(desc, name, type, count, value);
  if (status != CUDNN_STATUS_SUCCESS) {
    CADRE_FAIL("cuDNN: setting ", what, " failed: ", cudnnGetErrorString(status), " (",
               last_error(), ")");
  }
}

void set_desc(cudnnBackendDescriptor_t desc, cudnnBackendAttributeName_t name,
              cudnnBackendDescriptor_t value, const char* what) {
  set(desc, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value, what);
}

void set_int64(cudnnBackendDescriptor_t desc, cudnnBackendAttributeName_t name, int64_t value,
               const char* what) {
  set(desc, name, CUDNN_TYPE_INT64, 1, &value, what);
}

void set_dtype(cudnnBackendDescriptor_t desc, cudnnBackendAttributeName_t name,
               cudnnDataType_t value, const char* what) {
  set(desc, name, CUDNN_TYPE_DATA_TYPE, 1, &value, what);
}

void finalize_desc(cudnnBackendDescriptor_t desc, const char* what) {
  cudnnStatus_t status = cudnnBackendFinalize(desc);
  if (status != CUDNN_STATUS_SUCCESS) {
    CADRE_FAIL("cuDNN: finalizing ", what, " failed: ", cudnnGetErrorString(status), " (",
               last_error(), ")");
  }
}

}  // namespace

void check(cudnnStatus_t status, const char* call) {
  if (status != CUDNN_STATUS_SUCCESS) {
    CADRE_FAIL("cuDNN: ", call, " failed: ", cudnnGetErrorString(status), " (", last_error(),
               ")");
  }
}

int64_t runtime_version() { return static_cast<int64_t>(cudnnGetVersion()); }
int64_t header_version() { return CUDNN_VERSION; }

Descriptor::Descriptor(cudnnBackendDescriptorType_t type) {
  check(cudnnBackendCreateDescriptor(type, &desc_), "cudnnBackendCreateDescriptor");
}

Descriptor::~Descriptor() {
  if (desc_ != nullptr) cudnnBackendDestroyDescriptor(desc_);
}

Descriptor& Descriptor::operator=(Descriptor&& other) noexcept {
  if (this != &other) {
    if (desc_ != nullptr) cudnnBackendDestroyDescriptor(desc_);
    desc_ = other.desc_;
    other.desc_ = nullptr;
  }
  return *this;
}

std::vector<int64_t> strides_in_order(const std::vector<int64_t>& dims,
                                      const std::vector<int>& outer_to_inner) {
  std::vector<int64_t> strides(dims.size(), 1);
  int64_t running = 1;
  for (auto it = outer_to_inner.rbegin(); it != outer_to_inner.rend(); ++it) {
    strides[*it] = running;
    running *= std::max<int64_t>(dims[*it], 1);
  }
  return strides;
}

int64_t Graph::tensor(const TensorSpec& spec) {
  CADRE_CHECK(spec.dims.size() == spec.strides.size() && !spec.dims.empty(),
              "cuDNN graph: a tensor needs as many strides as dims");
  const int64_t uid = static_cast<int64_t>(specs_.size()) + 1;
  Descriptor desc(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  cudnnBackendDescriptor_t d = desc.get();
  set_dtype(d, CUDNN_ATTR_TENSOR_DATA_TYPE, spec.dtype, "tensor data type");
  set(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, static_cast<int64_t>(spec.dims.size()),
      spec.dims.data(), "tensor dims");
  set(d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, static_cast<int64_t>(spec.strides.size()),
      spec.strides.data(), "tensor strides");
  set_int64(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, uid, "tensor uid");
  set_int64(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, 16, "tensor alignment");
  bool is_virtual = spec.is_virtual;
  set(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual, "tensor virtual");
  if (spec.by_value) {
    bool by_value = true;
    set(d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, "tensor by value");
  }
  if (spec.ragged_offset_uid > 0) {
    set_desc(d, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, tensor_desc(spec.ragged_offset_uid),
             "tensor ragged offset");
  }
  finalize_desc(d, "tensor");
  specs_.push_back(spec);
  tensors_.push_back(std::move(desc));
  return uid;
}

void Graph::pointwise(cudnnPointwiseMode_t mode, int64_t x, int64_t b, int64_t t, int64_t y,
                      cudnnDataType_t compute, int64_t axis) {
  Descriptor pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  set(pw.get(), CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
  set_dtype(pw.get(), CUDNN_ATTR_POINTWISE_MATH_PREC, compute, "pointwise precision");
  if (axis >= 0) set_int64(pw.get(), CUDNN_ATTR_POINTWISE_AXIS, axis, "pointwise axis");
  finalize_desc(pw.get(), "pointwise descriptor");

  Descriptor op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
  set_desc(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw.get(), "pointwise op desc");
  set_desc(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_XDESC, operand(x), "pointwise x");
  if (b > 0) set_desc(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_BDESC, operand(b), "pointwise b");
  if (t > 0) set_desc(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_TDESC, operand(t), "pointwise t");
  set_desc(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_YDESC, operand(y), "pointwise y");
  float one = 1.0f;
  set(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one, "alpha1");
  set(op.get(), CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one, "alpha2");
  finalize_desc(op.get(), "pointwise operation");
  op_descriptors_.push_back(std::move(pw));
  add_operation(std::move(op));
}

void Graph::matmul(int64_t a, int64_t b, int64_t c, int64_t m_override, int64_t n_override,
                   int64_t k_override, bool set_padding, double padding) {
  Descriptor mm(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
  set_dtype(mm.get(), CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_DATA_FLOAT, "matmul compute type");
  if (set_padding) {
    set(mm.get(), CUDNN_ATTR_MATMUL_PADDING_VALUE, CUDNN_TYPE_DOUBLE, 1, &padding,
        "matmul padding");
  }
  finalize_desc(mm.get(), "matmul descriptor");

  Descriptor op(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
  set_desc(op.get(), CUDNN_ATTR_OPERATION_MATMUL_ADESC, operand(a), "matmul a");
  set_desc(op.get(), CUDNN_ATTR_OPERATION_MATMUL_BDESC, operand(b), "matmul b");
  set_desc(op.get(), CUDNN_ATTR_OPERATION_MATMUL_CDESC, operand(c), "matmul c");
  set_desc(op.get(), CUDNN_ATTR_OPERATION_MATMUL_DESC, mm.get(), "matmul desc");
  if (m_override > 0) {
    set_desc(op.get(), CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, operand(m_override),
             "matmul m override");
  }
  if (n_override > 0) {
    set_desc(op.get(), CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, operand(n_override),
             "matmul n override");
  }
  if (k_override > 0) {
    set_desc(op.get(), CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, operand(k_override),
             "matmul k override");
  }
  finalize_desc(op.get(), "matmul operation");
  op_descriptors_.push_back(std::move(mm));
  add_operation(std::move(op));
}

void Graph::reduction(cudnnReduceTensorOp_t mode, int64_t x, int64_t y) {
  Descriptor red(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
  set(red.get(), CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode,
      "reduction operator");
  set_dtype(red.get(), CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_DATA_FLOAT, "reduction type");
  finalize_desc(red.get(), "reduction descriptor");

  Descriptor op(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
  set_desc(op.get(), CUDNN_ATTR_OPERATION_REDUCTION_XDESC, operand(x), "reduction x");
  set_desc(op.get(), CUDNN_ATTR_OPERATION_REDUCTION_YDESC, operand(y), "reduction y");
  set_desc(op.get(), CUDNN_ATTR_OPERATION_REDUCTION_DESC, red.get(), "reduction desc");
  finalize_desc(op.get(), "reduction operation");
  op_descriptors_.push_back(std::move(red));
  add_operation(std::move(op));
}

void Graph::reshape(int64_t x, int64_t y) {
  Descriptor op(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
  set_desc(op.get(), CUDNN_ATTR_OPERATION_RESHAPE_XDESC, operand(x), "reshape x");
  set_desc(op.get(), CUDNN_ATTR_OPERATION_RESHAPE_YDESC, operand(y), "reshape y");
  finalize_desc(op.get(), "reshape operation");
  add_operation(std::move(op));
}

void Graph::finalize(const std::string& label, int max_candidates) {
  op_graph_ = Descriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  std::vector<cudnnBackendDescriptor_t> ops;
  for (const Descriptor& op : operations_) ops.push_back(op.get());
  set(op_graph_.get(), CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
      static_cast<int64_t>(ops.size()), ops.data(), "graph operations");
  set(op_graph_.get(), CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle_,
      "graph handle");
  {
    cudnnStatus_t status = cudnnBackendFinalize(op_graph_.get());
    if (status != CUDNN_STATUS_SUCCESS) {
      CADRE_FAIL("cuDNN: the ", label, " graph was rejected: ", cudnnGetErrorString(status), " (",
                 last_error(), ")");
    }
  }

  std::ostringstream reasons;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    Descriptor heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    set_desc(heur.get(), CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, op_graph_.get(), "heuristic graph");
    set(heur.get(), CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristic mode");
    if (cudnnBackendFinalize(heur.get()) != CUDNN_STATUS_SUCCESS) {
      reasons << " heuristics mode " << mode << ": " << last_error() << ";";
      continue;
    }
    int64_t count = 0;
    cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                             CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr);
    if (count <= 0) {
      reasons << " heuristics mode " << mode << ": no engine;";
      continue;
    }
    std::vector<Descriptor> configs;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < count; ++i) {
      configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
      raw.push_back(configs.back().get());
    }
    int64_t returned = 0;
    check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                   CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &returned, raw.data()),
          "reading engine heuristics");
    for (int64_t i = 0; i < returned; ++i) {
      Descriptor plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      set(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle_,
          "plan handle");
      set_desc(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, raw[i], "plan engine config");
      cudnnStatus_t status = cudnnBackendFinalize(plan.get());
      if (status != CUDNN_STATUS_SUCCESS) {
        reasons << " engine " << i << ": " << last_error() << ";";
        continue;
      }
      int64_t workspace = 0, n = 0;
      check(cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                     CUDNN_TYPE_INT64, 1, &n, &workspace),
            "reading plan workspace size");
      // The engine's name for logs: its global index.
      Descriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
      cudnnBackendDescriptor_t engine_raw = engine.get();
      int64_t got = 0, global_index = -1;
      if (cudnnBackendGetAttribute(raw[i], CUDNN_ATTR_ENGINECFG_ENGINE,
                                   CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &got,
                                   &engine_raw) == CUDNN_STATUS_SUCCESS) {
        cudnnBackendGetAttribute(engine_raw, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1,
                                 &got, &global_index);
      }
      Candidate candidate;
      candidate.engine = "engine " + std::to_string(global_index) + " (heuristics mode " +
                         std::to_string(static_cast<int>(mode)) + ", rank " + std::to_string(i) +
                         ")";
      candidate.workspace_bytes = workspace;
      candidate.plan = std::move(plan);
      plans_.push_back(std::move(candidate));
      if (static_cast<int>(plans_.size()) >= max_candidates) return;
    }
    if (!plans_.empty()) return;  // the fallback heuristics only when mode A found nothing
  }
  CADRE_CHECK(!plans_.empty(), "cuDNN: no engine runs the ", label, " graph:", reasons.str());
}

void Graph::select(int candidate) {
  CADRE_CHECK(candidate >= 0 && candidate < candidates(), "cuDNN graph: no candidate plan ",
              candidate, " (", candidates(), " built)");
  selected_ = candidate;
}

void Graph::drop_unselected() {
  Candidate keep = std::move(plans_.at(selected_));
  plans_.clear();
  plans_.push_back(std::move(keep));
  selected_ = 0;
}

int64_t Graph::max_workspace_bytes() const {
  int64_t most = 0;
  for (const Candidate& c : plans_) most = std::max(most, c.workspace_bytes);
  return most;
}

cudnnBackendDescriptor_t Graph::operand(int64_t uid) {
  used_.resize(specs_.size(), 0);
  used_.at(uid - 1) = 1;
  const int64_t ragged = specs_.at(uid - 1).ragged_offset_uid;
  if (ragged > 0) used_.at(ragged - 1) = 1;
  return tensor_desc(uid);
}

void Graph::execute(const std::vector<int64_t>& uids, const std::vector<void*>& pointers,
                    void* workspace) const {
  CADRE_CHECK(!plans_.empty(), "cuDNN graph executed before finalize()");
  CADRE_CHECK(uids.size() == pointers.size(), "cuDNN graph executed with ", uids.size(),
              " uids but ", pointers.size(), " pointers");
  // Only the tensors its operations read or write: cuDNN refuses a variant pack that names a
  // tensor outside the graph (e.g. the -inf of a graph without masks).
  std::vector<int64_t> pack_uids;
  std::vector<void*> pack_pointers;
  for (size_t i = 0; i < uids.size(); ++i) {
    const int64_t uid = uids[i];
    if (uid <= 0 || uid > static_cast<int64_t>(used_.size()) || used_[uid - 1] == 0) continue;
    pack_uids.push_back(uid);
    pack_pointers.push_back(pointers[i]);
  }
  for (size_t uid = 1; uid <= used_.size(); ++uid) {
    const bool supplied = std::find(pack_uids.begin(), pack_uids.end(),
                                    static_cast<int64_t>(uid)) != pack_uids.end();
    CADRE_CHECK(used_[uid - 1] == 0 || specs_[uid - 1].is_virtual || supplied,
                "cuDNN graph executed without a pointer for its tensor ", uid);
  }
  Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  set(pack.get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
      static_cast<int64_t>(pack_uids.size()), pack_uids.data(), "variant pack uids");
  set(pack.get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
      static_cast<int64_t>(pack_pointers.size()), pack_pointers.data(), "variant pack pointers");
  set(pack.get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace,
      "variant pack workspace");
  finalize_desc(pack.get(), "variant pack");
  check(cudnnBackendExecute(handle_, plans_.at(selected_).plan.get(), pack.get()),
        "cudnnBackendExecute");
}

}  // namespace cadre::attention_server::cudnn
