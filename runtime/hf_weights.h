// Hugging Face model directories for LlamaForCausalLM (grouped-query attention) and
// DeepseekV3ForCausalLM (multi-head latent attention): config.json plus model.safetensors (or
// shards named by model.safetensors.index.json). Exports Cadre's weights in that layout and
// loads such a directory into a LlamaModel after checking that its architecture matches the
// configured model. The parameter-name mapping and the rotary layout are in docs/weights.md.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runtime/hf_config.h"
#include "runtime/model.h"
#include "scheduler/config.pb.h"

namespace cadre::runtime {

// Cadre's name of every parameter of a model with these sizes, in LlamaModel's order, with its
// shape (the same list LlamaModel::parameters() holds; the untied LM head only when untied;
// latent attention's parameters when model.kv_latent_dim > 0).
struct ParameterShape {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<ParameterShape> llama_parameter_shapes(const config::ModelConfig& model);

// The Hugging Face name of a Cadre parameter (LlamaForCausalLM's, and DeepSeek's for latent
// attention): "embedding" -> "model.embed_tokens.weight", "layers.3.wq" ->
// "model.layers.3.self_attn.q_proj.weight", "layers.3.wkv_a" ->
// "model.layers.3.self_attn.kv_a_proj_with_mqa.weight", ... Throws for a name that is not a
// parameter of Cadre's model.
std::string hf_parameter_name(const std::string& cadre_name);

struct HfExportOptions {
  std::string dtype = "fp32";  // fp32 or bf16: the dtype of the written tensors
  // A shard holds at most this many bytes of tensors (a single tensor larger than it gets a
  // shard of its own); one shard is written as model.safetensors without an index.
  int64_t max_shard_bytes = 5'000'000'000;
  int64_t max_position_embeddings = 131072;
};

// Writes DIR/config.json and the weights (`tensors`: Cadre names -> fp32 tensors, every
// parameter of `model` with its shape) as model.safetensors, or as
// model-0000K-of-0000N.safetensors with model.safetensors.index.json when they exceed
// max_shard_bytes. Every file is written atomically; weight files of an earlier export in DIR
// that this one did not write are removed. Returns the paths written. A latent-attention model
// is written as DeepseekV3ForCausalLM with its rotary rows in interleaved pairs.
std::vector<std::string> export_hf(
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    const config::ModelConfig& model, const std::string& dir, const HfExportOptions& options);

// Reads the weights of DIR (after check_hf_config_matches) as Cadre names -> fp32 CPU tensors,
// in llama_parameter_shapes order, DeepSeek's interleaved rotary rows returned to Cadre's
// rotate-half order. F32, BF16 and F16 tensors are accepted. Throws cadre::Error
// naming the file and tensor for a missing tensor, a shape that differs from the model's, an
// unsupported dtype, or a tensor the model has no place for.
std::vector<std::pair<std::string, torch::Tensor>> read_hf_weights(
    const std::string& dir, const config::ModelConfig& model);

// read_hf_weights into the model's parameters (copied, on the model's device).
void load_hf_weights(LlamaModel& model, const std::string& dir);

}  // namespace cadre::runtime
