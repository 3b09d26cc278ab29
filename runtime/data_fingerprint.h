// A fingerprint of a run's training data, saved in its checkpoints so that `--resume` refuses to
// continue on data other than the data the checkpoint was trained on (docs/reliability.md).
#pragma once

#include <cstdint>
#include <string>

#include "scheduler/config.pb.h"

namespace cadre::runtime {

// FNV-1a (64-bit) over every data setting (unset fields at their defaults, so spelling a default
// out does not change it; file paths left out) and the bytes of data.token_file and
// data.lengths_file when set: the same for the same data wherever its files lie. Throws
// cadre::Error naming a file it cannot read.
uint64_t data_fingerprint(const config::DataConfig& data);

// "token file 'x' (uint16, eod 0), packing whole, context 256" / "synthetic uniform documents,
// seed 7, ...": what the fingerprint covers, for error messages.
std::string describe_data(const config::DataConfig& data);

}  // namespace cadre::runtime
