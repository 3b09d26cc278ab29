// The `cadre` command: dispatches to train | simulate | plan | bench.
#include <iostream>
#include <string>

#include "common/error.h"
#include "launch/commands.h"

namespace {

void print_usage(std::ostream& out) {
  out << "usage: cadre <command> [options]\n\n"
         "commands:\n"
         "  simulate          plan and price training steps for any cluster size (CPU only)\n"
         "  plan              plan one step for given document lengths and print the plan\n"
         "  calibrate         fit the simulator's step costs to training profiles and benchmarks\n"
         "  train             train a Llama-style model with CAD or colocated attention\n"
         "  export            write a checkpoint's weights as a Hugging Face model directory\n"
         "  eval              held-out loss of a checkpoint; an MLA checkpoint also in TPLA form\n"
         "  data inspect      document and token counts, length histogram and simulated CAD gain\n"
         "                    of a token file or Megatron indexed dataset\n"
         "  bench attention   CAD attention across ranks with a check against the reference\n"
         "  bench kernel      fused core-attention kernel throughput (GPU)\n"
         "  bench comm        all-to-all-v bandwidth (GPU, NCCL)\n\n"
         "Every command reads the run configuration from --config FILE (configs/*.pbtxt) and\n"
         "--set path.to.field=value overrides (docs/configuration.md).\n"
         "Run `cadre <command> --help` (or `cadre help <command>`) for a command's options.\n";
}

void print_bench_usage(std::ostream& out) {
  out << "usage: cadre bench <attention|kernel|comm> [options]\n\n"
         "  attention   CAD attention across ranks with a check against the reference\n"
         "  kernel      fused core-attention kernel throughput (GPU)\n"
         "  comm        all-to-all-v bandwidth (GPU, NCCL)\n\n"
         "Run `cadre bench <benchmark> --help` for its options.\n";
}

bool is_help(const std::string& arg) { return arg == "--help" || arg == "-h" || arg == "help"; }

}  // namespace

int main(int argc, char** argv) {
  using namespace cadre::launch;
  if (argc < 2) {
    print_usage(std::cerr);
    return 2;
  }
  std::string command = argv[1];
  Args args(argv + 2, argv + argc);
  if (is_help(command)) {
    if (args.empty()) {
      print_usage(std::cout);
      return 0;
    }
    // `cadre help plan` is `cadre plan --help`.
    command = args[0];
    args.assign(args.begin() + 1, args.end());
    args.push_back("--help");
  }
  try {
    if (command == "simulate") return run_simulate(args);
    if (command == "calibrate") return run_calibrate(args);
    if (command == "plan") return run_plan(args);
    if (command == "train") return run_train(args);
    if (command == "export") return run_export(args);
    if (command == "eval") return run_eval(args);
    if (command == "data") return run_data(args);
    if (command == "bench") {
      if (args.empty()) {
        std::cerr << "cadre bench: missing benchmark; accepted: attention, kernel, comm\n\n";
        print_bench_usage(std::cerr);
        return 2;
      }
      std::string which = args[0];
      Args rest(args.begin() + 1, args.end());
      if (is_help(which)) {
        print_bench_usage(std::cout);
        return 0;
      }
      command += " " + which;
      if (which == "attention") return run_bench_attention(rest);
      if (which == "kernel") return run_bench_kernel(rest);
      if (which == "comm") return run_bench_comm(rest);
      std::cerr << "cadre bench: unknown benchmark '" << which
                << "'; accepted: attention, kernel, comm\n";
      return 2;
    }
    std::cerr << "cadre: unknown command '" << command
              << "'; accepted: simulate, plan, calibrate, train, export, eval, data, bench\n\n";
    print_usage(std::cerr);
    return 2;
  } catch (const cadre::Error& e) {
    std::cerr << "cadre " << command << ": error: " << e.message() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "cadre " << command << ": error: " << e.what() << "\n";
    return 1;
  }
}
