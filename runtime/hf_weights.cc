// Hugging Face LlamaForCausalLM and DeepseekV3ForCausalLM directories: config.json through
// runtime/hf_config, weights through runtime/safetensors.
//
// Rotary layout, grouped-query attention: Cadre rotates the pairs (i, i + head_dim/2) of each
// head (rotate-half), which is the layout of Hugging Face's Llama q_proj/k_proj rows (its
// conversion script permutes Meta's interleaved-pair checkpoints into exactly this order). So the
// rows of wq and wk map one to one and no permutation is applied in either direction;
// tests/runtime/test_hf_weights.cc checks the rotation against an independent rotate-half
// reference, and scripts/hf_parity_check.sh checks the loss against transformers on the GPU
// machine.
//
// Rotary layout, latent attention: Cadre rotates (i, i + d_r/2) of the d_r rotary values too,
// but DeepSeek's checkpoints (and transformers' DeepSeek-V3 with rope_interleave true, its
// default; DeepSeek-V2 always) hold those values as interleaved pairs (2i, 2i + 1), which the
// attention de-interleaves before rotating. Export therefore moves rotary row i to 2i and row
// i + d_r/2 to 2i + 1 in every head's rotary rows of the query projection (q_proj or q_b_proj)
// and in the rotary rows of kv_a_proj_with_mqa; import applies the inverse. The rotated values
// then meet in the same positions of q.k, so the function is unchanged (tests/runtime/
// test_hf_deepseek.cc computes the exported model's logits from DeepSeek's formulas).
#include "runtime/hf_weights.h"

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
#include "runtime/parameter_shards.h"
#include "runtime/safetensors.h"

namespace cadre::runtime {
namespace {

using Json = nlohmann::json;

const char* const kSingleFile = "model.safetensors";
const char* const kIndexFile = "model.safetensors.index.json";

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

// Multi-head latent attention's own parameters (the norms, o_proj and the MLP are as above).
const std::vector<std::pair<std::string, std::string>>& latent_layer_names() {
  static const std::vector<std::pair<std::string, std::string>> kNames = {
      {"wq_a", "self_attn.q_a_proj.weight"},
      {"q_norm", "self_attn.q_a_layernorm.weight"},
      {"wq_b", "self_attn.q_b_proj.weight"},
      {"wkv_a", "self_attn.kv_a_proj_with_mqa.weight"},
      {"kv_norm", "self_attn.kv_a_layernorm.weight"},
      {"wkv_b", "self_attn.kv_b_proj.weight"},
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
  const auto ends_with = [&](const std::string& suffix) {
    return cadre_name.size() >= suffix.size() &&
           cadre_name.compare(cadre_name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with(".wq_a")) return "q_latent_dim, hidden_size";
  if (ends_with(".q_norm")) return "q_latent_dim";
  if (ends_with(".wq_b")) return "num_heads, head_dim, rope_head_dim, q_latent_dim";
  if (ends_with(".wkv_a")) return "kv_latent_dim, rope_head_dim, hidden_size";
  if (ends_with(".kv_norm")) return "kv_latent_dim";
  if (ends_with(".wkv_b")) return "num_heads, head_dim, v_head_dim, kv_latent_dim";
  if (cadre_name.find("norm") != std::string::npos) return "hidden_size";
  if (cadre_name.find(".wq") != std::string::npos || cadre_name.find(".wo") != std::string::npos) {
    return "num_heads, head_dim, hidden_size";
  }
  if (cadre_name.find(".wk") != std::string::npos || cadre_name.find(".wv") != std::string::npos) {
    return "num_kv_heads, head_dim, hidden_size";
  }
  return "ffn_hidden_size, hidden_size";
}

// The first rows of the rotary blocks (rope_head_dim rows each) of a latent-attention parameter:
// one per head of the query projection, one in the latent projection; none for the others.
std::vector<int64_t> rotary_block_starts(const config::ModelConfig& m, const std::string& name,
                                         int64_t rows) {
  if (m.kv_latent_dim() == 0) return {};
  const auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  std::vector<int64_t> starts;
  if (ends_with(".wq") || ends_with(".wq_b")) {
    const int64_t head_rows = int64_t{m.head_dim()} + m.rope_head_dim();
    for (int64_t first = 0; first + head_rows <= rows; first += head_rows) {
      starts.push_back(first + m.head_dim());
    }
  } else if (ends_with(".wkv_a")) {
    starts.push_back(m.kv_latent_dim());
  }
  return starts;
}

// Rows of `t` reordered between Cadre's rotate-half order and interleaved pairs (see the top of
// this file): to_interleaved moves row i of each rotary block to 2i and i + d/2 to 2i + 1;
// the other direction undoes it. Other rows stay.
torch::Tensor permute_rotary_rows(const config::ModelConfig& m, const std::string& name,
                                  const torch::Tensor& t, bool to_interleaved) {
  const auto starts = rotary_block_starts(m, name, t.size(0));
  if (starts.empty()) return t;
  const int64_t half = m.rope_head_dim() / 2;
  std::vector<int64_t> source(static_cast<size_t>(t.size(0)));
  for (int64_t r = 0; r < t.size(0); ++r) source[r] = r;
  for (const int64_t first : starts) {
    for (int64_t i = 0; i < half; ++i) {
      if (to_interleaved) {  // new row 2i comes from old row i, 2i + 1 from i + half
        source[first + 2 * i] = first + i;
        source[first + 2 * i + 1] = first + half + i;
      } else {  // new row i comes from old row 2i, i + half from 2i + 1
        source[first + i] = first + 2 * i;
        source[first + half + i] = first + 2 * i + 1;
      }
    }
  }
  return t.index_select(0, torch::tensor(source, torch::kLong));
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
    if (m.kv_latent_dim() > 0) {  // LlamaModel::add_latent_layer's order
      const int64_t heads = m.num_heads(), nope = m.head_dim(), rope = m.rope_head_dim();
      const int64_t latent = m.kv_latent_dim(), q_latent = m.q_latent_dim();
      const int64_t v = m.v_head_dim() > 0 ? m.v_head_dim() : m.head_dim();
      if (q_latent == 0) {
        out.push_back({p + "wq", {heads * (nope + rope), hidden}});
      } else {
        out.push_back({p + "wq_a", {q_latent, hidden}});
        out.push_back({p + "q_norm", {q_latent}});
        out.push_back({p + "wq_b", {heads * (nope + rope), q_latent}});
      }
      out.push_back({p + "wkv_a", {latent + rope, hidden}});
      out.push_back({p + "kv_norm", {latent}});
      out.push_back({p + "wkv_b", {heads * (nope + v), latent}});
      out.push_back({p + "wo", {hidden, heads * v}});
      out.push_back({p + "mlp_norm", {hidden}});
      out.push_back({p + "w_gate", {ffn, hidden}});
      out.push_back({p + "w_up", {ffn, hidden}});
      out.push_back({p + "w_down", {hidden, ffn}});
      continue;
    }
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
      for (const auto& [cadre, hf] : latent_layer_names()) {
        if (suffix == cadre) return "model.layers." + layer + "." + hf;
      }
    }
  }
  CADRE_FAIL("'", name,
             "' is not a parameter of Cadre's model; accepted: embedding, "
             "layers.N.{attention_norm,wq,wk,wv,wo,mlp_norm,w_gate,w_up,w_down}, "
             "layers.N.{wq_a,q_norm,wq_b,wkv_a,kv_norm,wkv_b} (latent attention), final_norm, "
             "lm_head");
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
    // DeepSeek's rotary rows are interleaved pairs (see the top of this file); an exact
    // reordering, before any rounding.
    auto t = permute_rotary_rows(model, p.name, it->second.detach().to(torch::kCPU), true)
                 .to(dtype)
                 .contiguous();
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
    written.push_back(hf_join_path(dir, kSingleFile));
    write_safetensors(written.back(), shards[0], metadata);
  } else {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total_bytes}};
    index["weight_map"] = nlohmann::ordered_json::object();
    const size_t n = shards.size();
    for (size_t s = 0; s < n; ++s) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, n);
      written.push_back(hf_join_path(dir, name));
      write_safetensors(written.back(), shards[s], metadata);
      for (const auto& [tensor, value] : shards[s]) index["weight_map"][tensor] = name;
    }
    written.push_back(hf_join_path(dir, kIndexFile));
    write_file_atomically(written.back(), index.dump(2) + "\n");
  }
  written.push_back(hf_join_path(dir, "config.json"));
  write_file_atomically(written.back(), config_text);
  // Weight files of an earlier export would be read instead of (or beside) these ones.
  const std::set<std::string> kept(written.begin(), written.end());
  for (const std::string& entry : posix_fs::list_directory(dir)) {
    const std::string suffix = ".safetensors";
    const bool weights_file =
        entry.size() > suffix.size() &&
        entry.compare(entry.size() - suffix.size(), suffix.size(), suffix) == 0;
    const bool weights = entry.rfind("model", 0) == 0 && (weights_file || entry == kIndexFile);
    if (weights && kept.count(hf_join_path(dir, entry)) == 0)
      posix_fs::remove_file(hf_join_path(dir, entry));
  }
  return written;
}

std::vector<std::pair<std::string, torch::Tensor>> read_hf_weights(
    const std::string& dir, const config::ModelConfig& model) {
  // Which file holds each tensor: model.safetensors (what transformers reads first), else the
  // index's weight map.
  std::map<std::string, std::string> file_of;  // HF name -> file name in dir
  std::map<std::string, std::unique_ptr<SafetensorsReader>> readers;
  const std::string single = hf_join_path(dir, kSingleFile),
                    index_path = hf_join_path(dir, kIndexFile);
  if (posix_fs::exists(single)) {
    readers[kSingleFile] = std::make_unique<SafetensorsReader>(single);
    for (const auto& e : readers[kSingleFile]->entries()) file_of[e.name] = kSingleFile;
  } else {
    CADRE_CHECK(posix_fs::exists(index_path), "training.init_from=\"", dir, "\" has neither ",
                kSingleFile, " nor ", kIndexFile,
                "; accepted: a Hugging Face model directory with safetensors weights");
    const Json index = read_hf_json(index_path, "safetensors index");
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
    if (!r) r = std::make_unique<SafetensorsReader>(hf_join_path(dir, file));
    return *r;
  };
  // Latent attention: the directory's architecture says whether its rotary rows are
  // interleaved pairs (DeepSeek's layout) that Cadre's rotate-half order must be restored from.
  std::string architecture = "LlamaForCausalLM";
  bool interleaved = false;
  if (model.kv_latent_dim() > 0) {
    const HfArchitecture arch = read_hf_architecture(dir);
    architecture = arch.architecture;
    interleaved = arch.rotary_interleaved;
  }
  const std::string complete = "; accepted: a complete " + architecture + " checkpoint";
  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::set<std::string> used;
  for (const ParameterShape& p : llama_parameter_shapes(model)) {
    const std::string hf = hf_parameter_name(p.name);
    auto f = file_of.find(hf);
    CADRE_CHECK(f != file_of.end(), "training.init_from=\"", dir, "\" lacks tensor '", hf,
                "' (Cadre's '", p.name, "')", complete);
    const SafetensorsReader& reader = reader_for(f->second);
    const SafetensorsEntry* e = reader.find(hf);
    CADRE_CHECK(e != nullptr, "'", reader.path(), "' lacks tensor '", hf, "' (Cadre's '", p.name,
                "') that ", posix_fs::exists(single) ? kSingleFile : kIndexFile, " places there",
                complete);
    CADRE_CHECK(e->dtype == "F32" || e->dtype == "BF16" || e->dtype == "F16", "'", reader.path(),
                "' tensor '", hf, "' has dtype ", e->dtype, "; accepted: F32, BF16, F16");
    CADRE_CHECK(e->shape == p.shape, "'", reader.path(), "' tensor '", hf, "' is ",
                shape_text(e->shape), " but the configured model (model.", shape_fields(p.name),
                ") needs ", shape_text(p.shape));
    torch::Tensor value = reader.read(hf).to(torch::kFloat);
    if (interleaved) value = permute_rotary_rows(model, p.name, value, false);
    out.emplace_back(p.name, value.contiguous());
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
               "), which the configured model (model.num_layers=", model.num_layers(),
               ", tie_embeddings=", model.tie_embeddings() ? "true" : "false",
               model.kv_latent_dim() > 0 ? ", latent attention with dense layers" : "",
               ") has no place for; accepted: a ", architecture,
               " checkpoint of the configured sizes");
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
