// Latent-attention models in Hugging Face's DeepSeek layout (DeepseekV3ForCausalLM): export then
// import is bit-identical (with and without query compression, tied and untied, one file and
// shards); a reader written here checks the exported names, shapes and config.json; a DeepSeek
// forward pass written here from the model's formulas in Hugging Face's naming, rotating
// interleaved rotary pairs as DeepSeek does, computes Cadre's logits from the exported files
// (the check that the rotary rows are permuted right); DeepSeek configs Cadre cannot run (experts,
// scaled rotary embeddings, other sizes) get errors naming the key.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "attention_server/kernel.h"
#include "common/error.h"
#include "common/posix_fs.h"
#include "runtime/attention_op.h"
#include "runtime/hf_weights.h"
#include "runtime/model.h"
#include "runtime/safetensors.h"
#include "scheduler/plan.h"
#include "tests/expect_error.h"
#include "tests/runtime/tiny_model.h"
#include "tests/temp_dir.h"

namespace cadre::runtime {
namespace {

using cadre::testing::TempDir;

std::vector<std::pair<std::string, torch::Tensor>> weights_of(const LlamaModel& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : model.parameters()) out.emplace_back(p.name, p.value.detach().clone());
  return out;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
}

using cadre::testing::expect_error;

// ---------------------------------------------------------------------------------------------
// An independent reader of the exported directory: the safetensors format from its description
// (u64 little-endian header length, JSON header, raw little-endian data), F32 tensors as double.
std::map<std::string, torch::Tensor> read_exported(const std::string& dir) {
  const std::string file = read_bytes(dir + "/model.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
  const auto header = nlohmann::json::parse(file.substr(8, n));
  std::map<std::string, torch::Tensor> out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    EXPECT_EQ((*it)["dtype"], "F32") << it.key();
    const auto shape = (*it)["shape"].get<std::vector<int64_t>>();
    const uint64_t begin = (*it)["data_offsets"][0], end = (*it)["data_offsets"][1];
    std::vector<float> values((end - begin) / 4);
    std::memcpy(values.data(), file.data() + 8 + n + begin, end - begin);
    out[it.key()] = torch::tensor(values, torch::kFloat).to(torch::kDouble).reshape(shape);
  }
  return out;
}

// The names and shapes DeepSeek's Hugging Face model has for these sizes, written out here.
std::map<std::string, std::vector<int64_t>> deepseek_names(const config::ModelConfig& m) {
  const int64_t H = m.num_heads(), dn = m.head_dim(), dr = m.rope_head_dim();
  const int64_t dc = m.kv_latent_dim(), dq = m.q_latent_dim(), dv = m.v_head_dim();
  const int64_t d = m.hidden_size(), f = m.ffn_hidden_size(), V = m.vocab_size();
  std::map<std::string, std::vector<int64_t>> out = {{"model.embed_tokens.weight", {V, d}},
                                                     {"model.norm.weight", {d}}};
  if (!m.tie_embeddings()) out["lm_head.weight"] = {V, d};
  for (int l = 0; l < m.num_layers(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out[p + "input_layernorm.weight"] = {d};
    out[p + "post_attention_layernorm.weight"] = {d};
    if (dq == 0) {
      out[p + "self_attn.q_proj.weight"] = {H * (dn + dr), d};
    } else {
      out[p + "self_attn.q_a_proj.weight"] = {dq, d};
      out[p + "self_attn.q_a_layernorm.weight"] = {dq};
      out[p + "self_attn.q_b_proj.weight"] = {H * (dn + dr), dq};
    }
    out[p + "self_attn.kv_a_proj_with_mqa.weight"] = {dc + dr, d};
    out[p + "self_attn.kv_a_layernorm.weight"] = {dc};
    out[p + "self_attn.kv_b_proj.weight"] = {H * (dn + dv), dc};
    out[p + "self_attn.o_proj.weight"] = {d, H * dv};
    out[p + "mlp.gate_proj.weight"] = {f, d};
    out[p + "mlp.up_proj.weight"] = {f, d};
    out[p + "mlp.down_proj.weight"] = {d, f};
  }
  return out;
}

// DeepSeek's rotary embedding on interleaved pairs: values (2i, 2i + 1) of the last dimension are
// the real and imaginary parts of a complex number multiplied by exp(i * position * theta^(-2i/d))
// (DeepSeek-V2 paper, section 2.1.3; transformers' rope_interleave). `interleaved` false rotates
// (i, i + d/2) instead: used only to show that the check notices the layout.
torch::Tensor rotate_pairs(const torch::Tensor& x, const torch::Tensor& positions, double theta,
                           bool interleaved = true) {
  const int64_t d = x.size(-1), n = x.size(0);
  auto out = x.clone();
  for (int64_t t = 0; t < n; ++t) {
    const double pos = positions[t].item<double>();
    for (int64_t i = 0; i < d / 2; ++i) {
      const double angle = pos * std::pow(theta, -2.0 * static_cast<double>(i) / d);
      const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + d / 2;
      auto re = x[t].select(-1, a), im = x[t].select(-1, b);
      out[t].select(-1, a).copy_(re * std::cos(angle) - im * std::sin(angle));
      out[t].select(-1, b).copy_(re * std::sin(angle) + im * std::cos(angle));
    }
  }
  return out;
}

torch::Tensor rms(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps) * w;
}

// Logits [n, vocab] of one document (positions 0..n-1) from the exported directory, in double:
// DeepSeek's multi-head latent attention (DeepSeek-V2 paper, equations 9-19; softmax scale
// 1/sqrt(qk_nope_head_dim + qk_rope_head_dim)) and a dense SwiGLU MLP per layer, everything
// read from config.json and model.safetensors. The latents' norms use eps 1e-6, as
// transformers' DeepSeek builds them (not rms_norm_eps).
torch::Tensor deepseek_logits(const std::string& dir, const torch::Tensor& tokens,
                              bool interleaved = true) {
  const double kLatentEps = 1e-6;
  const auto cfg = nlohmann::json::parse(read_bytes(dir + "/config.json"));
  const auto w = read_exported(dir);
  const int64_t H = cfg["num_attention_heads"], dn = cfg["qk_nope_head_dim"];
  const int64_t dr = cfg["qk_rope_head_dim"], dc = cfg["kv_lora_rank"], dv = cfg["v_head_dim"];
  const double eps = cfg["rms_norm_eps"], theta = cfg["rope_theta"];
  const int64_t n = tokens.size(0);
  const auto positions = torch::arange(n, torch::kDouble);
  const auto W = [&](const std::string& name) { return w.at(name); };
  auto x = W("model.embed_tokens.weight").index_select(0, tokens);
  const auto causal = torch::ones({n, n}, torch::kBool).tril();
  for (int l = 0; l < cfg["num_hidden_layers"].get<int>(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto h = rms(x, W(p + "input_layernorm.weight"), eps);
    torch::Tensor q;
    if (cfg["q_lora_rank"].is_null()) {
      q = h.matmul(W(p + "self_attn.q_proj.weight").t());
    } else {
      auto cq = rms(h.matmul(W(p + "self_attn.q_a_proj.weight").t()),
                    W(p + "self_attn.q_a_layernorm.weight"), kLatentEps);
      q = cq.matmul(W(p + "self_attn.q_b_proj.weight").t());
    }
    q = q.view({n, H, dn + dr});
    auto q_nope = q.narrow(2, 0, dn),
         q_rope = rotate_pairs(q.narrow(2, dn, dr), positions, theta, interleaved);
    auto ckv = h.matmul(W(p + "self_attn.kv_a_proj_with_mqa.weight").t());
    auto c = rms(ckv.narrow(1, 0, dc), W(p + "self_attn.kv_a_layernorm.weight"), kLatentEps);
    auto k_rope = rotate_pairs(ckv.narrow(1, dc, dr), positions, theta, interleaved);  // [n, dr]
    auto kv = c.matmul(W(p + "self_attn.kv_b_proj.weight").t()).view({n, H, dn + dv});
    auto k_nope = kv.narrow(2, 0, dn), v = kv.narrow(2, dn, dv);
    std::vector<torch::Tensor> heads;
    for (int64_t i = 0; i < H; ++i) {
      auto scores = (q_nope.select(1, i).matmul(k_nope.select(1, i).t()) +
                     q_rope.select(1, i).matmul(k_rope.t())) /
                    std::sqrt(static_cast<double>(dn + dr));
      scores = scores.masked_fill(causal.logical_not(), -INFINITY);
      heads.push_back(torch::softmax(scores, 1).matmul(v.select(1, i)));
    }
    x = x + torch::cat(heads, 1).matmul(W(p + "self_attn.o_proj.weight").t());
    h = rms(x, W(p + "post_attention_layernorm.weight"), eps);
    auto gate = h.matmul(W(p + "mlp.gate_proj.weight").t());
    auto up = h.matmul(W(p + "mlp.up_proj.weight").t());
    x = x + (gate * torch::sigmoid(gate) * up).matmul(W(p + "mlp.down_proj.weight").t());
  }
  const auto head =
      cfg["tie_word_embeddings"].get<bool>() ? W("model.embed_tokens.weight") : W("lm_head.weight");
  return rms(x, W("model.norm.weight"), eps).matmul(head.t());
}

// Cadre's logits of the same document.
torch::Tensor cadre_logits(const LlamaModel& model, const torch::Tensor& tokens) {
  const int64_t n = tokens.size(0);
  auto kernel = attention_server::make_kernel("cpu");
  const std::vector<int64_t> lengths = {n};
  auto layout = scheduler::layout_from_rank_documents({lengths});
  auto attention = make_colocated_attention(layout, 0, *kernel);
  torch::NoGradGuard no_grad;
  return model.forward(tokens, torch::arange(n, torch::kLong), *attention);
}

double max_relative(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max() /
          b.to(torch::kDouble).abs().max())
      .item<double>();
}

// ---------------------------------------------------------------------------------------------

TEST(HfDeepSeek, ParameterShapesAndNamesAreTheModelsParameters) {
  for (int q_latent : {0, 12}) {
    for (bool tied : {false, true}) {
      const auto m = testing::mla_export_model(q_latent, tied);
      LlamaModel model(m, 1);
      const auto shapes = llama_parameter_shapes(m);
      ASSERT_EQ(shapes.size(), model.parameters().size());
      const auto expected = deepseek_names(m);
      std::set<std::string> mapped;
      for (size_t i = 0; i < shapes.size(); ++i) {
        EXPECT_EQ(shapes[i].name, model.parameters()[i].name);
        EXPECT_EQ(shapes[i].shape, model.parameters()[i].value.sizes().vec()) << shapes[i].name;
        const std::string hf = hf_parameter_name(shapes[i].name);
        ASSERT_EQ(expected.count(hf), 1u) << shapes[i].name << " -> " << hf;
        EXPECT_EQ(expected.at(hf), shapes[i].shape) << hf;
        mapped.insert(hf);
      }
      EXPECT_EQ(mapped.size(), expected.size());
    }
  }
  EXPECT_EQ(hf_parameter_name("layers.3.wkv_a"),
            "model.layers.3.self_attn.kv_a_proj_with_mqa.weight");
  EXPECT_EQ(hf_parameter_name("layers.0.q_norm"), "model.layers.0.self_attn.q_a_layernorm.weight");
}

TEST(HfDeepSeek, ExportThenImportGivesIdenticalTensors) {
  for (int q_latent : {0, 12}) {
    for (bool tied : {false, true}) {
      for (int64_t shard_bytes : {int64_t{5'000'000'000}, int64_t{10'000}}) {
        TempDir dir;
        const auto m = testing::mla_export_model(q_latent, tied);
        LlamaModel model(m, 3);
        HfExportOptions options;
        options.max_shard_bytes = shard_bytes;
        export_hf(weights_of(model), m, dir.path(), options);
        EXPECT_EQ(posix_fs::exists(dir.path() + "/model.safetensors.index.json"),
                  shard_bytes < 1'000'000);
        LlamaModel other(m, 99);
        load_hf_weights(other, dir.path());
        ASSERT_EQ(other.parameters().size(), model.parameters().size());
        for (size_t i = 0; i < model.parameters().size(); ++i) {
          EXPECT_TRUE(torch::equal(other.parameters()[i].value, model.parameters()[i].value))
              << model.parameters()[i].name << " q_latent " << q_latent << " tied " << tied
              << " shard " << shard_bytes;
        }
      }
    }
  }
}

TEST(HfDeepSeek, IndependentReaderChecksNamesShapesConfigAndRotaryRows) {
  for (int q_latent : {0, 12}) {
    TempDir dir;
    const auto m = testing::mla_export_model(q_latent, /*tied=*/false);
    LlamaModel model(m, 5);
    HfExportOptions options;
    options.max_position_embeddings = 256;
    export_hf(weights_of(model), m, dir.path(), options);
    const auto cfg = nlohmann::json::parse(read_bytes(dir.path() + "/config.json"));
    EXPECT_EQ(cfg["architectures"], nlohmann::json::array({"DeepseekV3ForCausalLM"}));
    EXPECT_EQ(cfg["model_type"], "deepseek_v3");
    EXPECT_EQ(cfg["vocab_size"], 50);
    EXPECT_EQ(cfg["hidden_size"], 32);
    EXPECT_EQ(cfg["intermediate_size"], 40);
    EXPECT_EQ(cfg["num_hidden_layers"], 2);
    EXPECT_EQ(cfg["num_attention_heads"], 4);
    EXPECT_EQ(cfg["num_key_value_heads"], 4);
    EXPECT_EQ(cfg["kv_lora_rank"], 16);
    if (q_latent == 0) {
      EXPECT_TRUE(cfg["q_lora_rank"].is_null());
    } else {
      EXPECT_EQ(cfg["q_lora_rank"], 12);
    }
    EXPECT_EQ(cfg["qk_nope_head_dim"], 8);
    EXPECT_EQ(cfg["qk_rope_head_dim"], 8);
    EXPECT_EQ(cfg["v_head_dim"], 6);
    // Every layer dense: transformers builds experts only from layer first_k_dense_replace on.
    EXPECT_EQ(cfg["first_k_dense_replace"], 2);
    EXPECT_FALSE(cfg.contains("n_routed_experts"));
    EXPECT_FALSE(cfg.contains("head_dim"));  // DeepseekV3Config derives it from qk_rope_head_dim
    EXPECT_EQ(cfg["rope_interleave"], true);
    EXPECT_TRUE(cfg["rope_scaling"].is_null());
    EXPECT_EQ(cfg["rope_theta"], 10000.0);
    EXPECT_EQ(cfg["rms_norm_eps"], 1e-6);
    EXPECT_EQ(cfg["hidden_act"], "silu");
    EXPECT_EQ(cfg["attention_bias"], false);
    EXPECT_EQ(cfg["tie_word_embeddings"], false);
    EXPECT_EQ(cfg["max_position_embeddings"], 256);
    EXPECT_EQ(cfg["torch_dtype"], "float32");

    const auto tensors = read_exported(dir.path());
    const auto expected = deepseek_names(m);
    ASSERT_EQ(tensors.size(), expected.size());
    for (const auto& [name, shape] : expected) {
      ASSERT_EQ(tensors.count(name), 1u) << name;
      EXPECT_EQ(tensors.at(name).sizes().vec(), shape) << name;
    }
    // Values: rows without rotary values as they are; rotary rows in interleaved pairs.
    std::map<std::string, torch::Tensor> cadre;
    for (const auto& p : model.parameters()) cadre[p.name] = p.value.to(torch::kDouble);
    EXPECT_TRUE(torch::equal(tensors.at("model.layers.1.self_attn.kv_b_proj.weight"),
                             cadre.at("layers.1.wkv_b")));
    EXPECT_TRUE(torch::equal(tensors.at("model.layers.0.mlp.down_proj.weight"),
                             cadre.at("layers.0.w_down")));
    const auto q_hf = tensors.at(q_latent == 0 ? "model.layers.0.self_attn.q_proj.weight"
                                               : "model.layers.0.self_attn.q_b_proj.weight");
    const auto q_cadre = cadre.at(q_latent == 0 ? "layers.0.wq" : "layers.0.wq_b");
    const auto kva_hf = tensors.at("model.layers.0.self_attn.kv_a_proj_with_mqa.weight");
    const auto kva_cadre = cadre.at("layers.0.wkv_a");
    for (int64_t head = 0; head < 4; ++head) {
      const int64_t base = head * 16;
      EXPECT_TRUE(torch::equal(q_hf.narrow(0, base, 8), q_cadre.narrow(0, base, 8)));
      for (int64_t i = 0; i < 4; ++i) {
        EXPECT_TRUE(torch::equal(q_hf[base + 8 + 2 * i], q_cadre[base + 8 + i]));
        EXPECT_TRUE(torch::equal(q_hf[base + 8 + 2 * i + 1], q_cadre[base + 8 + 4 + i]));
      }
    }
    EXPECT_TRUE(torch::equal(kva_hf.narrow(0, 0, 16), kva_cadre.narrow(0, 0, 16)));
    for (int64_t i = 0; i < 4; ++i) {
      EXPECT_TRUE(torch::equal(kva_hf[16 + 2 * i], kva_cadre[16 + i]));
      EXPECT_TRUE(torch::equal(kva_hf[16 + 2 * i + 1], kva_cadre[16 + 4 + i]));
    }
  }
}

// The check that the exported model computes what Cadre computes: DeepSeek's formulas with
// interleaved rotary pairs, on the exported files, give Cadre's logits and loss.
TEST(HfDeepSeek, IndependentDeepSeekForwardGivesCadresLogits) {
  for (int q_latent : {0, 12}) {
    for (bool tied : {false, true}) {
      TempDir dir;
      const auto m = testing::mla_export_model(q_latent, tied);
      LlamaModel model(m, 7 + q_latent);
      {
        // Sharper attention than the 0.02-scale initialisation gives (nearly uniform scores),
        // so that the rotary terms, and their layout, move the logits.
        torch::NoGradGuard no_grad;
        for (const auto& p : model.parameters()) {
          const std::string& n = p.name;
          if (n.find(".wq") != std::string::npos || n.find(".wkv_a") != std::string::npos) {
            p.value.mul_(25);
          }
        }
      }
      export_hf(weights_of(model), m, dir.path(), HfExportOptions());
      torch::manual_seed(q_latent + tied);
      const auto tokens = torch::randint(0, m.vocab_size(), {19}, torch::kLong);
      const auto ours = cadre_logits(model, tokens);
      const auto reference = deepseek_logits(dir.path(), tokens);
      const double difference = max_relative(ours, reference);
      EXPECT_LT(difference, 2e-6) << "q_latent " << q_latent << " tied " << tied;
      // The loss over next tokens agrees too.
      auto targets = tokens.narrow(0, 1, 18);
      const double loss_cadre =
          torch::nll_loss(torch::log_softmax(ours.narrow(0, 0, 18).to(torch::kDouble), 1), targets)
              .item<double>();
      const double loss_reference =
          torch::nll_loss(torch::log_softmax(reference.narrow(0, 0, 18), 1), targets)
              .item<double>();
      EXPECT_NEAR(loss_cadre, loss_reference, 1e-6 * loss_reference);
      // The same files read with rotate-half pairs give other logits: the check sees the layout.
      const auto wrong = deepseek_logits(dir.path(), tokens, /*interleaved=*/false);
      const double wrong_difference = max_relative(wrong, reference);
      EXPECT_GT(wrong_difference, 1e-2) << "the rotary layout went unnoticed";
      std::printf(
          "q_latent %d tied %d: logits max relative difference %.2e (rotate-half reading: "
          "%.2e), loss %.7f vs %.7f\n",
          q_latent, tied ? 1 : 0, difference, wrong_difference, loss_cadre, loss_reference);
    }
  }
}

// A DeepSeek directory whose rotary rows are already rotate-half (rope_interleave false) is
// read without the permutation; DeepSeek-V2's (always interleaved) with it.
TEST(HfDeepSeek, RopeInterleaveFalseAndDeepSeekV2AreRead) {
  const auto m = testing::mla_export_model(12, false);
  LlamaModel model(m, 21);
  {
    TempDir dir;
    std::vector<std::pair<std::string, torch::Tensor>> plain;
    for (const auto& p : model.parameters()) {
      plain.emplace_back(hf_parameter_name(p.name), p.value.detach().clone());
    }
    export_hf(weights_of(model), m, dir.path(), HfExportOptions());
    write_safetensors(dir.path() + "/model.safetensors", plain, {{"format", "pt"}});
    auto cfg = nlohmann::json::parse(read_bytes(dir.path() + "/config.json"));
    cfg["rope_interleave"] = false;
    write_bytes(dir.path() + "/config.json", cfg.dump());
    LlamaModel other(m, 22);
    load_hf_weights(other, dir.path());
    for (size_t i = 0; i < model.parameters().size(); ++i) {
      EXPECT_TRUE(torch::equal(other.parameters()[i].value, model.parameters()[i].value))
          << model.parameters()[i].name;
    }
  }
  {
    TempDir dir;
    export_hf(weights_of(model), m, dir.path(), HfExportOptions());
    auto cfg = nlohmann::json::parse(read_bytes(dir.path() + "/config.json"));
    cfg["model_type"] = "deepseek_v2";
    cfg["architectures"] = nlohmann::json::array({"DeepseekV2ForCausalLM"});
    cfg.erase("rope_interleave");
    write_bytes(dir.path() + "/config.json", cfg.dump());
    LlamaModel other(m, 23);
    load_hf_weights(other, dir.path());
    for (size_t i = 0; i < model.parameters().size(); ++i) {
      EXPECT_TRUE(torch::equal(other.parameters()[i].value, model.parameters()[i].value))
          << model.parameters()[i].name;
    }
  }
}

void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  auto j = nlohmann::json::parse(read_bytes(dir + "/config.json"));
  edit(j);
  write_bytes(dir + "/config.json", j.dump());
}

TEST(HfDeepSeek, ConfigsCadreCannotRunAreRefused) {
  TempDir dir;
  const auto m = testing::mla_export_model(0, false);
  LlamaModel model(m, 3);
  export_hf(weights_of(model), m, dir.path(), HfExportOptions());
  const std::string config = read_bytes(dir.path() + "/config.json");
  using Edit = std::function<void(nlohmann::json&)>;
  const std::vector<std::pair<Edit, std::vector<std::string>>> cases = {
      {[](auto& j) {
         j["first_k_dense_replace"] = 1;
         j["n_routed_experts"] = 8;
       },
       {"n_routed_experts=8", "first_k_dense_replace=1", "experts are not supported",
        "first_k_dense_replace >= num_hidden_layers=2"}},
      // Keys left out take DeepseekV2Config's defaults: 64 experts from layer 0.
      {[](auto& j) {
         j["model_type"] = "deepseek_v2";
         j.erase("first_k_dense_replace");
       },
       {"n_routed_experts=64", "experts are not supported"}},
      {[](auto& j) {
         j["rope_scaling"] = {{"type", "yarn"}, {"factor", 40}, {"mscale_all_dim", 1.0}};
       },
       {"rope_scaling", "yarn", "YaRN", "mscale"}},
      {[](auto& j) {
         j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4}, {"rope_theta", 10000}};
       },
       {"rope_parameters", "yarn"}},
      {[](auto& j) { j["num_key_value_heads"] = 2; },
       {"num_key_value_heads=2", "num_attention_heads=4"}},
      {[](auto& j) { j["attention_bias"] = true; }, {"attention_bias true", "no bias"}},
      {[](auto& j) { j["qk_rope_head_dim"] = 7; }, {"qk_rope_head_dim is 7", "even"}},
      {[](auto& j) { j["kv_lora_rank"] = 0; }, {"kv_lora_rank is 0", "positive"}},
      {[](auto& j) { j["model_type"] = "deepseek_v4"; },
       {"model_type \"deepseek_v4\"", "\"deepseek_v3\""}},
  };
  for (const auto& [edit, pieces] : cases) {
    write_bytes(dir.path() + "/config.json", config);
    edit_config(dir.path(), edit);
    expect_error([&] { read_hf_config(dir.path()); }, pieces);
  }
  // Transformers' defaults fill keys a file leaves out.
  write_bytes(dir.path() + "/config.json", config);
  edit_config(dir.path(), [](auto& j) {
    j.erase("q_lora_rank");
    j.erase("rope_theta");
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 5000.0}};
  });
  const auto hf = read_hf_config(dir.path());
  EXPECT_EQ(hf.q_latent_dim(), 1536);
  EXPECT_EQ(hf.rope_theta(), 5000.0);
  // An expert tensor has no place in Cadre's model.
  write_bytes(dir.path() + "/config.json", config);
  {
    SafetensorsReader reader(dir.path() + "/model.safetensors");
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& e : reader.entries()) tensors.emplace_back(e.name, reader.read(e.name));
    tensors.emplace_back("model.layers.1.mlp.experts.0.up_proj.weight", torch::zeros({4, 32}));
    write_safetensors(dir.path() + "/model.safetensors", tensors, {{"format", "pt"}});
  }
  LlamaModel target(m, 4);
  expect_error([&] { load_hf_weights(target, dir.path()); },
               {"mlp.experts.0.up_proj.weight", "has no place for", "DeepseekV3ForCausalLM"});
}

TEST(HfDeepSeek, ArchitectureMismatchNamesTheFirstField) {
  TempDir dir;
  const auto m = testing::mla_export_model(12, false);
  {
    LlamaModel model(m, 3);
    export_hf(weights_of(model), m, dir.path(), HfExportOptions());
  }
  check_hf_config_matches(m, dir.path());
  struct Case {
    std::function<void(config::ModelConfig&)> change;
    std::vector<std::string> pieces;
  };
  const std::vector<Case> cases = {
      {[](auto& c) { c.set_kv_latent_dim(32); }, {"kv_lora_rank=16", "model.kv_latent_dim=32"}},
      {[](auto& c) { c.set_head_dim(16); }, {"qk_nope_head_dim=8", "model.head_dim=16"}},
      {[](auto& c) { c.set_rope_head_dim(4); }, {"qk_rope_head_dim=8", "model.rope_head_dim=4"}},
      {[](auto& c) { c.set_q_latent_dim(0); }, {"q_lora_rank", "=12", "model.q_latent_dim=0"}},
      {[](auto& c) { c.set_v_head_dim(8); }, {"v_head_dim=6", "model.v_head_dim=8"}},
      {[](auto& c) { c.set_ffn_hidden_size(64); },
       {"intermediate_size=40", "model.ffn_hidden_size=64"}},
      {[](auto& c) { c.set_num_heads(2); }, {"num_attention_heads=4", "model.num_heads=2"}},
      {[](auto& c) { c.set_kv_latent_dim(0); },
       {"DeepseekV3ForCausalLM", "kv_lora_rank=16", "model.kv_latent_dim=0"}},
      {[](auto& c) { c.set_tpla(true); }, {"model.tpla=true", "cadre eval --tpla"}},
      // Several differ: the first in the documented order is named.
      {[](auto& c) {
         c.set_v_head_dim(8);
         c.set_kv_latent_dim(32);
       },
       {"kv_lora_rank=16"}},
  };
  for (const Case& c : cases) {
    auto changed = m;
    c.change(changed);
    expect_error([&] { check_hf_config_matches(changed, dir.path()); }, c.pieces);
  }
  // A Llama directory for a latent-attention model.
  TempDir llama_dir;
  config::ModelConfig gqa = m;
  gqa.set_kv_latent_dim(0);
  gqa.set_rope_head_dim(0);
  gqa.set_q_latent_dim(0);
  gqa.set_v_head_dim(0);
  gqa.set_num_kv_heads(2);
  {
    LlamaModel model(gqa, 3);
    export_hf(weights_of(model), gqa, llama_dir.path(), HfExportOptions());
  }
  expect_error([&] { check_hf_config_matches(m, llama_dir.path()); },
               {"LlamaForCausalLM", "grouped-query", "model.kv_latent_dim=16", "accepted: 0"});
  // Export refuses a TPLA model.
  auto tpla = m;
  tpla.set_tpla(true);
  LlamaModel model(m, 3);
  expect_error([&] { export_hf(weights_of(model), tpla, dir.path(), HfExportOptions()); },
               {"model.tpla=true", "no Hugging Face counterpart"});
}

TEST(HfDeepSeek, FillFromInitTakesTheLatentSizes) {
  TempDir dir;
  const auto m = testing::mla_export_model(12, true);
  {
    LlamaModel model(m, 3);
    export_hf(weights_of(model), m, dir.path(), HfExportOptions());
  }
  config::ModelConfig filled;
  filled.set_preset("from_init");
  fill_model_from_hf(&filled, dir.path());
  EXPECT_EQ(filled.kv_latent_dim(), 16);
  EXPECT_EQ(filled.rope_head_dim(), 8);
  EXPECT_EQ(filled.q_latent_dim(), 12);
  EXPECT_EQ(filled.v_head_dim(), 6);
  EXPECT_EQ(filled.head_dim(), 8);
  EXPECT_EQ(filled.num_kv_heads(), 4);
  EXPECT_EQ(filled.ffn_hidden_size(), 40);
  EXPECT_TRUE(filled.tie_embeddings());
  EXPECT_EQ(filled.norm_eps(), 1e-6);
  check_hf_config_matches(filled, dir.path());
}

}  // namespace
}  // namespace cadre::runtime
