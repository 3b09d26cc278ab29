// Loading the run configuration: embedded defaults, a text-format file, then `--set` overrides,
// then presets and validation. Every bad input throws cadre::Error naming the field, the value and
// what is accepted.
#pragma once

#include <string>
#include <vector>

#include "scheduler/config.pb.h"

namespace cadre::launch {

// Parses a text-format RunConfig; unknown fields and wrong types are errors.
config::RunConfig parse_config_text(const std::string& text, const std::string& source_name);
config::RunConfig load_config_file(const std::string& path);

// Applies one override "path.to.field=value" (repeated fields take a comma-separated list).
void apply_override(config::RunConfig& config, const std::string& assignment);

// Fills model sizes from model.preset (explicit fields win) and checks every invariant
// (divisibility of GPUs by TP*PP, heads by KV heads, positive sizes, known names).
// world_size > 0 also checks the cluster against the launched world.
void finalize_config(config::RunConfig& config, int world_size = 0);

// Common command-line handling: --config FILE, --set a.b=c (repeatable), the rest left in
// `rest`. Returns the finalized config.
config::RunConfig config_from_args(const std::vector<std::string>& args,
                                   std::vector<std::string>* rest, int world_size = 0);

// As config_from_args, without finalize_config: for commands that adjust the config (e.g. fill
// cluster.num_gpus from their input, or sweep model presets) before finalizing it themselves.
config::RunConfig raw_config_from_args(const std::vector<std::string>& args,
                                       std::vector<std::string>* rest);

// Help text for the options every command accepts (--config, --set), with the model presets;
// commands append it to their own --help.
std::string config_options_help();

// The names model.preset (and simulate.models) accept, in table order ("custom" last).
const std::vector<std::string>& model_preset_names();

// The effective config in text format, for printing and for recording beside results.
// include_defaults writes every field, defaults included, so that the record is complete even
// if defaults change later.
std::string config_to_text(const config::RunConfig& config, bool include_defaults = true);

}  // namespace cadre::launch
