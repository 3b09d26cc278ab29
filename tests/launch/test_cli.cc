// The `cadre` command line, run as a child process: help, exit codes, and that bad arguments end
// with one message naming the field; `cadre plan` end to end with its output files.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/posix_fs.h"
#include "scheduler/plan.h"

namespace {

struct CliResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `cadre <args>` from the source directory (so configs/ paths resolve).
CliResult run_cadre(const std::string& args) {
  const std::string command =
      std::string("cd '") + CADRE_SOURCE_DIR + "' && '" + CADRE_BINARY + "' " + args + " 2>&1";
  CliResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

void expect_output(const CliResult& r, int exit_code, const std::vector<std::string>& pieces) {
  EXPECT_EQ(r.exit_code, exit_code) << r.output;
  for (const auto& p : pieces) {
    EXPECT_NE(r.output.find(p), std::string::npos) << "output lacks \"" << p << "\":\n" << r.output;
  }
}

std::string temp_path(const std::string& name) {
  return testing::TempDir() + "cadre_cli_" + std::to_string(::getpid()) + "_" + name;
}

TEST(Cli, TopLevelHelpAndBadCommands) {
  expect_output(run_cadre("--help"), 0, {"simulate", "plan", "train", "bench attention", "--set"});
  expect_output(run_cadre(""), 2, {"usage: cadre <command>"});
  expect_output(run_cadre("frobnicate"), 2, {"unknown command 'frobnicate'", "simulate, plan"});
  expect_output(run_cadre("bench"), 2, {"missing benchmark", "attention, kernel, comm"});
  expect_output(run_cadre("bench --help"), 0, {"usage: cadre bench"});
  expect_output(run_cadre("bench warp"), 2, {"unknown benchmark 'warp'"});
}

TEST(Cli, PlanHelp) {
  for (const char* args : {"plan --help", "plan -h", "help plan"}) {
    SCOPED_TRACE(args);
    expect_output(run_cadre(args), 0,
                  {"usage: cadre plan", "--lengths", "--out FILE", "--config FILE",
                   "--set PATH=VALUE", "llama-8b"});
  }
}

TEST(Cli, PlanRejectsBadConfigWithOneMessage) {
  expect_output(run_cadre("plan --lengths 100,200/300 --set model.num_heads=0"), 1,
                {"cadre plan: error: model.num_heads=0", "accepted"});
  expect_output(run_cadre("plan --lengths 100 --set model.num_head=3"), 1,
                {"unknown field \"num_head\" in model", "num_heads"});
  expect_output(run_cadre("plan --lengths 100 --set cluster.tensor_parallel=2 "
                          "--set cluster.num_gpus=3"),
                1, {"cluster.num_gpus=3", "a multiple of 2"});
  expect_output(run_cadre("plan --config /nonexistent/run.pbtxt"), 1,
                {"config file \"/nonexistent/run.pbtxt\" does not exist"});
  expect_output(run_cadre("plan --lengths 100 --set data.distribution=zipf"), 1,
                {"data.distribution=\"zipf\"", "wlb, prolong"});
  expect_output(run_cadre("plan --frobnicate"), 1, {"unknown option \"--frobnicate\""});
  expect_output(run_cadre("plan --set"), 1, {"--set needs a value"});
}

TEST(Cli, PlanRejectsBadLengths) {
  expect_output(run_cadre("plan --lengths 100,abc"), 1, {"--lengths", "\"abc\"", "64K"});
  expect_output(run_cadre("plan --lengths 100,,200"), 1, {"empty document length"});
  expect_output(run_cadre("plan --set cluster.num_gpus=4 --lengths 1/2"), 1,
                {"--lengths gives 2 ranks", "4 worker ranks", "--set cluster.num_gpus=2"});
  expect_output(run_cadre("plan --lengths 1/2 --pack"), 1, {"--pack reads --lengths as one list"});
  expect_output(run_cadre("plan --pack"), 1, {"--pack needs --lengths"});
}

TEST(Cli, PlanDrawsDocumentsFromTheDataSectionWithoutLengths) {
  expect_output(run_cadre("plan --set model.preset=tiny --set cluster.num_gpus=2 "
                          "--set data.context_length=1K --set data.distribution=uniform "
                          "--set data.uniform_max_tokens=700"),
                0, {"documents drawn from data.distribution=\"uniform\"", "2 worker ranks",
                    "2048 tokens", "after"});
}

TEST(Cli, PlanPrintsConfigWithRanksFromLengths) {
  expect_output(run_cadre("plan --lengths 1/2/3 --set model.preset=tiny --print-config"), 0,
                {"num_gpus: 3", "preset: \"tiny\"", "num_layers: 2"});
}

TEST(Cli, PlanWritesPlanAndDump) {
  const std::string plan_path = temp_path("plan.bin");
  const std::string dump_path = temp_path("plan.txt");
  const CliResult r = run_cadre(
      "plan --set model.preset=tiny --set scheduler.min_shard_tokens=16 "
      "--lengths 2048,256/512,128,128/1024/64 --out '" +
      plan_path + "' --dump '" + dump_path + "'");
  expect_output(r, 0,
                {"attention imbalance (max/mean): before", "bytes moved per layer", "wrote plan to",
                 "wrote text dump to"});

  std::ifstream in(plan_path, std::ios::binary);
  ASSERT_TRUE(in.good()) << plan_path;
  std::stringstream bytes;
  bytes << in.rdbuf();
  const cadre::scheduler::Plan plan = cadre::scheduler::deserialize_plan(bytes.str());
  EXPECT_EQ(plan.world_size, 4);
  EXPECT_EQ(plan.layout.documents.size(), 7u);
  EXPECT_FALSE(cadre::posix_fs::exists(plan_path + ".tmp." + std::to_string(::getpid())));

  std::ifstream dump(dump_path);
  std::stringstream text;
  text << dump.rdbuf();
  EXPECT_NE(text.str().find("cu_seqlens_q"), std::string::npos);
  EXPECT_NE(text.str().find("# effective config"), std::string::npos);
  cadre::posix_fs::remove_file(plan_path);
  cadre::posix_fs::remove_file(dump_path);
}

TEST(Cli, PlanPacksOneListAndRunsTheExampleConfig) {
  expect_output(run_cadre("plan --set model.preset=tiny --set cluster.num_gpus=2 "
                          "--set data.context_length=1K --lengths 1500,300,200 --pack"),
                0, {"2 worker ranks", "3 documents", "2000 tokens"});
  expect_output(run_cadre("plan --set model.preset=tiny --set cluster.num_gpus=2 "
                          "--set data.context_length=1K --lengths 1500,800 --pack"),
                0, {"tokens did not fit"});
  expect_output(run_cadre("plan --config configs/plan_example.pbtxt "
                          "--lengths 128K/64K,64K/32K,32K,32K,32K/8K,8K,16K,96K"),
                0, {"4 worker ranks", "after"});
  expect_output(run_cadre("plan --set training.attention=colocated --lengths 4K,1K/1K"), 0,
                {"strategy colocated", "bytes moved per layer (forward Q + K/V): max rank 0 B"});
}

// Other commands share the config handling: a bad field fails before any work.
// Skipped while a command is still a placeholder.
TEST(Cli, OtherCommandsRejectBadConfig) {
  int checked = 0;
  for (const char* command : {"simulate", "train"}) {
    SCOPED_TRACE(command);
    const CliResult r = run_cadre(std::string(command) + " --set model.num_heads=0");
    if (r.output.find("not built yet") != std::string::npos) continue;
    ++checked;
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("model.num_heads"), std::string::npos) << r.output;
  }
  if (checked == 0) GTEST_SKIP() << "simulate and train are placeholders still";
}

// `cadre simulate` prices memory with recomputation unless the config says otherwise, marks
// cells that do not fit, and writes the mode and the flag into its JSON.
TEST(Cli, SimulateMemoryFollowsRecompute) {
  const std::string out = temp_path("simulate");
  const std::string cell = "simulate --gpus 8 --strategies cad,fixed --batches 1 --out '" + out +
                           "' --set cluster.tensor_parallel=1";
  expect_output(run_cadre(cell), 0, {"recompute=linear", "mem_GiB", "fits", " NO "});
  std::ifstream json(out + "/simulate.json");
  std::stringstream text;
  text << json.rdbuf();
  EXPECT_NE(text.str().find("\"recompute\": \"linear\""), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("\"fits_memory\": false"), std::string::npos) << text.str();
  expect_output(run_cadre(cell + " --set training.recompute=none"), 0, {"recompute=none"});
  // Llama-8B at 128K on TP 8 with recomputation fits in 141 GiB.
  expect_output(run_cadre(cell + " --set cluster.tensor_parallel=8"), 0, {" yes "});
  cadre::posix_fs::remove_tree(out);
}

// `cadre calibrate` fits a committed profile (deterministic bytes) and names what it lacks;
// `cadre simulate --training-step` loads the result through cluster.calibration.
TEST(Cli, CalibrateAndPriceATrainingStep) {
  const std::string out = temp_path("calibration.json");
  const std::string args =
      "calibrate --profiles benchmarks/results/profiles/h200x2_prolong_cad_from_trace.profile.json "
      "--kernel benchmarks/results/h200x1_bench_kernel.json --comm "
      "benchmarks/results/h200x2_bench_comm.json --out '" + out + "'";
  expect_output(run_cadre(args), 0, {"calibration " + out});
  const CliResult again = run_cadre(args.substr(0, args.find("--out")));
  std::ifstream file(out);
  std::stringstream text;
  text << file.rdbuf();
  EXPECT_EQ(text.str(), again.output) << "calibration output is not deterministic";
  EXPECT_NE(text.str().find("\"schema\": \"cadre.calibration/1\""), std::string::npos);
  expect_output(run_cadre("calibrate --kernel x.json"), 1, {"no --profiles"});
  expect_output(run_cadre("calibrate --profiles /nonexistent.json"), 1,
                {"cannot read profile '/nonexistent.json'"});
  expect_output(
      run_cadre("simulate --training-step --config configs/train_1b.pbtxt --set cluster.num_gpus=1 "
                "--set training.steps=2 --set data.packing=fill --set cluster.calibration='" +
                out + "'"),
      0, {"\"step_ms\":", "\"calibration\":\"" + out, "\"peak_gib\":"});
  expect_output(run_cadre("simulate --training-step --set cluster.calibration=/nonexistent.json"),
                1, {"cannot read calibration file '/nonexistent.json'"});
  std::filesystem::remove(out);
}

// scripts/validate_simulator.py exits 0 when every gated cell is within its target and 1 when
// one is not (here a measured step time three times what the model predicts, or a measured peak
// twice the modelled one); a cell with cuDNN graph builds in its measured steps is gated on its
// steady steps (those without a build) when it has some, else not on its step time (the reason is
// printed), and still on its memory.
TEST(Cli, ValidationScriptFailsWhenACellMissesItsTarget) {
  const std::string results = temp_path("measured.jsonl");
  auto write_cell = [&](double step_ms, int graph_builds = 0, double peak_gib = 0,
                        double steady_ms = 0, int steady_steps = 0) {
    std::ofstream(results) << "{\"run\": \"1gpu_wlb_colocated\", \"gpus\": 1, "
                              "\"distribution\": \"wlb\", \"context_length\": 65536, "
                              "\"attention\": \"colocated\", \"steps\": 4, \"step_ms\": "
                           << step_ms
                           << ", \"kernel_graphs_built_in_measured_steps\": " << graph_builds
                           << ", \"steady_step_ms\": " << steady_ms
                           << ", \"steady_steps\": " << steady_steps
                           << (steady_steps > 0 ? ", \"steady_step_numbers\": [3, 4]" : "")
                           << (peak_gib > 0
                                   ? ", \"peak_allocated_gib\": " + std::to_string(peak_gib)
                                   : std::string())
                           << "}\n";
  };
  auto validate = [&](const std::string& gate = "gate") {
    const std::string command = std::string("cd '") + CADRE_SOURCE_DIR +
                                "' && python3 scripts/validate_simulator.py --cadre '" +
                                CADRE_BINARY + "' --results '" + results + ":fill:" + gate +
                                "' --out '" + temp_path("validation") + "' > /dev/null 2>&1";
    const int status = std::system(command.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  // What the model predicts for the cell, read back from the first run's JSON.
  write_cell(1000);
  validate();
  std::ifstream json(temp_path("validation") + ".json");
  std::stringstream text;
  text << json.rdbuf();
  const auto at = text.str().find("\"simulated_ms\": ");
  ASSERT_NE(at, std::string::npos) << text.str();
  const double simulated = std::stod(text.str().substr(at + 16));
  write_cell(simulated * 1.05);
  EXPECT_EQ(validate(), 0);
  write_cell(simulated * 3);
  EXPECT_EQ(validate(), 1);
  write_cell(simulated * 3, 2);  // graph builds: step time reported, not gated
  EXPECT_EQ(validate(), 0);
  // With steady steps (measured steps without a build; here steps 3 and 4, the summary's own) the
  // cell is gated on their mean against the simulated mean of the same steps.
  write_cell(simulated * 3, 2, 0, simulated * 1.05, 2);
  EXPECT_EQ(validate(), 0);
  write_cell(simulated * 1.05, 2, 0, simulated * 3, 2);
  EXPECT_EQ(validate(), 1);
  const auto peak_at = text.str().find("\"simulated_peak_gib\": ");
  ASSERT_NE(peak_at, std::string::npos) << text.str();
  const double peak = std::stod(text.str().substr(peak_at + 22));
  write_cell(simulated, 2, peak * 1.05);
  EXPECT_EQ(validate(), 0);
  write_cell(simulated, 2, peak * 2);  // memory stays gated
  EXPECT_EQ(validate(), 1);
  // "memory" cells (the kernel A/B): step time reported only, peak memory gated.
  write_cell(simulated * 3, 0, peak * 1.05);
  EXPECT_EQ(validate("memory"), 0);
  write_cell(simulated, 0, peak * 2);
  EXPECT_EQ(validate("memory"), 1);
  // Rows are priced with LibTorch's compositions unless the entry (or the row) says "fused",
  // which keeps less: the same cell's simulated peak is lower.
  write_cell(simulated);
  EXPECT_EQ(validate("gate:fused"), 0);
  std::ifstream fused_json(temp_path("validation") + ".json");
  std::stringstream fused_text;
  fused_text << fused_json.rdbuf();
  const auto fused_at = fused_text.str().find("\"simulated_peak_gib\": ");
  ASSERT_NE(fused_at, std::string::npos) << fused_text.str();
  EXPECT_LT(std::stod(fused_text.str().substr(fused_at + 22)), peak);
  EXPECT_NE(fused_text.str().find("\"elementwise_ops\": \"fused\""), std::string::npos);
  EXPECT_EQ(validate("gate:unfused"), 1);  // not a known setting
  for (const char* ext : {".md", ".json", ".svg", "_memory.svg"}) {
    std::filesystem::remove(temp_path("validation") + ext);
  }
  std::filesystem::remove(results);
}

}  // namespace
