// `cadre calibrate`: fits a step-cost calibration file from training profiles and `bench kernel`
// / `bench comm` results (CPU; deterministic), and `cadre simulate --training-step`: prices the
// steps `cadre train` would run with a config (its own documents, nano-batches, plans and
// overlap) with a calibration, for validation against measured runs.
#include <fstream>
#include <iostream>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "runtime/data.h"
#include "scheduler/step_calibration.h"
#include "scheduler/step_model.h"

namespace cadre::launch {
namespace {

const char* kCalibrateUsage =
    "usage: cadre calibrate --profiles FILE... [--kernel FILE...] [--comm FILE...]\n"
    "                       [--config FILE] [--set PATH=VALUE ...] [--out FILE]\n\n"
    "Fits the simulator's step costs (docs/simulation.md, \"Calibration\") to measured runs:\n"
    "  --profiles FILE...  profile.json of `cadre train` runs with output.profile=true\n"
    "  --kernel FILE...    `cadre bench kernel` JSON results (each one's calibration grid becomes\n"
    "                      an attention table) or attention tables: one per head dim and GQA/MHA;\n"
    "                      each model is priced with the table of its kernel shape\n"
    "  --comm FILE...      `cadre bench comm` JSON results (intra-node link latency and "
    "bandwidth)\n"
    "  --out FILE          the calibration file (default: stdout); cluster.calibration loads it\n"
    "The cluster config prices links nothing measured (cluster.*_bandwidth_gbps). The output is\n"
    "deterministic: the same inputs give the same bytes.\n";

std::string read_text(const std::string& path, const std::string& what) {
  std::ifstream in(path);
  CADRE_CHECK(in.good(), "cannot read ", what, " '", path, "'; accepted: a readable JSON file");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

const char* kTrainingStepUsage =
    "usage: cadre simulate --training-step [--config FILE] [--set PATH=VALUE ...]\n\n"
    "Prices the steps `cadre train` runs with this config, one rank per cluster.num_gpus: the\n"
    "data loader's documents per rank and step, the trainer's nano-batches and plans, the step\n"
    "executor's order on a compute and a communication stream per rank (ping-pong overlap,\n"
    "bucketed gradient all-reduce), the optimizer step, host overhead and memory per rank by\n"
    "component, with cluster.calibration (default: the built-in H200 calibration). Prints one\n"
    "JSON object: the means over the steps after training.warmup_steps-like warm-up (steps 3..N\n"
    "when N > 3, as `cadre train`'s summary) and each step's time.\n";

}  // namespace

int run_calibrate(const Args& args) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kCalibrateUsage << "\n" << config_options_help();
      return 0;
    }
  }
  std::vector<std::string> rest;
  config::RunConfig config = raw_config_from_args(args, &rest);
  scheduler::CalibrationInputs inputs;
  inputs.cluster = config.cluster();
  std::string out;
  std::vector<std::string>* list = nullptr;
  std::vector<std::string> profiles, kernels, comms;
  for (size_t i = 0; i < rest.size(); ++i) {
    const std::string& a = rest[i];
    if (a == "--profiles") {
      list = &profiles;
    } else if (a == "--kernel") {
      list = &kernels;
    } else if (a == "--comm") {
      list = &comms;
    } else if (a == "--out") {
      CADRE_CHECK(i + 1 < rest.size(), "--out needs a file path");
      out = rest[++i];
      list = nullptr;
    } else {
      CADRE_CHECK(list != nullptr && a.rfind("--", 0) != 0, "cadre calibrate: unknown argument '",
                  a,
                  "'; accepted: --profiles FILE..., --kernel FILE..., --comm FILE..., --out "
                  "FILE, --config FILE, --set PATH=VALUE");
      list->push_back(a);
    }
  }
  CADRE_CHECK(!profiles.empty(),
              "cadre calibrate: no --profiles; accepted: one or more "
              "profile.json files of `cadre train` runs with output.profile=true");
  for (const auto& p : profiles) {
    inputs.profiles.push_back(scheduler::parse_profile_json(read_text(p, "profile"), p));
    inputs.profile_names.push_back(p);
  }
  for (const auto& k : kernels) {
    inputs.kernel_json.push_back(read_text(k, "kernel results"));
    inputs.kernel_names.push_back(k);
  }
  for (const auto& c : comms) {
    inputs.comm_json.push_back(read_text(c, "comm results"));
    inputs.comm_names.push_back(c);
  }
  scheduler::StepCalibration calibration = scheduler::fit_step_calibration(inputs);
  // Memory from the profiles that measured peaks (the GPU build's), priced on their documents.
  const int with_peaks = scheduler::fit_memory(inputs.profiles, &calibration);
  if (with_peaks == 0) {
    calibration.notes.push_back("memory: no profile measured peaks; activation scale 1, fixed 0");
  }
  const std::string json = scheduler::step_calibration_json(calibration) + "\n";
  if (out.empty()) {
    std::cout << json;
  } else {
    write_file_atomically(out, json);
    std::cout << "calibration " << out << "\n";
  }
  return 0;
}

int run_simulate_training_step(const Args& args) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kTrainingStepUsage << "\n" << config_options_help();
      return 0;
    }
  }
  std::vector<std::string> rest;
  config::RunConfig config = config_from_args(args, &rest);
  for (const auto& a : rest) {
    CADRE_CHECK(a == "--training-step", "cadre simulate --training-step: unknown argument '", a,
                "'; accepted: --config FILE, --set PATH=VALUE");
  }
  const auto& training = config.training();
  const int world = config.cluster().num_gpus();
  const bool dedicated = config.scheduler().server_mode() == "dedicated";
  const int workers = dedicated ? world - config.scheduler().num_dedicated_servers() : world;
  CADRE_CHECK(workers >= 1, "cluster.num_gpus ", world, " leaves no workers");
  const scheduler::StepCalibration calibration = scheduler::step_calibration_for(config.cluster());
  std::vector<runtime::DataLoader> loaders;
  for (int r = 0; r < workers; ++r) {
    loaders.emplace_back(config.data(), config.model().vocab_size(), r, workers);
  }
  const int steps = training.steps();
  const int skip = steps > 3 ? 2 : 0;
  std::vector<scheduler::StepPrice> prices;
  for (int s = 0; s < steps; ++s) {
    std::vector<scheduler::MicroBatchDocuments> micro(training.micro_batches());
    for (auto& mb : micro) {
      for (int r = 0; r < workers; ++r) {
        runtime::RankBatch b = loaders[r].next();
        mb.push_back({b.doc_lengths, b.first_continues, b.last_continues});
      }
    }
    prices.push_back(scheduler::price_training_step(config, micro, calibration));
  }
  double n = 0;
  scheduler::StepPrice mean;
  scheduler::MemoryByComponent peak;
  for (int s = skip; s < steps; ++s) {
    const auto& p = prices[s];
    n += 1;
    mean.step_us += p.step_us;
    mean.compute_us += p.compute_us;
    mean.attention_us += p.attention_us;
    mean.linear_us += p.linear_us;
    mean.recompute_us += p.recompute_us;
    mean.head_embedding_us += p.head_embedding_us;
    mean.optimizer_us += p.optimizer_us;
    mean.a2a_us += p.a2a_us;
    mean.exposed_a2a_us += p.exposed_a2a_us;
    mean.grad_reduce_us += p.grad_reduce_us;
    mean.exposed_grad_reduce_us += p.exposed_grad_reduce_us;
    mean.overhead_us += p.overhead_us;
    mean.a2a_bytes += p.a2a_bytes;
  }
  for (const auto& p : prices) {
    if (p.memory.peak_gib > peak.peak_gib) peak = p.memory;
  }
  std::ostringstream o;
  o.precision(6);
  auto ms = [&](double us) { return us / n / 1e3; };
  o << "{\"gpus\":" << world << ",\"workers\":" << workers << ",\"attention\":\""
    << training.attention() << "\",\"ping_pong\":"
    << (training.attention() == "cad" && training.ping_pong() ? "true" : "false")
    << ",\"distribution\":\"" << config.data().distribution()
    << "\",\"context_length\":" << config.data().context_length() << ",\"calibration\":\""
    << (config.cluster().calibration().empty() ? "(built-in)" : config.cluster().calibration())
    << "\",\"measured_steps\":" << n << ",\"step_ms\":" << ms(mean.step_us)
    << ",\"compute_ms\":" << ms(mean.compute_us) << ",\"attention_ms\":" << ms(mean.attention_us)
    << ",\"linear_ms\":" << ms(mean.linear_us) << ",\"recompute_ms\":" << ms(mean.recompute_us)
    << ",\"head_embedding_ms\":" << ms(mean.head_embedding_us)
    << ",\"optimizer_ms\":" << ms(mean.optimizer_us) << ",\"a2a_ms\":" << ms(mean.a2a_us)
    << ",\"exposed_a2a_ms\":" << ms(mean.exposed_a2a_us)
    << ",\"grad_reduce_ms\":" << ms(mean.grad_reduce_us)
    << ",\"exposed_grad_reduce_ms\":" << ms(mean.exposed_grad_reduce_us)
    << ",\"overhead_ms\":" << ms(mean.overhead_us) << ",\"a2a_bytes\":" << mean.a2a_bytes / n
    << ",\"memory\":{\"weights_gib\":" << peak.weights_gib
    << ",\"gradients_gib\":" << peak.gradients_gib << ",\"optimizer_gib\":" << peak.optimizer_gib
    << ",\"activations_gib\":" << peak.activations_gib
    << ",\"weight_copies_gib\":" << peak.weight_copies_gib
    << ",\"residual_gib\":" << peak.residual_gib << ",\"loss_gib\":" << peak.loss_gib
    << ",\"backward_gib\":" << peak.backward_gib << ",\"attention_gib\":" << peak.attention_gib
    << ",\"optimizer_step_gib\":" << peak.optimizer_step_gib << ",\"fixed_gib\":" << peak.fixed_gib
    << ",\"phase\":\"" << peak.phase << "\",\"elementwise_ops\":\""
    << config.simulate().elementwise_ops() << "\",\"peak_gib\":" << peak.peak_gib
    << "},\"steps_ms\":[";
  for (size_t s = 0; s < prices.size(); ++s) {
    o << (s ? "," : "") << prices[s].step_us / 1e3;
  }
  o << "],\"nano_tokens\":[";  // per step, per worker, per nano-batch
  for (size_t s = 0; s < prices.size(); ++s) {
    o << (s ? "," : "") << "[";
    for (size_t r = 0; r < prices[s].nano_tokens.size(); ++r) {
      o << (r ? "," : "") << "[";
      for (size_t j = 0; j < prices[s].nano_tokens[r].size(); ++j) {
        o << (j ? "," : "") << prices[s].nano_tokens[r][j];
      }
      o << "]";
    }
    o << "]";
  }
  o << "]}\n";
  std::cout << o.str();
  return 0;
}

}  // namespace cadre::launch
