// safetensors writer and memory-mapped reader. The JSON header goes through nlohmann::json; the
// tensor bytes are copied as they are (every supported host is little-endian, checked below).
#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"

namespace cadre::runtime {
namespace {

// The header may not be larger than this (the format's own readers refuse bigger ones too); a
// corrupt length field then fails here instead of asking for gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeInfo {
  const char* name;
  torch::ScalarType type;
  size_t bytes;
};

const std::vector<DtypeInfo>& dtypes() {
  static const std::vector<DtypeInfo> kDtypes = {
      {"F32", torch::kFloat, 4},  {"BF16", torch::kBFloat16, 2}, {"F16", torch::kHalf, 2},
      {"F64", torch::kDouble, 8}, {"I64", torch::kLong, 8},      {"I32", torch::kInt, 4},
      {"I16", torch::kShort, 2},  {"I8", torch::kChar, 1},       {"U8", torch::kByte, 1},
      {"BOOL", torch::kBool, 1},
  };
  return kDtypes;
}

const DtypeInfo* dtype_by_name(const std::string& name) {
  for (const auto& d : dtypes()) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

std::string dtype_names() {
  std::string out;
  for (const auto& d : dtypes()) out += std::string(out.empty() ? "" : ", ") + d.name;
  return out;
}

bool little_endian_host() {
  const uint16_t probe = 1;
  unsigned char first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

}  // namespace

std::string safetensors_dtype_name(torch::ScalarType dtype) {
  for (const auto& d : dtypes()) {
    if (d.type == dtype) return d.name;
  }
  CADRE_FAIL("safetensors has no name for dtype ", dtype, "; accepted: ", dtype_names());
}

std::string safetensors_bytes(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  CADRE_CHECK(little_endian_host(), "safetensors files are little-endian; this host is not");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    CADRE_CHECK(!name.empty() && name != "__metadata__", "safetensors tensor name '", name,
                "' is reserved or empty; accepted: any other non-empty name");
    CADRE_CHECK(!header.contains(name), "safetensors tensor '", name, "' is given twice");
    auto t = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(t);
  }
  std::string json = header.dump();
  json.resize((json.size() + 7) / 8 * 8, ' ');
  std::string out(8, '\0');
  const uint64_t length = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  out += json;
  out.reserve(out.size() + offset);
  for (const auto& t : contiguous) {
    out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  }
  return out;
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_file_atomically(path, safetensors_bytes(tensors, metadata));
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  CADRE_CHECK(little_endian_host(), "safetensors files are little-endian; this host is not");
  const int fd = ::open(path.c_str(), O_RDONLY);
  CADRE_CHECK(fd >= 0, "cannot open safetensors file '", path, "': ", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    CADRE_FAIL("cannot stat safetensors file '", path, "': ", std::strerror(error));
  }
  map_bytes_ = static_cast<size_t>(st.st_size);
  if (map_bytes_ > 0) {
    map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  }
  const int map_error = errno;
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    CADRE_FAIL("cannot memory-map safetensors file '", path, "': ", std::strerror(map_error));
  }
  try {
    const auto* bytes = static_cast<const unsigned char*>(map_);
    CADRE_CHECK(map_bytes_ >= 8, "safetensors file '", path, "' is truncated: ", map_bytes_,
                " bytes, shorter than the 8-byte header length");
    uint64_t header_bytes = 0;
    for (int i = 0; i < 8; ++i) header_bytes |= static_cast<uint64_t>(bytes[i]) << (8 * i);
    CADRE_CHECK(header_bytes <= kMaxHeaderBytes, "safetensors file '", path,
                "' declares a header of ", header_bytes, " bytes; accepted: at most ",
                kMaxHeaderBytes, " (is this a safetensors file?)");
    CADRE_CHECK(header_bytes <= map_bytes_ - 8, "safetensors file '", path,
                "' is truncated: its header declares ", header_bytes, " bytes but only ",
                map_bytes_ - 8, " follow the length field");
    const std::string text(reinterpret_cast<const char*>(bytes + 8), header_bytes);
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      CADRE_FAIL("safetensors file '", path, "' has a header that is not valid JSON (", e.what(),
                 "); is the file truncated or not a safetensors file?");
    }
    CADRE_CHECK(header.is_object(), "safetensors file '", path,
                "' has a header that is not a JSON object");
    data_ = bytes + 8 + header_bytes;
    const uint64_t data_bytes = map_bytes_ - 8 - header_bytes;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        CADRE_CHECK(it->is_object(), "safetensors file '", path,
                    "': __metadata__ is not an object of strings");
        for (auto m = it->begin(); m != it->end(); ++m) {
          CADRE_CHECK(m->is_string(), "safetensors file '", path, "': __metadata__ entry '",
                      m.key(), "' is not a string");
          metadata_[m.key()] = m->get<std::string>();
        }
        continue;
      }
      const std::string where = str_cat("safetensors file '", path, "' tensor '", it.key(), "'");
      const auto& e = *it;
      CADRE_CHECK(
          e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"),
          where, " lacks dtype, shape or data_offsets");
      CADRE_CHECK(e["dtype"].is_string(), where, ": dtype is not a string");
      SafetensorsEntry entry;
      entry.name = it.key();
      entry.dtype = e["dtype"].get<std::string>();
      const DtypeInfo* info = dtype_by_name(entry.dtype);
      CADRE_CHECK(info != nullptr, where, " has dtype '", entry.dtype,
                  "'; accepted: ", dtype_names());
      CADRE_CHECK(e["shape"].is_array(), where, ": shape is not an array");
      uint64_t elements = 1;
      for (const auto& d : e["shape"]) {
        CADRE_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, where,
                    ": shape holds a non-integer or negative size");
        entry.shape.push_back(d.get<int64_t>());
        elements *= static_cast<uint64_t>(entry.shape.back());
      }
      const auto& offsets = e["data_offsets"];
      CADRE_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
                      offsets[1].is_number_unsigned(),
                  where, ": data_offsets is not a pair of non-negative integers");
      entry.begin = offsets[0].get<uint64_t>();
      entry.end = offsets[1].get<uint64_t>();
      CADRE_CHECK(entry.begin <= entry.end && entry.end <= data_bytes, where, " spans bytes [",
                  entry.begin, ", ", entry.end, ") but the data holds ", data_bytes,
                  " bytes (is the file truncated?)");
      CADRE_CHECK(entry.end - entry.begin == elements * info->bytes, where, " holds ",
                  entry.end - entry.begin, " bytes but its dtype ", entry.dtype, " and shape [",
                  str_cat(e["shape"].dump()), "] need ", elements * info->bytes);
      index_[entry.name] = entries_.size();
      entries_.push_back(std::move(entry));
    }
    // Ranges may not overlap (the format says so; a file that breaks it is corrupt).
    std::vector<const SafetensorsEntry*> by_offset;
    for (const auto& e : entries_) {
      if (e.end > e.begin) by_offset.push_back(&e);
    }
    std::sort(
        by_offset.begin(), by_offset.end(),
        [](const SafetensorsEntry* a, const SafetensorsEntry* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
      CADRE_CHECK(by_offset[i]->begin >= by_offset[i - 1]->end, "safetensors file '", path,
                  "': tensors '", by_offset[i - 1]->name, "' and '", by_offset[i]->name,
                  "' overlap");
    }
  } catch (...) {
    if (map_ != nullptr) ::munmap(map_, map_bytes_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsReader::~SafetensorsReader() {
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
}

const SafetensorsEntry* SafetensorsReader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

torch::Tensor SafetensorsReader::read(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  CADRE_CHECK(e != nullptr, "safetensors file '", path_, "' has no tensor '", name, "'");
  const DtypeInfo* info = dtype_by_name(e->dtype);
  auto out = torch::empty(e->shape, torch::TensorOptions().dtype(info->type));
  if (e->end > e->begin) std::memcpy(out.data_ptr(), data_ + e->begin, e->end - e->begin);
  return out;
}

}  // namespace cadre::runtime
