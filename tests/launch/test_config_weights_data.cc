// Config fields of the weights and data tools: model.preset from_init fills the sizes from
// training.init_from's config.json (explicit fields are compared, not overwritten), and
// data.format / data.path / data.blend are validated with messages naming the field.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "common/error.h"
#include "common/posix_fs.h"
#include "launch/config.h"
#include "tests/expect_error.h"
#include "tests/temp_dir.h"

namespace cadre::launch {
namespace {

using cadre::testing::expect_error;

using cadre::testing::TempDir;

config::RunConfig with(const std::vector<std::string>& overrides) {
  config::RunConfig c;
  for (const auto& o : overrides) apply_override(c, o);
  return c;
}

TEST(ConfigWeights, FromInitTakesSizesFromConfigJson) {
  TempDir dir;
  // A Llama-3.2-1B-like config.json (as transformers writes it; only the keys Cadre reads).
  std::ofstream(dir.path() + "/config.json")
      << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
             "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
             "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
             "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": true,
             "rope_scaling": null, "hidden_act": "silu"})";
  config::RunConfig c = with({"model.preset=from_init", "training.init_from=" + dir.path()});
  finalize_config(c);
  EXPECT_EQ(c.model().num_layers(), 16);
  EXPECT_EQ(c.model().hidden_size(), 2048);
  EXPECT_EQ(c.model().num_kv_heads(), 8);
  EXPECT_EQ(c.model().head_dim(), 64);
  EXPECT_EQ(c.model().vocab_size(), 128256);
  EXPECT_TRUE(c.model().tie_embeddings());
  EXPECT_EQ(c.model().rope_theta(), 500000);
  // The llama-1b preset matches this file, so it may be given instead of from_init.
  config::RunConfig preset = with({"model.preset=llama-1b", "training.init_from=" + dir.path()});
  finalize_config(preset);
  // An explicit field that differs is named.
  config::RunConfig wrong =
      with({"model.preset=from_init", "model.num_kv_heads=4", "training.init_from=" + dir.path()});
  expect_error([&] { finalize_config(wrong); }, {"num_key_value_heads=8", "model.num_kv_heads=4"});
  // The llama-8b default differs from this file: its first mismatch is named.
  config::RunConfig eight = with({"training.init_from=" + dir.path()});
  expect_error([&] { finalize_config(eight); }, {"hidden_size=2048", "model.hidden_size=4096"});
  config::RunConfig missing =
      with({"model.preset=from_init", "training.init_from=" + dir.path() + "/no"});
  expect_error([&] { finalize_config(missing); },
               {"cannot open Hugging Face config", "/no/config.json"});
  config::RunConfig unknown = with({"model.preset=llama-9b"});
  expect_error([&] { finalize_config(unknown); }, {"llama-9b", "from_init"});
}

TEST(ConfigWeights, FromInitTakesDeepSeekSizesAndRefusesExperts) {
  TempDir dir;
  // DeepSeek-V2-Lite's attention with a dense FFN in all 27 layers (the deepseek-v2-lite-like
  // preset), as `cadre export` writes it.
  const std::string dense =
      R"({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
          "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 27,
          "num_attention_heads": 16, "num_key_value_heads": 16, "kv_lora_rank": 512,
          "q_lora_rank": null, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
          "v_head_dim": 128, "first_k_dense_replace": 27, "vocab_size": 102400,
          "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": null,
          "rope_interleave": true, "tie_word_embeddings": false, "hidden_act": "silu"})";
  std::ofstream(dir.path() + "/config.json") << dense;
  config::RunConfig c = with({"model.preset=from_init", "training.init_from=" + dir.path()});
  finalize_config(c);
  EXPECT_EQ(c.model().num_layers(), 27);
  EXPECT_EQ(c.model().kv_latent_dim(), 512);
  EXPECT_EQ(c.model().rope_head_dim(), 64);
  EXPECT_EQ(c.model().q_latent_dim(), 0);
  EXPECT_EQ(c.model().v_head_dim(), 128);
  EXPECT_EQ(c.model().head_dim(), 128);
  EXPECT_EQ(c.model().num_kv_heads(), 16);
  // The preset it mirrors matches; a grouped-query preset is told the attention kind differs.
  config::RunConfig preset =
      with({"model.preset=deepseek-v2-lite-like", "training.init_from=" + dir.path()});
  finalize_config(preset);
  config::RunConfig gqa = with({"model.preset=tiny", "training.init_from=" + dir.path()});
  expect_error([&] { finalize_config(gqa); },
               {"DeepseekV3ForCausalLM", "kv_lora_rank=512", "model.kv_latent_dim=0"});
  // DeepSeek-V2-Lite itself: routed experts from layer 1 on.
  std::ofstream(dir.path() + "/config.json", std::ios::trunc)
      << R"({"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
             "hidden_size": 2048, "intermediate_size": 10944, "num_hidden_layers": 27,
             "num_attention_heads": 16, "kv_lora_rank": 512, "q_lora_rank": null,
             "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
             "n_routed_experts": 64, "first_k_dense_replace": 1, "vocab_size": 102400})";
  config::RunConfig moe = with({"model.preset=from_init", "training.init_from=" + dir.path()});
  expect_error([&] { finalize_config(moe); },
               {"n_routed_experts=64", "first_k_dense_replace=1", "experts are not supported"});
}

TEST(ConfigWeights, RopeScalingIsValidated) {
  config::RunConfig c = with({"model.rope_scaling=yarn"});
  expect_error([&] { finalize_config(c); }, {"model.rope_scaling=\"yarn\"", "none, llama3"});
  c = with({"model.rope_scaling=llama3", "model.rope_high_freq_factor=0.5"});
  expect_error([&] { finalize_config(c); },
               {"model.rope_high_freq_factor=0.5", "rope_low_freq_factor=1"});
  c = with({"model.rope_scaling=llama3", "model.rope_scaling_factor=32"});
  finalize_config(c);
  EXPECT_EQ(c.model().rope_original_max_positions(), 8192);
}

TEST(ConfigData, FormatPathAndBlendAreValidated) {
  config::RunConfig c = with({"data.format=parquet"});
  expect_error([&] { finalize_config(c); }, {"data.format=\"parquet\"", "tokens, megatron"});
  c = with({"data.format=megatron"});
  expect_error([&] { finalize_config(c); }, {"needs data.path or data.blend"});
  c = with({"data.format=megatron", "data.path=/nonexistent/web"});
  expect_error([&] { finalize_config(c); }, {"data.path", "/nonexistent/web.idx' does not exist"});
  c = with({"data.path=/data/web"});
  expect_error([&] { finalize_config(c); }, {"data.format=\"tokens\"", "data.format=megatron"});
  c = with({"data.format=megatron", "data.blend=0.5:/nonexistent/a,x:/b"});
  expect_error([&] { finalize_config(c); }, {"data.blend[0]", "a.idx' does not exist"});
}

}  // namespace
}  // namespace cadre::launch
