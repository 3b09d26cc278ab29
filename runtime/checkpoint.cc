// The checkpoint file format and its atomic writer.
#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/posix_fs.h"

namespace cadre::runtime {
namespace {

constexpr char kMagic[8] = {'C', 'A', 'D', 'R', 'E', 'C', 'K', 'P'};

uint64_t fnv1a(const char* data, size_t size) {
  uint64_t hash = 0xCBF29CE484222325ull;
  for (size_t i = 0; i < size; ++i) {
    hash ^= static_cast<unsigned char>(data[i]);
    hash *= 0x100000001B3ull;
  }
  return hash;
}

// Little-endian on the hosts we build for (x86-64, aarch64); the format says little-endian.
class Writer {
 public:
  template <typename T>
  void put(const T& value) {
    append(&value, sizeof(T));
  }
  void put_name(const std::string& name) {
    put<uint32_t>(static_cast<uint32_t>(name.size()));
    append(name.data(), name.size());
  }
  void append(const void* data, size_t size) {
    const char* p = static_cast<const char*>(data);
    bytes_.insert(bytes_.end(), p, p + size);
  }
  std::vector<char>& bytes() { return bytes_; }

 private:
  std::vector<char> bytes_;
};

class Reader {
 public:
  Reader(const std::vector<char>& bytes, size_t end, const std::string& path)
      : bytes_(bytes), end_(end), path_(path) {}
  void read(void* out, size_t size) {
    CADRE_CHECK(size <= end_ - offset_, "checkpoint '", path_, "' is truncated at byte ", offset_);
    if (size == 0) return;  // an empty tensor's data pointer may be null
    std::memcpy(out, bytes_.data() + offset_, size);
    offset_ += size;
  }
  template <typename T>
  T get() {
    T value;
    read(&value, sizeof(T));
    return value;
  }
  std::string get_name() {
    const uint32_t size = get<uint32_t>();
    CADRE_CHECK(size <= end_ - offset_, "checkpoint '", path_, "' has a name past its end");
    std::string name(bytes_.data() + offset_, size);
    offset_ += size;
    return name;
  }
  size_t offset() const { return offset_; }
  size_t remaining() const { return end_ - offset_; }

 private:
  const std::vector<char>& bytes_;
  size_t end_;
  size_t offset_ = 0;
  std::string path_;
};

uint8_t dtype_code(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat: return 0;
    case torch::kDouble: return 1;
    case torch::kLong: return 2;
    default:
      CADRE_FAIL("checkpoints hold float32, float64 and int64 tensors; got ", type);
  }
}

torch::ScalarType dtype_from_code(uint8_t code, const std::string& path) {
  switch (code) {
    case 0: return torch::kFloat;
    case 1: return torch::kDouble;
    case 2: return torch::kLong;
    default: CADRE_FAIL("checkpoint '", path, "' has unknown tensor type code ", int(code));
  }
}

}  // namespace

void write_checkpoint(const std::string& path, const CheckpointState& state) {
  Writer w;
  w.append(kMagic, sizeof(kMagic));
  w.put<uint32_t>(kCheckpointVersion);
  w.put<uint64_t>(state.counters.size());
  for (const auto& [name, value] : state.counters) {
    w.put_name(name);
    w.put<int64_t>(value);
  }
  w.put<uint64_t>(state.tensors.size());
  for (const auto& [name, tensor] : state.tensors) {
    auto t = tensor.detach().to(torch::kCPU).contiguous();
    w.put_name(name);
    w.put<uint8_t>(dtype_code(t.scalar_type()));
    w.put<uint32_t>(static_cast<uint32_t>(t.dim()));
    for (int64_t d : t.sizes()) w.put<int64_t>(d);
    w.append(t.data_ptr(), t.numel() * t.element_size());
  }
  w.put<uint64_t>(fnv1a(w.bytes().data(), w.bytes().size()));

  write_file_atomically(path, w.bytes().data(), w.bytes().size());
}

CheckpointState read_checkpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  CADRE_CHECK(in.good(), "cannot open checkpoint '", path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CADRE_CHECK(bytes.size() >= sizeof(kMagic) + 4 + 8 &&
                  std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) == 0,
              "'", path, "' is not a Cadre checkpoint (no CADRECKP header)");
  const size_t body = bytes.size() - sizeof(uint64_t);
  uint64_t stored_hash;
  std::memcpy(&stored_hash, bytes.data() + body, sizeof(stored_hash));
  Reader r(bytes, body, path);
  char magic[sizeof(kMagic)];
  r.read(magic, sizeof(magic));
  const uint32_t version = r.get<uint32_t>();
  CADRE_CHECK(version == kCheckpointVersion, "checkpoint '", path, "' has format version ",
              version, "; this build reads version ", kCheckpointVersion);
  CADRE_CHECK(fnv1a(bytes.data(), body) == stored_hash, "checkpoint '", path,
              "' is corrupt or truncated (hash mismatch)");
  CheckpointState state;
  const uint64_t counters = r.get<uint64_t>();
  for (uint64_t i = 0; i < counters; ++i) {
    std::string name = r.get_name();
    state.counters[name] = r.get<int64_t>();
  }
  const uint64_t tensors = r.get<uint64_t>();
  for (uint64_t i = 0; i < tensors; ++i) {
    std::string name = r.get_name();
    const torch::ScalarType type = dtype_from_code(r.get<uint8_t>(), path);
    const uint32_t ndim = r.get<uint32_t>();
    CADRE_CHECK(ndim <= 16, "checkpoint '", path, "' tensor '", name, "' has ", ndim, " dims");
    std::vector<int64_t> sizes(ndim);
    // The tensor's bytes must lie in the file: checked before allocating (a corrupt size could
    // ask for any amount of memory), without overflow.
    uint64_t nonzero_product = type == torch::kFloat ? 4 : 8;  // bytes, over the non-zero dims
    bool empty = false;
    for (auto& d : sizes) {
      d = r.get<int64_t>();
      CADRE_CHECK(d >= 0, "checkpoint '", path, "' tensor '", name, "' has a negative size");
      if (d == 0) {
        empty = true;
      } else {
        CADRE_CHECK(!__builtin_mul_overflow(nonzero_product, static_cast<uint64_t>(d),
                                            &nonzero_product) &&
                        nonzero_product <= static_cast<uint64_t>(INT64_MAX),
                    "checkpoint '", path, "' tensor '", name, "' has sizes that overflow");
      }
    }
    CADRE_CHECK(empty || nonzero_product <= r.remaining(), "checkpoint '", path, "' tensor '",
                name, "' is larger than the rest of the file (truncated or corrupt)");
    auto t = torch::empty(sizes, torch::TensorOptions().dtype(type));
    r.read(t.data_ptr(), t.numel() * t.element_size());
    state.tensors.emplace_back(std::move(name), t);
  }
  CADRE_CHECK(r.offset() == body, "checkpoint '", path, "' has ", body - r.offset(),
              " unexpected trailing bytes");
  return state;
}

std::string checkpoint_path(const std::string& dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%08lld.ckpt", static_cast<long long>(step));
  return (std::filesystem::path(dir) / name).string();
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<long long, std::string>> found;
  if (!posix_fs::is_directory(dir)) return {};
  for (const std::string& name : posix_fs::list_directory(dir)) {
    long long step = 0;
    char tail[8] = {0};
    if (std::sscanf(name.c_str(), "step_%lld.%7s", &step, tail) == 2 &&
        std::string(tail) == "ckpt" && name == std::filesystem::path(checkpoint_path("", step)).string()) {
      found.emplace_back(step, (std::filesystem::path(dir) / name).string());
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& f : found) paths.push_back(std::move(f.second));
  return paths;
}

std::string save_checkpoint(const std::string& dir, int64_t step, const CheckpointState& state,
                            int keep_last) {
  CADRE_CHECK(keep_last >= 1, "training.keep_checkpoints must be at least 1; got ", keep_last);
  posix_fs::make_directories(dir);
  const std::string path = checkpoint_path(dir, step);
  write_checkpoint(path, state);
  auto all = list_checkpoints(dir);
  for (size_t i = 0; i + keep_last < all.size(); ++i) posix_fs::remove_file(all[i]);
  return path;
}

}  // namespace cadre::runtime
