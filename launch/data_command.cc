// `cadre data inspect PATH`: what a corpus holds (documents, tokens, a length histogram) and what
// CAD would gain on its length mix, priced by the simulator at a chosen cluster size.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/posix_fs.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "runtime/corpus.h"
#include "runtime/indexed_dataset.h"
#include "scheduler/simulator.h"

namespace cadre::launch {
namespace {

const char* kUsage =
    "usage: cadre data inspect PATH [options] [--config FILE] [--set PATH=VALUE ...]\n\n"
    "Prints the document count, token count and document-length histogram of a training\n"
    "corpus, and the step time `cadre simulate` predicts for that length mix under CAD and the\n"
    "baselines, so you can see before training whether your data is the kind CAD helps.\n\n"
    "PATH is a Megatron-LM indexed dataset prefix (PATH.idx and PATH.bin; a PATH ending in .idx\n"
    "or .bin is taken as its prefix) or a flat token file (data.token_dtype, data.eod_token).\n\n"
    "options:\n"
    "  --format auto|megatron|tokens   what PATH is (default auto: megatron when PATH.idx exists)\n"
    "  --dtype uint16|uint32           token file width (default data.token_dtype)\n"
    "  --eod N                         token file document separator (default data.eod_token)\n"
    "  --gpus N                        cluster size to simulate (default 64; 0 skips the\n"
    "                                  simulation)\n"
    "  --context N                     tokens per micro-batch per GPU (default "
    "data.context_length;\n"
    "                                  K/M suffixes); longer documents are cut to it, as training\n"
    "                                  does\n"
    "  --batches N                     global batches averaged (default simulate.batches)\n\n"
    "The simulation uses the config's model (default llama-8b) and cluster, with\n"
    "cluster.tensor_parallel 8 and training.recompute=linear unless set, as `cadre simulate`.\n\n";

int64_t parse_count(const std::string& flag, const std::string& text, bool allow_zero) {
  std::string digits = text;
  int64_t scale = 1;
  if (!digits.empty() && (digits.back() == 'K' || digits.back() == 'k')) scale = 1024;
  if (!digits.empty() && (digits.back() == 'M' || digits.back() == 'm')) scale = 1024 * 1024;
  if (scale > 1) digits.pop_back();
  size_t used = 0;
  int64_t value = -1;
  try {
    value = std::stoll(digits, &used);
  } catch (...) {
    used = 0;
  }
  CADRE_CHECK(!digits.empty() && used == digits.size() && (value > 0 || (allow_zero && value == 0)),
              flag, " has '", text, "'; accepted: ", allow_zero ? "a non-negative" : "a positive",
              " integer, optionally with K or M");
  return value * scale;
}

std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string short_tokens(int64_t n) {
  if (n >= (1 << 20) && n % (1 << 20) == 0) return std::to_string(n >> 20) + "M";
  if (n >= 1024 && n % 1024 == 0) return std::to_string(n >> 10) + "K";
  return std::to_string(n);
}

// Length of every non-empty document of PATH, and a description of what PATH is.
struct Lengths {
  std::string what;
  std::vector<int64_t> lengths;
  int64_t empty = 0;
};

Lengths read_lengths(const std::string& path, const std::string& format,
                     const config::DataConfig& data) {
  std::string prefix = path;
  for (const char* suffix : {".idx", ".bin"}) {
    const size_t n = std::string(suffix).size();
    if (prefix.size() > n && prefix.compare(prefix.size() - n, n, suffix) == 0 &&
        posix_fs::exists(prefix.substr(0, prefix.size() - n) + ".idx")) {
      prefix = prefix.substr(0, prefix.size() - n);
    }
  }
  const bool megatron =
      format == "megatron" || (format == "auto" && posix_fs::exists(prefix + ".idx"));
  Lengths out;
  if (megatron) {
    const runtime::IndexedDataset dataset(prefix);
    out.what = str_cat("Megatron indexed dataset '", prefix, "' (", dataset.dtype_name(),
                       " tokens, ", dataset.sequence_count(), " sequences)");
    for (int64_t d = 0; d < dataset.document_count(); ++d) {
      const int64_t n = dataset.document_tokens(d);
      if (n > 0) {
        out.lengths.push_back(n);
      } else {
        ++out.empty;
      }
    }
    CADRE_CHECK(!out.lengths.empty(), "'", prefix, "' holds no token");
  } else {
    CADRE_CHECK(posix_fs::exists(path) && !posix_fs::is_directory(path), "data inspect: '", path,
                "' is neither a Megatron dataset prefix (no '", prefix,
                ".idx') nor a token file; accepted: PREFIX of PREFIX.idx/PREFIX.bin, or a flat "
                "token file");
    const auto corpus = runtime::open_token_file_corpus(path, data.token_dtype(), data.eod_token());
    out.what = str_cat("token file '", path, "' (", data.token_dtype(),
                       ", documents split at "
                       "token ",
                       data.eod_token(), ")");
    for (int64_t d = 0; d < corpus->size(); ++d) out.lengths.push_back(corpus->length(d));
  }
  return out;
}

void print_summary(const Lengths& data) {
  std::vector<int64_t> sorted = data.lengths;
  std::sort(sorted.begin(), sorted.end());
  int64_t total = 0;
  for (int64_t n : sorted) total += n;
  auto quantile = [&](double q) {
    return sorted[std::min(sorted.size() - 1, static_cast<size_t>(q * (sorted.size() - 1) + 0.5))];
  };
  std::printf("%s\n", data.what.c_str());
  std::printf("documents: %s", with_commas(static_cast<int64_t>(sorted.size())).c_str());
  if (data.empty > 0) std::printf(" (and %s empty, skipped)", with_commas(data.empty).c_str());
  std::printf("   tokens: %s\n", with_commas(total).c_str());
  std::printf(
      "document length (tokens): min %lld, median %lld, mean %.1f, p90 %lld, p99 %lld, "
      "max %lld\n",
      static_cast<long long>(sorted.front()), static_cast<long long>(quantile(0.5)),
      static_cast<double>(total) / sorted.size(), static_cast<long long>(quantile(0.9)),
      static_cast<long long>(quantile(0.99)), static_cast<long long>(sorted.back()));
  // Power-of-two bins: [2^k, 2^(k+1)).
  std::vector<int64_t> docs(64, 0), tokens(64, 0);
  std::vector<double> pairs(64, 0.0);  // causal attention pairs, n (n + 1) / 2 per document
  double all_pairs = 0;
  int first = 63, last = 0;
  for (int64_t n : sorted) {
    int k = 0;
    while ((int64_t{2} << k) <= n) ++k;
    ++docs[k];
    tokens[k] += n;
    pairs[k] += 0.5 * static_cast<double>(n) * static_cast<double>(n + 1);
    all_pairs += 0.5 * static_cast<double>(n) * static_cast<double>(n + 1);
    first = std::min(first, k);
    last = std::max(last, k);
  }
  const int64_t most = *std::max_element(docs.begin(), docs.end());
  std::printf(
      "\nlength histogram (bar: documents; attn %%: share of the causal attention "
      "work, ~ length^2):\n");
  std::printf("  %-15s %10s %7s %8s %7s\n", "tokens", "documents", "docs %", "tokens %", "attn %");
  for (int k = first; k <= last; ++k) {
    const std::string range =
        "[" + short_tokens(int64_t{1} << k) + "-" + short_tokens(int64_t{2} << k) + ")";
    const int bar = most > 0 ? static_cast<int>((30 * docs[k] + most - 1) / most) : 0;
    std::printf("  %-15s %10s %6.1f%% %7.1f%% %6.1f%%  %s\n", range.c_str(),
                with_commas(docs[k]).c_str(), 100.0 * docs[k] / sorted.size(),
                100.0 * tokens[k] / total, 100.0 * pairs[k] / all_pairs,
                std::string(bar, '#').c_str());
  }
}

// Prices a step of `gpus` GPUs on these lengths (cut to the context) with every strategy.
void print_simulation(const Lengths& data, config::RunConfig base, int64_t gpus, int64_t context,
                      int32_t batches) {
  // A lengths file for distribution "file", removed afterwards.
  char name[] = "/tmp/cadre_inspect_lengths_XXXXXX";
  const int fd = ::mkstemp(name);
  CADRE_CHECK(fd >= 0, "cannot create a temporary lengths file in /tmp");
  ::close(fd);
  std::string text;
  for (int64_t n : data.lengths) text += std::to_string(std::min(n, context)) + "\n";
  write_file_atomically(name, text);
  struct Remove {
    const char* path;
    ~Remove() { ::unlink(path); }
  } remove{name};

  if (!base.cluster().has_tensor_parallel()) base.mutable_cluster()->set_tensor_parallel(8);
  if (!base.training().has_recompute()) base.mutable_training()->set_recompute("linear");
  base.mutable_cluster()->set_num_gpus(static_cast<int32_t>(gpus));
  base.mutable_data()->set_context_length(context);
  base.mutable_data()->set_distribution("file");
  base.mutable_data()->set_lengths_file(name);
  base.mutable_simulate()->clear_gpu_counts();
  finalize_config(base);
  const std::vector<std::string> strategies = {"cad", "fixed", "wlb", "cp", "ideal"};
  const auto result = scheduler::simulate_step(base, strategies, batches);
  const auto& c = base.cluster();
  std::printf(
      "\nsimulated step: %s, %lld GPUs (TP %d x PP %d x DP %d), %s tokens per GPU, "
      "these lengths\n",
      base.model().preset().c_str(), static_cast<long long>(gpus), c.tensor_parallel(),
      c.pipeline_parallel(), result.data_parallel, short_tokens(context).c_str());
  std::printf("  %-6s %10s %10s %10s %8s %5s\n", "strat", "step_ms", "tok/s/GPU", "imbalance",
              "cad_x", "fits");
  double cad = 0;
  for (const auto& s : result.costs) {
    if (s.strategy == "cad") cad = s.step_us;
  }
  for (const auto& s : result.costs) {
    std::printf("  %-6s %10.1f %10.0f %10.2f %7.2fx %5s\n", s.strategy.c_str(), s.step_us / 1e3,
                s.tokens_per_s / gpus, s.attention_imbalance, s.step_us / std::max(1e-9, cad),
                s.fits_memory ? "yes" : "NO");
  }
  double fixed = 0, wlb = 0;
  for (const auto& s : result.costs) {
    if (s.strategy == "fixed") fixed = s.step_us;
    if (s.strategy == "wlb") wlb = s.step_us;
  }
  std::printf(
      "\nCAD gain on this length mix: %.2fx over fixed packing, %.2fx over "
      "workload-balanced packing\n(cad_x: a strategy's step time over CAD's; imbalance: "
      "max/mean attention time of the\ndata-parallel ranks; see docs/simulation.md).\n",
      fixed / std::max(1e-9, cad), wlb / std::max(1e-9, cad));
}

}  // namespace

int run_data(const Args& args) {
  if (args.empty()) {
    std::cerr << "cadre data: missing subcommand; accepted: inspect\n\n" << kUsage;
    return 2;
  }
  if (args[0] == "--help" || args[0] == "-h") {
    std::cout << kUsage << config_options_help();
    return 0;
  }
  CADRE_CHECK(args[0] == "inspect", "unknown data subcommand '", args[0],
              "'; accepted: inspect (see cadre data --help)");
  const Args rest_args(args.begin() + 1, args.end());
  for (const std::string& a : rest_args) {
    if (a == "--help" || a == "-h") {
      std::cout << kUsage << config_options_help();
      return 0;
    }
  }
  std::vector<std::string> rest;
  config::RunConfig base = raw_config_from_args(rest_args, &rest);
  std::string path, format = "auto";
  int64_t gpus = 64, context = base.data().context_length();
  int32_t batches = base.simulate().batches();
  for (size_t i = 0; i < rest.size(); ++i) {
    const std::string& flag = rest[i];
    if (flag.rfind("--", 0) != 0) {
      CADRE_CHECK(path.empty(), "data inspect takes one PATH; got '", path, "' and '", flag, "'");
      path = flag;
      continue;
    }
    CADRE_CHECK(i + 1 < rest.size(), flag, " needs a value (see cadre data inspect --help)");
    const std::string value = rest[++i];
    if (flag == "--format") {
      CADRE_CHECK(value == "auto" || value == "megatron" || value == "tokens", "--format has '",
                  value, "'; accepted: auto, megatron, tokens");
      format = value;
    } else if (flag == "--dtype") {
      CADRE_CHECK(value == "uint16" || value == "uint32", "--dtype has '", value,
                  "'; accepted: uint16, uint32");
      base.mutable_data()->set_token_dtype(value);
    } else if (flag == "--eod") {
      base.mutable_data()->set_eod_token(static_cast<uint32_t>(parse_count(flag, value, true)));
    } else if (flag == "--gpus") {
      gpus = parse_count(flag, value, true);
    } else if (flag == "--context") {
      context = parse_count(flag, value, false);
    } else if (flag == "--batches") {
      batches = static_cast<int32_t>(parse_count(flag, value, false));
    } else {
      CADRE_FAIL("unknown option '", flag,
                 "'; accepted: --format, --dtype, --eod, --gpus, "
                 "--context, --batches, --config, --set (see cadre data inspect --help)");
    }
  }
  CADRE_CHECK(!path.empty(),
              "data inspect needs a PATH; accepted: a Megatron dataset prefix or "
              "a token file (see cadre data inspect --help)");
  const Lengths lengths = read_lengths(path, format, base.data());
  print_summary(lengths);
  if (gpus > 0) print_simulation(lengths, base, gpus, context, batches);
  return 0;
}

}  // namespace cadre::launch
