// `cadre train` end to end in one process: the step line and summary.json carry the rank's peak
// memory (resident memory on the CPU, at least the model's weights and optimizer state), the
// grid is recorded, a tensor-parallel size the ranks cannot hold is refused with one message, and
// the deepseek-v3-mla-like preset trains (its attention widths, with a small hidden size).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "common/posix_fs.h"

namespace {

struct Result {
  int exit_code = -1;
  std::string output;
};

Result run(const std::string& args) {
  const std::string command =
      std::string("cd '") + CADRE_SOURCE_DIR + "' && '" + CADRE_BINARY + "' " + args + " 2>&1";
  Result r;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) r.output.append(buffer, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The integer after "key": in a one-line JSON object (-1 when absent).
long long json_integer(const std::string& json, const std::string& key) {
  const auto at = json.find("\"" + key + "\":");
  if (at == std::string::npos) return -1;
  return std::stoll(json.substr(at + key.size() + 3));
}

TEST(CliParallel, TrainReportsPeakMemoryAndTheGrid) {
  const std::string dir = testing::TempDir() + "cadre_cli_parallel_" + std::to_string(::getpid());
  const Result r =
      run("train --config configs/train_tiny.pbtxt --set cluster.num_gpus=1 "
          "--set cluster.gpus_per_node=1 --set training.steps=2 --set output.dir=" +
          dir);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("| peak mem "), std::string::npos) << r.output;
  std::ifstream in(dir + "/summary.json");
  const std::string summary((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Device auto: the CUDA caching allocator's peak where the run took a GPU, else resident memory.
  const bool on_gpu = summary.find(", cuda ") != std::string::npos;
  EXPECT_NE(summary.find(std::string("\"peak_memory_kind\":\"") +
                         (on_gpu ? "allocator" : "resident") + "\""),
            std::string::npos)
      << summary;
  EXPECT_NE(summary.find("\"tensor_parallel\":1"), std::string::npos) << summary;
  EXPECT_NE(summary.find("\"shard_optimizer\":false"), std::string::npos) << summary;
  // The tiny model's fp32 weights, gradients and two moments alone are 16 B x 53568 parameters;
  // a process holding LibTorch is far above that, and below 8 GiB on this test.
  const long long peak = json_integer(summary, "peak_memory_bytes");
  EXPECT_GT(peak, 16LL * 53568) << summary;
  EXPECT_LT(peak, 8LL << 30) << summary;
  EXPECT_NE(summary.find("\"peak_memory_bytes_per_rank\":[" + std::to_string(peak) + "]"),
            std::string::npos)
      << summary;
  cadre::posix_fs::remove_tree(dir);  // not std::filesystem: see common/posix_fs.h
}

TEST(CliParallel, TrainRefusesATensorParallelSizeTheRanksCannotHold) {
  const Result r =
      run("train --config configs/train_tiny.pbtxt --set cluster.num_gpus=1 "
          "--set cluster.gpus_per_node=2 --set cluster.tensor_parallel=2 "
          "--set training.steps=1 --set output.dir=" +
          testing::TempDir() + "cadre_cli_parallel_refused");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  // The config loader sees it first: one rank (cluster.num_gpus = world) cannot hold T = 2.
  EXPECT_NE(r.output.find("cluster.num_gpus=1 is not divisible by cluster.tensor_parallel"),
            std::string::npos)
      << r.output;
}

// DeepSeek-V3's attention (query latent 1536, K/V latent 512, rotary 64, head 128, value 128)
// with 4 heads, one layer and a small hidden size, FFN and vocabulary: `cadre train` runs it
// with CAD shipping the latent, the loss is finite and the summary reports the latent's bytes.
TEST(CliParallel, TrainsTheDeepSeekV3MlaPresetAtSmallWidths) {
  const std::string dir = testing::TempDir() + "cadre_cli_mla_" + std::to_string(::getpid());
  const Result r =
      run("train --config configs/train_tiny.pbtxt --set cluster.num_gpus=1 "
          "--set cluster.gpus_per_node=1 --set model.preset=deepseek-v3-mla-like "
          "--set model.num_layers=1 --set model.hidden_size=128 --set model.num_heads=4 "
          "--set model.num_kv_heads=4 --set model.ffn_hidden_size=256 --set model.vocab_size=256 "
          "--set data.uniform_max_tokens=128 --set data.context_length=128 "
          "--set training.steps=2 --set output.dir=" +
          dir);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("MLA shipping latent"), std::string::npos) << r.output;
  std::ifstream in(dir + "/summary.json");
  const std::string summary((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(summary.find("\"model\":\"deepseek-v3-mla-like\""), std::string::npos) << summary;
  EXPECT_EQ(summary.find("nan"), std::string::npos) << summary;
  // The planner's price of a K/V token: the latent and the rotary key, (512 + 64) x 2 B out and
  // the same back.
  EXPECT_EQ(json_integer(summary, "cost_model_bf16_bytes_per_kv_token"), 2 * 576 * 2) << summary;
  // A query token: Q and dQ at the query/key width (128 + 64), O and dO at the value width (128).
  EXPECT_EQ(json_integer(summary, "cost_model_bf16_bytes_per_query_token"), 2 * 4 * (192 + 128) * 2)
      << summary;
  cadre::posix_fs::remove_tree(dir);  // not std::filesystem: see common/posix_fs.h
}

}  // namespace
