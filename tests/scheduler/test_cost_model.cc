// Cost model: calibration loading, the built-in table per model, exact values at measured points,
// linear and transfer pricing, bytes per token per shipping mode (against the dispatch counters).
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "scheduler/cost_model.h"
#include "scheduler/plan.h"
#include "tests/scheduler/test_models.h"

namespace cadre::scheduler {
namespace {

using testing::deepseek_v2_lite;
using testing::llama1b;
using testing::llama8b;

TEST(CostModel, DefaultTableIsExactAtMeasuredPoints) {
  const CalibrationTable& table = default_calibration();
  ASSERT_GE(table.points.size(), 6u);
  CostModel cost(llama8b(), config::ClusterConfig(), table);
  for (const CalibrationPoint& p : table.points) {
    // 4 * pairs * head_dim * heads FLOPs forward (2.5x backward) at the measured rate.
    const double flops = 4.0 * causal_pairs(p.kv_tokens - p.q_tokens, p.kv_tokens) * 128 * 32;
    const double forward_us = flops / (p.forward_tflops * 1e6);
    const double backward_us = 2.5 * flops / (p.backward_tflops * 1e6);
    EXPECT_NEAR(cost.attention_forward_us(p.q_tokens, p.kv_tokens), forward_us, 1e-9 * forward_us);
    EXPECT_NEAR(cost.attention_backward_us(p.q_tokens, p.kv_tokens), backward_us,
                1e-9 * backward_us);
    EXPECT_NEAR(cost.attention_forward_backward_us(p.q_tokens, p.kv_tokens),
                forward_us + backward_us, 1e-9 * (forward_us + backward_us));
  }
  EXPECT_EQ(cost.attention_forward_us(0, 100), 0);
}

TEST(CostModel, HandComputedTable) {
  // One measured point: every shape is priced at its rate.
  CalibrationTable table;
  table.points = {{1024, 1024, 200, 100}};
  CostModel cost(llama8b(), config::ClusterConfig(), table);
  // 2 queries at the end of 3 keys: 2 + 3 = 5 pairs; 4 * 5 * 128 * 32 = 81920 FLOPs.
  EXPECT_NEAR(cost.attention_forward_us(2, 3), 81920 / 200e6, 1e-15);
  EXPECT_NEAR(cost.attention_backward_us(2, 3), 2.5 * 81920 / 100e6, 1e-15);
  EXPECT_NEAR(cost.attention_step_us(2, 3, 4), 4 * (81920 / 200e6 + 2.5 * 81920 / 100e6), 1e-15);
}

// A whole document (q == kv) is priced among the table's whole-document points only: here the
// 32K document's rates, not the far slower 32K-shard-of-64K point beside it; a shard is weighed
// among every point, so it lands between them.
TEST(CostModel, WholeDocumentsArePricedFromWholeDocumentPoints) {
  CalibrationTable table;
  table.points = {{1024, 1024, 300, 200}, {32768, 32768, 400, 400}, {32768, 65536, 400, 100}};
  CostModel cost(llama8b(), config::ClusterConfig(), table);
  auto rate = [&](int64_t q, int64_t kv, bool forward) {
    const double flops = 4.0 * causal_pairs(kv - q, kv) * 128 * 32;
    return forward ? flops / (cost.attention_forward_us(q, kv) * 1e6)
                   : 2.5 * flops / (cost.attention_backward_us(q, kv) * 1e6);
  };
  // 64K: nearest whole-document point is 32K (flat beyond it, up to the 1K point's weight).
  EXPECT_GT(rate(65536, 65536, false), 390);
  EXPECT_LE(rate(65536, 65536, false), 400 + 1e-6);
  // A 32K shard of a 48K prefix: between the shard point's 100 and the documents' rates.
  const double shard = rate(32768, 49152, false);
  EXPECT_GT(shard, 100);
  EXPECT_LT(shard, 390);
}

TEST(CostModel, InterpolationStaysWithinMeasuredRates) {
  const CalibrationTable& table = default_calibration();
  double lo = 1e30, hi = 0;
  for (const CalibrationPoint& p : table.points) {
    lo = std::min(lo, p.forward_tflops);
    hi = std::max(hi, p.forward_tflops);
  }
  CostModel cost(llama8b(), config::ClusterConfig(), table);
  for (int64_t kv : {300, 5000, 20000, 100000, 400000}) {
    for (int64_t q : {1, 64, 200, 3000}) {
      if (q > kv) continue;
      const double flops = 4.0 * causal_pairs(kv - q, kv) * 128 * 32;
      const double tflops = flops / (cost.attention_forward_us(q, kv) * 1e6);
      EXPECT_GE(tflops, lo - 1e-6);
      EXPECT_LE(tflops, hi + 1e-6);
    }
  }
}

TEST(CostModel, TensorParallelSplitsHeadsAndLinearWork) {
  config::ClusterConfig tp2;
  tp2.set_tensor_parallel(2);
  CostModel one(llama8b(), config::ClusterConfig(), default_calibration());
  CostModel two(llama8b(), tp2, default_calibration());
  EXPECT_NEAR(two.attention_forward_us(4096, 4096) * 2, one.attention_forward_us(4096, 4096), 1e-9);
  EXPECT_NEAR(two.linear_step_us_per_token(32) * 2, one.linear_step_us_per_token(32), 1e-12);
  // Llama-8B layer: 4096*4096*2 + 2*4096*1024 + 3*4096*14336 = 218,103,808 parameters.
  const double per_token_us = 6.0 * 218103808.0 * 32 / (650 * 1e6);
  EXPECT_NEAR(one.linear_step_us_per_token(32), per_token_us, 1e-9);
}

TEST(CostModel, BytesAndLinks) {
  config::ClusterConfig cluster;
  cluster.set_gpus_per_node(4);
  CostModel cost(llama8b(), cluster, default_calibration());
  EXPECT_EQ(cost.q_bytes_per_token(), 32 * 128 * 2);
  EXPECT_EQ(cost.o_bytes_per_token(), 32 * 128 * 2);
  EXPECT_EQ(cost.kv_bytes_per_token(), 2 * 8 * 128 * 2);
  EXPECT_EQ(cost.link_between(1, 1), LinkClass::kSelf);
  EXPECT_EQ(cost.link_between(1, 3), LinkClass::kIntraNode);
  EXPECT_EQ(cost.link_between(3, 4), LinkClass::kInterNode);
  EXPECT_NEAR(cost.transfer_us(240'000'000, LinkClass::kIntraNode), 1000.0, 1e-9);
  EXPECT_NEAR(cost.transfer_us(50'000'000, LinkClass::kInterNode), 1000.0, 1e-9);
  EXPECT_EQ(cost.transfer_us(1 << 20, LinkClass::kSelf), 0);
  config::ModelConfig mla = llama8b();
  mla.set_kv_latent_dim(512);
  mla.set_rope_head_dim(64);
  EXPECT_EQ(CostModel(mla, cluster, default_calibration()).kv_bytes_per_token(), (512 + 64) * 2);
  // Queries are head_dim + rope_head_dim wide; attention multiplies over q/k and v widths.
  EXPECT_EQ(CostModel(mla, cluster, default_calibration()).q_bytes_per_token(),
            32 * (128 + 64) * 2);
  EXPECT_EQ(CostModel(mla, cluster, default_calibration()).o_bytes_per_token(), 32 * 128 * 2);
  const double gqa_us = cost.attention_forward_us(1000, 1000);
  mla.set_v_head_dim(128);
  EXPECT_NEAR(CostModel(mla, cluster, default_calibration()).attention_forward_us(1000, 1000),
              gqa_us * (192.0 + 128.0) / 256.0, 1e-6 * gqa_us);
  // T = 2: MLA splits the heads and ships the whole latent to each head group; TPLA keeps every
  // head on every GPU (twice the queries and attention FLOPs) and ships a latent slice.
  cluster.set_tensor_parallel(2);
  const CostModel mla2(mla, cluster, default_calibration());
  EXPECT_EQ(mla2.q_bytes_per_token(), 16 * (128 + 64) * 2);
  EXPECT_EQ(mla2.kv_bytes_per_token(), (512 + 64) * 2);
  mla.set_tpla(true);
  const CostModel tpla2(mla, cluster, default_calibration());
  EXPECT_EQ(tpla2.q_bytes_per_token(), 32 * (128 + 64) * 2);
  EXPECT_EQ(tpla2.kv_bytes_per_token(), (256 + 64) * 2);
  EXPECT_NEAR(tpla2.attention_forward_us(1000, 1000), 2 * mla2.attention_forward_us(1000, 1000),
              1e-9 * mla2.attention_forward_us(1000, 1000));
}

config::SchedulerConfig shipping(const std::string& mla_shipping, const std::string& server_mode) {
  config::SchedulerConfig s;
  s.set_mla_shipping(mla_shipping);
  s.set_server_mode(server_mode);
  return s;
}

// Bytes per token per layer per GPU, forward + backward, bf16, as the dispatch moves them: a query
// row Q out, O back, dO out, dQ back; a K/V row its K/V (or latent) out and the gradient back.
struct TokenBytes {
  int64_t query = 0, kv = 0;
};
TokenBytes step_bytes(const config::ModelConfig& model, int32_t tp,
                      const config::SchedulerConfig& scheduler) {
  config::ClusterConfig cluster;
  cluster.set_tensor_parallel(tp);
  const CostModel cost(model, cluster, default_calibration(), kv_shipping_for(scheduler));
  return {2 * (cost.q_bytes_per_token() + cost.o_bytes_per_token()), 2 * cost.kv_bytes_per_token()};
}

TEST(CostModel, ShippingFollowsTheSchedulerAndDedicatedServersGetExpandedKv) {
  EXPECT_EQ(kv_shipping_for(config::SchedulerConfig()), KvShipping::kLatent);  // the defaults
  EXPECT_EQ(kv_shipping_for(shipping("latent", "in_place")), KvShipping::kLatent);
  EXPECT_EQ(kv_shipping_for(shipping("expanded", "in_place")), KvShipping::kExpanded);
  EXPECT_EQ(kv_shipping_for(shipping("latent", "dedicated")), KvShipping::kExpanded);
  EXPECT_EQ(kv_shipping_for(shipping("expanded", "dedicated")), KvShipping::kExpanded);
}

// Hand counts from attention_server/dispatch.cc: a query row is heads x 192 (Q, dQ) and
// heads x 128 (O, dO) values; a K/V row 512 + 64 latent values, or heads x (192 + 128) expanded.
TEST(CostModel, LatentAttentionBytesPerTokenInEveryShippingMode) {
  const config::ModelConfig mla = deepseek_v2_lite();
  const auto latent = shipping("latent", "in_place");
  const auto expanded = shipping("expanded", "in_place");
  const auto dedicated = shipping("latent", "dedicated");
  struct Case {
    const char* what;
    bool tpla;
    int32_t tp;
    config::SchedulerConfig scheduler;
    int64_t query, kv;
  };
  const std::vector<Case> cases = {
      {"latent", false, 1, latent, 2 * 16 * (192 + 128) * 2, 2 * 576 * 2},
      {"expanded", false, 1, expanded, 2 * 16 * (192 + 128) * 2, 2 * 16 * (192 + 128) * 2},
      {"dedicated", false, 1, dedicated, 2 * 16 * (192 + 128) * 2, 2 * 16 * (192 + 128) * 2},
      // T = 2: each head group gets half the heads' queries and the whole latent ...
      {"latent T=2", false, 2, latent, 2 * 8 * (192 + 128) * 2, 2 * 576 * 2},
      // ... or expanded K/V of its own heads.
      {"expanded T=2", false, 2, expanded, 2 * 8 * (192 + 128) * 2, 2 * 8 * (192 + 128) * 2},
      {"dedicated T=2", false, 2, dedicated, 2 * 8 * (192 + 128) * 2, 2 * 8 * (192 + 128) * 2},
      // TPLA T = 2: every head's query on each rank and its latent slice (256 + 64) ...
      {"TPLA latent T=2", true, 2, latent, 2 * 16 * (192 + 128) * 2, 2 * (256 + 64) * 2},
      // ... or every head's key and value expanded from the slice.
      {"TPLA expanded T=2", true, 2, expanded, 2 * 16 * (192 + 128) * 2, 2 * 16 * (192 + 128) * 2},
  };
  for (const Case& c : cases) {
    config::ModelConfig m = mla;
    m.set_tpla(c.tpla);
    const TokenBytes b = step_bytes(m, c.tp, c.scheduler);
    EXPECT_EQ(b.query, c.query) << c.what;
    EXPECT_EQ(b.kv, c.kv) << c.what;
  }
  // The numbers of benchmarks/results/mla_dispatch_bytes.md, spelled out.
  EXPECT_EQ(step_bytes(mla, 1, latent).query, 20480);
  EXPECT_EQ(step_bytes(mla, 1, latent).kv, 2304);
  EXPECT_EQ(step_bytes(mla, 1, expanded).kv, 20480);
  EXPECT_EQ(step_bytes(mla, 1, dedicated).kv, 20480);
  EXPECT_EQ(step_bytes(mla, 2, latent).query, 10240);
  // v_head_dim unset: the value is head_dim wide, as the model builds it.
  config::ModelConfig unset = mla;
  unset.clear_v_head_dim();
  EXPECT_EQ(step_bytes(unset, 1, expanded).kv, 2 * 16 * (192 + 128) * 2);
  unset.set_v_head_dim(96);
  EXPECT_EQ(step_bytes(unset, 1, expanded).query, 2 * 16 * (192 + 96) * 2);
  EXPECT_EQ(step_bytes(unset, 1, expanded).kv, 2 * 16 * (192 + 96) * 2);
}

// GQA: Q and O are equally wide, and K/V rows are per KV head (at least one per GPU) whatever
// scheduler.mla_shipping or the server mode say.
TEST(CostModel, GqaBytesPerTokenIgnoreLatentShipping) {
  const config::ModelConfig gqa = llama1b();
  for (const auto& scheduler : {shipping("latent", "in_place"), shipping("expanded", "in_place"),
                                shipping("latent", "dedicated")}) {
    EXPECT_EQ(step_bytes(gqa, 1, scheduler).query, 4 * 32 * 64 * 2);
    EXPECT_EQ(step_bytes(gqa, 1, scheduler).kv, 2 * 2 * 8 * 64 * 2);
    EXPECT_EQ(step_bytes(gqa, 2, scheduler).query, 4 * 16 * 64 * 2);
    EXPECT_EQ(step_bytes(gqa, 2, scheduler).kv, 2 * 2 * 4 * 64 * 2);
    EXPECT_EQ(step_bytes(gqa, 16, scheduler).kv, 2 * 2 * 1 * 64 * 2);  // one KV head per GPU
  }
  EXPECT_EQ(step_bytes(gqa, 1, config::SchedulerConfig()).query, 16384);
  EXPECT_EQ(step_bytes(gqa, 1, config::SchedulerConfig()).kv, 4096);
}

// The cost model against the dispatch counters of real `cadre train` runs
// (scripts/mla_dispatch_bytes.sh): measured_bf16_bytes_per_{query,kv}_token of every cell.
TEST(CostModel, BytesPerTokenEqualTheMeasuredDispatchCounters) {
  const std::string path =
      std::string(CADRE_SOURCE_DIR) + "/benchmarks/results/mla_dispatch_bytes.json";
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << "cannot read " << path;
  std::stringstream text;
  text << in.rdbuf();
  google::protobuf::Struct results;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(text.str(), &results).ok()) << path;
  // Each cell's run, as the script configures it.
  struct Run {
    config::ModelConfig model;
    int32_t tp;
    config::SchedulerConfig scheduler;
  };
  config::ModelConfig tpla = deepseek_v2_lite();
  tpla.set_tpla(true);
  const std::map<std::string, Run> runs = {
      {"mla_latent", {deepseek_v2_lite(), 1, shipping("latent", "in_place")}},
      {"mla_expanded", {deepseek_v2_lite(), 1, shipping("expanded", "in_place")}},
      {"mla_dedicated", {deepseek_v2_lite(), 1, shipping("latent", "dedicated")}},
      {"mla_latent_tp2", {deepseek_v2_lite(), 2, shipping("latent", "in_place")}},
      {"tpla_latent_tp2", {tpla, 2, shipping("latent", "in_place")}},
      {"gqa_llama_1b", {llama1b(), 1, shipping("latent", "in_place")}},
  };
  const auto& rows = results.fields().at("rows").list_value().values();
  ASSERT_EQ(rows.size(), runs.size());
  for (const auto& row : rows) {
    const auto& f = row.struct_value().fields();
    const std::string cell = f.at("cell").string_value();
    ASSERT_EQ(runs.count(cell), 1u) << "unknown cell " << cell;
    const Run& run = runs.at(cell);
    const TokenBytes b = step_bytes(run.model, run.tp, run.scheduler);
    EXPECT_EQ(b.query, f.at("measured_bf16_bytes_per_query_token").number_value()) << cell;
    EXPECT_EQ(b.kv, f.at("measured_bf16_bytes_per_kv_token").number_value()) << cell;
    // bf16 is the fp32 counters halved.
    EXPECT_EQ(2 * b.query, f.at("measured_bytes_per_query_token").number_value()) << cell;
    EXPECT_EQ(2 * b.kv, f.at("measured_bytes_per_kv_token").number_value()) << cell;
  }
}

TEST(CostModel, BadCalibrationFilesSayWhatIsAccepted) {
  EXPECT_THROW(load_calibration_json("/nonexistent/table.json"), Error);
  const std::string path = ::testing::TempDir() + "/bad_calibration.json";
  {
    std::ofstream out(path);
    out << R"({"device": "x", "points": [{"q_tokens": 10, "kv_tokens": 5, "forward_tflops": 1,
              "backward_tflops": 1}]})";
  }
  try {
    load_calibration_json(path);
    FAIL() << "q_tokens > kv_tokens accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("q_tokens <= kv_tokens"), std::string::npos) << e.message();
  }
  {
    std::ofstream out(path);
    out << R"({"device": "x", "pointz": []})";
  }
  EXPECT_THROW(load_calibration_json(path), Error);
  {
    std::ofstream out(path);
    out << R"({"device": "y", "points": [{"q_tokens": 100, "kv_tokens": 100, "forward_tflops": 50,
              "backward_tflops": 40}]})";
  }
  CalibrationTable table = load_calibration_json(path);
  EXPECT_EQ(table.device, "y");
  ASSERT_EQ(table.points.size(), 1u);
  EXPECT_EQ(table.points[0].forward_tflops, 50);
  EXPECT_EQ(table.kv_heads, 0);  // not recorded
  {
    std::ofstream out(path);
    out << R"({"device": "z", "heads": 32, "kv_heads": 5, "points": [{"q_tokens": 100,
              "kv_tokens": 100, "forward_tflops": 50, "backward_tflops": 40}]})";
  }
  try {
    load_calibration_json(path);
    FAIL() << "kv_heads 5 of 32 heads accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("divisor of heads"), std::string::npos) << e.message();
  }
  std::remove(path.c_str());
}

// The built-in tables are the kernel's measurements with and without GQA; each model gets the one
// its per-GPU head layout runs, unless the cluster names a table.
TEST(CostModel, BuiltInTableMatchesTheModelsHeads) {
  EXPECT_EQ(default_calibration().kv_heads, 8);
  EXPECT_EQ(default_mha_calibration().kv_heads, 32);
  EXPECT_EQ(default_calibration().heads, 32);
  EXPECT_EQ(default_mha_calibration().heads, 32);

  config::ModelConfig gqa = llama8b();  // 32 heads, 8 KV heads
  config::ModelConfig mha = gqa;
  mha.set_num_kv_heads(32);
  config::ModelConfig mla = gqa;
  mla.set_num_kv_heads(32);
  mla.set_kv_latent_dim(512);
  mla.set_rope_head_dim(64);
  EXPECT_EQ(&default_calibration_for(gqa, 1), &default_calibration());
  EXPECT_EQ(&default_calibration_for(mha, 1), &default_mha_calibration());
  EXPECT_EQ(&default_calibration_for(mha, 4), &default_mha_calibration());   // 8 and 8 per GPU
  EXPECT_EQ(&default_calibration_for(gqa, 8), &default_calibration());       // 4 heads on 1 KV head
  EXPECT_EQ(&default_calibration_for(gqa, 32), &default_mha_calibration());  // 1 and 1 per GPU
  EXPECT_EQ(&default_calibration_for(mla, 1), &default_mha_calibration());   // expanded per head

  config::ClusterConfig cluster;
  EXPECT_EQ(calibration_for(cluster, mha).kv_heads, 32);
  EXPECT_EQ(calibration_for(cluster, gqa).kv_heads, 8);
  const std::string path = ::testing::TempDir() + "/named_calibration.json";
  {
    std::ofstream out(path);
    out << R"({"device": "named", "points": [{"q_tokens": 100, "kv_tokens": 100,
              "forward_tflops": 50, "backward_tflops": 40}]})";
  }
  cluster.set_attention_calibration(path);
  EXPECT_EQ(calibration_for(cluster, mha).device, "named");
  std::remove(path.c_str());

  // Same heads and head_dim, so the same FLOPs: the MHA model's 128-token shards against long
  // prefixes cost more in backward (not split without GQA), while whole documents cost about the
  // same.
  CostModel with_gqa(gqa, config::ClusterConfig(), calibration_for(config::ClusterConfig(), gqa));
  CostModel with_mha(mha, config::ClusterConfig(), calibration_for(config::ClusterConfig(), mha));
  EXPECT_GT(with_mha.attention_backward_us(128, 65536),
            1.2 * with_gqa.attention_backward_us(128, 65536));
  EXPECT_NEAR(with_mha.attention_backward_us(16384, 16384),
              with_gqa.attention_backward_us(16384, 16384),
              0.1 * with_gqa.attention_backward_us(16384, 16384));
}

}  // namespace
}  // namespace cadre::scheduler
