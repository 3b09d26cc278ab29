// Simulator invariants: the ideal bound is below every strategy, CAD balances attention, equal
// documents leave no straggler, the 1F1B bubble has its textbook share, and each model is priced
// with the calibration's attention table of its head dim.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "common/error.h"
#include "scheduler/simulator.h"
#include "scheduler/step_calibration.h"
#include "tests/scheduler/test_models.h"

namespace cadre::scheduler {
namespace {

config::RunConfig small_config(int32_t gpus, const std::string& distribution) {
  config::RunConfig config;
  *config.mutable_model() = testing::dense_model(8, 1024, 8, 2, 128, 4096, 32000);
  config.mutable_cluster()->set_num_gpus(gpus);
  config.mutable_data()->set_context_length(32768);
  config.mutable_data()->set_distribution(distribution);
  return config;
}

const StepCost& find(const SimulationResult& r, const std::string& strategy) {
  for (const auto& c : r.costs) {
    if (c.strategy == strategy) return c;
  }
  throw std::runtime_error("missing " + strategy);
}

TEST(Simulator, IdealBoundsEveryStrategyAndCadBalances) {
  // The balancing property is the planner's: priced with costs proportional to the work (the
  // built-in calibration without its per-call and per-sequence parts). With them, this 8-layer,
  // 8-head model at 32K tokens spends ~1 ms per layer and nano-batch in per-call costs, which
  // ping-pong's second nano-batch doubles: CAD comes out 2% slower than fixed packing there.
  StepCalibration c = default_step_calibration();
  c.attention_forward_sequence_us = c.attention_backward_sequence_us = 0;
  c.attention_call_us = 0;
  for (auto& [name, segment] : c.segments) segment.fixed_us = 0;
  const std::string calibration = ::testing::TempDir() + "cadre_table_only_calibration.json";
  std::ofstream(calibration) << step_calibration_json(c);
  for (const char* distribution : {"wlb", "prolong"}) {
    for (int32_t gpus : {4, 16}) {
      auto config = small_config(gpus, distribution);
      config.mutable_cluster()->set_calibration(calibration);
      auto r = simulate_step(config, simulator_strategies(), 2);
      const StepCost& ideal = find(r, "ideal");
      for (const auto& c : r.costs) {
        EXPECT_GE(c.step_us, ideal.step_us * (1 - 1e-9)) << c.strategy << " " << distribution;
        // The effects add up to the step.
        EXPECT_NEAR(c.attention_us + c.linear_us + c.pp_bubble_us + c.dp_straggler_us +
                        c.exposed_comm_us + c.step_fixed_us,
                    c.step_us, 1e-6 * c.step_us)
            << c.strategy;
      }
      EXPECT_LE(find(r, "cad").attention_imbalance, find(r, "fixed").attention_imbalance + 1e-9);
      EXPECT_LE(find(r, "cad").attention_imbalance, 1.05);
      EXPECT_LE(find(r, "cad").step_us, find(r, "fixed").step_us);
      EXPECT_GT(find(r, "cad").planning_ms, 0);
    }
  }
}

TEST(Simulator, EqualDocumentsLeaveNoStragglerAndTheBubbleHasItsShare) {
  auto config = small_config(8, "fixed");
  config.mutable_data()->set_fixed_tokens(4096);
  config.mutable_cluster()->set_pipeline_parallel(2);
  config.mutable_training()->set_micro_batches(6);
  auto r = simulate_step(config, {"fixed"}, 1);
  const StepCost& c = r.costs[0];
  EXPECT_EQ(r.micro_batches, 6);
  EXPECT_NEAR(c.dp_straggler_us, 0, 1e-6 * c.step_us);
  // Equal micro-batches under 1F1B: bubble share (PP - 1) / (M + PP - 1) of the pipeline's time
  // (the step less what it adds once: optimizer, host overhead, gradient all-reduce).
  EXPECT_GT(c.step_fixed_us, 0);
  EXPECT_NEAR(c.pp_bubble_us / (c.step_us - c.step_fixed_us), 1.0 / 7.0, 1e-9);
}

// Linear time per rank, hand-computed from the built-in calibration: every layer segment (no
// recomputation), head, loss and embedding, their FLOPs split by TP, plus with TP > 1 the
// sequence-parallel collectives (8 per layer, (TP - 1) / TP of tokens x hidden bf16 values each)
// at the intra-node link.
TEST(Simulator, LinearTimeFollowsTheCalibrationAndTensorParallelCollectives) {
  for (int32_t tp : {1, 2}) {
    auto config = small_config(8, "fixed");
    config.mutable_data()->set_fixed_tokens(4096);
    config.mutable_cluster()->set_tensor_parallel(tp);
    const auto r = simulate_step(config, {"fixed"}, 1);
    const StepCalibration& cal = default_step_calibration();
    const auto& m = config.model();
    auto per_token = [&](const char* kind, const char* direction) {
      return cal.segment(kind, direction).us_per_unit * segment_work(kind, m, tp, 1);
    };
    double expected = m.num_layers() * (per_token("qkv", "forward") + per_token("qkv", "backward") +
                                         per_token("out_mlp", "forward") +
                                         per_token("out_mlp", "backward")) +
                      per_token("head_loss", "step") + per_token("embedding", "forward") +
                      per_token("embedding", "backward");
    if (tp > 1) {
      expected += m.num_layers() * 8 * 2.0 * m.hidden_size() * (tp - 1) / tp /
                  (cal.link("intra_node")->gbps * 1e3);
    }
    // Per-call costs of one micro-batch: each layer segment and attention call once per layer,
    // the head, loss and embedding once.
    const double fixed =
        m.num_layers() * (cal.segment("qkv", "forward").fixed_us +
                          cal.segment("qkv", "backward").fixed_us +
                          cal.segment("out_mlp", "forward").fixed_us +
                          cal.segment("out_mlp", "backward").fixed_us + 2 * cal.attention_call_us) +
        cal.segment("head_loss", "step").fixed_us + cal.segment("embedding", "forward").fixed_us +
        cal.segment("embedding", "backward").fixed_us;
    const double tokens = 32768.0;  // one micro-batch of the context per rank
    EXPECT_NEAR(r.costs[0].linear_us, tokens * expected + fixed + (tp > 1 ? m.num_layers() * 8 * cal.link("intra_node")->latency_us : 0.0),
                1e-6 * r.costs[0].linear_us)
        << "tp " << tp;
  }
}

// The calibration's attention table for a model is the one of its head dim: halving the d64
// table's TFLOP/s doubles a head-dim-64 model's attention time and leaves a head-dim-128 model's.
TEST(Simulator, EachModelIsPricedWithTheTableOfItsHeadDim) {
  auto write_calibration = [](const std::string& name, double d64_rate_scale) {
    StepCalibration c = default_step_calibration();
    // Only the table's time (no per-sequence part, which does not scale with the rates).
    c.attention_forward_sequence_us = c.attention_backward_sequence_us = 0;
    CalibrationTable d64 = default_calibration();
    d64.head_dim = 64;
    for (CalibrationPoint& p : d64.points) {
      p.forward_tflops *= d64_rate_scale;
      p.backward_tflops *= d64_rate_scale;
    }
    c.attention_tables = {default_calibration(), d64};  // GQA d128, GQA d64
    const std::string path = ::testing::TempDir() + "cadre_" + name;
    std::ofstream(path) << step_calibration_json(c);
    return path;
  };
  const std::string full = write_calibration("d64_full.json", 1.0);
  const std::string halved = write_calibration("d64_halved.json", 0.5);
  auto attention_us = [](int32_t head_dim, const std::string& calibration) {
    auto config = small_config(8, "fixed");
    config.mutable_data()->set_fixed_tokens(4096);
    config.mutable_model()->set_head_dim(head_dim);
    config.mutable_cluster()->set_calibration(calibration);
    return simulate_step(config, {"fixed"}, 1).costs[0].attention_us;
  };
  const double d64 = attention_us(64, full);
  EXPECT_GT(d64, 0);
  EXPECT_NEAR(attention_us(64, halved), 2 * d64, 1e-9 * d64);
  EXPECT_EQ(attention_us(128, halved), attention_us(128, full));
}

TEST(Simulator, RejectsUnknownStrategiesAndBadClusters) {
  EXPECT_THROW(simulate_step(small_config(4, "wlb"), {"magic"}, 1), Error);
  auto config = small_config(6, "wlb");
  config.mutable_cluster()->set_tensor_parallel(4);
  EXPECT_THROW(simulate_step(config, {"fixed"}, 1), Error);
}

}  // namespace
}  // namespace cadre::scheduler
