// Config loading: text-format errors with their location, `--set` overrides, presets, every
// validation message, and every file in configs/.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/posix_fs.h"
#include "launch/config.h"
#include "tests/expect_error.h"

namespace cadre::launch {
namespace {

// Runs `fn`, expects a cadre::Error, and checks that its message contains every piece.
using cadre::testing::expect_error;

config::RunConfig with_overrides(const std::vector<std::string>& overrides) {
  config::RunConfig c;
  for (const auto& o : overrides) apply_override(c, o);
  return c;
}

void expect_finalize_error(const std::vector<std::string>& overrides,
                           const std::vector<std::string>& pieces, int world_size = 0) {
  config::RunConfig c = with_overrides(overrides);
  expect_error([&] { finalize_config(c, world_size); }, pieces);
}

config::RunConfig finalized(const std::vector<std::string>& overrides) {
  config::RunConfig c = with_overrides(overrides);
  finalize_config(c);
  return c;
}

// --- text format -------------------------------------------------------------------------------

TEST(ParseConfigText, ReadsNestedFieldsAndLists) {
  config::RunConfig c = parse_config_text(
      "model { preset: \"tiny\" }\ncluster { num_gpus: 4 }\n"
      "simulate { gpu_counts: [8, 16] strategies: \"cad\" strategies: \"wlb\" }\n",
      "t.pbtxt");
  EXPECT_EQ(c.model().preset(), "tiny");
  EXPECT_EQ(c.cluster().num_gpus(), 4);
  ASSERT_EQ(c.simulate().gpu_counts_size(), 2);
  EXPECT_EQ(c.simulate().gpu_counts(1), 16);
  EXPECT_EQ(c.simulate().strategies_size(), 2);
}

TEST(ParseConfigText, UnknownFieldNamesLocationLevelAndAcceptedFields) {
  expect_error([] { parse_config_text("model {\n  num_head: 3\n}\n", "t.pbtxt"); },
               {"t.pbtxt:2:", "unknown field \"num_head\" in model", "accepted:", "num_heads",
                "num_kv_heads"});
}

TEST(ParseConfigText, UnknownTopLevelField) {
  expect_error([] { parse_config_text("# comment\nmodle { }\n", "t.pbtxt"); },
               {"t.pbtxt:2:", "unknown field \"modle\" at the top level", "model, cluster"});
}

TEST(ParseConfigText, WrongTypeNamesFieldPathAndExpectedType) {
  expect_error([] { parse_config_text("model { num_heads: \"abc\" }", "t.pbtxt"); },
               {"t.pbtxt:1:20", "model.num_heads", "int32"});
  expect_error([] { parse_config_text("model { num_heads: 1.5 }", "t.pbtxt"); },
               {"model.num_heads", "whole number"});
  expect_error([] { parse_config_text("data { seed: -1 }", "t.pbtxt"); }, {"data.seed", "uint64"});
  expect_error([] { parse_config_text("model { tie_embeddings: 3 }", "t.pbtxt"); },
               {"model.tie_embeddings", "true or false"});
}

TEST(ParseConfigText, UnquotedStringGetsAHint) {
  expect_error([] { parse_config_text("data {\n  distribution: wlb\n}", "t.pbtxt"); },
               {"t.pbtxt:2:", "data.distribution", "quoted", "wlb, prolong"});
}

TEST(ParseConfigText, FieldPathFollowsNestingNotComments) {
  // The braces in the comment and the closed block before must not confuse the path.
  expect_error(
      [] {
        parse_config_text("model { num_heads: 4 }  # training {\n\tcluster { num_gpus: x }\n",
                          "t.pbtxt");
      },
      {"t.pbtxt:2:", "cluster.num_gpus"});
}

TEST(ParseConfigText, ScalarGivenForABlock) {
  expect_error([] { parse_config_text("model: 3", "t.pbtxt"); },
               {"t.pbtxt:1:", "model", "block of settings"});
}

TEST(ParseConfigText, DuplicateSingularField) {
  expect_error([] { parse_config_text("cluster { num_gpus: 4 num_gpus: 8 }", "t.pbtxt"); },
               {"t.pbtxt:1:", "cluster.num_gpus is given twice"});
}

TEST(ParseConfigText, UnclosedBlock) {
  expect_error([] { parse_config_text("data {\n  seed: 3\n\n", "t.pbtxt"); },
               {"t.pbtxt:", "ends inside the block data", "closing '}'"});
}

TEST(ParseConfigText, ColumnsCountTabsAsOneCharacter) {
  expect_error([] { parse_config_text("model {\n\tnum_heads: x\n}", "t.pbtxt"); },
               {"t.pbtxt:2:13:", "model.num_heads"});
}

TEST(LoadConfigFile, MissingFileAndDirectory) {
  expect_error([] { load_config_file("/nonexistent/cadre.pbtxt"); },
               {"/nonexistent/cadre.pbtxt", "does not exist"});
  expect_error([] { load_config_file(CADRE_SOURCE_DIR "/configs"); }, {"is a directory"});
}

TEST(LoadConfigFile, ErrorsNameTheFile) {
  const std::string path = ::testing::TempDir() + "cadre_bad_config.pbtxt";
  std::ofstream(path) << "cluster {\n  num_gpus: 4\n  gpus: 8\n}\n";
  expect_error([&] { load_config_file(path); },
               {path + ":3:", "unknown field \"gpus\" in cluster", "gpus_per_node"});
  posix_fs::remove_file(path);
}

// --- overrides ---------------------------------------------------------------------------------

TEST(ApplyOverride, SetsEachScalarType) {
  config::RunConfig c;
  apply_override(c, "scheduler.tolerance=0.02");
  apply_override(c, "cluster.num_gpus=16");
  apply_override(c, "data.context_length=128K");
  apply_override(c, "data.seed=18446744073709551615");
  apply_override(c, "training.ping_pong=false");
  apply_override(c, "model.preset=llama-1b");
  apply_override(c, "output.dir=results/a=b");  // only the first '=' separates
  EXPECT_DOUBLE_EQ(c.scheduler().tolerance(), 0.02);
  EXPECT_EQ(c.cluster().num_gpus(), 16);
  EXPECT_EQ(c.data().context_length(), 131072);
  EXPECT_EQ(c.data().seed(), 18446744073709551615ull);
  EXPECT_FALSE(c.training().ping_pong());
  EXPECT_TRUE(c.training().has_ping_pong());
  EXPECT_EQ(c.model().preset(), "llama-1b");
  EXPECT_EQ(c.output().dir(), "results/a=b");
}

TEST(ApplyOverride, RepeatedFieldsTakeListsAndReplace) {
  config::RunConfig c;
  apply_override(c, "simulate.gpu_counts=8,16,32");
  apply_override(c, "simulate.gpu_counts=64, 128");
  ASSERT_EQ(c.simulate().gpu_counts_size(), 2);
  EXPECT_EQ(c.simulate().gpu_counts(0), 64);
  EXPECT_EQ(c.simulate().gpu_counts(1), 128);
  apply_override(c, "simulate.strategies=cad,wlb");
  ASSERT_EQ(c.simulate().strategies_size(), 2);
  EXPECT_EQ(c.simulate().strategies(1), "wlb");
  apply_override(c, "simulate.context_lengths=32K,512K");
  EXPECT_EQ(c.simulate().context_lengths(1), 524288);
  apply_override(c, "simulate.gpu_counts=");
  EXPECT_EQ(c.simulate().gpu_counts_size(), 0);
  expect_error([&] { apply_override(c, "simulate.gpu_counts=8,x"); },
               {"simulate.gpu_counts", "\"x\"", "comma-separated list"});
}

TEST(ApplyOverride, UnknownPathComponentListsAcceptedNames) {
  config::RunConfig c;
  expect_error([&] { apply_override(c, "scheduler.tolerence=0.1"); },
               {"unknown field \"tolerence\" in scheduler", "tolerance, min_shard_tokens"});
  expect_error([&] { apply_override(c, "sched.tolerance=0.1"); },
               {"unknown field \"sched\" at the top level", "model, cluster, data, scheduler"});
  expect_error([&] { apply_override(c, "model..num_heads=3"); }, {"empty field name", "in model"});
}

TEST(ApplyOverride, BlockLeafAndPathThroughAValueAreErrors) {
  config::RunConfig c;
  expect_error([&] { apply_override(c, "model=tiny"); },
               {"model is a block of settings", "model.<field>=value", "preset"});
  expect_error([&] { apply_override(c, "model.num_heads.x=1"); },
               {"model.num_heads is an int32", "no field \"x\""});
}

TEST(ApplyOverride, BadValuesSayWhatIsAccepted) {
  config::RunConfig c;
  expect_error([&] { apply_override(c, "model.num_heads=abc"); },
               {"model.num_heads", "\"abc\"", "int32"});
  expect_error([&] { apply_override(c, "model.num_heads=3000000000"); },
               {"model.num_heads", "int32"});
  expect_error([&] { apply_override(c, "data.seed=-3"); }, {"data.seed", ">= 0"});
  expect_error([&] { apply_override(c, "training.resume=maybe"); },
               {"training.resume", "true or false"});
  expect_error([&] { apply_override(c, "scheduler.tolerance=0.1x"); },
               {"scheduler.tolerance", "a number"});
  expect_error([&] { apply_override(c, "scheduler.tolerance"); },
               {"not an assignment", "path.to.field=value"});
}

// --- presets -----------------------------------------------------------------------------------

TEST(FinalizeConfig, DefaultIsLlama8b) {
  config::RunConfig c = finalized({});
  EXPECT_EQ(c.model().num_layers(), 32);
  EXPECT_EQ(c.model().hidden_size(), 4096);
  EXPECT_EQ(c.model().num_heads(), 32);
  EXPECT_EQ(c.model().num_kv_heads(), 8);
  EXPECT_EQ(c.model().head_dim(), 128);
  EXPECT_EQ(c.model().ffn_hidden_size(), 14336);
  EXPECT_EQ(c.model().vocab_size(), 128256);
  EXPECT_FALSE(c.model().tie_embeddings());
  EXPECT_DOUBLE_EQ(c.model().rope_theta(), 500000);
}

TEST(FinalizeConfig, PresetsFillSizes) {
  config::RunConfig tiny = finalized({"model.preset=tiny"});
  EXPECT_EQ(tiny.model().num_layers(), 2);
  EXPECT_EQ(tiny.model().hidden_size(), 64);
  EXPECT_EQ(tiny.model().num_heads(), 4);
  EXPECT_EQ(tiny.model().num_kv_heads(), 2);
  EXPECT_EQ(tiny.model().head_dim(), 16);
  EXPECT_EQ(tiny.model().ffn_hidden_size(), 128);
  EXPECT_EQ(tiny.model().vocab_size(), 256);

  config::RunConfig b1 = finalized({"model.preset=llama-1b"});
  EXPECT_EQ(b1.model().head_dim(), 64);
  EXPECT_TRUE(b1.model().tie_embeddings());
  config::RunConfig b3 = finalized({"model.preset=llama-3b"});
  EXPECT_EQ(b3.model().num_layers(), 28);
  EXPECT_EQ(b3.model().head_dim(), 128);
  config::RunConfig b34 = finalized({"model.preset=llama-34b"});
  EXPECT_EQ(b34.model().hidden_size(), 8192);
  EXPECT_EQ(b34.model().vocab_size(), 32000);
  EXPECT_DOUBLE_EQ(b34.model().rope_theta(), 1e6);
  config::RunConfig mla = finalized({"model.preset=deepseek-v3-mla-like"});
  EXPECT_EQ(mla.model().kv_latent_dim(), 512);
  EXPECT_EQ(mla.model().rope_head_dim(), 64);
  EXPECT_EQ(mla.model().head_dim(), 128);  // explicit: not hidden_size / num_heads
}

TEST(FinalizeConfig, ExplicitFieldsWinOverThePreset) {
  config::RunConfig c = finalized({"model.preset=llama-34b", "model.num_layers=4",
                                   "model.rope_theta=10000", "model.tie_embeddings=true"});
  EXPECT_EQ(c.model().num_layers(), 4);
  EXPECT_EQ(c.model().hidden_size(), 8192);
  EXPECT_DOUBLE_EQ(c.model().rope_theta(), 10000);
  EXPECT_TRUE(c.model().tie_embeddings());
  // head_dim follows an overridden head count unless given explicitly.
  EXPECT_EQ(finalized({"model.num_heads=16"}).model().head_dim(), 256);
  EXPECT_EQ(finalized({"model.num_heads=16", "model.head_dim=128"}).model().head_dim(), 128);
}

TEST(FinalizeConfig, IsIdempotent) {
  config::RunConfig c = finalized({"model.preset=tiny", "cluster.num_gpus=2"});
  config::RunConfig again = c;
  finalize_config(again);
  EXPECT_EQ(config_to_text(c), config_to_text(again));
}

TEST(FinalizeConfig, CustomNeedsEverySize) {
  expect_finalize_error({"model.preset=custom", "model.hidden_size=256"},
                        {"model.num_layers is not set", "custom", "num_kv_heads"});
  config::RunConfig c = finalized(
      {"model.preset=custom", "model.num_layers=3", "model.hidden_size=96", "model.num_heads=6",
       "model.num_kv_heads=3", "model.ffn_hidden_size=200", "model.vocab_size=1000"});
  EXPECT_EQ(c.model().head_dim(), 16);
}

// --- validation: one message per mistake, naming field, value and what is accepted ------------

TEST(FinalizeConfig, ModelErrors) {
  expect_finalize_error({"model.preset=llama-9b"},
                        {"model.preset=\"llama-9b\"", "tiny, llama-1b", "custom"});
  expect_finalize_error({"model.num_heads=0"}, {"model.num_heads=0", "integer >= 1"});
  expect_finalize_error({"model.num_layers=-2"}, {"model.num_layers=-2", "integer >= 1"});
  expect_finalize_error(
      {"model.num_kv_heads=5"},
      {"model.num_kv_heads=5", "does not divide model.num_heads=32", "1, 2, 4, 8, 16, 32"});
  expect_finalize_error(
      {"model.num_heads=24", "model.num_kv_heads=8"},
      {"model.hidden_size=4096", "not divisible by model.num_heads=24", "model.head_dim"});
  expect_finalize_error({"model.head_dim=15"}, {"model.head_dim=15", "even"});
  expect_finalize_error({"model.rope_head_dim=64"}, {"model.rope_head_dim=64", "kv_latent_dim=0"});
}

// Latent attention: one clear error per inconsistent setting.
TEST(FinalizeConfig, LatentAttentionErrors) {
  const std::string mla = "model.preset=deepseek-v2-lite-like";
  expect_finalize_error({mla, "model.rope_head_dim=63"}, {"model.rope_head_dim=63", "even"});
  expect_finalize_error({mla, "model.rope_head_dim=0"}, {"model.rope_head_dim=0", "even"});
  expect_finalize_error({"model.q_latent_dim=64"}, {"model.q_latent_dim", "kv_latent_dim=0"});
  expect_finalize_error({"model.v_head_dim=64"}, {"model.v_head_dim", "kv_latent_dim=0"});
  expect_finalize_error({"model.tpla=true"}, {"model.tpla", "kv_latent_dim=0"});
  expect_finalize_error({mla, "model.num_kv_heads=4"},
                        {"model.num_kv_heads=4", "accepted: num_kv_heads = num_heads = 16"});
  expect_finalize_error({mla, "model.tpla=true", "cluster.tensor_parallel=1"},
                        {"model.tpla=true needs cluster.tensor_parallel > 1", "cadre eval"});
  expect_finalize_error(
      {mla, "model.tpla=true", "model.kv_latent_dim=500", "cluster.tensor_parallel=8"},
      {"model.kv_latent_dim=500", "not divisible by cluster.tensor_parallel=8"});
  expect_finalize_error({mla, "model.tpla=true", "model.kv_latent_dim=384",
                         "model.tpla_transform=hadamard", "cluster.tensor_parallel=2"},
                        {"hadamard", "power-of-two", "384"});
  expect_finalize_error({mla, "model.tpla_transform=pca"}, {"model.tpla_transform", "hadamard"});
  expect_finalize_error({mla, "scheduler.mla_shipping=compressed"},
                        {"scheduler.mla_shipping", "latent, expanded"});
}

TEST(FinalizeConfig, LatentAttentionPresets) {
  for (const char* preset : {"deepseek-v2-lite-like", "mla-tiny", "deepseek-v3-mla-like"}) {
    auto c = finalized({std::string("model.preset=") + preset});
    EXPECT_GT(c.model().kv_latent_dim(), 0) << preset;
    EXPECT_EQ(c.model().num_kv_heads(), c.model().num_heads()) << preset;
    EXPECT_TRUE(c.model().has_v_head_dim()) << preset;
  }
  auto lite = finalized({"model.preset=deepseek-v2-lite-like"});
  EXPECT_EQ(lite.model().q_latent_dim(), 0);
  EXPECT_EQ(lite.model().head_dim() + lite.model().rope_head_dim(), 192);
  EXPECT_EQ(lite.model().v_head_dim(), 128);
  EXPECT_EQ(finalized({"model.preset=deepseek-v3-mla-like"}).model().q_latent_dim(), 1536);
}

TEST(FinalizeConfig, ClusterErrors) {
  expect_finalize_error(
      {"cluster.num_gpus=12", "cluster.tensor_parallel=4", "cluster.pipeline_parallel=2"},
      {"cluster.num_gpus=12", "tensor_parallel*cluster.pipeline_parallel=8", "a multiple of 8"});
  expect_finalize_error({"cluster.num_gpus=0"}, {"cluster.num_gpus=0", ">= 1"});
  expect_finalize_error({"cluster.num_gpus=16", "cluster.tensor_parallel=16"},
                        {"cluster.tensor_parallel=16", "gpus_per_node=8", "1 to 8"});
  expect_finalize_error({"model.preset=llama-3b", "cluster.tensor_parallel=16",
                         "cluster.gpus_per_node=16", "cluster.num_gpus=16"},
                        {"model.num_heads=24", "cluster.tensor_parallel=16"});
  expect_finalize_error({"model.preset=llama-3b", "cluster.pipeline_parallel=8"},
                        {"model.num_layers=28", "pipeline_parallel=8", "1, 2, 4, 7, 14, 28"});
  expect_finalize_error({"cluster.context_parallel=3"},
                        {"cluster.context_parallel=3", "data-parallel size 8"});
  expect_finalize_error({"cluster.inter_node_bandwidth_gbps=0"},
                        {"cluster.inter_node_bandwidth_gbps=0", "> 0"});
  expect_finalize_error(
      {"cluster.attention_calibration=/nonexistent/table.json"},
      {"cluster.attention_calibration=\"/nonexistent/table.json\"", "does not exist"});
}

TEST(FinalizeConfig, WorldSizeMustMatchTheCluster) {
  expect_finalize_error(
      {},
      {"cluster.num_gpus=8", "launched with 4 ranks", "--set cluster.num_gpus=4", "mpirun -np 8"},
      /*world_size=*/4);
  config::RunConfig c = with_overrides({"cluster.num_gpus=4"});
  EXPECT_NO_THROW(finalize_config(c, 4));
}

TEST(FinalizeConfig, DataErrors) {
  expect_finalize_error(
      {"data.distribution=zipf"},
      {"data.distribution=\"zipf\"", "wlb, prolong, lognormal, uniform, fixed, file"});
  expect_finalize_error({"data.distribution=file"},
                        {"data.lengths_file is empty", "data.distribution=\"file\""});
  expect_finalize_error({"data.distribution=file", "data.lengths_file=/nonexistent/lengths.json"},
                        {"data.lengths_file=\"/nonexistent/lengths.json\"", "does not exist"});
  expect_finalize_error({"data.context_length=0"}, {"data.context_length=0", ">= 1"});
  expect_finalize_error({"data.uniform_min_tokens=100", "data.uniform_max_tokens=50"},
                        {"data.uniform_max_tokens=50", "uniform_min_tokens=100"});
  expect_finalize_error({"data.short_keep_fraction=0"}, {"data.short_keep_fraction=0", "(0, 1]"});
  expect_finalize_error({"data.token_dtype=int8"}, {"data.token_dtype=\"int8\"", "uint16, uint32"});
  expect_finalize_error({"model.preset=tiny", "data.eod_token=256"},
                        {"data.eod_token=256", "0 to 255"});

  const std::string lengths = ::testing::TempDir() + "cadre_lengths.txt";
  std::ofstream(lengths) << "100\n200\n";
  EXPECT_NO_THROW(finalized({"data.distribution=file", "data.lengths_file=" + lengths}));
  posix_fs::remove_file(lengths);
}

TEST(FinalizeConfig, SchedulerErrors) {
  expect_finalize_error({"scheduler.tolerance=0"}, {"scheduler.tolerance=0", "(0, 1)"});
  expect_finalize_error({"scheduler.tolerance=1"}, {"scheduler.tolerance=1", "(0, 1)"});
  expect_finalize_error({"scheduler.min_shard_tokens=0"}, {"scheduler.min_shard_tokens=0", ">= 1"});
  expect_finalize_error({"scheduler.server_mode=remote"},
                        {"scheduler.server_mode=\"remote\"", "in_place, dedicated"});
  expect_finalize_error({"scheduler.server_mode=dedicated"},
                        {"scheduler.num_dedicated_servers=0", "1 to 7"});
  expect_finalize_error({"scheduler.server_mode=dedicated", "scheduler.num_dedicated_servers=8"},
                        {"scheduler.num_dedicated_servers=8", "1 to 7"});
  expect_finalize_error({"scheduler.num_dedicated_servers=2"},
                        {"scheduler.num_dedicated_servers=2", "server_mode=dedicated"});
  EXPECT_NO_THROW(
      finalized({"scheduler.server_mode=dedicated", "scheduler.num_dedicated_servers=2"}));
}

TEST(FinalizeConfig, TrainingAndSimulateErrors) {
  expect_finalize_error({"training.attention=ring"},
                        {"training.attention=\"ring\"", "cad, colocated"});
  expect_finalize_error({"training.dtype=fp16"}, {"training.dtype=\"fp16\"", "fp32, bf16"});
  expect_finalize_error({"training.attention_kernel=triton"},
                        {"training.attention_kernel=\"triton\"", "auto, flash, cudnn, reference"});
  expect_finalize_error({"training.checkpoint_every=10"},
                        {"training.checkpoint_every=10", "checkpoint_dir"});
  expect_finalize_error({"training.adam_beta2=1"}, {"training.adam_beta2=1", "[0, 1)"});
  expect_finalize_error({"training.attention=colocated", "scheduler.server_mode=dedicated",
                         "scheduler.num_dedicated_servers=2"},
                        {"training.attention=\"colocated\"", "dedicated"});
  expect_finalize_error({"simulate.gpu_counts=8,12", "cluster.tensor_parallel=8"},
                        {"simulate.gpu_counts[1]=12", "multiples of 8"});
  expect_finalize_error({"simulate.models=llama-8b,gpt-4"},
                        {"simulate.models[1]=\"gpt-4\"", "llama-34b"});
  expect_finalize_error({"simulate.strategies=cad,magic"},
                        {"simulate.strategies[1]=\"magic\"", "cad, fixed, cp, wlb, ideal"});
  expect_finalize_error({"simulate.distributions=wlb,pareto"},
                        {"simulate.distributions[1]=\"pareto\"", "prolong"});
}

// --- command-line handling ---------------------------------------------------------------------

TEST(ConfigFromArgs, FileThenOverridesInOrderAndTheRestKept) {
  std::vector<std::string> rest;
  config::RunConfig c = config_from_args(
      {"--set", "cluster.num_gpus=4", "--lengths", "1,2", "--config",
       CADRE_SOURCE_DIR "/configs/train_tiny.pbtxt", "--set=cluster.num_gpus=2", "--pack"},
      &rest);
  EXPECT_EQ(c.model().preset(), "tiny");
  EXPECT_EQ(c.cluster().num_gpus(), 2);  // the later --set wins over the earlier and the file
  EXPECT_EQ(rest, (std::vector<std::string>{"--lengths", "1,2", "--pack"}));
}

TEST(ConfigFromArgs, Errors) {
  std::vector<std::string> rest;
  expect_error([&] { config_from_args({"--set"}, &rest); },
               {"--set needs a value", "path.to.field=value"});
  expect_error([&] { config_from_args({"--config"}, &rest); }, {"--config needs a value"});
  expect_error(
      [&] {
        config_from_args({"--config=a.pbtxt", "--config=b.pbtxt"}, &rest);
      },
      {"--config given twice"});
  expect_error([&] { config_from_args({"--frobnicate"}, nullptr); },
               {"unknown argument \"--frobnicate\""});
  expect_error(
      [&] {
        config_from_args({"--set", "model.num_heads=0"}, &rest);
      },
      {"model.num_heads=0"});
  expect_error([&] { config_from_args({}, &rest, 2); }, {"mpirun -np 8"});
}

TEST(ConfigToText, RoundTripsTheEffectiveConfig) {
  config::RunConfig c = finalized({"model.preset=tiny", "cluster.num_gpus=2",
                                   "simulate.gpu_counts=8,16", "scheduler.tolerance=0.05"});
  const std::string text = config_to_text(c);
  EXPECT_NE(text.find("tolerance: 0.05"), std::string::npos) << text;
  EXPECT_NE(text.find("min_shard_tokens: 128"), std::string::npos) << text;  // a default
  config::RunConfig back = parse_config_text(text, "effective");
  finalize_config(back);
  EXPECT_EQ(config_to_text(back), text);
  EXPECT_EQ(config_to_text(config::RunConfig(), false), "");
}

TEST(ConfigOptionsHelp, MentionsOptionsAndPresets) {
  const std::string help = config_options_help();
  EXPECT_NE(help.find("--config FILE"), std::string::npos);
  EXPECT_NE(help.find("--set PATH=VALUE"), std::string::npos);
  for (const auto& name : model_preset_names()) {
    EXPECT_NE(help.find(name), std::string::npos) << name;
  }
}

// --- shipped configs ---------------------------------------------------------------------------

TEST(ShippedConfigs, EveryFileLoadsAndFinalizes) {
  int count = 0;
  for (const std::string& name : posix_fs::list_directory(CADRE_SOURCE_DIR "/configs")) {
    const std::filesystem::path path = std::filesystem::path(CADRE_SOURCE_DIR "/configs") / name;
    if (path.extension() != ".pbtxt") continue;
    ++count;
    SCOPED_TRACE(path.string());
    EXPECT_NO_THROW({
      config::RunConfig c = load_config_file(path.string());
      finalize_config(c);
    });
  }
  EXPECT_GE(count, 4);
}

TEST(ShippedConfigs, DefaultFileEqualsTheSchemaDefaults) {
  config::RunConfig from_file = load_config_file(CADRE_SOURCE_DIR "/configs/default.pbtxt");
  finalize_config(from_file);
  config::RunConfig from_nothing;
  finalize_config(from_nothing);
  EXPECT_EQ(config_to_text(from_file), config_to_text(from_nothing));
}

TEST(ShippedConfigs, TrainConfigsHaveTheDocumentedShape) {
  config::RunConfig tiny = load_config_file(CADRE_SOURCE_DIR "/configs/train_tiny.pbtxt");
  finalize_config(tiny, 2);
  EXPECT_EQ(tiny.data().context_length(), 256);
  config::RunConfig b1 = load_config_file(CADRE_SOURCE_DIR "/configs/train_1b.pbtxt");
  finalize_config(b1);
  EXPECT_EQ(b1.model().num_layers(), 16);
  EXPECT_EQ(b1.data().context_length(), 65536);
  EXPECT_EQ(b1.training().dtype(), "bf16");
}

}  // namespace
}  // namespace cadre::launch
