// Hugging Face weights: export then import gives identical tensors (single file and shards, fp32
// and bf16, tied and untied); an independent safetensors reader written here reads the exported
// bytes; bad files and mismatched architectures get errors that name the problem; the rotary
// layout is Hugging Face Llama's rotate-half, checked against a reference written here.
#include <gtest/gtest.h>
#include <torch/types.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "attention_server/kernel.h"
#include "common/error.h"
#include "common/posix_fs.h"
#include "runtime/attention_op.h"
#include "runtime/hf_weights.h"
#include "runtime/model.h"
#include "runtime/rope_scaling.h"
#include "runtime/safetensors.h"
#include "scheduler/plan.h"
#include "tests/expect_error.h"
#include "tests/runtime/tiny_model.h"
#include "tests/temp_dir.h"

namespace cadre::runtime {
namespace {

using testing::tiny_model;

using cadre::testing::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
}

std::vector<std::pair<std::string, torch::Tensor>> weights_of(const LlamaModel& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : model.parameters()) out.emplace_back(p.name, p.value.detach().clone());
  return out;
}

// Expects `f` to throw cadre::Error whose message holds every piece.
using cadre::testing::expect_error;

// ---------------------------------------------------------------------------------------------
// An independent safetensors reader: the format read from its description (u64 header length,
// JSON header, raw little-endian data), sharing no code with runtime/safetensors.cc.
struct IndependentTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
std::map<std::string, IndependentTensor> independent_read(const std::string& path,
                                                          uint64_t* header_length = nullptr) {
  const std::string file = read_bytes(path);
  EXPECT_GE(file.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
  if (header_length) *header_length = n;
  const auto header = nlohmann::json::parse(file.substr(8, n));
  const std::string data = file.substr(8 + n);
  std::map<std::string, IndependentTensor> out;
  uint64_t covered = 0;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    IndependentTensor t;
    t.dtype = (*it)["dtype"];
    t.shape = (*it)["shape"].get<std::vector<int64_t>>();
    const uint64_t begin = (*it)["data_offsets"][0], end = (*it)["data_offsets"][1];
    t.bytes = data.substr(begin, end - begin);
    covered += end - begin;
    out[it.key()] = t;
  }
  EXPECT_EQ(covered, data.size()) << "the data must be indexed entirely, without holes";
  return out;
}

// fp32 -> bf16 by round-to-nearest-even on the bits (independent of torch's conversion).
uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounding = 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

TEST(HfWeights, ParameterShapesAreTheModelsParameters) {
  for (bool tied : {false, true}) {
    const auto m = tiny_model(tied, 3);
    LlamaModel model(m, 1);
    const auto shapes = llama_parameter_shapes(m);
    ASSERT_EQ(shapes.size(), model.parameters().size());
    for (size_t i = 0; i < shapes.size(); ++i) {
      EXPECT_EQ(shapes[i].name, model.parameters()[i].name);
      EXPECT_EQ(shapes[i].shape, model.parameters()[i].value.sizes().vec()) << shapes[i].name;
    }
  }
}

TEST(HfWeights, NamesFollowLlamaForCausalLM) {
  EXPECT_EQ(hf_parameter_name("embedding"), "model.embed_tokens.weight");
  EXPECT_EQ(hf_parameter_name("layers.0.attention_norm"), "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(hf_parameter_name("layers.12.wq"), "model.layers.12.self_attn.q_proj.weight");
  EXPECT_EQ(hf_parameter_name("layers.1.wk"), "model.layers.1.self_attn.k_proj.weight");
  EXPECT_EQ(hf_parameter_name("layers.1.wv"), "model.layers.1.self_attn.v_proj.weight");
  EXPECT_EQ(hf_parameter_name("layers.1.wo"), "model.layers.1.self_attn.o_proj.weight");
  EXPECT_EQ(hf_parameter_name("layers.1.mlp_norm"),
            "model.layers.1.post_attention_layernorm.weight");
  EXPECT_EQ(hf_parameter_name("layers.1.w_gate"), "model.layers.1.mlp.gate_proj.weight");
  EXPECT_EQ(hf_parameter_name("layers.1.w_up"), "model.layers.1.mlp.up_proj.weight");
  EXPECT_EQ(hf_parameter_name("layers.1.w_down"), "model.layers.1.mlp.down_proj.weight");
  EXPECT_EQ(hf_parameter_name("final_norm"), "model.norm.weight");
  EXPECT_EQ(hf_parameter_name("lm_head"), "lm_head.weight");
  expect_error([] { hf_parameter_name("layers.x.wq"); }, {"layers.x.wq", "accepted"});
}

TEST(HfWeights, ExportThenImportGivesIdenticalTensors) {
  for (bool tied : {false, true}) {
    for (int64_t shard_bytes : {int64_t{5'000'000'000}, int64_t{20'000}}) {
      TempDir dir;
      const auto m = tiny_model(tied);
      LlamaModel model(m, 3);
      HfExportOptions options;
      options.max_shard_bytes = shard_bytes;
      const auto written = export_hf(weights_of(model), m, dir.path(), options);
      const bool sharded = shard_bytes < 1'000'000;
      EXPECT_EQ(posix_fs::exists(dir.path() + "/model.safetensors"), !sharded);
      EXPECT_EQ(posix_fs::exists(dir.path() + "/model.safetensors.index.json"), sharded);
      if (sharded) {
        EXPECT_GT(written.size(), 3u);  // several shards + index + config
      }
      LlamaModel other(m, 99);  // other random weights, then the exported ones loaded over them
      load_hf_weights(other, dir.path());
      ASSERT_EQ(other.parameters().size(), model.parameters().size());
      for (size_t i = 0; i < model.parameters().size(); ++i) {
        EXPECT_TRUE(torch::equal(other.parameters()[i].value, model.parameters()[i].value))
            << model.parameters()[i].name << " tied " << tied << " shard " << shard_bytes;
      }
      if (tied) {  // the loaded head is still the embedding itself
        EXPECT_EQ(other.parameters().size(), llama_parameter_shapes(m).size());
      }
    }
  }
}

TEST(HfWeights, IndependentReaderReadsTheExportedFile) {
  TempDir dir;
  const auto m = tiny_model(false);
  LlamaModel model(m, 5);
  for (const std::string dtype : {"fp32", "bf16"}) {
    HfExportOptions options;
    options.dtype = dtype;
    export_hf(weights_of(model), m, dir.path(), options);
    uint64_t header_length = 0;
    const auto tensors = independent_read(dir.path() + "/model.safetensors", &header_length);
    EXPECT_EQ(header_length % 8, 0u);
    EXPECT_EQ(tensors.size(), model.parameters().size());
    for (const auto& p : model.parameters()) {
      const std::string hf = hf_parameter_name(p.name);
      ASSERT_EQ(tensors.count(hf), 1u) << hf;
      const IndependentTensor& t = tensors.at(hf);
      EXPECT_EQ(t.shape, p.value.sizes().vec()) << hf;
      const auto values = p.value.detach().contiguous();
      const float* f = values.data_ptr<float>();
      const int64_t n = values.numel();
      if (dtype == "fp32") {
        EXPECT_EQ(t.dtype, "F32");
        ASSERT_EQ(t.bytes.size(), static_cast<size_t>(4 * n));
        EXPECT_EQ(std::memcmp(t.bytes.data(), f, 4 * n), 0) << hf;
      } else {
        EXPECT_EQ(t.dtype, "BF16");
        ASSERT_EQ(t.bytes.size(), static_cast<size_t>(2 * n));
        for (int64_t i = 0; i < n; ++i) {
          const auto* b = reinterpret_cast<const unsigned char*>(t.bytes.data()) + 2 * i;
          ASSERT_EQ(static_cast<uint16_t>(b[0] | (b[1] << 8)), bf16_bits(f[i])) << hf << " " << i;
        }
      }
    }
    // config.json as transformers reads it.
    const auto config = nlohmann::json::parse(read_bytes(dir.path() + "/config.json"));
    EXPECT_EQ(config["architectures"][0], "LlamaForCausalLM");
    EXPECT_EQ(config["model_type"], "llama");
    EXPECT_EQ(config["num_key_value_heads"], 2);
    EXPECT_EQ(config["head_dim"], 8);
    EXPECT_EQ(config["intermediate_size"], 48);
    EXPECT_EQ(config["tie_word_embeddings"], false);
    EXPECT_EQ(config["torch_dtype"], dtype == "bf16" ? "bfloat16" : "float32");
    // A bf16 export loads back as the bf16-rounded weights.
    if (dtype == "bf16") {
      LlamaModel other(m, 6);
      load_hf_weights(other, dir.path());
      const auto& w = model.parameters()[1].value;
      EXPECT_TRUE(torch::equal(other.parameters()[1].value,
                               w.detach().to(torch::kBFloat16).to(torch::kFloat)));
    }
  }
}

TEST(HfWeights, ShardsStayUnderTheLimitAndTheIndexCoversEveryTensor) {
  TempDir dir;
  const auto m = tiny_model(false);
  LlamaModel model(m, 5);
  HfExportOptions options;
  options.max_shard_bytes = 16'000;
  export_hf(weights_of(model), m, dir.path(), options);
  const auto index =
      nlohmann::json::parse(read_bytes(dir.path() + "/model.safetensors.index.json"));
  std::set<std::string> files;
  int64_t total = 0;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    files.insert(it->get<std::string>());
  }
  EXPECT_EQ(index["weight_map"].size(), model.parameters().size());
  for (const auto& file : files) {
    for (const auto& [name, t] : independent_read(dir.path() + "/" + file)) {
      EXPECT_EQ(index["weight_map"][name], file);
      total += static_cast<int64_t>(t.bytes.size());
    }
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
  EXPECT_EQ(total, model.parameter_count() * 4);
  // A later single-file export removes the stale shards and index.
  options.max_shard_bytes = 1'000'000'000;
  export_hf(weights_of(model), m, dir.path(), options);
  EXPECT_FALSE(posix_fs::exists(dir.path() + "/model.safetensors.index.json"));
  EXPECT_FALSE(posix_fs::exists(dir.path() + "/" + *files.begin()));
}

// Cadre's rotary embedding is Hugging Face Llama's: q * cos + rotate_half(q) * sin with the
// frequencies repeated over both halves, rotate_half(x) = cat(-x2, x1). Written out here.
TEST(HfWeights, RotaryLayoutIsHuggingFaceRotateHalf) {
  const int64_t n = 7, heads = 3, dim = 8;
  const double theta = 500000;
  auto x = torch::randn({n, heads, dim});
  auto positions = torch::tensor(std::vector<int64_t>{0, 1, 2, 5, 100, 4096, 77777});
  auto ours = apply_rope(x, positions, theta);
  auto reference = torch::empty_like(x);
  for (int64_t t = 0; t < n; ++t) {
    const double pos = static_cast<double>(positions[t].item<int64_t>());
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < dim; ++i) {
        const int64_t j = i % (dim / 2);
        const double angle = pos / std::pow(theta, 2.0 * j / dim);
        const double xi = x[t][h][i].item<float>();
        const double rotated =
            i < dim / 2 ? -x[t][h][i + dim / 2].item<float>() : x[t][h][i - dim / 2].item<float>();
        reference[t][h][i] = xi * std::cos(angle) + rotated * std::sin(angle);
      }
    }
  }
  EXPECT_TRUE(torch::allclose(ours, reference, 1e-5, 1e-5))
      << (ours - reference).abs().max().item<float>();
}

// Llama 3.1's rotary scaling at sizes where all three regimes occur: head_dim 16, theta 1e4
// (wavelengths 6.3, 19.9, 62.8, 199, ...), original context 64, factor 4, low 1, high 4 (so
// wavelengths under 16 are kept, over 64 divided by 4, and between interpolated).
TEST(HfWeights, Llama3RopeScalingByHand) {
  config::ModelConfig m = tiny_model(false);
  m.set_head_dim(16);
  m.set_rope_theta(10000);
  m.set_rope_scaling("llama3");
  m.set_rope_scaling_factor(4);
  m.set_rope_low_freq_factor(1);
  m.set_rope_high_freq_factor(4);
  m.set_rope_original_max_positions(64);
  const auto f = rope_inverse_frequencies(m);
  ASSERT_EQ(f.size(), 8u);
  EXPECT_DOUBLE_EQ(f[0], 1.0);  // wavelength 2 pi: kept
  // i = 1: f = 1e4^(-1/8) = 0.316228, wavelength 19.869, smooth = (64/19.869 - 1)/3 = 0.74037,
  // (1 - smooth) f / 4 + smooth f = 0.2546479 (computed by hand to 7 digits).
  EXPECT_NEAR(f[1], 0.2546479, 1e-6);
  // i = 2: f = 0.1, wavelength 62.832 (just under 64), smooth = 0.0061972: 0.0254648.
  EXPECT_NEAR(f[2], 0.0254648, 1e-7);
  for (int i = 3; i < 8; ++i) EXPECT_DOUBLE_EQ(f[i], std::pow(10000.0, -i / 8.0) / 4) << i;
  m.set_rope_scaling("none");
  EXPECT_DOUBLE_EQ(rope_inverse_frequencies(m)[3], std::pow(10000.0, -3 / 8.0));
  m.set_rope_scaling("yarn");
  expect_error([&] { rope_inverse_frequencies(m); }, {"yarn", "none, llama3"});
}

TEST(HfWeights, Llama3RopeScalingTravelsThroughConfigJson) {
  TempDir dir;
  config::ModelConfig m = tiny_model(false);
  m.set_rope_scaling("llama3");
  m.set_rope_scaling_factor(32);
  m.set_rope_original_max_positions(64);  // wavelengths 6.3 kept, 62.8 interpolated, 628+ / 32
  LlamaModel model(m, 3);
  export_hf(weights_of(model), m, dir.path(), HfExportOptions());
  const auto j = nlohmann::json::parse(read_bytes(dir.path() + "/config.json"));
  EXPECT_EQ(j["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(j["rope_scaling"]["factor"], 32.0);
  EXPECT_EQ(j["rope_scaling"]["original_max_position_embeddings"], 64);
  const auto hf = read_hf_config(dir.path());
  EXPECT_EQ(hf.rope_scaling(), "llama3");
  EXPECT_EQ(hf.rope_scaling_factor(), 32);
  EXPECT_EQ(hf.rope_high_freq_factor(), 4);
  LlamaModel loaded(m, 4);
  load_hf_weights(loaded, dir.path());
  auto plain = m;
  plain.set_rope_scaling("none");
  expect_error([&] { check_hf_config_matches(plain, dir.path()); },
               {"rope_scaling llama3", "model.rope_scaling=none"});
  auto other = m;
  other.set_rope_scaling_factor(8);
  expect_error([&] { check_hf_config_matches(other, dir.path()); },
               {"rope_scaling.factor=32", "model.rope_scaling_factor=8"});
  // The scaled model attends differently from the plain one (positions past the original
  // context are where the frequencies change).
  LlamaModel unscaled(plain, 3);
  auto tokens = torch::randint(0, m.vocab_size(), {40}, torch::kLong);
  auto kernel = attention_server::make_kernel("cpu");
  auto layout = scheduler::layout_from_rank_documents({{40}});
  auto a = make_colocated_attention(layout, 0, *kernel);
  auto b = make_colocated_attention(layout, 0, *kernel);
  EXPECT_NE(model.loss_sum(tokens, {40}, *a).item<float>(),
            unscaled.loss_sum(tokens, {40}, *b).item<float>());
}

// The loaded model computes the same loss as the exported one (same weights, same layout).
TEST(HfWeights, LoadedModelGivesTheSameLoss) {
  TempDir dir;
  const auto m = tiny_model(true);
  LlamaModel model(m, 11);
  export_hf(weights_of(model), m, dir.path(), HfExportOptions());
  LlamaModel loaded(m, 12);
  load_hf_weights(loaded, dir.path());
  const std::vector<int64_t> lengths = {9, 4, 13};
  auto tokens = torch::randint(0, m.vocab_size(), {26}, torch::kLong);
  auto kernel = attention_server::make_kernel("cpu");
  auto layout = scheduler::layout_from_rank_documents({lengths});
  auto a = make_colocated_attention(layout, 0, *kernel);
  auto b = make_colocated_attention(layout, 0, *kernel);
  EXPECT_EQ(model.loss_sum(tokens, lengths, *a).item<float>(),
            loaded.loss_sum(tokens, lengths, *b).item<float>());
}

// ---------------------------------------------------------------------------------------------
// Bad files and mismatched architectures.

// An exported tiny model in `dir`, with `config.json` edited by `edit`.
void export_tiny(const TempDir& dir, bool tied = false) {
  const auto m = tiny_model(tied);
  LlamaModel model(m, 3);
  export_hf(weights_of(model), m, dir.path(), HfExportOptions());
}

void edit_config(const TempDir& dir, const std::function<void(nlohmann::json&)>& edit) {
  auto j = nlohmann::json::parse(read_bytes(dir.path() + "/config.json"));
  edit(j);
  write_bytes(dir.path() + "/config.json", j.dump());
}

TEST(HfWeights, TruncatedOrCorruptSafetensorsAreRefused) {
  TempDir dir;
  export_tiny(dir);
  const std::string path = dir.path() + "/model.safetensors";
  const std::string good = read_bytes(path);
  write_bytes(path, good.substr(0, 5));
  expect_error([&] { SafetensorsReader r(path); }, {path, "truncated", "8-byte header length"});
  write_bytes(path, good.substr(0, 100));  // the header is cut short
  expect_error([&] { SafetensorsReader r(path); }, {path, "truncated", "header declares"});
  write_bytes(path, good.substr(0, good.size() - 10));  // the last tensor is cut short
  expect_error([&] { SafetensorsReader r(path); }, {"lm_head.weight", "truncated"});
  std::string garbage = good;
  garbage[8] = '[';  // not a JSON object any more
  garbage[9] = '!';
  write_bytes(path, garbage);
  expect_error([&] { SafetensorsReader r(path); }, {path, "not valid JSON"});
  write_bytes(path, std::string(8, '\xff') + "{}");
  expect_error([&] { SafetensorsReader r(path); }, {"declares a header of"});
}

// A safetensors file of one tensor with a hand-written header.
void write_one_tensor(const std::string& path, const std::string& header_json,
                      const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header_json.size() >> (8 * i)) & 0xff);
  write_bytes(path, out + header_json + data);
}

TEST(HfWeights, SafetensorsHeadersAreValidated) {
  TempDir dir;
  const std::string path = dir.path() + "/x.safetensors";
  write_one_tensor(path, R"({"a":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,2]}})",
                   std::string(2, '\0'));
  expect_error([&] { SafetensorsReader r(path); }, {"tensor 'a'", "F8_E9", "accepted: F32, BF16"});
  write_one_tensor(path, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                   std::string(8, '\0'));
  expect_error([&] { SafetensorsReader r(path); }, {"tensor 'a'", "holds 8 bytes", "need 12"});
  write_one_tensor(path,
                   R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                   std::string(12, '\0'));
  expect_error([&] { SafetensorsReader r(path); }, {"'a' and 'b' overlap"});
  write_one_tensor(path, R"({"a":{"dtype":"F32","shape":[2]}})", std::string(8, '\0'));
  expect_error([&] { SafetensorsReader r(path); }, {"tensor 'a'", "lacks dtype, shape or"});
  // A well-formed one reads back.
  const float values[2] = {1.5f, -2.25f};
  write_one_tensor(
      path,
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      std::string(reinterpret_cast<const char*>(values), 8));
  SafetensorsReader r(path);
  EXPECT_EQ(r.metadata().at("format"), "pt");
  EXPECT_EQ(r.read("a")[1].item<float>(), -2.25f);
  expect_error([&] { r.read("b"); }, {"no tensor 'b'"});
}

TEST(HfWeights, WrongDtypeMissingTensorAndShapeMismatchAreNamed) {
  const auto m = tiny_model(false);
  LlamaModel model(m, 3);
  {
    TempDir dir;
    auto w = weights_of(model);
    w[2].second = w[2].second.to(torch::kLong);  // layers.0.wq as int64
    // export converts to fp32, so write the file directly with HF names.
    std::vector<std::pair<std::string, torch::Tensor>> hf;
    for (const auto& [n, t] : w) hf.emplace_back(hf_parameter_name(n), t);
    export_tiny(dir);
    write_safetensors(dir.path() + "/model.safetensors", hf);
    LlamaModel target(m, 4);
    expect_error(
        [&] { load_hf_weights(target, dir.path()); },
        {"model.layers.0.self_attn.q_proj.weight", "dtype I64", "accepted: F32, BF16, F16"});
  }
  {
    TempDir dir;
    export_tiny(dir);
    std::vector<std::pair<std::string, torch::Tensor>> hf;
    for (const auto& [n, t] : weights_of(model)) {
      if (n != "layers.1.w_up") hf.emplace_back(hf_parameter_name(n), t);
    }
    write_safetensors(dir.path() + "/model.safetensors", hf);
    LlamaModel target(m, 4);
    expect_error([&] { load_hf_weights(target, dir.path()); },
                 {"lacks tensor 'model.layers.1.mlp.up_proj.weight'", "layers.1.w_up"});
  }
  {
    TempDir dir;
    export_tiny(dir);
    std::vector<std::pair<std::string, torch::Tensor>> hf;
    for (const auto& [n, t] : weights_of(model)) {
      hf.emplace_back(hf_parameter_name(n), n == "layers.0.wk" ? t.narrow(0, 0, 8) : t);
    }
    write_safetensors(dir.path() + "/model.safetensors", hf);
    LlamaModel target(m, 4);
    expect_error(
        [&] { load_hf_weights(target, dir.path()); },
        {"model.layers.0.self_attn.k_proj.weight", "is [8, 32]", "needs [16, 32]", "num_kv_heads"});
  }
  {
    TempDir dir;  // a tensor the model has no place for (a third layer)
    export_tiny(dir);
    std::vector<std::pair<std::string, torch::Tensor>> hf;
    for (const auto& [n, t] : weights_of(model)) hf.emplace_back(hf_parameter_name(n), t);
    hf.emplace_back("model.layers.2.mlp.up_proj.weight", torch::zeros({48, 32}));
    write_safetensors(dir.path() + "/model.safetensors", hf);
    LlamaModel target(m, 4);
    expect_error([&] { load_hf_weights(target, dir.path()); },
                 {"model.layers.2.mlp.up_proj.weight", "has no place for"});
  }
  {
    TempDir dir;  // neither weights file
    export_tiny(dir);
    posix_fs::remove_file(dir.path() + "/model.safetensors");
    LlamaModel target(m, 4);
    expect_error([&] { load_hf_weights(target, dir.path()); },
                 {"neither model.safetensors nor model.safetensors.index.json"});
  }
  {
    TempDir dir;  // a shard named by the index is missing
    HfExportOptions options;
    options.max_shard_bytes = 20'000;
    export_hf(weights_of(model), m, dir.path(), options);
    const auto index =
        nlohmann::json::parse(read_bytes(dir.path() + "/model.safetensors.index.json"));
    const std::string shard = index["weight_map"]["model.norm.weight"];
    posix_fs::remove_file(dir.path() + "/" + shard);
    LlamaModel target(m, 4);
    expect_error([&] { load_hf_weights(target, dir.path()); },
                 {"cannot open safetensors file", shard});
  }
}

TEST(HfWeights, ArchitectureMismatchNamesTheFirstField) {
  TempDir dir;
  export_tiny(dir);
  auto m = tiny_model(false);
  check_hf_config_matches(m, dir.path());  // the same model: no error
  struct Case {
    std::function<void(config::ModelConfig&)> change;
    std::vector<std::string> pieces;
  };
  const std::vector<Case> cases = {
      {[](auto& c) { c.set_vocab_size(51); }, {"vocab_size=50", "model.vocab_size=51"}},
      {[](auto& c) { c.set_num_heads(8); }, {"num_attention_heads=4", "model.num_heads=8"}},
      {[](auto& c) { c.set_num_kv_heads(4); }, {"num_key_value_heads=2", "model.num_kv_heads=4"}},
      {[](auto& c) { c.set_rope_theta(500000); }, {"rope_theta=10000", "model.rope_theta=500000"}},
      {[](auto& c) { c.set_tie_embeddings(true); },
       {"tie_word_embeddings=false", "model.tie_embeddings=true", "from_init"}},
      // Several differ: the vocabulary is named first.
      {[](auto& c) {
         c.set_num_kv_heads(4);
         c.set_vocab_size(7);
       },
       {"vocab_size=50"}},
  };
  for (const Case& c : cases) {
    auto changed = m;
    c.change(changed);
    expect_error([&] { check_hf_config_matches(changed, dir.path()); }, c.pieces);
  }
  // Loading checks too.
  auto other = m;
  other.set_num_kv_heads(4);
  LlamaModel model(other, 1);
  expect_error([&] { load_hf_weights(model, dir.path()); }, {"num_key_value_heads=2"});
}

TEST(HfWeights, ConfigFeaturesCadreLacksAreRefused) {
  TempDir dir;
  export_tiny(dir);
  const std::string config = read_bytes(dir.path() + "/config.json");
  const std::vector<std::pair<std::function<void(nlohmann::json&)>, std::vector<std::string>>>
      cases = {
          {[](auto& j) { j["model_type"] = "qwen2"; }, {"model_type \"qwen2\"", "\"llama\""}},
          {[](auto& j) {
             j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 32}};
           },
           {"rope_scaling", "yarn", "not implemented"}},
          {[](auto& j) { j["attention_bias"] = true; }, {"attention_bias true", "no bias"}},
          {[](auto& j) { j["hidden_act"] = "gelu"; }, {"hidden_act \"gelu\"", "silu"}},
          {[](auto& j) { j.erase("hidden_size"); }, {"lacks \"hidden_size\""}},
      };
  for (const auto& [edit, pieces] : cases) {
    write_bytes(dir.path() + "/config.json", config);
    edit_config(dir, edit);
    expect_error([&] { read_hf_config(dir.path()); }, pieces);
  }
  write_bytes(dir.path() + "/config.json", "{\"model_type\": ");
  expect_error([&] { read_hf_config(dir.path()); }, {"config.json", "not valid JSON"});
  // Keys left out take transformers' LlamaConfig defaults; rope_parameters (newer files) is read.
  write_bytes(dir.path() + "/config.json", config);
  edit_config(dir, [](auto& j) {
    j.erase("num_key_value_heads");
    j.erase("head_dim");
    j.erase("rope_theta");
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 123456.0}};
  });
  const auto hf = read_hf_config(dir.path());
  EXPECT_EQ(hf.num_kv_heads(), 4);  // = num_attention_heads
  EXPECT_EQ(hf.head_dim(), 8);      // hidden 32 / 4 heads
  EXPECT_EQ(hf.rope_theta(), 123456.0);
}

TEST(HfWeights, FillFromInitTakesUnsetSizesOnly) {
  TempDir dir;
  export_tiny(dir, /*tied=*/true);
  config::ModelConfig m;
  m.set_preset("from_init");
  m.set_norm_eps(1e-5);
  fill_model_from_hf(&m, dir.path());
  EXPECT_EQ(m.num_layers(), 2);
  EXPECT_EQ(m.hidden_size(), 32);
  EXPECT_EQ(m.num_kv_heads(), 2);
  EXPECT_EQ(m.vocab_size(), 50);
  EXPECT_TRUE(m.tie_embeddings());
  EXPECT_EQ(m.rope_theta(), 10000);
  config::ModelConfig explicit_heads;
  explicit_heads.set_num_heads(8);
  fill_model_from_hf(&explicit_heads, dir.path());
  EXPECT_EQ(explicit_heads.num_heads(), 8);  // kept, for the check to report
  expect_error([&] { check_hf_config_matches(explicit_heads, dir.path()); },
               {"num_attention_heads=4", "model.num_heads=8"});
}

}  // namespace
}  // namespace cadre::runtime
