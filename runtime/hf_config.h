// Hugging Face config.json of LlamaForCausalLM (grouped-query attention) and of
// DeepseekV3ForCausalLM (multi-head latent attention, every layer dense): written for exports,
// read into Cadre's model sizes and compared with the configured model (training.init_from,
// model.preset from_init). No LibTorch: the config loader uses it. Weights are in hf_weights.h.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "scheduler/config.pb.h"

namespace cadre::runtime {

// config.json for `model` (every size set): LlamaForCausalLM, or DeepseekV3ForCausalLM when
// model.kv_latent_dim > 0 (first_k_dense_replace = num_hidden_layers, so no layer has experts;
// rope_interleave true, the rotary rows exported in interleaved pairs: docs/weights.md).
// torch_dtype "float32" or "bfloat16"; max_position_embeddings is recorded for tools that read
// it (Cadre's rotary embeddings have no limit). Throws for a TPLA model (no Hugging Face
// counterpart).
std::string hf_config_json(const config::ModelConfig& model, const std::string& torch_dtype,
                           int64_t max_position_embeddings);

// What DIR/config.json describes: the model sizes (every size field set, preset "custom";
// kv_latent_dim > 0 for DeepSeek), the Hugging Face model_type and architecture name, and
// whether the rotary rows of the query and latent projections are in interleaved pairs
// (DeepSeek-V3 with rope_interleave true, its default, and DeepSeek-V2), which
// read_hf_weights converts to Cadre's rotate-half order.
struct HfArchitecture {
  config::ModelConfig model;
  std::string model_type;    // "llama", "deepseek_v3", "deepseek_v2"
  std::string architecture;  // "LlamaForCausalLM", "DeepseekV3ForCausalLM", ...
  bool rotary_interleaved = false;
};

// Reads DIR/config.json: model_type "llama", "deepseek_v3" or "deepseek_v2". Throws
// cadre::Error naming the file and key for a missing file, bad JSON, another architecture, or a
// feature Cadre's model does not implement (scaled rotary embeddings other than Llama 3's,
// biases, activations other than silu, DeepSeek's mixture of experts).
HfArchitecture read_hf_architecture(const std::string& dir);

// read_hf_architecture(dir).model.
config::ModelConfig read_hf_config(const std::string& dir);

// Throws cadre::Error naming the first field where `model` (the configured model) and
// DIR/config.json differ: first the attention kind (grouped-query or latent), then in the
// order vocabulary, hidden size, layers, heads, KV heads, head dim (for DeepSeek: kv_lora_rank,
// qk_nope_head_dim, qk_rope_head_dim, q_lora_rank, v_head_dim), FFN size, rope theta, norm eps,
// rotary scaling, tied embeddings. A TPLA model is refused (the directory holds MLA weights).
void check_hf_config_matches(const config::ModelConfig& model, const std::string& dir);

// Fills every size field of `model` not set explicitly from DIR/config.json (model.preset
// "from_init"); explicit fields are left for check_hf_config_matches to compare.
void fill_model_from_hf(config::ModelConfig* model, const std::string& dir);

// DIR/NAME (a path join that keeps an existing trailing slash).
std::string hf_join_path(const std::string& dir, const std::string& name);

// The JSON in `path` (`role` names the file in errors: cannot open, not valid JSON).
nlohmann::json read_hf_json(const std::string& path, const std::string& role);

}  // namespace cadre::runtime
