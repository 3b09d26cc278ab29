// `cadre train`: one process per rank under mpirun; loads the config, builds the Trainer, runs the
// steps with a rank-0 step line and metrics file, checkpoints and resumes.
#include <chrono>
#include <cstring>
#include <memory>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "comm/mpi_transport.h"
#include "comm/nccl_transport.h"
#include "comm/node_placement.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "common/posix_fs.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "runtime/checkpoint.h"
#include "runtime/profile.h"
#include "runtime/resume.h"
#include "runtime/trainer.h"

namespace cadre::launch {
namespace {

std::string train_help() {
  return "usage: mpirun -np N cadre train --config FILE [--set PATH=VALUE ...] [--resume]\n\n"
         "Trains a Llama-style model, one rank per GPU (NCCL, bf16, flash attention) or per\n"
         "CPU process (MPI, fp32), with training.attention = cad (core attention dispatched\n"
         "per the step's plan to in-place or dedicated attention servers, ping-pong overlap)\n"
         "or colocated (each rank attends its own documents). cluster.num_gpus must equal N.\n\n"
         "options:\n"
         "  --resume         continue from the newest checkpoint in training.checkpoint_dir\n"
         "                   (default output.dir/checkpoints); same as training.resume=true\n"
         "  -h, --help       this help\n\n"
         "Rank 0 prints one line per step, appends JSON lines to output.dir/metrics.jsonl,\n"
         "writes output.dir/summary.json at the end and, with output.trace, a Chrome trace of\n"
         "step training.trace_step to output.dir/trace.json and, with output.profile, every\n"
         "step's profile to output.dir/profile.json (docs/simulation.md); see docs/training.md.\n\n" +
         config_options_help();
}

// The first error message of any rank ("" if none), known to every rank: a setup failure on one
// rank (unreadable file, bad setting) ends every rank cleanly instead of leaving peers waiting.
std::string first_error(comm::Transport& transport, const std::string& mine) {
  constexpr size_t kWidth = 1024;
  std::vector<char> send(kWidth, 0), all(kWidth * transport.size(), 0);
  std::strncpy(send.data(), mine.c_str(), kWidth - 1);
  transport.all_gather(send.data(), all.data(), kWidth);
  for (int r = 0; r < transport.size(); ++r) {
    const char* message = all.data() + r * kWidth;
    if (message[0] != 0) {
      return r == 0 ? std::string(message) : "rank " + std::to_string(r) + ": " + message;
    }
  }
  return "";
}

}  // namespace

int run_train(const Args& args) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << train_help();
      return 0;
    }
  }
  comm::ensure_mpi_initialized();
  auto transport = comm::make_mpi_transport();
  const int rank = transport->rank(), world = transport->size();
  const comm::NodePlacement placement = comm::detect_node_placement();
  auto fail = [&](const std::string& message) {
    if (rank == 0) std::cerr << "cadre train: error: " << message << "\n";
    return 2;
  };

  // Every rank parses the same arguments, so a bad config fails alike everywhere; the agreement
  // below also covers failures that only one rank sees (files, checkpoints).
  config::RunConfig config;
  std::unique_ptr<runtime::Trainer> trainer;
  std::string error;
  bool resume = false;
  try {
    std::vector<std::string> rest;
    config = config_from_args(args, &rest, world);
    for (const std::string& a : rest) {
      CADRE_CHECK(a == "--resume", "unknown option \"", a,
                  "\"; accepted: --resume, --config FILE, --set PATH=VALUE, --help");
      resume = true;
    }
    resume = resume || config.training().resume();
    CADRE_CHECK(config.cluster().num_gpus() == world, "cluster.num_gpus is ",
                config.cluster().num_gpus(), " but mpirun started ", world,
                " ranks; accepted: equal counts (set --set cluster.num_gpus=", world, ")");
    transport->set_timeout_seconds(config.comm().timeout_seconds());
  } catch (const Error& e) {
    error = e.message();
  }
  error = first_error(*transport, error);
  if (!error.empty()) return fail(error);

  // GPU training moves tensors over NCCL; MPI keeps the small host-side collectives.
  const std::string& device = config.training().device();
  const bool cuda = device == "cuda" || (device == "auto" && comm::nccl_transport_available() &&
                                         runtime::cuda_device_count() > 0);
  std::unique_ptr<comm::NcclTransport> nccl;
  try {
    if (cuda) {
      comm::NcclOptions options;
      options.timeout_seconds = config.comm().timeout_seconds();
      nccl = comm::make_nccl_transport(options);
    }
  } catch (const Error& e) {
    error = e.message();
  }
  error = first_error(*transport, error);
  if (!error.empty()) return fail(error);
  try {
    trainer = std::make_unique<runtime::Trainer>(config, *transport,
                                                 nccl ? static_cast<comm::Transport&>(*nccl)
                                                      : *transport);
  } catch (const Error& e) {
    error = e.message();
  }
  error = first_error(*transport, error);
  if (!error.empty()) return fail(error);

  const auto& training = config.training();
  const std::string out_dir = config.output().dir();
  try {
    if (resume) {
      // Every rank chooses (the newest checkpoint that reads back complete) and they must agree:
      // ranks whose checkpoint directories differ (node-local disks) would continue apart.
      const runtime::ResumeChoice choice =
          runtime::choose_resume_checkpoint(trainer->checkpoint_dir());
      for (const auto& [path, why] : choice.skipped) {
        if (rank == 0) {
          std::cerr << "cadre train: warning: --resume skips " << path << ": " << why << "\n";
        }
      }
      std::vector<char> mine(1024, 0), all(1024 * world, 0);
      choice.path.copy(mine.data(), mine.size() - 1);
      transport->all_gather(mine.data(), all.data(), mine.size());
      for (int r = 0; r < world; ++r) {
        const std::string theirs(all.data() + r * mine.size());
        CADRE_CHECK(theirs == choice.path, "--resume: rank ", rank, " chose '", choice.path,
                    "' but rank ", r, " chose '", theirs,
                    "'; accepted: one checkpoint directory that every rank sees alike");
      }
      trainer->load_checkpoint(choice.path);
      if (rank == 0 && !config.output().quiet()) {
        std::cout << "resumed from " << choice.path << " at step " << trainer->step();
        if (!choice.skipped.empty()) {
          std::cout << " (skipped " << choice.skipped.size()
                    << " newer checkpoint(s) that do not read back complete; see stderr)";
        }
        std::cout << "\n";
      }
    }
  } catch (const Error& e) {
    error = e.message();
  }
  error = first_error(*transport, error);
  if (!error.empty()) return fail(error);

  std::ofstream metrics;
  if (rank == 0) {
    posix_fs::make_directories(out_dir);
    std::ofstream(std::filesystem::path(out_dir) / "config.pbtxt") << config_to_text(config);
    const auto path = std::filesystem::path(out_dir) / "metrics.jsonl";
    metrics.open(path, resume ? std::ios::app : std::ios::trunc);
    if (!config.output().quiet()) {
      std::cout << "cadre train: model " << config.model().preset() << " ("
                << trainer->model().parameter_count() << " parameters), context "
                << config.data().context_length() << " tokens per worker, "
                << config.data().distribution() << " documents; " << trainer->describe()
                << std::endl;
      // The planner and cost model take rank r to be on node r / cluster.gpus_per_node.
      const int per_node = config.cluster().gpus_per_node();
      std::cout << "cadre train: " << comm::describe_placement(placement)
                << "; cluster.gpus_per_node=" << per_node
                << (comm::placement_matches(placement, per_node)
                        ? " matches"
                        : " does NOT match (the planner prices links by rank / gpus_per_node; "
                          "set it to the ranks per node and map ranks node by node)")
                << std::endl;
    }
  }

  std::vector<runtime::StepMetrics> history;
  // output.profile: every step's segments, attention batches, exchanges and buckets.
  std::unique_ptr<runtime::ProfileWriter> profile;
  if (config.output().profile()) {
    profile = std::make_unique<runtime::ProfileWriter>(
        config, rank, training.dtype() == "bf16" ? 2 : 4);
  }
  try {
    while (trainer->step() < training.steps()) {
      const auto started = std::chrono::steady_clock::now();
      runtime::StepMetrics m = trainer->train_step();
      history.push_back(m);
      if (profile) {
        const double wall_ms = std::chrono::duration<double, std::milli>(
                                   std::chrono::steady_clock::now() - started).count();
        profile->add_step(m.step, m.step_ms, wall_ms, m.kernel_graphs_built,
                          m.kernel_choices_measured, trainer->device().is_cuda(),
                          trainer->last_timeline(), trainer->last_record());
      }
      if (rank == 0) {
        if (!config.output().quiet()) {
          std::cout << runtime::format_step_line(m, training.steps()) << std::endl;
        }
        metrics << runtime::metrics_json(m, training.attention()) << "\n";
        metrics.flush();
      }
      if (config.output().trace() && m.step == training.trace_step()) {
        const std::string path = (std::filesystem::path(out_dir) / "trace.json").string();
        trainer->write_trace(path);
        if (rank == 0 && !config.output().quiet()) std::cout << "trace " << path << "\n";
      }
      const int every = training.checkpoint_every();
      if (every > 0 && (trainer->step() % every == 0 || trainer->step() == training.steps())) {
        const std::string path = trainer->save_checkpoint();
        if (rank == 0 && !config.output().quiet()) std::cout << "checkpoint " << path << "\n";
      }
    }
    if (profile) {
      const std::string path = (std::filesystem::path(out_dir) / "profile.json").string();
      // Rank 0 writes it and is always a worker (dedicated servers are the last ranks).
      const int64_t parameters = trainer->is_worker() ? trainer->model().parameter_count() : 0;
      const int workers = config.scheduler().server_mode() == "dedicated"
                              ? world - config.scheduler().num_dedicated_servers()
                              : world;
      profile->write(*transport, path, workers, parameters, trainer->describe());
      if (rank == 0 && !config.output().quiet()) std::cout << "profile " << path << "\n";
    }
  } catch (const Error& e) {
    // Mid-run failures may be seen by one rank only; its peers end through comm's deadline.
    std::cerr << "cadre train: [rank " << rank << "] error: " << e.message() << "\n";
    return 1;
  }
  if (rank == 0 && !history.empty()) {
    const std::string summary = runtime::summary_json(history, config, trainer->describe());
    write_file_atomically((std::filesystem::path(out_dir) / "summary.json").string(), summary);
    if (!config.output().quiet()) std::cout << "summary " << summary;
  }
  return 0;
}

}  // namespace cadre::launch
