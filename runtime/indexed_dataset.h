// Megatron-LM's indexed dataset (the "mmap" format of megatron/core/datasets/indexed_dataset.py):
// PREFIX.bin holds the token ids of every sequence back to back; PREFIX.idx says where each
// sequence starts and how long it is, and which runs of sequences form a document. Both files
// are memory-mapped, so a corpus of any size opens in the time it takes to validate the index.
//
// PREFIX.idx, little-endian (docs/data.md):
//   "MMIDIDX\0\0" (9 bytes) | u64 version (1) | u8 dtype code | u64 sequence count S |
//   u64 document-index count D | i32 sequence lengths[S] (tokens) | i64 sequence byte offsets
//   into .bin [S] | i64 document index [D] (0, then the first sequence after each document,
//   ending with S) | optionally i8 modes [S] (multimodal; ignored)
// dtype codes: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16 (6 float64 and 7 float32
// are not token ids and are refused).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cadre::runtime {

class IndexedDataset {
 public:
  // Opens PREFIX.idx and PREFIX.bin. Throws cadre::Error naming the file and what is wrong: a
  // missing file, a wrong magic or version, an unknown or floating-point dtype code, an index
  // shorter than its counts need, a document index that is not 0 .. S non-decreasing, or a
  // sequence that reaches past the end of the .bin file.
  explicit IndexedDataset(const std::string& prefix);
  ~IndexedDataset();
  IndexedDataset(const IndexedDataset&) = delete;
  IndexedDataset& operator=(const IndexedDataset&) = delete;

  const std::string& prefix() const { return prefix_; }
  // Documents as the index defines them (each the concatenation of its sequences), empty ones
  // included.
  int64_t document_count() const { return document_count_; }
  int64_t sequence_count() const { return sequence_count_; }
  int64_t document_tokens(int64_t document) const;
  int64_t total_tokens() const { return total_tokens_; }
  // "uint16", "int32", ...
  const char* dtype_name() const;
  // Tokens [offset, offset + count) of `document`, as int64, into out[0 .. count).
  void read(int64_t document, int64_t offset, int64_t count, int64_t* out) const;

 private:
  int64_t token_at(const unsigned char* p) const;

  std::string prefix_;
  void* idx_map_ = nullptr;
  size_t idx_bytes_ = 0;
  void* bin_map_ = nullptr;
  size_t bin_bytes_ = 0;
  int dtype_code_ = 0;
  size_t width_ = 0;
  int64_t sequence_count_ = 0;
  const unsigned char* lengths_ = nullptr;    // i32 [S], unaligned
  const unsigned char* pointers_ = nullptr;   // i64 [S], unaligned
  const unsigned char* doc_index_ = nullptr;  // i64 [D], unaligned
  int64_t document_count_ = 0;
  // Tokens per document, kept only when some document has several sequences; with one sequence
  // per document (ordinary preprocessing) the lengths are read from the mapped index instead, so
  // a corpus of any size costs no memory beyond its mapping.
  std::vector<int64_t> document_tokens_;
  int64_t total_tokens_ = 0;
};

}  // namespace cadre::runtime
