// Hugging Face LlamaForCausalLM directories: config.json through nlohmann::json, weights through
// runtime/safetensors.
//
// Rotary layout: Cadre rotates the pairs (i, i + head_dim/2) of each head (rotate-half), which
// is the layout of Hugging Face's Llama q_proj/k_proj rows (its conversion script permutes
// Meta's interleaved-pair checkpoints into exactly this order). So the rows of wq and wk map
// one to one and no permutation is applied in either direction; tests/runtime/test_hf_weights.cc
// checks the rotation against an independent rotate-half reference, and
// scripts/hf_parity_check.sh checks the loss against transformers on the GPU machine.
#include "runtime/hf_weights.h"
#include "runtime/parameter_shards.h"

#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/posix_fs.h"
#include "runtime/safetensors.h"

namespace cadre::runtime {
namespace {

using Json = nlohmann::json;

const char* const kConfigFile = "config.json";
const char* const kSingleFile = "model.safetensors";
const char* const kIndexFile = "model.safetensors.index.json";

std::string join_path(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

Json read_json_file(const std::string& path, const std::string& role) {
  std::ifstream in(path, std::ios::binary);
  CADRE_CHECK(in.good(), "cannot open ", role, " '", path,
              "'; accepted: a Hugging Face model directory with config.json and "
              "model.safetensors (or model.safetensors.index.json and its shards)");
  std::stringstream text;
  text << in.rdbuf();
  try {
    return Json::parse(text.str());
  } catch (const Json::exception& e) {
    CADRE_FAIL(role, " '", path, "' is not valid JSON: ", e.what());
  }
}

// Per-layer parameter suffixes: Cadre name -> Hugging Face name inside model.layers.N.
const std::vector<std::pair<std::string, std::string>>& layer_names() {
  static const std::vector<std::pair<std::string, std::string>> kNames = {
      {"attention_norm", "input_layernorm.weight"},
      {"wq", "self_attn.q_proj.weight"},
      {"wk", "self_attn.k_proj.weight"},
      {"wv", "self_attn.v_proj.weight"},
      {"wo", "self_attn.o_proj.weight"},
      {"mlp_norm", "post_attention_layernorm.weight"},
      {"w_gate", "mlp.gate_proj.weight"},
      {"w_up", "mlp.up_proj.weight"},
      {"w_down", "mlp.down_proj.weight"},
  };
  return kNames;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// Which model field decides a parameter's shape (for error messages).
std::string shape_fields(const std::string& cadre_name) {
  if (cadre_name == "embedding" || cadre_name == "lm_head") return "vocab_size, hidden_size";
  if (cadre_name.find("norm") != std::string::npos) return "hidden_size";
  if (cadre_name.find(".wq") != std::string::npos || cadre_name.find(".wo") != std::string::npos) {
    return "num_heads, head_dim, hidden_size";
  }
  if (cadre_name.find(".wk") != std::string::npos || cadre_name.find(".wv") != std::string::npos) {
    return "num_kv_heads, head_dim, hidden_size";
  }
  return "ffn_hidden_size, hidden_size";
}

int64_t get_int(const Json& j, const std::string& key, const std::string& path) {
  CADRE_CHECK(j.contains(key), "'", path, "' lacks \"", key,
              "\"; accepted: a LlamaForCausalLM config.json");
  CADRE_CHECK(j[key].is_number_integer(), "'", path, "': \"", key, "\" is ", j[key].dump(),
              "; accepted: an integer");
  return j[key].get<int64_t>();
}

double get_number(const Json& j, const std::string& key, const std::string& path, double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  CADRE_CHECK(j[key].is_number(), "'", path, "': \"", key, "\" is ", j[key].dump(),
              "; accepted: a number");
  return j[key].get<double>();
}

bool close_enough(double a, double b, double relative) {
  return std::fabs(a - b) <= relative * std::max(std::fabs(a), std::fabs(b));
}

// A rope_scaling / rope_parameters object that only restates the default rotary embedding.
bool default_rope(const Json& rope) {
  if (rope.is_null()) return true;
  if (!rope.is_object()) return false;
  for (auto it = rope.begin(); it != rope.end(); ++it) {
    if (it.key() == "rope_theta") continue;
    if ((it.key() == "rope_type" || it.key() == "type") && it->is_string() &&
        it->get<std::string>() == "default") {
      continue;
    }
    return false;
  }
  return true;
}

}  // namespace

std::vector<ParameterShape> llama_parameter_shapes(const config::ModelConfig& m) {
  const int64_t hidden = m.hidden_size(), q = int64_t{m.num_heads()} * m.head_dim();
  const int64_t kv = int64_t{m.num_kv_heads()} * m.head_dim(), ffn = m.ffn_hidden_size();
  std::vector<ParameterShape> out;
  out.push_back({"embedding", {m.vocab_size(), hidden}});
  for (int32_t l = 0; l < m.num_layers(); ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    out.push_back({p + "attention_norm", {hidden}});
    out.push_back({p + "wq", {q, hidden}});
    out.push_back({p + "wk", {kv, hidden}});
    out.push_back({p + "wv", {kv, hidden}});
    out.push_back({p + "wo", {hidden, q}});
    out.push_back({p + "mlp_norm", {hidden}});
    out.push_back({p + "w_gate", {ffn, hidden}});
    out.push_back({p + "w_up", {ffn, hidden}});
    out.push_back({p + "w_down", {hidden, ffn}});
  }
  out.push_back({"final_norm", {hidden}});
  if (!m.tie_embeddings()) out.push_back({"lm_head", {m.vocab_size(), hidden}});
  return out;
}

std::string hf_parameter_name(const std::string& name) {
  if (name == "embedding") return "model.embed_tokens.weight";
  if (name == "final_norm") return "model.norm.weight";
  if (name == "lm_head") return "lm_head.weight";
  const std::string prefix = "layers.";
  if (name.compare(0, prefix.size(), prefix) == 0) {
    const size_t dot = name.find('.', prefix.size());
    const std::string layer = name.substr(prefix.size(), dot - prefix.size());
    const bool numeric =
        !layer.empty() && layer.find_first_not_of("0123456789") == std::string::npos;
    if (numeric && dot != std::string::npos) {
      const std::string suffix = name.substr(dot + 1);
      for (const auto& [cadre, hf] : layer_names()) {
        if (suffix == cadre) return "model.layers." + layer + "." + hf;
      }
    }
  }
  CADRE_FAIL("'", name,
             "' is not a parameter of Cadre's Llama model; accepted: embedding, "
             "layers.N.{attention_norm,wq,wk,wv,wo,mlp_norm,w_gate,w_up,w_down}, final_norm, "
             "lm_head");
}

std::string hf_config_json(const config::ModelConfig& m, const std::string& torch_dtype,
                           int64_t max_position_embeddings) {
  CADRE_CHECK(torch_dtype == "float32" || torch_dtype == "bfloat16", "torch_dtype '", torch_dtype,
              "'; accepted: float32, bfloat16");
  CADRE_CHECK(m.kv_latent_dim() == 0,
              "only grouped-query attention models export as LlamaForCausalLM; model.kv_latent_dim"
              " is ",
              m.kv_latent_dim(), "; accepted: 0");
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_size"] = m.hidden_size();
  j["intermediate_size"] = m.ffn_hidden_size();
  j["num_hidden_layers"] = m.num_layers();
  j["num_attention_heads"] = m.num_heads();
  j["num_key_value_heads"] = m.num_kv_heads();
  j["head_dim"] = m.head_dim();
  j["vocab_size"] = m.vocab_size();
  j["rms_norm_eps"] = m.norm_eps();
  j["rope_theta"] = m.rope_theta();
  if (m.rope_scaling() == "llama3") {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", m.rope_scaling_factor()},
                         {"low_freq_factor", m.rope_low_freq_factor()},
                         {"high_freq_factor", m.rope_high_freq_factor()},
                         {"original_max_position_embeddings", m.rope_original_max_positions()}};
  } else {
    CADRE_CHECK(m.rope_scaling() == "none", "model.rope_scaling=\"", m.rope_scaling(),
                "\"; accepted: none, llama3");
    j["rope_scaling"] = nullptr;
  }
  j["tie_word_embeddings"] = m.tie_embeddings();
  j["max_position_embeddings"] = max_position_embeddings;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["initializer_range"] = 0.02;
  j["pretraining_tp"] = 1;
  j["use_cache"] = true;
  j["torch_dtype"] = torch_dtype;
  return j.dump(2) + "\n";
}

config::ModelConfig read_hf_config(const std::string& dir) {
  const std::string path = join_path(dir, kConfigFile);
  const Json j = read_json_file(path, "Hugging Face config");
  CADRE_CHECK(j.is_object(), "'", path, "' is not a JSON object");
  const std::string model_type = j.value("model_type", std::string());
  CADRE_CHECK(model_type == "llama", "'", path, "' has model_type \"", model_type,
              "\"; accepted: \"llama\" (LlamaForCausalLM: the architecture Cadre trains)");
  if (j.contains("hidden_act")) {
    CADRE_CHECK(j["hidden_act"] == "silu", "'", path, "' has hidden_act ", j["hidden_act"].dump(),
                "; accepted: \"silu\" (Cadre's MLP is SwiGLU)");
  }
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    CADRE_CHECK(!j.contains(key) || j[key] == false, "'", path, "' has ", key, " ", j[key].dump(),
                "; accepted: false (Cadre's projections have no bias)");
  }
  const Json none;
  // Older files say rope_scaling, newer ones rope_parameters (which also holds rope_theta).
  const Json& parameters = j.contains("rope_parameters") ? j["rope_parameters"] : none;
  const Json& scaling = !default_rope(parameters)    ? parameters
                        : j.contains("rope_scaling") ? j["rope_scaling"]
                                                     : none;
  config::ModelConfig m;
  m.set_rope_scaling("none");
  if (!default_rope(scaling)) {
    const std::string key = &scaling == &parameters ? "rope_parameters" : "rope_scaling";
    const std::string type = scaling.is_object()
                                 ? scaling.value("rope_type", scaling.value("type", std::string()))
                                 : std::string();
    CADRE_CHECK(type == "llama3", "'", path, "' has ", key, " ", scaling.dump(),
                "; accepted: null, the default rotary embedding, or rope_type \"llama3\" (other "
                "scaled rotary embeddings, e.g. linear, dynamic, yarn, are not implemented)");
    m.set_rope_scaling("llama3");
    m.set_rope_scaling_factor(get_number(scaling, "factor", path, 8));
    m.set_rope_low_freq_factor(get_number(scaling, "low_freq_factor", path, 1));
    m.set_rope_high_freq_factor(get_number(scaling, "high_freq_factor", path, 4));
    m.set_rope_original_max_positions(
        static_cast<int64_t>(get_number(scaling, "original_max_position_embeddings", path, 8192)));
  }
  m.set_preset("custom");
  m.set_hidden_size(static_cast<int32_t>(get_int(j, "hidden_size", path)));
  m.set_ffn_hidden_size(static_cast<int32_t>(get_int(j, "intermediate_size", path)));
  m.set_num_layers(static_cast<int32_t>(get_int(j, "num_hidden_layers", path)));
  m.set_num_heads(static_cast<int32_t>(get_int(j, "num_attention_heads", path)));
  m.set_vocab_size(static_cast<int32_t>(get_int(j, "vocab_size", path)));
  m.set_num_kv_heads(j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                         ? static_cast<int32_t>(get_int(j, "num_key_value_heads", path))
                         : m.num_heads());
  CADRE_CHECK(m.num_heads() > 0, "'", path, "': num_attention_heads is ", m.num_heads(),
              "; accepted: a positive integer");
  m.set_head_dim(j.contains("head_dim") && !j["head_dim"].is_null()
                     ? static_cast<int32_t>(get_int(j, "head_dim", path))
                     : m.hidden_size() / m.num_heads());
  // Defaults of transformers' LlamaConfig for keys a file may leave out.
  double theta = get_number(j, "rope_theta", path, 10000.0);
  if (parameters.is_object()) theta = get_number(parameters, "rope_theta", path, theta);
  m.set_rope_theta(theta);
  m.set_norm_eps(get_number(j, "rms_norm_eps", path, 1e-6));
  if (j.contains("tie_word_embeddings")) {
    CADRE_CHECK(j["tie_word_embeddings"].is_boolean(), "'", path, "': tie_word_embeddings is ",
                j["tie_word_embeddings"].dump(), "; accepted: true or false");
  }
  m.set_tie_embeddings(j.value("tie_word_embeddings", false));
  m.set_kv_latent_dim(0);
  m.set_rope_head_dim(0);
  return m;
}

void check_hf_config_matches(const config::ModelConfig& m, const std::string& dir) {
  const config::ModelConfig hf = read_hf_config(dir);
  const std::string where =
      str_cat("training.init_from=\"", dir, "\": ", join_path(dir, kConfigFile), " has ");
  const char* const fix =
      "; accepted: a model section with the same value (model.preset: \"from_init\" takes every "
      "size from config.json)";
  struct IntField {
    const char* hf_key;
    const char* field;
    int64_t hf_value, value;
  };
  const IntField ints[] = {
      {"vocab_size", "vocab_size", hf.vocab_size(), m.vocab_size()},
      {"hidden_size", "hidden_size", hf.hidden_size(), m.hidden_size()},
      {"num_hidden_layers", "num_layers", hf.num_layers(), m.num_layers()},
      {"num_attention_heads", "num_heads", hf.num_heads(), m.num_heads()},
      {"num_key_value_heads", "num_kv_heads", hf.num_kv_heads(), m.num_kv_heads()},
      {"head_dim", "head_dim", hf.head_dim(), m.head_dim()},
      {"intermediate_size", "ffn_hidden_size", hf.ffn_hidden_size(), m.ffn_hidden_size()},
  };
  for (const IntField& f : ints) {
    CADRE_CHECK(f.hf_value == f.value, where, f.hf_key, "=", f.hf_value,
                " but the configured model has model.", f.field, "=", f.value, fix);
  }
  CADRE_CHECK(close_enough(hf.rope_theta(), m.rope_theta(), 1e-9), where,
              "rope_theta=", hf.rope_theta(),
              " but the configured model has model.rope_theta=", m.rope_theta(), fix);
  CADRE_CHECK(close_enough(hf.norm_eps(), m.norm_eps(), 1e-6), where,
              "rms_norm_eps=", hf.norm_eps(),
              " but the configured model has model.norm_eps=", m.norm_eps(), fix);
  CADRE_CHECK(hf.rope_scaling() == m.rope_scaling(), where, "rope_scaling ",
              hf.rope_scaling() == "none" ? "null" : hf.rope_scaling(),
              " but the configured model has model.rope_scaling=", m.rope_scaling(), fix);
  if (hf.rope_scaling() == "llama3") {
    const std::pair<const char*, std::pair<double, double>> scaled[] = {
        {"factor", {hf.rope_scaling_factor(), m.rope_scaling_factor()}},
        {"low_freq_factor", {hf.rope_low_freq_factor(), m.rope_low_freq_factor()}},
        {"high_freq_factor", {hf.rope_high_freq_factor(), m.rope_high_freq_factor()}},
        {"original_max_position_embeddings",
         {static_cast<double>(hf.rope_original_max_positions()),
          static_cast<double>(m.rope_original_max_positions())}},
    };
    const char* fields[] = {"rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                            "rope_original_max_positions"};
    for (int i = 0; i < 4; ++i) {
      CADRE_CHECK(close_enough(scaled[i].second.first, scaled[i].second.second, 1e-9), where,
                  "rope_scaling.", scaled[i].first, "=", scaled[i].second.first,
                  " but the configured model has model.", fields[i], "=", scaled[i].second.second,
                  fix);
    }
  }
  CADRE_CHECK(hf.tie_embeddings() == m.tie_embeddings(), where,
              "tie_word_embeddings=", hf.tie_embeddings() ? "true" : "false",
              " but the configured model has model.tie_embeddings=",
              m.tie_embeddings() ? "true" : "false", fix);
  CADRE_CHECK(m.kv_latent_dim() == 0, "training.init_from=\"", dir,
              "\" holds a grouped-query attention model but model.kv_latent_dim=",
              m.kv_latent_dim(), "; accepted: 0");
}

void fill_model_from_hf(config::ModelConfig* model, const std::string& dir) {
  const config::ModelConfig hf = read_hf_config(dir);
  if (!model->has_num_layers()) model->set_num_layers(hf.num_layers());
  if (!model->has_hidden_size()) model->set_hidden_size(hf.hidden_size());
  if (!model->has_num_heads()) model->set_num_heads(hf.num_heads());
  if (!model->has_num_kv_heads()) model->set_num_kv_heads(hf.num_kv_heads());
  if (!model->has_head_dim()) model->set_head_dim(hf.head_dim());
  if (!model->has_ffn_hidden_size()) model->set_ffn_hidden_size(hf.ffn_hidden_size());
  if (!model->has_vocab_size()) model->set_vocab_size(hf.vocab_size());
  if (!model->has_tie_embeddings()) model->set_tie_embeddings(hf.tie_embeddings());
  if (!model->has_rope_theta()) model->set_rope_theta(hf.rope_theta());
  if (!model->has_norm_eps()) model->set_norm_eps(hf.norm_eps());
  if (!model->has_kv_latent_dim()) model->set_kv_latent_dim(0);
  if (!model->has_rope_head_dim()) model->set_rope_head_dim(0);
  if (!model->has_rope_scaling()) model->set_rope_scaling(hf.rope_scaling());
  if (!model->has_rope_scaling_factor()) model->set_rope_scaling_factor(hf.rope_scaling_factor());
  if (!model->has_rope_low_freq_factor())
    model->set_rope_low_freq_factor(hf.rope_low_freq_factor());
  if (!model->has_rope_high_freq_factor()) {
    model->set_rope_high_freq_factor(hf.rope_high_freq_factor());
  }
  if (!model->has_rope_original_max_positions()) {
    model->set_rope_original_max_positions(hf.rope_original_max_positions());
  }
}

std::vector<std::string> export_hf(
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    const config::ModelConfig& model, const std::string& dir, const HfExportOptions& options) {
  CADRE_CHECK(options.dtype == "fp32" || options.dtype == "bf16", "export dtype '", options.dtype,
              "'; accepted: fp32, bf16");
  CADRE_CHECK(options.max_shard_bytes > 0, "the shard size limit is ", options.max_shard_bytes,
              " bytes; accepted: a positive number");
  const std::string config_text = hf_config_json(
      model, options.dtype == "bf16" ? "bfloat16" : "float32", options.max_position_embeddings);
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  const auto shapes = llama_parameter_shapes(model);
  std::set<std::string> expected;
  const torch::ScalarType dtype = options.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat;
  // Shards in parameter order; a new one starts when the next tensor would pass the limit.
  std::vector<std::vector<std::pair<std::string, torch::Tensor>>> shards(1);
  int64_t shard_bytes = 0, total_bytes = 0;
  for (const ParameterShape& p : shapes) {
    expected.insert(p.name);
    auto it = by_name.find(p.name);
    CADRE_CHECK(it != by_name.end(), "the weights lack parameter '", p.name,
                "' of the configured model; accepted: weights of a model with the same sizes "
                "(was the checkpoint written with another model config?)");
    CADRE_CHECK(it->second.sizes().vec() == p.shape, "parameter '", p.name, "' is ",
                shape_text(it->second.sizes().vec()), " but the configured model (model.",
                shape_fields(p.name), ") needs ", shape_text(p.shape),
                "; accepted: the model config the weights were trained with");
    auto t = it->second.detach().to(torch::kCPU).to(dtype).contiguous();
    const int64_t bytes = t.numel() * t.element_size();
    if (!shards.back().empty() && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().emplace_back(hf_parameter_name(p.name), t);
    shard_bytes += bytes;
    total_bytes += bytes;
  }
  for (const auto& [name, t] : tensors) {
    CADRE_CHECK(expected.count(name) == 1, "the weights hold '", name,
                "', which the configured model does not have (model.num_layers=",
                model.num_layers(), ", tie_embeddings=", model.tie_embeddings() ? "true" : "false",
                "); accepted: the model config the weights were trained with");
  }
  posix_fs::make_directories(dir);
  std::vector<std::string> written;
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (shards.size() == 1) {
    written.push_back(join_path(dir, kSingleFile));
    write_safetensors(written.back(), shards[0], metadata);
  } else {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total_bytes}};
    index["weight_map"] = nlohmann::ordered_json::object();
    const size_t n = shards.size();
    for (size_t s = 0; s < n; ++s) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, n);
      written.push_back(join_path(dir, name));
      write_safetensors(written.back(), shards[s], metadata);
      for (const auto& [tensor, value] : shards[s]) index["weight_map"][tensor] = name;
    }
    written.push_back(join_path(dir, kIndexFile));
    write_file_atomically(written.back(), index.dump(2) + "\n");
  }
  written.push_back(join_path(dir, kConfigFile));
  write_file_atomically(written.back(), config_text);
  // Weight files of an earlier export would be read instead of (or beside) these ones.
  const std::set<std::string> kept(written.begin(), written.end());
  for (const std::string& entry : posix_fs::list_directory(dir)) {
    const std::string suffix = ".safetensors";
    const bool weights_file =
        entry.size() > suffix.size() &&
        entry.compare(entry.size() - suffix.size(), suffix.size(), suffix) == 0;
    const bool weights = entry.rfind("model", 0) == 0 && (weights_file || entry == kIndexFile);
    if (weights && kept.count(join_path(dir, entry)) == 0)
      posix_fs::remove_file(join_path(dir, entry));
  }
  return written;
}

std::vector<std::pair<std::string, torch::Tensor>> read_hf_weights(
    const std::string& dir, const config::ModelConfig& model) {
  // Which file holds each tensor: model.safetensors (what transformers reads first), else the
  // index's weight map.
  std::map<std::string, std::string> file_of;  // HF name -> file name in dir
  std::map<std::string, std::unique_ptr<SafetensorsReader>> readers;
  const std::string single = join_path(dir, kSingleFile), index_path = join_path(dir, kIndexFile);
  if (posix_fs::exists(single)) {
    readers[kSingleFile] = std::make_unique<SafetensorsReader>(single);
    for (const auto& e : readers[kSingleFile]->entries()) file_of[e.name] = kSingleFile;
  } else {
    CADRE_CHECK(posix_fs::exists(index_path), "training.init_from=\"", dir, "\" has neither ",
                kSingleFile, " nor ", kIndexFile,
                "; accepted: a Hugging Face model directory with safetensors weights");
    const Json index = read_json_file(index_path, "safetensors index");
    CADRE_CHECK(
        index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(), "'",
        index_path, "' has no \"weight_map\" object");
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      CADRE_CHECK(it->is_string(), "'", index_path, "': weight_map entry '", it.key(),
                  "' is not a file name");
      file_of[it.key()] = it->get<std::string>();
    }
  }
  auto reader_for = [&](const std::string& file) -> const SafetensorsReader& {
    auto& r = readers[file];
    if (!r) r = std::make_unique<SafetensorsReader>(join_path(dir, file));
    return *r;
  };
  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::set<std::string> used;
  for (const ParameterShape& p : llama_parameter_shapes(model)) {
    const std::string hf = hf_parameter_name(p.name);
    auto f = file_of.find(hf);
    CADRE_CHECK(f != file_of.end(), "training.init_from=\"", dir, "\" lacks tensor '", hf,
                "' (Cadre's '", p.name, "'); accepted: a complete LlamaForCausalLM checkpoint");
    const SafetensorsReader& reader = reader_for(f->second);
    const SafetensorsEntry* e = reader.find(hf);
    CADRE_CHECK(e != nullptr, "'", reader.path(), "' lacks tensor '", hf, "' (Cadre's '", p.name,
                "') that ", posix_fs::exists(single) ? kSingleFile : kIndexFile,
                " places there; accepted: a complete LlamaForCausalLM checkpoint");
    CADRE_CHECK(e->dtype == "F32" || e->dtype == "BF16" || e->dtype == "F16", "'", reader.path(),
                "' tensor '", hf, "' has dtype ", e->dtype, "; accepted: F32, BF16, F16");
    CADRE_CHECK(e->shape == p.shape, "'", reader.path(), "' tensor '", hf, "' is ",
                shape_text(e->shape), " but the configured model (model.", shape_fields(p.name),
                ") needs ", shape_text(p.shape));
    out.emplace_back(p.name, reader.read(hf).to(torch::kFloat));
    used.insert(hf);
  }
  for (const auto& [hf, file] : file_of) {
    if (used.count(hf)) continue;
    // Old checkpoints store the rotary frequencies; Cadre computes them from rope_theta.
    if (hf.find("rotary_emb.inv_freq") != std::string::npos) continue;
    if (hf == "lm_head.weight" && model.tie_embeddings()) {
      // A tied model saved with its head written out: it must be the embedding.
      const torch::Tensor head = reader_for(file).read(hf).to(torch::kFloat);
      CADRE_CHECK(head.sizes() == out.front().second.sizes() && head.equal(out.front().second),
                  "training.init_from=\"", dir,
                  "\": tie_word_embeddings is true but "
                  "lm_head.weight differs from model.embed_tokens.weight; accepted: equal "
                  "tensors, or tie_word_embeddings false with model.tie_embeddings=false");
      continue;
    }
    CADRE_FAIL("training.init_from=\"", dir, "\" holds tensor '", hf, "' (in ", file,
               "), which a Llama model with model.num_layers=", model.num_layers(),
               " and tie_embeddings=", model.tie_embeddings() ? "true" : "false",
               " has no place for; accepted: a LlamaForCausalLM checkpoint of the configured "
               "sizes");
  }
  return out;
}

void load_hf_weights(LlamaModel& model, const std::string& dir) {
  check_hf_config_matches(model.config(), dir);
  const auto tensors = read_hf_weights(dir, model.config());
  std::map<std::string, const torch::Tensor*> by_name;
  for (const auto& [name, t] : tensors) by_name[name] = &t;
  torch::NoGradGuard no_grad;
  for (const NamedParameter& p : model.parameters()) {
    auto it = by_name.find(p.name);
    CADRE_CHECK(it != by_name.end(), "training.init_from=\"", dir, "\": no weights for '", p.name,
                "'");
    // Under tensor parallelism this rank's slice of the whole tensor (shape checked there).
    p.value.copy_(slice_shard(p, *it->second));
  }
}

}  // namespace cadre::runtime
