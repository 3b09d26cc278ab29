// Hugging Face config.json for LlamaForCausalLM and DeepseekV3ForCausalLM through nlohmann::json:
// written for exports, read and checked against the configured model for training.init_from and
// model.preset from_init. No LibTorch here, so the config loader (and its fuzz target) can use it.
//
// DeepSeek: the keys and their meaning follow transformers' DeepseekV3Config / DeepseekV2Config.
// Cadre's latent-attention model has a dense SwiGLU FFN in every layer, which DeepSeek's decoder
// builds for layers below first_k_dense_replace; so an export sets it to num_hidden_layers and
// an import refuses routed experts in any layer.
#include "runtime/hf_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "common/error.h"

namespace cadre::runtime {
namespace {

using Json = nlohmann::json;

const char* const kConfigFile = "config.json";

int64_t get_int(const Json& j, const std::string& key, const std::string& path) {
  CADRE_CHECK(j.contains(key), "'", path, "' lacks \"", key,
              "\"; accepted: a Hugging Face config.json with that key");
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

// An integer key that may be left out (then `fallback`, transformers' default).
int64_t get_int_or(const Json& j, const std::string& key, const std::string& path,
                   int64_t fallback) {
  if (!j.contains(key)) return fallback;
  return get_int(j, key, path);
}

// config.json of DeepseekV3ForCausalLM for an MLA model. transformers builds a dense MLP for
// layers below first_k_dense_replace and DeepSeek's mixture of experts above, so
// first_k_dense_replace = num_hidden_layers makes every layer the dense SwiGLU FFN Cadre has; the
// expert keys are left out (their defaults are valid and unused). head_dim is left out too:
// DeepseekV3Config derives it from qk_rope_head_dim for its rotary embedding. The rotary rows are
// written in interleaved pairs (rope_interleave true, DeepSeek's own layout; hf_weights.cc).
std::string deepseek_config_json(const config::ModelConfig& m, const std::string& torch_dtype,
                                 int64_t max_position_embeddings) {
  CADRE_CHECK(!m.tpla(),
              "model.tpla=true: a TPLA model (per-slice softmax over the latent) is a different "
              "function from DeepSeek's multi-head latent attention and has no Hugging Face "
              "counterpart; accepted: an MLA model (model.tpla=false)");
  CADRE_CHECK(m.rope_scaling() == "none", "model.rope_scaling=\"", m.rope_scaling(),
              "\" with latent attention; accepted: none (DeepSeek's YaRN is not implemented)");
  CADRE_CHECK(m.num_kv_heads() == m.num_heads(), "model.num_kv_heads=", m.num_kv_heads(),
              " differs from model.num_heads=", m.num_heads(),
              " under latent attention; accepted: equal values");
  nlohmann::ordered_json j;
  j["architectures"] = {"DeepseekV3ForCausalLM"};
  j["model_type"] = "deepseek_v3";
  j["vocab_size"] = m.vocab_size();
  j["hidden_size"] = m.hidden_size();
  j["intermediate_size"] = m.ffn_hidden_size();
  j["num_hidden_layers"] = m.num_layers();
  j["num_attention_heads"] = m.num_heads();
  j["num_key_value_heads"] = m.num_heads();
  j["kv_lora_rank"] = m.kv_latent_dim();
  if (m.q_latent_dim() > 0) {
    j["q_lora_rank"] = m.q_latent_dim();
  } else {
    j["q_lora_rank"] = nullptr;
  }
  j["qk_nope_head_dim"] = m.head_dim();
  j["qk_rope_head_dim"] = m.rope_head_dim();
  j["v_head_dim"] = m.v_head_dim() > 0 ? m.v_head_dim() : m.head_dim();
  j["first_k_dense_replace"] = m.num_layers();
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = m.norm_eps();
  j["rope_theta"] = m.rope_theta();
  j["rope_scaling"] = nullptr;
  j["rope_interleave"] = true;
  j["tie_word_embeddings"] = m.tie_embeddings();
  j["max_position_embeddings"] = max_position_embeddings;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  j["torch_dtype"] = torch_dtype;
  return j.dump(2) + "\n";
}

// The rotary embedding of `j` (rope_parameters of newer files, else rope_scaling): null or the
// default one; anything else is refused for latent attention.
void check_deepseek_rope(const Json& j, const std::string& path) {
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(key)) continue;
    CADRE_CHECK(default_rope(j[key]), "'", path, "' has ", key, " ", j[key].dump(),
                "; accepted: null or the default rotary embedding (Cadre's latent attention "
                "implements neither YaRN nor another scaled rotary embedding, nor the mscale "
                "factor DeepSeek's attention then applies to the softmax)");
  }
}

// DeepseekV3ForCausalLM / DeepseekV2ForCausalLM: sizes, refusals, rotary layout.
HfArchitecture read_deepseek_config(const Json& j, const std::string& path,
                                    const std::string& model_type) {
  const bool v3 = model_type == "deepseek_v3";
  HfArchitecture out;
  out.model_type = model_type;
  out.architecture = v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM";
  if (j.contains("hidden_act")) {
    CADRE_CHECK(j["hidden_act"] == "silu", "'", path, "' has hidden_act ", j["hidden_act"].dump(),
                "; accepted: \"silu\" (Cadre's MLP is SwiGLU)");
  }
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    CADRE_CHECK(!j.contains(key) || j[key] == false, "'", path, "' has ", key, " ", j[key].dump(),
                "; accepted: false (Cadre's projections have no bias)");
  }
  check_deepseek_rope(j, path);
  config::ModelConfig& m = out.model;
  m.set_preset("custom");
  m.set_rope_scaling("none");
  m.set_hidden_size(static_cast<int32_t>(get_int(j, "hidden_size", path)));
  m.set_ffn_hidden_size(static_cast<int32_t>(get_int(j, "intermediate_size", path)));
  m.set_num_layers(static_cast<int32_t>(get_int(j, "num_hidden_layers", path)));
  m.set_num_heads(static_cast<int32_t>(get_int(j, "num_attention_heads", path)));
  m.set_vocab_size(static_cast<int32_t>(get_int(j, "vocab_size", path)));
  CADRE_CHECK(m.num_heads() > 0, "'", path, "': num_attention_heads is ", m.num_heads(),
              "; accepted: a positive integer");
  // Experts: DeepSeek's decoder layer L is a mixture of experts when L >= first_k_dense_replace
  // (defaults 3 for V3, 0 for V2) and routed experts exist (defaults 256 and 64).
  const int64_t first_dense = get_int_or(j, "first_k_dense_replace", path, v3 ? 3 : 0);
  const int64_t experts = j.contains("n_routed_experts") && j["n_routed_experts"].is_null()
                              ? 0
                              : get_int_or(j, "n_routed_experts", path, v3 ? 256 : 64);
  CADRE_CHECK(experts == 0 || first_dense >= m.num_layers(), "'", path,
              "' has n_routed_experts=", experts, " and first_k_dense_replace=", first_dense,
              ", so layers ", first_dense, "..", m.num_layers() - 1,
              " are mixtures of experts: experts are not supported (Cadre's latent-attention "
              "model has a dense SwiGLU FFN of intermediate_size in every layer); accepted: "
              "first_k_dense_replace >= num_hidden_layers=",
              m.num_layers(), " (every layer dense) or n_routed_experts 0");
  m.set_num_kv_heads(j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                         ? static_cast<int32_t>(get_int(j, "num_key_value_heads", path))
                         : m.num_heads());
  CADRE_CHECK(m.num_kv_heads() == m.num_heads(), "'", path,
              "' has num_key_value_heads=", m.num_kv_heads(),
              " but num_attention_heads=", m.num_heads(),
              "; accepted: equal values (in latent attention every head expands its own key and "
              "value from the shared latent)");
  // Defaults of transformers' DeepseekV3Config (the same in DeepseekV2Config).
  m.set_kv_latent_dim(static_cast<int32_t>(get_int_or(j, "kv_lora_rank", path, 512)));
  m.set_head_dim(static_cast<int32_t>(get_int_or(j, "qk_nope_head_dim", path, 128)));
  m.set_rope_head_dim(static_cast<int32_t>(get_int_or(j, "qk_rope_head_dim", path, 64)));
  m.set_v_head_dim(static_cast<int32_t>(get_int_or(j, "v_head_dim", path, 128)));
  m.set_q_latent_dim(j.contains("q_lora_rank") && j["q_lora_rank"].is_null()
                         ? 0
                         : static_cast<int32_t>(get_int_or(j, "q_lora_rank", path, 1536)));
  const std::pair<const char*, int64_t> positive[] = {{"kv_lora_rank", m.kv_latent_dim()},
                                                      {"qk_nope_head_dim", m.head_dim()},
                                                      {"qk_rope_head_dim", m.rope_head_dim()},
                                                      {"v_head_dim", m.v_head_dim()}};
  for (const auto& [key, value] : positive) {
    CADRE_CHECK(value > 0, "'", path, "': ", key, " is ", value, "; accepted: a positive integer");
  }
  CADRE_CHECK(m.rope_head_dim() % 2 == 0, "'", path, "': qk_rope_head_dim is ", m.rope_head_dim(),
              "; accepted: an even number (RoPE rotates pairs)");
  CADRE_CHECK(m.q_latent_dim() >= 0, "'", path, "': q_lora_rank is ", m.q_latent_dim(),
              "; accepted: null (a direct query projection) or a positive integer");
  double theta = get_number(j, "rope_theta", path, 10000.0);
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    theta = get_number(j["rope_parameters"], "rope_theta", path, theta);
  }
  m.set_rope_theta(theta);
  m.set_norm_eps(get_number(j, "rms_norm_eps", path, 1e-6));
  if (j.contains("tie_word_embeddings")) {
    CADRE_CHECK(j["tie_word_embeddings"].is_boolean(), "'", path, "': tie_word_embeddings is ",
                j["tie_word_embeddings"].dump(), "; accepted: true or false");
  }
  m.set_tie_embeddings(j.value("tie_word_embeddings", false));
  // V3: rope_interleave (default true) says the rows are interleaved pairs, which its attention
  // de-interleaves before a rotate-half rotation; V2 always rotates interleaved pairs.
  out.rotary_interleaved = true;
  if (v3 && j.contains("rope_interleave")) {
    CADRE_CHECK(j["rope_interleave"].is_boolean(), "'", path, "': rope_interleave is ",
                j["rope_interleave"].dump(), "; accepted: true or false");
    out.rotary_interleaved = j["rope_interleave"].get<bool>();
  }
  return out;
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
  if (m.kv_latent_dim() > 0) return deepseek_config_json(m, torch_dtype, max_position_embeddings);
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

HfArchitecture read_hf_architecture(const std::string& dir) {
  const std::string path = hf_join_path(dir, kConfigFile);
  const Json j = read_hf_json(path, "Hugging Face config");
  CADRE_CHECK(j.is_object(), "'", path, "' is not a JSON object");
  const std::string model_type = j.contains("model_type") && j["model_type"].is_string()
                                     ? j["model_type"].get<std::string>()
                                     : std::string();
  if (model_type == "deepseek_v3" || model_type == "deepseek_v2") {
    return read_deepseek_config(j, path, model_type);
  }
  CADRE_CHECK(model_type == "llama", "'", path, "' has model_type \"", model_type,
              "\"; accepted: \"llama\" (LlamaForCausalLM, grouped-query attention), "
              "\"deepseek_v3\" or \"deepseek_v2\" (multi-head latent attention, dense layers): the "
              "architectures Cadre trains");
  HfArchitecture out;
  out.model_type = model_type;
  out.architecture = "LlamaForCausalLM";
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
  out.model = m;
  return out;
}

config::ModelConfig read_hf_config(const std::string& dir) {
  return read_hf_architecture(dir).model;
}

void check_hf_config_matches(const config::ModelConfig& m, const std::string& dir) {
  const HfArchitecture arch = read_hf_architecture(dir);
  const config::ModelConfig& hf = arch.model;
  const std::string where =
      str_cat("training.init_from=\"", dir, "\": ", hf_join_path(dir, kConfigFile), " has ");
  const char* const fix =
      "; accepted: a model section with the same value (model.preset: \"from_init\" takes every "
      "size from config.json)";
  const bool latent = hf.kv_latent_dim() > 0;
  CADRE_CHECK(latent == (m.kv_latent_dim() > 0), "training.init_from=\"", dir, "\" holds ",
              arch.architecture,
              latent
                  ? str_cat(" (multi-head latent attention, kv_lora_rank=", hf.kv_latent_dim(), ")")
                  : std::string(" (grouped-query attention)"),
              " but the configured model has model.kv_latent_dim=", m.kv_latent_dim(),
              latent ? "; accepted: a latent-attention model section (model.preset: \"from_init\" "
                       "takes every size from config.json)"
                     : "; accepted: 0 (model.preset: \"from_init\" takes every size from "
                       "config.json)");
  CADRE_CHECK(!m.tpla(), "training.init_from=\"", dir, "\" holds ", arch.architecture,
              " weights (exact multi-head latent attention) but model.tpla=true, a different "
              "function; accepted: model.tpla=false (`cadre eval --tpla T` measures an MLA model "
              "in TPLA form)");
  struct IntField {
    const char* hf_key;
    const char* field;
    int64_t hf_value, value;
  };
  std::vector<IntField> ints = {
      {"vocab_size", "vocab_size", hf.vocab_size(), m.vocab_size()},
      {"hidden_size", "hidden_size", hf.hidden_size(), m.hidden_size()},
      {"num_hidden_layers", "num_layers", hf.num_layers(), m.num_layers()},
      {"num_attention_heads", "num_heads", hf.num_heads(), m.num_heads()},
      {"num_key_value_heads", "num_kv_heads", hf.num_kv_heads(), m.num_kv_heads()},
  };
  if (latent) {
    const int64_t v_dim = m.v_head_dim() > 0 ? m.v_head_dim() : m.head_dim();
    ints.insert(ints.end(),
                {{"kv_lora_rank", "kv_latent_dim", hf.kv_latent_dim(), m.kv_latent_dim()},
                 {"qk_nope_head_dim", "head_dim", hf.head_dim(), m.head_dim()},
                 {"qk_rope_head_dim", "rope_head_dim", hf.rope_head_dim(), m.rope_head_dim()},
                 {"q_lora_rank (null = 0)", "q_latent_dim", hf.q_latent_dim(), m.q_latent_dim()},
                 {"v_head_dim", "v_head_dim", hf.v_head_dim(), v_dim}});
  } else {
    ints.push_back({"head_dim", "head_dim", hf.head_dim(), m.head_dim()});
  }
  ints.push_back(
      {"intermediate_size", "ffn_hidden_size", hf.ffn_hidden_size(), m.ffn_hidden_size()});
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
}

void fill_model_from_hf(config::ModelConfig* model, const std::string& dir) {
  const config::ModelConfig hf = read_hf_config(dir);  // Llama or DeepSeek
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
  if (!model->has_kv_latent_dim()) model->set_kv_latent_dim(hf.kv_latent_dim());
  if (!model->has_rope_head_dim()) model->set_rope_head_dim(hf.rope_head_dim());
  if (hf.kv_latent_dim() > 0) {
    if (!model->has_q_latent_dim()) model->set_q_latent_dim(hf.q_latent_dim());
    if (!model->has_v_head_dim()) model->set_v_head_dim(hf.v_head_dim());
  }
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
