// `cadre simulate`: sweeps GPU counts, context lengths, models and document distributions, prices
// a step under CAD and each baseline, and writes a table, JSON, CSV and an SVG plot.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "scheduler/simulator.h"

namespace cadre::launch {

namespace {

const char* kUsage =
    "usage: cadre simulate [options]\n\n"
    "Plans and prices training steps with the real CAD planner and the cost model for any\n"
    "cluster size (CPU only), beside the baselines: fixed packing (Megatron-style DP), per-document\n"
    "context parallelism (cp), workload-balanced packing (wlb) and an ideal lower bound.\n\n"
    "options (lists are comma-separated; sizes take K/M suffixes):\n"
    "  --gpus LIST           GPU counts (default 8,16,32,64,128,256,512)\n"
    "  --context LIST        tokens per micro-batch per rank (default data.context_length, 128K)\n"
    "  --models LIST         model presets (default model.preset: llama-8b)\n"
    "  --distributions LIST  wlb, prolong, lognormal, uniform, fixed, file (default data.distribution)\n"
    "  --strategies LIST     cad, fixed, cp, wlb, ideal (default all)\n"
    "  --batches N           global batches averaged per cell (default simulate.batches, 3)\n"
    "  --out DIR             where simulate.json, simulate.csv, simulate.svg go (default output.dir)\n"
    "  --training-step       price the steps `cadre train` runs with this config instead\n"
    "                        (`cadre simulate --training-step --help`)\n\n"
    "Memory (act_GiB, mem_GiB, fits) is priced with activation recomputation of the non-attention\n"
    "layers (training.recompute=linear, as long-context runs use) unless training.recompute is set,\n"
    "e.g. --set training.recompute=none; it never changes the times. The cluster runs the paper's\n"
    "tensor parallelism of 8 unless cluster.tensor_parallel is set (--set cluster.tensor_parallel=1).\n";

std::vector<std::string> split_list(const std::string& flag, const std::string& value) {
  std::vector<std::string> items;
  std::stringstream in(value);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) items.push_back(item);
  }
  CADRE_CHECK(!items.empty(), flag, " needs a comma-separated list; got '", value, "'");
  return items;
}

int64_t parse_size(const std::string& flag, const std::string& text) {
  std::string digits = text;
  int64_t scale = 1;
  if (!digits.empty() && (digits.back() == 'K' || digits.back() == 'k')) {
    scale = 1024;
    digits.pop_back();
  } else if (!digits.empty() && (digits.back() == 'M' || digits.back() == 'm')) {
    scale = 1024 * 1024;
    digits.pop_back();
  }
  size_t used = 0;
  int64_t value = -1;
  try {
    value = std::stoll(digits, &used);
  } catch (...) {
    used = 0;
  }
  CADRE_CHECK(used == digits.size() && !digits.empty() && value > 0, flag, " has '", text,
              "'; accepted: positive integers, optionally with K or M (e.g. 128K)");
  return value * scale;
}


struct Row {
  std::string model, distribution;
  int64_t context;
  scheduler::SimulationResult result;
};

std::string fmt(double v, int precision) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", precision, v);
  return buffer;
}

double step_of(const Row& row, const std::string& strategy) {
  for (const auto& c : row.result.costs) {
    if (c.strategy == strategy) return c.step_us;
  }
  return 0;
}

std::string to_json(const std::vector<Row>& rows) {
  std::ostringstream out;
  out << "[\n";
  bool first = true;
  for (const Row& row : rows) {
    for (const auto& c : row.result.costs) {
      out << (first ? "" : ",\n") << "  {\"model\": \"" << row.model << "\", \"distribution\": \""
          << row.distribution << "\", \"context\": " << row.context
          << ", \"gpus\": " << row.result.gpus << ", \"data_parallel\": " << row.result.data_parallel
          << ", \"micro_batches\": " << row.result.micro_batches << ", \"strategy\": \""
          << c.strategy << "\", \"step_ms\": " << c.step_us / 1e3
          << ", \"tokens_per_s\": " << c.tokens_per_s
          << ", \"tokens_per_s_per_gpu\": " << c.tokens_per_s / row.result.gpus
          << ", \"cad_speedup\": " << c.step_us / std::max(1e-9, step_of(row, "cad"))
          << ", \"attention_ms\": " << c.attention_us / 1e3 << ", \"linear_ms\": "
          << c.linear_us / 1e3 << ", \"pp_bubble_ms\": " << c.pp_bubble_us / 1e3
          << ", \"dp_straggler_ms\": " << c.dp_straggler_us / 1e3
          << ", \"exposed_comm_ms\": " << c.exposed_comm_us / 1e3
          << ", \"step_fixed_ms\": " << c.step_fixed_us / 1e3
          << ", \"attention_imbalance\": " << c.attention_imbalance
          << ", \"mb_moved_per_rank\": " << c.bytes_per_rank / 1e6
          << ", \"recompute\": \"" << row.result.recompute
          << "\", \"peak_activation_gib\": " << c.peak_activation_gib
          << ", \"weights_optimizer_gib\": " << c.weights_optimizer_gib
          << ", \"peak_memory_gib\": " << c.peak_memory_gib
          << ", \"fits_memory\": " << (c.fits_memory ? "true" : "false")
          << ", \"planning_ms\": " << c.planning_ms << "}";
      first = false;
    }
  }
  out << "\n]\n";
  return out.str();
}

std::string to_csv(const std::vector<Row>& rows) {
  std::ostringstream out;
  out << "model,distribution,context,gpus,strategy,step_ms,tokens_per_s_per_gpu,cad_speedup,"
         "attention_ms,linear_ms,pp_bubble_ms,dp_straggler_ms,exposed_comm_ms,"
         "attention_imbalance,mb_moved_per_rank,peak_activation_gib,planning_ms,recompute,"
         "weights_optimizer_gib,peak_memory_gib,fits_memory,step_fixed_ms\n";
  for (const Row& row : rows) {
    for (const auto& c : row.result.costs) {
      out << row.model << "," << row.distribution << "," << row.context << "," << row.result.gpus
          << "," << c.strategy << "," << c.step_us / 1e3 << "," << c.tokens_per_s / row.result.gpus
          << "," << c.step_us / std::max(1e-9, step_of(row, "cad")) << "," << c.attention_us / 1e3
          << "," << c.linear_us / 1e3 << "," << c.pp_bubble_us / 1e3 << ","
          << c.dp_straggler_us / 1e3 << "," << c.exposed_comm_us / 1e3 << ","
          << c.attention_imbalance << "," << c.bytes_per_rank / 1e6 << ","
          << c.peak_activation_gib << "," << c.planning_ms << "," << row.result.recompute << ","
          << c.weights_optimizer_gib << "," << c.peak_memory_gib << ","
          << (c.fits_memory ? "yes" : "no") << "," << c.step_fixed_us / 1e3 << "\n";
    }
  }
  return out.str();
}

// Two panels per (model, distribution, context): tokens/s per GPU, and CAD's speedup over each
// baseline, against GPU count (log scale).
std::string to_svg(const std::vector<Row>& rows, const std::vector<std::string>& strategies) {
  std::map<std::string, std::vector<const Row*>> groups;
  for (const Row& row : rows) {
    groups[row.model + " / " + row.distribution + " / " + std::to_string(row.context / 1024) +
           "K"]
        .push_back(&row);
  }
  const char* colors[] = {"#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#7f7f7f"};
  const int width = 960, panel_h = 260, margin = 60;
  const int height = static_cast<int>(groups.size()) * (panel_h + 50) + 40;
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
         "fill=\"white\"/>\n";
  int y0 = 20;
  for (const auto& [title, group] : groups) {
    double gmin = 1e18, gmax = 0;
    for (const Row* r : group) {
      gmin = std::min<double>(gmin, r->result.gpus);
      gmax = std::max<double>(gmax, r->result.gpus);
    }
    for (int panel = 0; panel < 2; ++panel) {
      const int x0 = margin + panel * (width / 2), pw = width / 2 - margin - 20, ph = panel_h - 40;
      double vmax = 0;
      for (const Row* r : group) {
        for (const auto& c : r->result.costs) {
          const double v = panel == 0 ? c.tokens_per_s / r->result.gpus
                                      : c.step_us / std::max(1e-9, step_of(*r, "cad"));
          vmax = std::max(vmax, v);
        }
      }
      vmax = vmax > 0 ? vmax * 1.1 : 1;
      auto px = [&](double gpus) {
        const double span = std::log2(gmax) - std::log2(gmin);
        return x0 + (span > 0 ? (std::log2(gpus) - std::log2(gmin)) / span : 0.5) * pw;
      };
      auto py = [&](double v) { return y0 + 20 + ph - v / vmax * ph; };
      svg << "<text x=\"" << x0 << "\" y=\"" << y0 + 12 << "\" font-weight=\"bold\">" << title
          << (panel == 0 ? ": tokens/s per GPU" : ": CAD speedup (baseline step / CAD step)")
          << "</text>\n";
      svg << "<rect x=\"" << x0 << "\" y=\"" << y0 + 20 << "\" width=\"" << pw << "\" height=\""
          << ph << "\" fill=\"none\" stroke=\"#999\"/>\n";
      for (const Row* r : group) {
        svg << "<text x=\"" << px(r->result.gpus) - 8 << "\" y=\"" << y0 + 20 + ph + 14 << "\">"
            << r->result.gpus << "</text>\n";
      }
      for (int t = 0; t <= 4; ++t) {
        const double v = vmax * t / 4;
        svg << "<text x=\"" << x0 - 55 << "\" y=\"" << py(v) + 4 << "\">"
            << (panel == 0 ? fmt(v, 0) : fmt(v, 2)) << "</text>\n";
      }
      for (size_t s = 0; s < strategies.size(); ++s) {
        std::ostringstream points;
        for (const Row* r : group) {
          for (const auto& c : r->result.costs) {
            if (c.strategy != strategies[s]) continue;
            const double v = panel == 0 ? c.tokens_per_s / r->result.gpus
                                        : c.step_us / std::max(1e-9, step_of(*r, "cad"));
            points << px(r->result.gpus) << "," << py(v) << " ";
          }
        }
        svg << "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"" << colors[s % 5]
            << "\" points=\"" << points.str() << "\"/>\n";
        svg << "<text x=\"" << x0 + pw - 60 << "\" y=\"" << y0 + 36 + 14 * s << "\" fill=\""
            << colors[s % 5] << "\">" << strategies[s] << "</text>\n";
      }
    }
    y0 += panel_h + 50;
  }
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace

int run_simulate(const Args& args) {
  for (const std::string& a : args) {
    if (a == "--training-step") return run_simulate_training_step(args);
  }
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kUsage << "\n" << config_options_help();
      return 0;
    }
  }
  std::vector<std::string> rest;
  config::RunConfig base = raw_config_from_args(args, &rest);
  std::vector<int64_t> gpus, contexts;
  std::vector<std::string> models, distributions, strategies;
  int32_t batches = base.simulate().batches();
  std::string out_dir = base.output().dir();
  for (size_t i = 0; i < rest.size(); ++i) {
    const std::string& flag = rest[i];
    CADRE_CHECK(i + 1 < rest.size() || flag.rfind("--", 0) != 0, flag, " needs a value");
    auto value = [&]() { return rest[++i]; };
    if (flag == "--gpus") {
      for (const auto& g : split_list(flag, value())) gpus.push_back(parse_size(flag, g));
    } else if (flag == "--context") {
      for (const auto& c : split_list(flag, value())) contexts.push_back(parse_size(flag, c));
    } else if (flag == "--models") {
      models = split_list(flag, value());
    } else if (flag == "--distributions") {
      distributions = split_list(flag, value());
    } else if (flag == "--strategies") {
      strategies = split_list(flag, value());
    } else if (flag == "--batches") {
      batches = static_cast<int32_t>(parse_size(flag, value()));
    } else if (flag == "--out") {
      out_dir = value();
    } else {
      CADRE_FAIL("unknown option '", flag, "'; run `cadre simulate --help`");
    }
  }
  if (gpus.empty()) gpus.assign(base.simulate().gpu_counts().begin(), base.simulate().gpu_counts().end());
  if (gpus.empty()) gpus = {8, 16, 32, 64, 128, 256, 512};
  if (contexts.empty()) {
    contexts.assign(base.simulate().context_lengths().begin(),
                    base.simulate().context_lengths().end());
  }
  if (contexts.empty()) contexts = {base.data().context_length()};
  if (models.empty()) models.assign(base.simulate().models().begin(), base.simulate().models().end());
  // A model list replaces the model section per cell; without one the config's model (preset and
  // explicit overrides) is used as it is.
  const bool sweep_models = !models.empty();
  if (models.empty()) models = {base.model().preset()};
  if (distributions.empty()) {
    distributions.assign(base.simulate().distributions().begin(),
                         base.simulate().distributions().end());
  }
  if (distributions.empty()) distributions = {base.data().distribution()};
  if (strategies.empty()) {
    strategies.assign(base.simulate().strategies().begin(), base.simulate().strategies().end());
  }
  if (strategies.empty()) strategies = scheduler::simulator_strategies();
  // Long-context runs recompute the non-attention layers (DistCA does at 128K+; without it
  // Llama-8B at 128K tokens per GPU keeps ~544 GiB of activations), so the memory columns assume
  // it unless the config says otherwise. Times are the same either way.
  if (!base.training().has_recompute()) base.mutable_training()->set_recompute("linear");
  // The paper's setting, TP 8 inside each 8-GPU node, unless the config sets another: at TP 1 the
  // weights and optimizer state of an 8B model alone take 120 GiB of a 141 GiB GPU, so no cell
  // of the default sweep would fit.
  if (!base.cluster().has_tensor_parallel()) base.mutable_cluster()->set_tensor_parallel(8);
  for (const auto& s : strategies) {
    CADRE_CHECK(std::find(scheduler::simulator_strategies().begin(),
                          scheduler::simulator_strategies().end(),
                          s) != scheduler::simulator_strategies().end(),
                "--strategies has '", s, "'; accepted: cad, fixed, cp, wlb, ideal");
  }
  // cad first, so speedups have their reference even when the user lists it later.
  auto cad_at = std::find(strategies.begin(), strategies.end(), "cad");
  if (cad_at != strategies.end()) std::rotate(strategies.begin(), cad_at, cad_at + 1);

  std::vector<Row> rows;
  const size_t cells = models.size() * distributions.size() * contexts.size() * gpus.size();
  const auto start = std::chrono::steady_clock::now();
  size_t done = 0;
  for (const auto& model : models) {
    for (const auto& distribution : distributions) {
      for (int64_t context : contexts) {
        for (int64_t g : gpus) {
          config::RunConfig cell = base;
          if (sweep_models) {
            cell.mutable_model()->Clear();
            cell.mutable_model()->set_preset(model);
          }
          cell.mutable_cluster()->set_num_gpus(static_cast<int32_t>(g));
          cell.mutable_data()->set_context_length(context);
          cell.mutable_data()->set_distribution(distribution);
          cell.mutable_simulate()->clear_gpu_counts();
          finalize_config(cell);
          rows.push_back({model, distribution, context,
                          scheduler::simulate_step(cell, strategies, batches)});
          ++done;
          const double elapsed =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          if (elapsed > 2 && !base.output().quiet()) {
            std::fprintf(stderr, "\rsimulate: %zu/%zu cells, %.1f s", done, cells, elapsed);
          }
        }
      }
    }
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (elapsed > 2 && !base.output().quiet()) std::fprintf(stderr, "\n");

  // The table: one block per (model, distribution, context), at most 100 columns wide.
  const auto& cluster = base.cluster();
  std::string block;
  for (const Row& row : rows) {
    const std::string title = row.model + ", " + row.distribution + " documents, " +
                              std::to_string(row.context / 1024) + "K tokens per GPU";
    if (title != block) {
      block = title;
      std::printf("%s%s (TP %d, PP %d, recompute %s)\n", &row == &rows.front() ? "" : "\n",
                  title.c_str(), cluster.tensor_parallel(), cluster.pipeline_parallel(),
                  base.training().recompute().c_str());
      std::printf("%5s %-5s %8s %9s %6s %5s %7s %8s %7s %7s %7s %4s %7s\n", "gpus", "strat",
                  "step_ms", "tok/s/GPU", "cad_x", "imbal", "bubble", "strag_ms", "comm_ms",
                  "MB/rank", "mem_GiB", "fits", "plan_ms");
    }
    for (const auto& c : row.result.costs) {
      std::printf("%5d %-5s %8.1f %9.0f %5.2fx %5.2f %7.1f %8.1f %7.1f %7.0f %7.1f %4s %7.1f\n",
                  row.result.gpus, c.strategy.c_str(), c.step_us / 1e3,
                  c.tokens_per_s / row.result.gpus,
                  c.step_us / std::max(1e-9, step_of(row, "cad")), c.attention_imbalance,
                  c.pp_bubble_us / 1e3, c.dp_straggler_us / 1e3, c.exposed_comm_us / 1e3,
                  c.bytes_per_rank / 1e6, c.peak_memory_gib, c.fits_memory ? "yes" : "NO",
                  c.planning_ms);
    }
  }
  std::printf("\ncad_x: this strategy's step time over CAD's (CAD's speedup over it); imbal: "
              "max/mean attention\ntime of the data-parallel ranks; bubble, strag_ms, comm_ms: "
              "pipeline bubble, straggler wait and\nexposed communication (ms). %zu cells in "
              "%.1f s.\n",
              cells, elapsed);
  std::printf("mem_GiB: what a GPU holds at its peak above its state (recompute=%s; act_GiB in "
              "the JSON/CSV)\nplus weights and optimizer state (%s B/param / TP); fits: mem_GiB "
              "<= cluster.gpu_memory_gib = %.0f\n(docs/simulation.md, \"Memory estimate\").\n",
              base.training().recompute().c_str(),
              base.training().shard_optimizer() ? "8 + 24/DP" : "16", cluster.gpu_memory_gib());
  std::string mkdir = "mkdir -p '" + out_dir + "'";
  CADRE_CHECK(std::system(mkdir.c_str()) == 0, "cannot create output directory '", out_dir, "'");
  write_file_atomically(out_dir + "/simulate.json", to_json(rows));
  write_file_atomically(out_dir + "/simulate.csv", to_csv(rows));
  write_file_atomically(out_dir + "/simulate.svg", to_svg(rows, strategies));
  std::printf("wrote %s/simulate.json and %s/simulate.csv\nplot: %s/simulate.svg\n",
              out_dir.c_str(), out_dir.c_str(), out_dir.c_str());
  return 0;
}

}  // namespace cadre::launch
