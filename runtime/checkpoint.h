// Checkpoints: named fp32/int64 tensors plus named integer counters (step, data position, ...) in
// a versioned binary file, written atomically (temporary file, fsync, rename), keeping the last K.
//
// File layout (little-endian; docs/training.md):
//   "CADRECKP" (8 bytes) | u32 version (1) | u64 counter count | per counter: name, i64 value |
//   u64 tensor count | per tensor: name, u8 dtype (0 f32, 1 f64, 2 i64), u32 ndim, i64 dims[ndim],
//   raw bytes | u64 FNV-1a hash of every byte before it
// where a name is u32 length + bytes.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace cadre::runtime {

constexpr uint32_t kCheckpointVersion = 1;

struct CheckpointState {
  std::map<std::string, int64_t> counters;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  // in file order
};

// Writes `state` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
// directory. A crash leaves either the old file or the complete new one.
void write_checkpoint(const std::string& path, const CheckpointState& state);

// Reads a checkpoint; throws cadre::Error for a missing file, a wrong magic or version, a
// truncated or corrupt file (hash mismatch).
CheckpointState read_checkpoint(const std::string& path);

// dir/step_00000012.ckpt
std::string checkpoint_path(const std::string& dir, int64_t step);

// Checkpoint files in `dir` (named as checkpoint_path does), oldest step first.
std::vector<std::string> list_checkpoints(const std::string& dir);

// Creates `dir`, writes the checkpoint of `step`, then deletes all but the newest `keep_last`
// (>= 1). Returns the path written.
std::string save_checkpoint(const std::string& dir, int64_t step, const CheckpointState& state,
                            int keep_last);

}  // namespace cadre::runtime
