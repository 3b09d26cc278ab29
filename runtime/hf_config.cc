// Hugging Face config.json for LlamaForCausalLM through nlohmann::json: written for exports, read
// and checked against the configured model for training.init_from and model.preset from_init.
// No LibTorch here, so the config loader (and its fuzz target) can use it.
#include "runtime/hf_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace cadre::runtime {
namespace {

using Json = nlohmann::json;

const char* const kConfigFile = "config.json";

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

std::string hf_join_path(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

nlohmann::json read_hf_json(const std::string& path, const std::string& role) {
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
  const std::string path = hf_join_path(dir, kConfigFile);
  const Json j = read_hf_json(path, "Hugging Face config");
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
      str_cat("training.init_from=\"", dir, "\": ", hf_join_path(dir, kConfigFile), " has ");
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

}  // namespace cadre::runtime
