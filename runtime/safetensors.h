// The safetensors file format (Hugging Face's weight files): an 8-byte little-endian header
// length, a JSON header naming each tensor's dtype, shape and byte range, then the raw
// little-endian tensor bytes. Writing is atomic; reading memory-maps the file and validates the
// header before any tensor is touched (docs/weights.md).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace cadre::runtime {

// One tensor of a safetensors header. begin/end are byte offsets into the data that follows the
// header (end exclusive).
struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // "F32", "BF16", "F16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// The format's dtype name of a torch dtype; throws for dtypes the format has no name for.
std::string safetensors_dtype_name(torch::ScalarType dtype);

// The file bytes of `tensors` (written in their own dtypes, in the order given, each copied to
// the CPU and made contiguous) with optional string metadata. The header is padded with spaces
// to a multiple of 8 bytes so that every tensor starts aligned.
std::string safetensors_bytes(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes safetensors_bytes(...) to `path` atomically (temporary file, fsync, rename).
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// A memory-mapped safetensors file. The constructor throws cadre::Error naming the file and the
// problem for: a missing or unreadable file, a file shorter than its header, a header that is not
// a JSON object, an entry without dtype/shape/data_offsets, an unknown dtype, a byte range whose
// size does not match dtype x shape, a range outside the data or overlapping another.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const { return path_; }
  // In header order.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  // nullptr when the file has no tensor of that name.
  const SafetensorsEntry* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // A CPU copy of tensor `name` in the file's dtype; throws when the file has no such tensor.
  torch::Tensor read(const std::string& name) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const unsigned char* data_ = nullptr;  // first byte after the header
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace cadre::runtime
