// Transport helpers shared by the backends.
#include "comm/transport.h"

#include "common/error.h"

namespace cadre::comm {

size_t data_type_bytes(DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return 4;
    case DataType::kBFloat16:
    case DataType::kFloat16:
      return 2;
    case DataType::kInt64:
      return 8;
    case DataType::kUInt8:
      return 1;
  }
  CADRE_FAIL("unknown comm::DataType ", static_cast<int>(type));
}

std::unique_ptr<Work> Transport::all_gather_async(const void*, void*, int64_t) {
  CADRE_FAIL("the ", backend(), " transport does not implement all_gather_async; accepted "
             "backends: mpi, nccl");
}

std::unique_ptr<Work> Transport::reduce_scatter_sum(const void*, void*, int64_t, DataType) {
  CADRE_FAIL("the ", backend(), " transport does not implement reduce_scatter_sum; accepted "
             "backends: mpi, nccl");
}

}  // namespace cadre::comm
