// The `cadre` subcommands. Each takes the arguments after its name and returns the exit code.
#pragma once

#include <string>
#include <vector>

namespace cadre::launch {

using Args = std::vector<std::string>;

int run_simulate(const Args& args);      // simulate_command.cc
int run_plan(const Args& args);          // plan_command.cc
int run_train(const Args& args);         // train_command.cc
int run_calibrate(const Args& args);     // calibrate_command.cc
int run_simulate_training_step(const Args& args);  // calibrate_command.cc
int run_bench_attention(const Args& args);  // bench_attention_command.cc (CPU/MPI CAD attention)
int run_bench_kernel(const Args& args);     // bench_gpu_command.cc
int run_bench_comm(const Args& args);       // bench_gpu_command.cc
int run_export(const Args& args);           // export_command.cc (Hugging Face weights)
int run_data(const Args& args);             // data_command.cc (data inspect)
int run_eval(const Args& args);             // eval_command.cc (held-out loss, TPLA form)

}  // namespace cadre::launch
