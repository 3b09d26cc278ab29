// Hugging Face config.json of LlamaForCausalLM: written for exports, read into Cadre's model
// sizes and compared with the configured model (training.init_from, model.preset from_init).
// No LibTorch: the config loader uses it. Weights are in hf_weights.h.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "scheduler/config.pb.h"

namespace cadre::runtime {

// config.json of LlamaForCausalLM for `model` (every size set). torch_dtype "float32" or
// "bfloat16"; max_position_embeddings is recorded for tools that read it (Cadre's rotary
// embeddings have no limit).
std::string hf_config_json(const config::ModelConfig& model, const std::string& torch_dtype,
                           int64_t max_position_embeddings);

// The model sizes in DIR/config.json (LlamaForCausalLM; model_type "llama"), every size field
// set, preset "custom". Throws cadre::Error naming the file and key for a missing file, bad JSON,
// another architecture, or a feature Cadre's model does not implement (rope_scaling, biases,
// activations other than silu).
config::ModelConfig read_hf_config(const std::string& dir);

// Throws cadre::Error naming the first field where `model` (the configured model) and
// DIR/config.json differ, in the order vocabulary, hidden size, layers, heads, KV heads, head
// dim, FFN size, rope theta, norm eps, tied embeddings.
void check_hf_config_matches(const config::ModelConfig& model, const std::string& dir);

// Fills every size field of `model` not set explicitly from DIR/config.json (model.preset
// "from_init"); explicit fields are left for check_hf_config_matches to compare.
void fill_model_from_hf(config::ModelConfig* model, const std::string& dir);

// DIR/NAME (a path join that keeps an existing trailing slash).
std::string hf_join_path(const std::string& dir, const std::string& name);

// The JSON in `path` (`role` names the file in errors: cannot open, not valid JSON).
nlohmann::json read_hf_json(const std::string& path, const std::string& role);

}  // namespace cadre::runtime
