// `cadre export`: a Cadre checkpoint's model weights as a Hugging Face LlamaForCausalLM
// directory, or DeepseekV3ForCausalLM for latent attention (config.json + safetensors, sharded
// above a size limit).
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "runtime/checkpoint.h"
#include "runtime/hf_weights.h"

namespace cadre::launch {
namespace {

const char* kUsage =
    "usage: cadre export --checkpoint FILE --out DIR [--dtype fp32|bf16] [--max-shard-size SIZE]\n"
    "                    [--config FILE] [--set PATH=VALUE ...]\n\n"
    "Writes the model weights of a `cadre train` checkpoint in Hugging Face layout, readable by\n"
    "transformers' LlamaForCausalLM.from_pretrained(DIR) (DeepseekV3ForCausalLM for latent\n"
    "attention, model.kv_latent_dim > 0, every layer dense) and by training.init_from:\n"
    "  DIR/config.json          the sizes from the model section of the config\n"
    "  DIR/model.safetensors    the weights, or model-0000K-of-0000N.safetensors shards and\n"
    "                           model.safetensors.index.json when they exceed --max-shard-size\n"
    "Give the same --config / --set as the training run: checkpoints hold tensors, not the\n"
    "model's head count or rope theta. Parameter names are mapped as docs/weights.md lists.\n\n"
    "options:\n"
    "  --checkpoint FILE     a checkpoint written by cadre train (training.checkpoint_dir)\n"
    "  --out DIR             output directory (created; earlier weight files in it are replaced)\n"
    "  --dtype fp32|bf16     dtype of the written tensors (default fp32, Cadre's master weights)\n"
    "  --max-shard-size SIZE bytes per shard, with K/M/G suffixes (powers of 1000, as Hugging\n"
    "                        Face counts; default 5G)\n\n";

int64_t parse_bytes(const std::string& text) {
  std::string digits = text;
  int64_t scale = 1;
  if (!digits.empty() && (digits.back() == 'B' || digits.back() == 'b')) digits.pop_back();
  if (!digits.empty()) {
    const char unit = digits.back();
    if (unit == 'K' || unit == 'k') scale = 1000;
    if (unit == 'M' || unit == 'm') scale = 1000 * 1000;
    if (unit == 'G' || unit == 'g') scale = 1000 * 1000 * 1000;
    if (scale > 1) digits.pop_back();
  }
  size_t used = 0;
  int64_t value = -1;
  try {
    value = std::stoll(digits, &used);
  } catch (...) {
    used = 0;
  }
  CADRE_CHECK(!digits.empty() && used == digits.size() && value > 0, "--max-shard-size has '", text,
              "'; accepted: a positive byte count, optionally with K, M or G (e.g. 5G)");
  return value * scale;
}

}  // namespace

int run_export(const Args& args) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kUsage << config_options_help();
      return 0;
    }
  }
  std::vector<std::string> rest;
  config::RunConfig config = config_from_args(args, &rest);
  std::string checkpoint, out;
  runtime::HfExportOptions options;
  options.max_position_embeddings = config.data().context_length();
  for (size_t i = 0; i < rest.size(); ++i) {
    const std::string& flag = rest[i];
    CADRE_CHECK(flag == "--checkpoint" || flag == "--out" || flag == "--dtype" ||
                    flag == "--max-shard-size",
                "unknown option '", flag,
                "'; accepted: --checkpoint, --out, --dtype, "
                "--max-shard-size, --config, --set (see cadre export --help)");
    CADRE_CHECK(i + 1 < rest.size(), flag, " needs a value (see cadre export --help)");
    const std::string value = rest[++i];
    if (flag == "--checkpoint") checkpoint = value;
    if (flag == "--out") out = value;
    if (flag == "--dtype") {
      CADRE_CHECK(value == "fp32" || value == "bf16", "--dtype has '", value,
                  "'; accepted: fp32, bf16");
      options.dtype = value;
    }
    if (flag == "--max-shard-size") options.max_shard_bytes = parse_bytes(value);
  }
  CADRE_CHECK(!checkpoint.empty(),
              "--checkpoint FILE is required; accepted: a checkpoint "
              "written by cadre train, e.g. out/checkpoints/step_00000020.ckpt");
  CADRE_CHECK(!out.empty(),
              "--out DIR is required; accepted: a directory to write the Hugging "
              "Face model into");
  const runtime::CheckpointState state = runtime::read_checkpoint(checkpoint);
  std::vector<std::pair<std::string, torch::Tensor>> weights;
  const std::string prefix = "model/";
  for (const auto& [name, tensor] : state.tensors) {
    if (name.compare(0, prefix.size(), prefix) == 0) {
      weights.emplace_back(name.substr(prefix.size()), tensor);
    }
  }
  CADRE_CHECK(!weights.empty(), "checkpoint '", checkpoint,
              "' holds no model/ tensors; "
              "accepted: a checkpoint written by cadre train");
  std::vector<std::string> written;
  try {
    written = runtime::export_hf(weights, config.model(), out, options);
  } catch (const Error& e) {
    CADRE_FAIL("checkpoint '", checkpoint, "': ", e.message());
  }
  int64_t parameters = 0;
  for (const auto& [name, tensor] : weights) parameters += tensor.numel();
  if (!config.output().quiet()) {
    std::cout << "exported " << parameters << " parameters (" << options.dtype << ") from "
              << checkpoint << " to " << out << ":\n";
    for (const auto& path : written) std::cout << "  " << path << "\n";
    const config::ModelConfig& m = config.model();
    if (m.kv_latent_dim() > 0 && m.norm_eps() != 1e-6) {
      std::cout << "note: transformers' DeepSeek normalises the query and K/V latents with eps "
                   "1e-6 whatever rms_norm_eps says; this model uses model.norm_eps="
                << m.norm_eps()
                << " there, so transformers' outputs differ slightly from Cadre's "
                   "(docs/weights.md)\n";
    }
  }
  return 0;
}

}  // namespace cadre::launch
