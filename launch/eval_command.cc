// `cadre eval`: the held-out loss of a checkpoint, and for a multi-head latent attention model
// the same checkpoint run in TPLA form (arXiv 2508.15881's drop-in use: the latent split into T
// slices, a softmax per slice, outputs summed) for each T and transform asked for, with the loss
// change against exact MLA. One process; TPLA's slices are computed one after another on it.
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "attention_server/kernel.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "runtime/attention_op.h"
#include "runtime/checkpoint.h"
#include "runtime/data.h"
#include "runtime/model.h"
#include "scheduler/plan.h"

namespace cadre::launch {
namespace {

const char* kUsage =
    "usage: cadre eval --checkpoint FILE [--batches N] [--skip-steps N] [--tpla T,...]\n"
    "                  [--tpla-transform none,hadamard] [--out FILE.json]\n"
    "                  [--config FILE] [--set PATH=VALUE ...]\n\n"
    "Mean next-token loss (nats per target) of a `cadre train` checkpoint on N held-out batches\n"
    "of the data section (one batch = data.context_length tokens). Synthetic data: the batches\n"
    "after --skip-steps of them (default training.steps: those the run did not train on; the\n"
    "successor table stays that of data.seed, so the task is the trained one). A token file:\n"
    "point data.token_file at the held-out file. Give the model section\n"
    "of the training run (--config / --set): checkpoints hold tensors, not sizes.\n"
    "For a latent-attention model (model.kv_latent_dim > 0) the checkpoint is also run in TPLA\n"
    "form for each T of --tpla and each transform of --tpla-transform, and the table gives the\n"
    "loss change against exact MLA (docs/latent_attention.md).\n\n"
    "options:\n"
    "  --checkpoint FILE         a checkpoint written by cadre train\n"
    "  --batches N               held-out batches (default 8)\n"
    "  --skip-steps N            batches skipped first (default training.steps)\n"
    "  --tpla T,...              TPLA slice counts, each dividing model.kv_latent_dim (e.g. 2,4)\n"
    "  --tpla-transform LIST     none, hadamard or both (default none,hadamard)\n"
    "  --out FILE.json           also write the results there (atomically)\n\n";

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

int64_t parse_count(const std::string& flag, const std::string& text, int64_t min) {
  size_t used = 0;
  int64_t value = min - 1;
  try {
    value = std::stoll(text, &used);
  } catch (...) {
    used = 0;
  }
  CADRE_CHECK(used == text.size() && value >= min, flag, " has '", text,
              "'; accepted: an integer >= ", min);
  return value;
}

struct Batch {
  torch::Tensor tokens;
  std::vector<int64_t> docs;
};

// Mean loss per target of `model` over `batches`, colocated attention with `kernel`.
double mean_loss(const runtime::LlamaModel& model, const std::vector<Batch>& batches,
                 attention_server::CoreAttentionKernel& kernel) {
  torch::NoGradGuard no_grad;
  double sum = 0;
  int64_t targets = 0;
  for (const Batch& b : batches) {
    auto op = runtime::make_colocated_attention(scheduler::layout_from_rank_documents({b.docs}), 0,
                                                kernel);
    sum += model.loss_sum(b.tokens, b.docs, *op).item<double>();
    for (int64_t n : b.docs) targets += std::max<int64_t>(0, n - 1);
  }
  CADRE_CHECK(targets > 0, "the held-out batches have no targets (documents of one token)");
  return sum / static_cast<double>(targets);
}

// Copies a checkpoint's model/ tensors into `model` by name (whole tensors, one process);
// `convert` may rewrite a tensor first (TPLA's transformed up-projection).
void load_weights(runtime::LlamaModel& model, const runtime::CheckpointState& state,
                  const std::string& path) {
  std::map<std::string, torch::Tensor> stored;
  for (const auto& [name, tensor] : state.tensors) stored[name] = tensor;
  torch::NoGradGuard no_grad;
  for (const auto& p : model.parameters()) {
    auto it = stored.find("model/" + p.name);
    CADRE_CHECK(it != stored.end(), "checkpoint '", path, "' has no tensor model/", p.name,
                "; accepted: a checkpoint of the model the --config/--set describe");
    torch::Tensor value = it->second;
    CADRE_CHECK(value.sizes() == p.value.sizes(), "checkpoint '", path, "': model/", p.name,
                " is ", value.sizes(), " but the configured model has ", p.value.sizes(),
                "; accepted: the model section of the training run");
    if (p.name.size() > 6 && p.name.compare(p.name.size() - 6, 6, ".wkv_b") == 0 &&
        model.tpla()) {
      value = runtime::tpla_up_projection(value, model.config());
    }
    p.value.copy_(value);
  }
}

}  // namespace

int run_eval(const Args& args) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kUsage << config_options_help();
      return 0;
    }
  }
  std::vector<std::string> rest;
  config::RunConfig config = config_from_args(args, &rest);
  std::string checkpoint, out;
  int64_t batches = 8;
  int64_t skip = config.training().steps();
  std::vector<int64_t> tpla_parts;
  std::vector<std::string> transforms = {"none", "hadamard"};
  for (size_t i = 0; i < rest.size(); ++i) {
    const std::string& flag = rest[i];
    CADRE_CHECK(flag == "--checkpoint" || flag == "--batches" || flag == "--skip-steps" ||
                    flag == "--tpla" || flag == "--tpla-transform" || flag == "--out",
                "unknown option '", flag,
                "'; accepted: --checkpoint, --batches, --skip-steps, --tpla, --tpla-transform, "
                "--out, --config, --set (see cadre eval --help)");
    CADRE_CHECK(i + 1 < rest.size(), flag, " needs a value (see cadre eval --help)");
    const std::string value = rest[++i];
    if (flag == "--checkpoint") checkpoint = value;
    if (flag == "--out") out = value;
    if (flag == "--batches") batches = parse_count(flag, value, 1);
    if (flag == "--skip-steps") skip = parse_count(flag, value, 0);
    if (flag == "--tpla") {
      tpla_parts.clear();
      for (const auto& t : split_list(value)) tpla_parts.push_back(parse_count(flag, t, 2));
      CADRE_CHECK(!tpla_parts.empty(), "--tpla has '", value,
                  "'; accepted: slice counts >= 2, comma-separated (e.g. 2,4)");
    }
    if (flag == "--tpla-transform") {
      transforms = split_list(value);
      CADRE_CHECK(!transforms.empty(), "--tpla-transform is empty; accepted: none, hadamard");
      for (const auto& t : transforms) {
        CADRE_CHECK(t == "none" || t == "hadamard", "--tpla-transform has '", t,
                    "'; accepted: none, hadamard (comma-separated)");
      }
    }
  }
  CADRE_CHECK(!checkpoint.empty(), "--checkpoint FILE is required; accepted: a checkpoint "
              "written by cadre train, e.g. out/checkpoints/step_00000020.ckpt");
  const config::ModelConfig& m = config.model();
  CADRE_CHECK(tpla_parts.empty() || m.kv_latent_dim() > 0, "--tpla needs a latent-attention "
              "model (model.kv_latent_dim > 0); this model has grouped-query attention");
  CADRE_CHECK(!m.tpla(), "model.tpla=true: give the MLA model (model.tpla=false); cadre eval "
              "runs it in TPLA form for each --tpla T itself");
  for (int64_t t : tpla_parts) {
    CADRE_CHECK(m.kv_latent_dim() % t == 0, "--tpla ", t, " does not divide model.kv_latent_dim=",
                m.kv_latent_dim(), "; accepted: a divisor of it");
  }

  const runtime::CheckpointState state = runtime::read_checkpoint(checkpoint);
  runtime::DataLoader loader(config.data(), m.vocab_size(), 0, 1);
  if (!config.data().token_file().empty()) skip = 0;  // a held-out file is read from its start
  for (int64_t i = 0; i < skip; ++i) loader.next();
  std::vector<Batch> held_out;
  for (int64_t i = 0; i < batches; ++i) {
    runtime::RankBatch b = loader.next();
    held_out.push_back({b.tokens, b.doc_lengths});
  }
  auto kernel = attention_server::make_cpu_kernel();
  runtime::LlamaModel exact(m, 0);
  load_weights(exact, state, checkpoint);
  const double exact_loss = mean_loss(exact, held_out, *kernel);

  struct Row {
    int64_t parts;
    std::string transform;
    double loss;
  };
  std::vector<Row> rows;
  for (int64_t parts : tpla_parts) {
    for (const std::string& transform : transforms) {
      config::ModelConfig tm = m;
      tm.set_tpla(true);
      tm.set_tpla_transform(transform);
      runtime::LlamaModel tpla(tm, 0, torch::kCPU, nullptr, parts);
      load_weights(tpla, state, checkpoint);
      rows.push_back({parts, transform, mean_loss(tpla, held_out, *kernel)});
    }
  }

  int64_t tokens = 0;
  for (const Batch& b : held_out) tokens += b.tokens.size(0);
  std::ostringstream json;
  json << std::setprecision(9) << "{\n  \"checkpoint\": \"" << checkpoint << "\",\n  \"batches\": "
       << batches << ",\n  \"tokens\": " << tokens << ",\n  \"skipped_steps\": " << skip
       << ",\n  \"loss\": " << exact_loss << ",\n  \"tpla\": [";
  for (size_t i = 0; i < rows.size(); ++i) {
    json << (i ? "," : "") << "\n    {\"parts\": " << rows[i].parts << ", \"transform\": \""
         << rows[i].transform << "\", \"loss\": " << rows[i].loss
         << ", \"delta\": " << rows[i].loss - exact_loss << "}";
  }
  json << (rows.empty() ? "" : "\n  ") << "]\n}\n";
  if (!out.empty()) write_file_atomically(out, json.str());
  if (!config.output().quiet()) {
    std::cout << std::fixed << std::setprecision(4) << "held-out loss " << exact_loss
              << " nats/target over " << tokens << " tokens (" << batches << " batches)" << (m.kv_latent_dim() > 0 ? ", exact MLA" : "") << "\n";
    if (!rows.empty()) {
      std::cout << "| TPLA slices | transform | loss | change vs MLA |\n|---|---|---|---|\n";
      for (const Row& r : rows) {
        std::cout << "| " << r.parts << " | " << r.transform << " | " << r.loss << " | "
                  << std::showpos << r.loss - exact_loss << std::noshowpos << " ("
                  << std::setprecision(2) << 100.0 * (r.loss - exact_loss) / exact_loss
                  << "%) |\n"
                  << std::setprecision(4);
      }
    }
  }
  return 0;
}

}  // namespace cadre::launch
