// libFuzzer target: the checkpoint reader. Input: a checkpoint file. When its first byte is
// odd, the target first rewrites the trailing FNV-1a hash to match the bytes before it, so that
// mutations get past the integrity check into the parser (names, type codes, dims, sizes). Every
// bad file must end in cadre::Error; an accepted one must hold what its bytes say (sizes inside
// the file) and write back to the same bytes.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/error.h"
#include "runtime/checkpoint.h"

namespace {

uint64_t fnv1a(const uint8_t* data, size_t size) {
  uint64_t hash = 0xCBF29CE484222325ull;
  for (size_t i = 0; i < size; ++i) {
    hash ^= data[i];
    hash *= 0x100000001B3ull;
  }
  return hash;
}

std::string scratch_path(const char* name) {
  const char* dir = std::getenv("CADRE_FUZZ_SCRATCH");
  return std::string(dir ? dir : "/tmp") + "/" + name + "." + std::to_string(::getpid());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> bytes(data, data + size);
  if (size >= 8 && (data[0] & 1)) {
    const uint64_t hash = fnv1a(bytes.data(), size - 8);
    std::memcpy(bytes.data() + size - 8, &hash, 8);
  }
  static const std::string path = scratch_path("cadre_fuzz_checkpoint");
  static const std::string again_path = scratch_path("cadre_fuzz_checkpoint_again");
  write_bytes(path, bytes);
  cadre::runtime::CheckpointState state;
  try {
    state = cadre::runtime::read_checkpoint(path);
  } catch (const cadre::Error&) {
    return 0;
  }
  int64_t payload = 0;
  for (const auto& [name, tensor] : state.tensors) payload += tensor.numel() * tensor.element_size();
  if (payload > static_cast<int64_t>(size)) {
    std::fprintf(stderr, "fuzz_checkpoint: %lld tensor bytes accepted from a %zu-byte file\n",
                 static_cast<long long>(payload), size);
    std::abort();
  }
  // Accepted: writing it back gives the same bytes (counters are a sorted map, so a file with
  // counters out of order or repeated is the one exception: compare the re-read state then).
  try {
    cadre::runtime::write_checkpoint(again_path, state);
    const cadre::runtime::CheckpointState again = cadre::runtime::read_checkpoint(again_path);
    bool same = again.counters == state.counters && again.tensors.size() == state.tensors.size();
    for (size_t i = 0; same && i < state.tensors.size(); ++i) {
      same = again.tensors[i].first == state.tensors[i].first &&
             again.tensors[i].second.sizes() == state.tensors[i].second.sizes() &&
             again.tensors[i].second.scalar_type() == state.tensors[i].second.scalar_type() &&
             (state.tensors[i].second.numel() == 0 ||
              std::memcmp(again.tensors[i].second.data_ptr(), state.tensors[i].second.data_ptr(),
                         state.tensors[i].second.numel() * state.tensors[i].second.element_size()) == 0);
    }
    if (!same) {
      std::fprintf(stderr, "fuzz_checkpoint: an accepted checkpoint does not write back equal\n");
      std::abort();
    }
  } catch (const cadre::Error& e) {
    std::fprintf(stderr, "fuzz_checkpoint: an accepted checkpoint cannot be written back: %s\n",
                 e.what());
    std::abort();
  }
  return 0;
}
