// The command line of the weights and data tools, run as child processes: `cadre export` and
// `cadre train` from an exported Hugging Face directory (model.preset from_init), `cadre data
// inspect` on files written here, and the default `cadre simulate` run: it fits, its table fits
// 100 columns, it says where the plot is, and the plot renders to a PNG of the SVG's size.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "common/posix_fs.h"
#include "tests/temp_dir.h"

namespace {

struct CliResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

CliResult run(const std::string& command) {
  CliResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// `cadre <args>` from the source directory (so configs/ paths resolve).
CliResult run_cadre(const std::string& args) {
  return run(std::string("cd '") + CADRE_SOURCE_DIR + "' && '" + CADRE_BINARY + "' " + args);
}

void expect_output(const CliResult& r, int exit_code, const std::vector<std::string>& pieces) {
  EXPECT_EQ(r.exit_code, exit_code) << r.output;
  for (const auto& p : pieces) {
    EXPECT_NE(r.output.find(p), std::string::npos) << "output lacks \"" << p << "\":\n" << r.output;
  }
}

using cadre::testing::TempDir;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

double first_loss(const std::string& metrics_path) {
  std::istringstream lines(read_file(metrics_path));
  std::string line;
  std::getline(lines, line);
  std::smatch m;
  if (!std::regex_search(line, m, std::regex("\"loss\":([0-9.eE+-]+)"))) return -1;
  return std::stod(m[1]);
}

const char* kTiny =
    "--config configs/train_tiny.pbtxt --set cluster.num_gpus=1 "
    "--set cluster.gpus_per_node=1 --set output.quiet=true";

TEST(CliWeights, ExportAndTrainFromTheExportedModel) {
  TempDir dir("export");
  const std::string d = dir.path();
  // 4 steps from random weights, checkpoint at the end.
  expect_output(run_cadre(std::string("train ") + kTiny +
                          " --set training.steps=4 --set "
                          "output.dir=" +
                          d +
                          "/run1 --set training.checkpoint_every=4 --set "
                          "training.checkpoint_dir=" +
                          d + "/ckpt"),
                0, {});
  const std::string ckpt = d + "/ckpt/step_00000004.ckpt";
  expect_output(
      run_cadre(std::string("export ") + kTiny + " --checkpoint " + ckpt + " --out " + d + "/hf"),
      0, {});
  EXPECT_TRUE(cadre::posix_fs::exists(d + "/hf/model.safetensors"));
  EXPECT_NE(read_file(d + "/hf/config.json").find("LlamaForCausalLM"), std::string::npos);
  // Sizes from config.json; training starts from the trained weights, so its first loss is
  // below the random start's on the same first batch.
  expect_output(run_cadre(std::string("train ") + kTiny +
                          " --set training.steps=1 --set "
                          "output.dir=" +
                          d +
                          "/run2 --set model.preset=from_init --set "
                          "training.init_from=" +
                          d + "/hf"),
                0, {});
  const double random_start = first_loss(d + "/run1/metrics.jsonl");
  const double trained_start = first_loss(d + "/run2/metrics.jsonl");
  EXPECT_GT(random_start, 0);
  EXPECT_GT(trained_start, 0);
  EXPECT_LT(trained_start, random_start - 0.05);
  const std::string recorded = read_file(d + "/run2/config.pbtxt");
  EXPECT_NE(recorded.find("num_kv_heads: 2"), std::string::npos) << recorded;
  EXPECT_NE(recorded.find("vocab_size: 256"), std::string::npos) << recorded;
  // A configured model that differs is named.
  expect_output(run_cadre(std::string("train ") + kTiny +
                          " --set training.steps=1 --set "
                          "output.dir=" +
                          d +
                          "/run3 --set model.vocab_size=300 --set "
                          "training.init_from=" +
                          d + "/hf"),
                2, {"config.json has vocab_size=256", "model.vocab_size=300", "from_init"});
  expect_output(run_cadre(std::string("train ") + kTiny + " --set model.preset=from_init"), 2,
                {"model.preset=\"from_init\"", "training.init_from", "empty"});
  // bf16 shards.
  expect_output(run_cadre(std::string("export ") + kTiny + " --checkpoint " + ckpt + " --out " + d +
                          "/hf16 --dtype bf16 --max-shard-size 150K --set output.quiet=false"),
                0, {"(bf16)", "model-00001-of-00002.safetensors", "model.safetensors.index.json"});
  // Bad arguments and a checkpoint of another model.
  expect_output(run_cadre(std::string("export ") + kTiny + " --out " + d + "/x"), 1,
                {"--checkpoint FILE is required"});
  expect_output(run_cadre(std::string("export ") + kTiny + " --checkpoint " + ckpt + " --out " + d +
                          "/x --dtype fp8"),
                1, {"--dtype has 'fp8'", "fp32, bf16"});
  expect_output(run_cadre(std::string("export ") + kTiny + " --checkpoint " + ckpt + " --out " + d +
                          "/x --max-shard-size lots"),
                1, {"--max-shard-size has 'lots'"});
  expect_output(run_cadre(std::string("export ") + kTiny +
                          " --set model.num_layers=3 "
                          "--checkpoint " +
                          ckpt + " --out " + d + "/x"),
                1, {ckpt, "lack parameter 'layers.2.attention_norm'"});
}

// Cadre's loss of its exported weights equals that of benchmarks/hf_parity.py's plain-Python
// Llama (written from the Hugging Face definition) reading the exported files: untied, tied and
// with Llama 3.1 rotary scaling; and of its plain-Python DeepSeek for two latent-attention
// models exported as DeepseekV3ForCausalLM (with and without a query latent), each trained,
// exported and read back with model.preset from_init; fp32 to 1e-4 and bf16 to 2e-2 (the GPU
// machine runs the same script against transformers itself).
TEST(CliWeights, ExportedModelsMatchAnIndependentReference) {
  TempDir dir("parity");
  const std::string binary = CADRE_BINARY;
  const std::string build_dir = binary.substr(0, binary.rfind("/bin/"));
  const auto r =
      run(std::string("cd '") + CADRE_SOURCE_DIR + "' && CADRE_BUILD_DIR='" + build_dir +
          "' CADRE_PARITY_DIR='" + dir.path() + "' scripts/hf_parity_check.sh --no-transformers");
  expect_output(r, 0,
                {"untied: Cadre loss", "llama3: Cadre loss", "mla: Cadre loss", "mla-q: Cadre loss",
                 "DeepseekV3ForCausalLM", "\"match\": true", "hf parity: PASS"});
  EXPECT_EQ(r.output.find("\"match\": false"), std::string::npos) << r.output;
}

// A Megatron dataset written here (the same layout as tests/runtime/test_indexed_dataset.cc's
// writer): documents of the given lengths, token = document index % 200.
void write_megatron(const std::string& prefix, const std::vector<int64_t>& lengths) {
  auto put = [](std::string& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  std::string idx("MMIDIDX\0\0", 9), bin;
  put(idx, 1, 8);
  put(idx, 8, 1);
  put(idx, lengths.size(), 8);
  put(idx, lengths.size() + 1, 8);
  for (int64_t n : lengths) put(idx, n, 4);
  uint64_t at = 0;
  for (int64_t n : lengths) {
    put(idx, at, 8);
    at += 2 * n;
  }
  for (size_t d = 0; d <= lengths.size(); ++d) put(idx, d, 8);
  for (size_t d = 0; d < lengths.size(); ++d) {
    for (int64_t i = 0; i < lengths[d]; ++i) put(bin, d % 200, 2);
  }
  std::ofstream(prefix + ".idx", std::ios::binary).write(idx.data(), idx.size());
  std::ofstream(prefix + ".bin", std::ios::binary).write(bin.data(), bin.size());
}

TEST(CliData, InspectPrintsCountsHistogramAndSimulatedGain) {
  TempDir dir("inspect");
  // 300 short documents and a few long ones: a mix with attention imbalance to fix.
  std::vector<int64_t> lengths;
  for (int i = 0; i < 300; ++i) lengths.push_back(200 + (i * 37) % 900);
  for (int i = 0; i < 6; ++i) lengths.push_back(6000 + 500 * i);
  int64_t total = 0;
  for (int64_t n : lengths) total += n;
  write_megatron(dir.path() + "/corpus", lengths);
  const auto r = run_cadre("data inspect " + dir.path() +
                           "/corpus --gpus 16 --context 8K "
                           "--batches 1");
  std::ostringstream tokens;
  tokens << total;
  std::string with_commas = tokens.str();
  for (int i = static_cast<int>(with_commas.size()) - 3; i > 0; i -= 3) with_commas.insert(i, ",");
  expect_output(r, 0,
                {"Megatron indexed dataset", "uint16 tokens", "documents: 306",
                 "tokens: " + with_commas, "max 8500", "[4K-8K)", "[8K-16K)", "simulated step",
                 "16 GPUs (TP 8 x PP 1 x DP 2)", "cad ", "fixed", "CAD gain on this length mix"});
  // The histogram counts every document once: of the six long ones, 6000-7500 and 8000 are in
  // [4K-8K), 8500 in [8K-16K).
  EXPECT_TRUE(std::regex_search(r.output, std::regex("\\[4K-8K\\) +5 "))) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("\\[8K-16K\\) +1 "))) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("\\[512-1K\\) +165 "))) << r.output;
  // .idx given by its full name; a token file; the simulation skipped with --gpus 0.
  expect_output(run_cadre("data inspect " + dir.path() + "/corpus.idx --gpus 0"), 0,
                {"documents: 306"});
  {
    std::vector<uint16_t> t = {5, 6, 7, 0, 8, 9, 0, 0, 1, 2, 3, 4};
    std::ofstream(dir.path() + "/tokens.bin", std::ios::binary)
        .write(reinterpret_cast<char*>(t.data()), 2 * t.size());
  }
  expect_output(run_cadre("data inspect " + dir.path() + "/tokens.bin --gpus 0"), 0,
                {"token file", "documents: 3", "tokens: 9", "min 2, median 3"});
  expect_output(run_cadre("data inspect " + dir.path() + "/nothing"), 1,
                {"neither a Megatron dataset prefix", "nothing"});
  expect_output(run_cadre("data inspect " + dir.path() + "/corpus --gpus x"), 1,
                {"--gpus has 'x'"});
  expect_output(run_cadre("data frobnicate"), 1, {"unknown data subcommand 'frobnicate'"});
  expect_output(run_cadre("data"), 2, {"missing subcommand", "inspect"});
  expect_output(run_cadre("help data"), 0, {"usage: cadre data inspect PATH"});
}

std::vector<std::string> losses(const std::string& metrics_path) {
  std::vector<std::string> out;
  std::istringstream lines(read_file(metrics_path));
  std::string line;
  std::smatch m;
  while (std::getline(lines, line)) {
    if (std::regex_search(line, m, std::regex("\"loss\":([0-9.eE+-]+)"))) out.push_back(m[1]);
  }
  return out;
}

// Training on a blend of two Megatron datasets, interrupted and resumed, gives the losses of the
// uninterrupted run bit for bit (the blend position rides in the checkpoint).
TEST(CliData, TrainingOnABlendResumesExactly) {
  TempDir dir("blend");
  std::vector<int64_t> a, b;
  for (int i = 0; i < 40; ++i) a.push_back(20 + (i * 13) % 90);
  for (int i = 0; i < 9; ++i) b.push_back(150 + 10 * i);
  write_megatron(dir.path() + "/a", a);
  write_megatron(dir.path() + "/b", b);
  const std::string common =
      std::string("train ") + kTiny + " --set data.format=megatron " +
      "--set data.blend=0.6:" + dir.path() + "/a,0.4:" + dir.path() + "/b " +
      "--set data.packing=fill --set training.steps=6 --set training.checkpoint_dir=";
  expect_output(run_cadre(common + dir.path() + "/c1 --set output.dir=" + dir.path() + "/full"), 0,
                {});
  expect_output(run_cadre(common + dir.path() +
                          "/c2 --set training.checkpoint_every=3 "
                          "--set training.steps=3 --set output.dir=" +
                          dir.path() + "/part"),
                0, {});
  expect_output(
      run_cadre(common + dir.path() + "/c2 --resume --set output.dir=" + dir.path() + "/part"), 0,
      {});
  const auto full = losses(dir.path() + "/full/metrics.jsonl");
  const auto resumed = losses(dir.path() + "/part/metrics.jsonl");
  ASSERT_EQ(full.size(), 6u);
  EXPECT_EQ(resumed, full);
}

// The default run: every cell fits at the paper's TP 8, the table is readable in 100 columns,
// the plot's path is printed, and the SVG renders (rsvg-convert, from librsvg2-bin) to a PNG of
// the size it declares.
TEST(CliSimulate, DefaultRunFitsIsNarrowAndItsPlotRenders) {
  TempDir dir("default");
  const auto r = run_cadre("simulate --gpus 8,64 --batches 1 --out " + dir.path());
  expect_output(r, 0, {"(TP 8, PP 1", "plot: " + dir.path() + "/simulate.svg"});
  EXPECT_EQ(r.output.find(" NO "), std::string::npos) << r.output;
  std::istringstream lines(r.output);
  std::string line;
  while (std::getline(lines, line)) EXPECT_LE(line.size(), 100u) << line;
  const std::string svg = dir.path() + "/simulate.svg", png = dir.path() + "/simulate.png";
  std::smatch size;
  const std::string text = read_file(svg);
  ASSERT_TRUE(std::regex_search(text, size, std::regex("width=\"(\\d+)\" height=\"(\\d+)\"")));
  if (run("command -v rsvg-convert").exit_code != 0) {
    // CI installs it (scripts/install_deps.sh) and must run this check; machines that cannot
    // install packages (the GPU machines) skip it and say so.
    ASSERT_EQ(std::getenv("CI"), nullptr) << "rsvg-convert missing: install librsvg2-bin";
    GTEST_SKIP() << "rsvg-convert not installed (librsvg2-bin, scripts/install_deps.sh)";
  }
  const auto convert = run("rsvg-convert -o '" + png + "' '" + svg + "'");
  ASSERT_EQ(convert.exit_code, 0) << "rsvg-convert (librsvg2-bin, scripts/install_deps.sh) "
                                     "failed:\n"
                                  << convert.output;
  const std::string bytes = read_file(png);
  ASSERT_GT(bytes.size(), 24u);
  EXPECT_EQ(bytes.substr(1, 3), "PNG");
  auto be32 = [&](size_t at) {
    return (static_cast<uint32_t>(static_cast<unsigned char>(bytes[at])) << 24) |
           (static_cast<unsigned char>(bytes[at + 1]) << 16) |
           (static_cast<unsigned char>(bytes[at + 2]) << 8) |
           static_cast<unsigned char>(bytes[at + 3]);
  };
  EXPECT_EQ(be32(16), std::stoul(size[1]));
  EXPECT_EQ(be32(20), std::stoul(size[2]));
  // Lines, labels and text make a PNG of several KB; a blank page compresses to far less.
  EXPECT_GT(bytes.size(), 8000u);
}

}  // namespace
