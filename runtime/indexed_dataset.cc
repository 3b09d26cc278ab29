// Megatron indexed dataset reader: validates PREFIX.idx against itself and PREFIX.bin, then
// reads tokens straight from the mapped .bin file.
#include "runtime/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace cadre::runtime {
namespace {

const char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;

struct TokenType {
  int code;
  const char* name;
  size_t width;
  bool is_signed;
};

const TokenType* token_type(int code) {
  static const TokenType kTypes[] = {{1, "uint8", 1, false}, {2, "int8", 1, true},
                                     {3, "int16", 2, true},  {4, "int32", 4, true},
                                     {5, "int64", 8, true},  {8, "uint16", 2, false}};
  for (const auto& t : kTypes) {
    if (t.code == code) return &t;
  }
  return nullptr;
}

uint64_t load_u64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

int64_t load_i64(const unsigned char* p) { return static_cast<int64_t>(load_u64(p)); }

int32_t load_i32(const unsigned char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return static_cast<int32_t>(v);
}

// Maps `path` read-only; *bytes gets its size. An empty file maps to nullptr.
void* map_file(const std::string& path, const char* role, size_t* bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  CADRE_CHECK(fd >= 0, "cannot open the ", role, " '", path, "': ", std::strerror(errno),
              "; accepted: data.path / data.blend prefixes P with P.idx and P.bin beside each "
              "other (Megatron-LM's indexed dataset)");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    CADRE_FAIL("cannot stat '", path, "': ", std::strerror(error));
  }
  *bytes = static_cast<size_t>(st.st_size);
  void* map = nullptr;
  if (*bytes > 0) map = ::mmap(nullptr, *bytes, PROT_READ, MAP_SHARED, fd, 0);
  const int error = errno;
  ::close(fd);
  CADRE_CHECK(map != MAP_FAILED, "cannot memory-map '", path, "': ", std::strerror(error));
  return map;
}

}  // namespace

IndexedDataset::IndexedDataset(const std::string& prefix) : prefix_(prefix) {
  const std::string idx = prefix + ".idx", bin = prefix + ".bin";
  idx_map_ = map_file(idx, "index file", &idx_bytes_);
  try {
    bin_map_ = map_file(bin, "data file", &bin_bytes_);
    const auto* p = static_cast<const unsigned char*>(idx_map_);
    CADRE_CHECK(idx_bytes_ >= kHeaderBytes, "index file '", idx, "' is truncated: ", idx_bytes_,
                " bytes, shorter than the ", kHeaderBytes, "-byte header");
    CADRE_CHECK(std::memcmp(p, kMagic, sizeof kMagic) == 0, "index file '", idx,
                "' does not start with MMIDIDX; accepted: a Megatron-LM indexed dataset index "
                "(the mmap format)");
    const uint64_t version = load_u64(p + 9);
    CADRE_CHECK(version == 1, "index file '", idx, "' has version ", version, "; accepted: 1");
    dtype_code_ = p[17];
    const TokenType* type = token_type(dtype_code_);
    CADRE_CHECK(type != nullptr, "index file '", idx, "' has dtype code ", dtype_code_,
                dtype_code_ == 6 || dtype_code_ == 7 ? " (floating point)" : "",
                "; accepted: integer token ids: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, "
                "8 uint16");
    width_ = type->width;
    const uint64_t sequences = load_u64(p + 18), doc_entries = load_u64(p + 26);
    // Bound the counts before multiplying them (a corrupt count must not overflow).
    const uint64_t room = idx_bytes_ - kHeaderBytes;
    CADRE_CHECK(sequences <= room / 12 && doc_entries <= room / 8 &&
                    sequences * 12 + doc_entries * 8 <= room,
                "index file '", idx, "' is truncated: ", sequences, " sequences and ", doc_entries,
                " document-index entries need ", kHeaderBytes, " + ", sequences, " x 12 + ",
                doc_entries, " x 8 bytes but it has ", idx_bytes_);
    sequence_count_ = static_cast<int64_t>(sequences);
    lengths_ = p + kHeaderBytes;
    pointers_ = lengths_ + 4 * sequences;
    doc_index_ = pointers_ + 8 * sequences;
    CADRE_CHECK(doc_entries >= 1 && load_i64(doc_index_) == 0, "index file '", idx,
                "': the document index must start with 0; it has ", doc_entries, " entries",
                doc_entries ? str_cat(", the first ", load_i64(doc_index_)) : std::string());
    CADRE_CHECK(load_i64(doc_index_ + 8 * (doc_entries - 1)) == sequence_count_, "index file '",
                idx, "': the document index ends at sequence ",
                load_i64(doc_index_ + 8 * (doc_entries - 1)), " but there are ", sequence_count_,
                " sequences; accepted: a document index ending with the sequence count");
    for (uint64_t s = 0; s < sequences; ++s) {
      const int32_t n = load_i32(lengths_ + 4 * s);
      const int64_t at = load_i64(pointers_ + 8 * s);
      CADRE_CHECK(n >= 0 && at >= 0 &&
                      static_cast<uint64_t>(at) + static_cast<uint64_t>(n) * width_ <= bin_bytes_,
                  "sequence ", s, " of '", prefix, "' (", n, " tokens at byte ", at,
                  ") reaches past the end of '", bin, "' (", bin_bytes_,
                  " bytes); is the data file truncated or from another dataset?");
      total_tokens_ += n;
    }
    document_count_ = static_cast<int64_t>(doc_entries) - 1;
    bool one_per_document = document_count_ == sequence_count_;
    for (uint64_t d = 0; d + 1 < doc_entries; ++d) {
      const int64_t first = load_i64(doc_index_ + 8 * d), end = load_i64(doc_index_ + 8 * (d + 1));
      CADRE_CHECK(first <= end, "index file '", idx, "': document ", d, " runs from sequence ",
                  first, " back to ", end, "; accepted: a non-decreasing document index");
      one_per_document = one_per_document && end == first + 1;
    }
    if (!one_per_document) {
      document_tokens_.resize(document_count_);
      for (int64_t d = 0; d < document_count_; ++d) {
        int64_t tokens = 0;
        const int64_t end = load_i64(doc_index_ + 8 * (d + 1));
        for (int64_t s = load_i64(doc_index_ + 8 * d); s < end; ++s) {
          tokens += load_i32(lengths_ + 4 * s);
        }
        document_tokens_[d] = tokens;
      }
    }
  } catch (...) {
    if (bin_map_ != nullptr) ::munmap(bin_map_, bin_bytes_);
    if (idx_map_ != nullptr) ::munmap(idx_map_, idx_bytes_);
    throw;
  }
}

IndexedDataset::~IndexedDataset() {
  if (bin_map_ != nullptr) ::munmap(bin_map_, bin_bytes_);
  if (idx_map_ != nullptr) ::munmap(idx_map_, idx_bytes_);
}

int64_t IndexedDataset::document_tokens(int64_t document) const {
  CADRE_CHECK(document >= 0 && document < document_count_, "document ", document, " of '", prefix_,
              "' is out of range (", document_count_, " documents)");
  if (document_tokens_.empty()) return load_i32(lengths_ + 4 * document);
  return document_tokens_[document];
}

const char* IndexedDataset::dtype_name() const { return token_type(dtype_code_)->name; }

int64_t IndexedDataset::token_at(const unsigned char* p) const {
  switch (dtype_code_) {
    case 1:
      return p[0];
    case 2:
      return static_cast<int8_t>(p[0]);
    case 3:
      return static_cast<int16_t>(static_cast<uint16_t>(p[0] | (p[1] << 8)));
    case 8:
      return static_cast<uint16_t>(p[0] | (p[1] << 8));
    case 4:
      return load_i32(p);
    default:
      return load_i64(p);
  }
}

void IndexedDataset::read(int64_t document, int64_t offset, int64_t count, int64_t* out) const {
  CADRE_CHECK(document >= 0 && document < document_count() && offset >= 0 && count >= 0 &&
                  offset + count <= document_tokens(document),
              "tokens [", offset, ", ", offset + count, ") of document ", document, " of '",
              prefix_, "' are out of range (", document_count(), " documents, this one ",
              document < 0 || document >= document_count() ? 0 : document_tokens(document),
              " tokens)");
  const auto* bin = static_cast<const unsigned char*>(bin_map_);
  int64_t s = load_i64(doc_index_ + 8 * document);
  while (count > 0) {
    const int64_t n = load_i32(lengths_ + 4 * s);
    if (offset >= n) {
      offset -= n;
      ++s;
      continue;
    }
    const unsigned char* p = bin + load_i64(pointers_ + 8 * s) + offset * width_;
    const int64_t take = std::min(count, n - offset);
    for (int64_t i = 0; i < take; ++i) out[i] = token_at(p + i * width_);
    out += take;
    count -= take;
    offset = 0;
    ++s;
  }
}

}  // namespace cadre::runtime
