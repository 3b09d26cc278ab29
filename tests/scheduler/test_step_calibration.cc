// Calibration: fits recover known coefficients from synthetic profiles, profiles with missing or
// inconsistent segments are rejected by name, the file round-trips deterministically, each model
// gets the attention table of its kernel shape (head dim, GQA or MHA), and the step model
// reproduces a hand-computed step.
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

#include "common/error.h"
#include "scheduler/calibration.pb.h"
#include "scheduler/step_calibration.h"
#include "scheduler/step_model.h"
#include "tests/expect_error.h"
#include "tests/scheduler/test_models.h"

namespace cadre::scheduler {
namespace {

config::ModelConfig tiny_model() {
  config::ModelConfig m = testing::dense_model(2, 64, 4, 2, 16, 128, 256);
  m.set_preset("tiny");
  return m;
}

// Known truth: us = a x work + b for every segment kind.
struct Truth {
  double a, b;
};
Truth truth(const std::string& kind, const std::string& direction) {
  double a = 100, b = 7;
  if (kind == "qkv") a = direction == "forward" ? 300 : direction == "backward" ? 640 : 310;
  if (kind == "out_mlp") a = direction == "forward" ? 250 : direction == "backward" ? 520 : 260;
  if (kind == "head_loss") a = 900;
  if (kind == "embedding") a = direction == "forward" ? 11 : 29;
  if (kind == "optimizer") return {8000, 0};
  if (kind == "out_mlp") b = 13;
  return {a, b};
}

// A one-rank profile whose segments follow `truth` exactly, with nano-batches of `tokens`.
profile::RunProfile synthetic_profile(const std::vector<int64_t>& tokens, bool recompute) {
  const config::ModelConfig m = tiny_model();
  profile::RunProfile p;
  p.set_schema("cadre.profile/1");
  auto* pm = p.mutable_model();
  pm->set_preset("tiny");
  pm->set_num_layers(m.num_layers());
  pm->set_hidden_size(m.hidden_size());
  pm->set_num_heads(m.num_heads());
  pm->set_num_kv_heads(m.num_kv_heads());
  pm->set_head_dim(m.head_dim());
  pm->set_ffn_hidden_size(m.ffn_hidden_size());
  pm->set_vocab_size(m.vocab_size());
  pm->set_parameters(106816);
  p.set_ranks(1);
  p.set_workers(1);
  p.set_tensor_parallel(1);
  p.set_recompute(recompute ? "linear" : "none");
  p.set_warmup_steps(0);
  auto* step = p.add_steps();
  step->set_step(1);
  step->set_step_ms(10);
  auto* r = step->add_ranks();
  r->set_worker(true);
  r->set_wall_ms(10);
  auto add = [&](const std::string& kind, const std::string& direction, int layer, int nano,
                 int64_t n) {
    auto* s = r->add_segments();
    s->set_name(kind + " " + direction);
    s->set_kind(kind);
    s->set_direction(direction);
    s->set_layer(layer);
    s->set_nano(nano);
    s->set_tokens(n);
    const Truth t = truth(kind, direction);
    s->set_us(t.a * segment_work(kind, m, 1, n, 106816) + t.b);
  };
  for (size_t j = 0; j < tokens.size(); ++j) {
    auto* nb = r->add_nano_batches();
    nb->set_nano(static_cast<int>(j));
    nb->set_tokens(tokens[j]);
    nb->add_doc_lengths(tokens[j]);
    const int nano = static_cast<int>(j);
    add("embedding", "forward", -1, nano, tokens[j]);
    add("embedding", "backward", -1, nano, tokens[j]);
    add("head_loss", "step", -1, nano, tokens[j]);
    for (int l = 0; l < m.num_layers(); ++l) {
      for (const char* kind : {"qkv", "out_mlp"}) {
        add(kind, "forward", l, nano, tokens[j]);
        add(kind, "backward", l, nano, tokens[j]);
        if (recompute) add(kind, "recompute", l, nano, tokens[j]);
      }
      for (const char* direction : {"forward", "backward"}) {
        auto* a = r->add_attention();
        a->set_direction(direction);
        a->set_where("local");
        a->set_layer(l);
        a->set_nano(nano);
        auto* shape = a->add_shapes();
        shape->set_q_tokens(tokens[j]);
        shape->set_kv_tokens(tokens[j]);
        a->set_us(1);  // replaced below
      }
    }
  }
  // The optimizer, once.
  auto* s = r->add_segments();
  s->set_name("optimizer step");
  s->set_kind("optimizer");
  s->set_direction("step");
  s->set_layer(-1);
  s->set_nano(-1);
  s->set_us(truth("optimizer", "step").a * 106816 / 1e6);
  return p;
}

// Attention times = scale x the table's prediction (default: the built-in one) + call_us.
void set_attention(profile::RunProfile* p, double forward_scale, double backward_scale,
                   double call_us, const CalibrationTable* table = nullptr) {
  const config::ModelConfig m = tiny_model();
  config::ClusterConfig cluster;
  CostModel cost(m, cluster, table != nullptr ? *table : default_calibration_for(m, 1));
  for (auto& step : *p->mutable_steps()) {
    for (auto& r : *step.mutable_ranks()) {
      for (auto& a : *r.mutable_attention()) {
        const auto& s = a.shapes(0);
        const bool f = a.direction() == "forward";
        a.set_us((f ? forward_scale * cost.attention_forward_us(s.q_tokens(), s.kv_tokens())
                    : backward_scale * cost.attention_backward_us(s.q_tokens(), s.kv_tokens())) +
                 call_us);
      }
    }
  }
}

TEST(StepCalibration, FitRecoversKnownCoefficientsFromSyntheticProfiles) {
  CalibrationInputs in;
  // Three sizes across two profiles, so per-token and per-call costs are both identifiable.
  in.profiles = {synthetic_profile({1000, 3000}, true), synthetic_profile({7000}, true)};
  for (auto& p : in.profiles) set_attention(&p, 1.3, 0.9, 25);
  in.profile_names = {"a", "b"};
  // `bench comm` rows of a 2-rank all-to-all: us = 20 + (bytes / 2) / 300 GB/s.
  std::string comm = "{\"ranks\": 2, \"rows\": [";
  for (int i = 0; i < 5; ++i) {
    const double bytes = std::pow(4.0, i) * 1048576;
    comm += (i ? "," : "") + std::string("{\"bytes_per_rank\": ") + std::to_string(bytes) +
            ", \"cadre_us\": " + std::to_string(20 + bytes / 2 / 300e3) + "}";
  }
  comm += "]}";
  in.comm_json = {comm};
  in.comm_names = {"comm.json"};
  const StepCalibration c = fit_step_calibration(in);
  for (const auto& [kind, direction] : calibrated_segments()) {
    const SegmentCost& s = c.segment(kind, direction);
    const Truth t = truth(kind, direction);
    EXPECT_NEAR(s.us_per_unit, t.a, 1e-6 * t.a) << kind << "/" << direction;
    EXPECT_NEAR(s.fixed_us, t.b, 1e-6 * std::max(1.0, t.b)) << kind << "/" << direction;
    EXPECT_LT(s.rms_relative_error, 1e-9) << kind << "/" << direction;
  }
  EXPECT_NEAR(c.attention_forward_scale, 1.3, 1e-6);
  EXPECT_NEAR(c.attention_backward_scale, 0.9, 1e-6);
  EXPECT_NEAR(c.attention_call_us, 25, 1e-4);
  ASSERT_NE(c.link("intra_node"), nullptr);
  EXPECT_NEAR(c.link("intra_node")->gbps, 300, 1e-3);
  EXPECT_NEAR(c.link("intra_node")->latency_us, 20, 1e-3);
}

// Fused calls of 1-3 sequences: the fit separates the table scale, the per-call and the
// per-sequence cost (the idle tiles each sequence of a batch adds), and the step model prices a
// call with them.
TEST(StepCalibration, FitRecoversThePerSequenceAttentionCost) {
  CalibrationInputs in;
  in.profiles = {synthetic_profile({1000, 3000}, true), synthetic_profile({7000}, true)};
  const config::ModelConfig m = tiny_model();
  config::ClusterConfig cluster;
  CostModel cost(m, cluster, default_calibration_for(m, 1));
  for (auto& p : in.profiles) {
    for (auto& step : *p.mutable_steps()) {
      for (auto& r : *step.mutable_ranks()) {
        for (auto& a : *r.mutable_attention()) {
          const int64_t tokens = a.shapes(0).q_tokens();
          const int n = 1 + a.layer() % 3;
          a.clear_shapes();
          double table = 0;
          const bool f = a.direction() == "forward";
          for (int i = 0; i < n; ++i) {
            auto* shape = a.add_shapes();
            shape->set_q_tokens(tokens / n);
            shape->set_kv_tokens(tokens / n);
            table += f ? cost.attention_forward_us(tokens / n, tokens / n)
                       : cost.attention_backward_us(tokens / n, tokens / n);
          }
          // Per sequence and query head (the tiny model's heads all on one GPU).
          a.set_us((f ? 1.3 : 0.9) * table + 25 + n * m.num_heads() * (f ? 7.0 : 11.0));
        }
      }
    }
  }
  in.profile_names = {"a", "b"};
  const StepCalibration c = fit_step_calibration(in);
  EXPECT_NEAR(c.attention_forward_scale, 1.3, 1e-6);
  EXPECT_NEAR(c.attention_backward_scale, 0.9, 1e-6);
  EXPECT_NEAR(c.attention_call_us, 25, 1e-3);
  EXPECT_NEAR(c.attention_forward_sequence_us, 7, 1e-3);
  EXPECT_NEAR(c.attention_backward_sequence_us, 11, 1e-3);
  // The file keeps them (to 6 significant digits).
  const StepCalibration back = parse_step_calibration(step_calibration_json(c), "back");
  EXPECT_NEAR(back.attention_forward_sequence_us, c.attention_forward_sequence_us, 1e-4);
  EXPECT_NEAR(back.attention_backward_sequence_us, c.attention_backward_sequence_us, 1e-4);
}

TEST(StepCalibration, OneSizeFitsThroughTheOriginAndRecomputeFallsBackToForward) {
  CalibrationInputs in;
  in.profiles = {synthetic_profile({4096, 4096}, false)};
  in.profile_names = {"one-size"};
  const StepCalibration c = fit_step_calibration(in);
  // Fixed cost not identifiable: all of the time per unit of work.
  const config::ModelConfig m = tiny_model();
  const double work = segment_work("qkv", m, 1, 4096);
  const Truth t = truth("qkv", "forward");
  EXPECT_EQ(c.segment("qkv", "forward").fixed_us, 0);
  EXPECT_NEAR(c.segment("qkv", "forward").us_per_unit, (t.a * work + t.b) / work, 1e-6 * t.a);
  EXPECT_EQ(c.segment("qkv", "recompute").us_per_unit, c.segment("qkv", "forward").us_per_unit);
  EXPECT_NE(c.segment("qkv", "recompute").source.find("forward"), std::string::npos);
}

TEST(StepCalibration, FileIsDeterministicAndRoundTrips) {
  CalibrationInputs in;
  in.profiles = {synthetic_profile({1000, 3000}, true)};
  in.profile_names = {"a"};
  const std::string once = step_calibration_json(fit_step_calibration(in));
  const std::string twice = step_calibration_json(fit_step_calibration(in));
  EXPECT_EQ(once, twice);
  const StepCalibration back = parse_step_calibration(once, "test");
  EXPECT_EQ(step_calibration_json(back), once);
  // The built-in calibration parses and prices every segment.
  for (const auto& [kind, direction] : calibrated_segments()) {
    EXPECT_GT(default_step_calibration().segment(kind, direction).us_per_unit, 0);
  }
}

std::string rejection(const profile::RunProfile& p) {
  try {
    validate_profile(p, "bad.json");
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(StepCalibration, ProfilesWithMissingOrInconsistentSegmentsAreRejectedByName) {
  const profile::RunProfile good = synthetic_profile({1000, 3000}, true);
  EXPECT_EQ(rejection(good), "");
  {
    profile::RunProfile p = good;
    auto* segments = p.mutable_steps(0)->mutable_ranks(0)->mutable_segments();
    for (int i = 0; i < segments->size(); ++i) {
      const auto& s = segments->Get(i);
      if (s.kind() == "out_mlp" && s.direction() == "backward" && s.layer() == 1 && s.nano() == 1) {
        segments->DeleteSubrange(i, 1);
        break;
      }
    }
    const std::string m = rejection(p);
    EXPECT_NE(m.find("profile 'bad.json' step 1 rank 0 lacks segment out_mlp backward of layer 1 "
                     "for nano-batch 1"),
              std::string::npos)
        << m;
  }
  {
    profile::RunProfile p = good;
    p.mutable_steps(0)->mutable_ranks(0)->mutable_segments(3)->set_tokens(999);
    const std::string m = rejection(p);
    EXPECT_NE(m.find("has 999 tokens but its nano-batch has 1000"), std::string::npos) << m;
  }
  {
    profile::RunProfile p = good;
    p.mutable_steps(0)->mutable_ranks(0)->mutable_attention()->RemoveLast();
    const std::string m = rejection(p);
    EXPECT_NE(m.find("attention calls; accepted: layers x nano-batches = 4"), std::string::npos)
        << m;
  }
  {
    profile::RunProfile p = good;
    p.set_schema("other/2");
    EXPECT_NE(rejection(p).find("schema 'other/2'; accepted: cadre.profile/1"), std::string::npos);
  }
  {
    profile::RunProfile p = good;
    p.mutable_model()->set_vocab_size(0);
    EXPECT_NE(rejection(p).find("incomplete model shape"), std::string::npos);
  }
  EXPECT_THROW(parse_profile_json("{\"schema\": 3}", "x.json"), Error);
}

// A hand-made calibration: fixed costs per call only, except qkv forward (per GFLOP), and an
// attention table of one point (one rate for every shape).
StepCalibration hand_calibration() {
  StepCalibration c;
  double fixed = 1;
  for (const auto& [kind, direction] : calibrated_segments()) {
    c.segments[kind + "/" + direction] = SegmentCost{kind, direction, segment_unit(kind), 0, fixed};
    fixed *= 2;  // 1, 2, 4, ... so every segment's count shows in the total
  }
  c.segments["qkv/forward"].us_per_unit = 1000;  // us per GFLOP
  CalibrationTable t;
  t.heads = 4;
  t.head_dim = 16;
  t.points.push_back({1024, 1024, 2.0, 1.0});  // TFLOP/s forward, backward
  c.attention_tables = {t};
  c.attention_call_us = 3;
  c.step_overhead_us = 500;
  return c;
}

TEST(StepModel, OneRankColocatedStepMatchesAHandComputedCase) {
  config::RunConfig config;
  *config.mutable_model() = tiny_model();
  config.mutable_cluster()->set_num_gpus(1);
  config.mutable_cluster()->set_gpus_per_node(1);
  config.mutable_training()->set_attention("colocated");
  config.mutable_training()->set_recompute("none");
  const StepCalibration c = hand_calibration();
  const StepPrice p = price_training_step(config, {{{{1000}, false, false}}}, c);
  // Segment fixed costs (order of calibrated_segments): qkv f 1 (+ per GFLOP), b 2, r 4;
  // out_mlp f 8, b 16, r 32; head_loss 64; embedding f 128, b 256; optimizer 512.
  const double qkv_forward = 1 + 1000 * (2.0 * 1000 * 64 * (64 + 2 * 32) / 1e9);
  const double layers = 2 * (qkv_forward + 2 + 8 + 16);
  const double attention_forward = 4.0 * (1000.0 * 1001 / 2) * 16 * 4 / (2.0 * 1e6);
  const double attention_backward = 2.5 * 4.0 * (1000.0 * 1001 / 2) * 16 * 4 / (1.0 * 1e6);
  const double attention = 2 * (attention_forward + 3 + attention_backward + 3);
  // One bucket per layer group and the embedding: one rank has no all-reduce traffic (no link
  // cost in the calibration and the cluster prices 0 bytes at 0).
  const double expected = layers + attention + 64 + 128 + 256 + 512 + 500;
  EXPECT_NEAR(p.step_us, expected, 1e-6 * expected);
  EXPECT_NEAR(p.attention_us, attention, 1e-9 * attention);
  EXPECT_NEAR(p.optimizer_us, 512, 1e-9);
  EXPECT_NEAR(p.overhead_us, 500, 1e-9);
  EXPECT_EQ(p.a2a_bytes, 0);
}

// Memory: measured peak = weights/gradients/optimizer + 1.3 x modelled activations + 2 GiB over
// two profiles of different sizes recovers the scale and the fixed part.
TEST(StepCalibration, MemoryFitRecoversScaleAndFixedPartFromPeaks) {
  std::vector<profile::RunProfile> profiles = {synthetic_profile({1000, 3000}, true),
                                               synthetic_profile({20000}, true)};
  StepCalibration cal = default_step_calibration();
  EXPECT_EQ(fit_memory(profiles, &cal), 0);  // no peaks yet: unchanged
  EXPECT_EQ(cal.activation_memory_scale, default_step_calibration().activation_memory_scale);
  for (auto& p : profiles) {
    p.set_attention("colocated");
    // The modelled terms on the profile's own documents (every nano-batch's documents).
    std::vector<int64_t> docs;
    for (const auto& nb : p.steps(0).ranks(0).nano_batches()) {
      docs.insert(docs.end(), nb.doc_lengths().begin(), nb.doc_lengths().end());
    }
    StepCalibration unscaled = default_step_calibration();
    unscaled.activation_memory_scale = 1;
    unscaled.memory_fixed_gib = 0;
    const MemoryByComponent m =
        price_training_step(profile_run_config(p), {{{docs, false, false}}}, unscaled).memory;
    const double peak_gib = m.state_gib() + 1.3 * m.above_state_gib() + 2.0;
    p.mutable_steps(0)->mutable_ranks(0)->set_peak_allocated_bytes(
        static_cast<int64_t>(peak_gib * 1024 * 1024 * 1024));
  }
  EXPECT_EQ(fit_memory(profiles, &cal), 2);
  EXPECT_NEAR(cal.activation_memory_scale, 1.3, 1e-6);
  EXPECT_NEAR(cal.memory_fixed_gib, 2.0, 1e-6);
}

TEST(StepModel, PingPongHidesExchangesAndSplitMatchesTheTrainer) {
  // Two nano-batches of near-equal tokens, longest first onto the lightest, ties to the lower:
  // 9 -> A, 5 -> B, 4 -> B (9 = 9), 1 -> A; order kept inside each.
  const auto parts = split_nano_batches({5, 9, 1, 4}, 2);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0], (std::vector<int>{1, 2}));
  EXPECT_EQ(parts[1], (std::vector<int>{0, 3}));
  // A pinned document goes to A first: 4 -> A, then 9 -> B, 5 -> A, 1 -> A (9 = 9).
  EXPECT_EQ(split_nano_batches({5, 9, 1, 4}, 2, {3})[0], (std::vector<int>{0, 2, 3}));
  // Two ranks, CAD: with ping-pong the exposed exchange time is at most that without.
  config::RunConfig config;
  *config.mutable_model() = tiny_model();
  config.mutable_cluster()->set_num_gpus(2);
  config.mutable_cluster()->set_gpus_per_node(2);
  config.mutable_training()->set_attention("cad");
  const StepCalibration c = hand_calibration();
  const std::vector<MicroBatchDocuments> docs = {
      {{{3000, 500, 200}, false, false}, {{400, 300, 200, 100}, false, false}}};
  config.mutable_training()->set_ping_pong(true);
  const StepPrice on = price_training_step(config, docs, c);
  config.mutable_training()->set_ping_pong(false);
  const StepPrice off = price_training_step(config, docs, c);
  EXPECT_GT(on.a2a_bytes, 0);
  EXPECT_LE(on.exposed_a2a_us, off.exposed_a2a_us + 1e-9);
  EXPECT_NEAR(off.exposed_a2a_us, off.a2a_us, 1e-6 * off.a2a_us);  // nothing hides it
}

// --- attention tables per kernel shape ------------------------------------------------------

// A kernel table with one rate for every shape (TFLOP/s forward, backward).
CalibrationTable flat_table(int32_t heads, int32_t kv_heads, int32_t head_dim,
                            double forward_tflops = 2.0, double backward_tflops = 1.0) {
  CalibrationTable t;
  t.device = "test d" + std::to_string(head_dim) + (kv_heads == heads ? " MHA" : " GQA");
  t.heads = heads;
  t.kv_heads = kv_heads;
  t.head_dim = head_dim;
  t.points.push_back({1024, 1024, forward_tflops, backward_tflops});
  return t;
}

// The tiny model's layers with `heads` query heads of `head_dim` and `kv_heads` K/V heads.
config::ModelConfig shaped_model(int32_t heads, int32_t kv_heads, int32_t head_dim) {
  config::ModelConfig m = tiny_model();
  m.set_num_heads(heads);
  m.set_num_kv_heads(kv_heads);
  m.set_head_dim(head_dim);
  m.set_hidden_size(heads * head_dim);
  return m;
}

// Which of `c`'s tables attention_table_for picks (-1: none).
int picked(const StepCalibration& c, const config::ModelConfig& m, int32_t tp = 1) {
  const CalibrationTable* t = attention_table_for(c, m, tp);
  return t == nullptr ? -1 : static_cast<int>(t - c.attention_tables.data());
}

TEST(StepCalibration, AttentionTableForPicksTheHeadDimAndGqaOfTheModel) {
  StepCalibration c;
  // The d128 GQA table first, so that picking d64 is not the list's order.
  c.attention_tables = {flat_table(32, 8, 128), flat_table(32, 8, 64), flat_table(32, 32, 128),
                        flat_table(32, 32, 64), flat_table(16, 16, 192)};
  const config::ModelConfig llama_1b = shaped_model(32, 8, 64);  // head dim 64, GQA
  const config::ModelConfig llama_8b = shaped_model(32, 8, 128);
  EXPECT_EQ(picked(c, llama_1b), 1);
  EXPECT_EQ(picked(c, llama_1b, 8), 1);  // 4 query heads per K/V head on each of 8 ranks
  EXPECT_EQ(picked(c, llama_8b), 0);
  EXPECT_EQ(picked(c, llama_8b, 8), 0);
  EXPECT_EQ(picked(c, shaped_model(32, 32, 128)), 2);  // MHA
  EXPECT_EQ(picked(c, shaped_model(32, 32, 64)), 3);
  // GQA-ness counts per TP rank: 8 query and 4 K/V heads on 8 ranks is one of each (MHA).
  EXPECT_EQ(picked(c, shaped_model(8, 4, 64)), 1);
  EXPECT_EQ(picked(c, shaped_model(8, 4, 64), 8), 3);
  // Latent attention (MLA, expanded per head: MHA) at the query/key width head_dim + rope_head_dim
  // = 128 + 64, not head_dim.
  config::ModelConfig mla = shaped_model(16, 16, 128);
  mla.set_kv_latent_dim(512);
  mla.set_rope_head_dim(64);
  ASSERT_EQ(qk_head_dim(mla), 192);
  EXPECT_EQ(picked(c, mla), 4);
  // No tables: nullptr (the caller's fallback prices it).
  EXPECT_EQ(picked(StepCalibration{}, llama_1b), -1);
}

TEST(StepCalibration, AttentionTableForFallsBackToTheNearestHeadDimThenToAnyTable) {
  StepCalibration c;
  c.attention_tables = {flat_table(32, 8, 128), flat_table(32, 8, 64), flat_table(32, 32, 256)};
  EXPECT_EQ(picked(c, shaped_model(32, 8, 80)), 1);   // 64 is nearer than 128
  EXPECT_EQ(picked(c, shaped_model(32, 8, 112)), 0);  // 128 is nearer than 64
  EXPECT_EQ(picked(c, shaped_model(32, 8, 96)), 0);   // a tie: the earlier table
  EXPECT_EQ(picked(c, shaped_model(32, 8, 256)), 0);  // GQA tables first, even at another width
  EXPECT_EQ(picked(c, shaped_model(32, 32, 64)), 2);  // the only MHA table
  // kv_heads 0 (not recorded) counts as GQA.
  c.attention_tables = {flat_table(32, 0, 64), flat_table(32, 32, 64)};
  EXPECT_EQ(picked(c, shaped_model(32, 8, 64)), 0);
  EXPECT_EQ(picked(c, shaped_model(32, 32, 64)), 1);
  // No table of the model's GQA-ness: the nearest head dim of any.
  c.attention_tables = {flat_table(32, 32, 128), flat_table(32, 32, 64)};
  EXPECT_EQ(picked(c, shaped_model(32, 8, 64)), 1);
  EXPECT_EQ(picked(c, shaped_model(32, 8, 128)), 0);
}

TEST(StepCalibration, TwoTablesRoundTripBitIdenticallyAndDeterministically) {
  StepCalibration c = default_step_calibration();
  // Rates whose last bits matter.
  CalibrationTable d64 = flat_table(32, 8, 64, 431.123456789012345, 1.0 / 3.0);
  d64.points.push_back({4096, 65536, 0.1 + 0.2, 3.14159265358979312});
  c.attention_tables = {d64, flat_table(32, 32, 128, 567.891)};
  const std::string json = step_calibration_json(c);
  EXPECT_EQ(json, step_calibration_json(c));
  EXPECT_NE(json.find("\"attention_tables\""), std::string::npos);
  EXPECT_EQ(json.find("\"attention_table\""), std::string::npos);  // legacy fields not written
  const StepCalibration back = parse_step_calibration(json, "test");
  EXPECT_EQ(step_calibration_json(back), json);
  ASSERT_EQ(back.attention_tables.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const CalibrationTable &a = c.attention_tables[i], &b = back.attention_tables[i];
    EXPECT_EQ(a.device, b.device);
    EXPECT_EQ(a.heads, b.heads);
    EXPECT_EQ(a.kv_heads, b.kv_heads);
    EXPECT_EQ(a.head_dim, b.head_dim);
    ASSERT_EQ(a.points.size(), b.points.size());
    for (size_t j = 0; j < a.points.size(); ++j) {
      EXPECT_EQ(a.points[j].q_tokens, b.points[j].q_tokens);
      EXPECT_EQ(a.points[j].kv_tokens, b.points[j].kv_tokens);
      EXPECT_EQ(a.points[j].forward_tflops, b.points[j].forward_tflops);  // bit-identical
      EXPECT_EQ(a.points[j].backward_tflops, b.points[j].backward_tflops);
    }
  }
}

// Writes `text` to a file under the test's temporary directory; returns its path.
std::string write_temp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "cadre_" + name;
  std::ofstream(path) << text;
  return path;
}

std::string table_json(const calibration::CalibrationTableProto& t) {
  std::string json;
  google::protobuf::util::MessageToJsonString(t, &json);
  return json;
}

TEST(StepCalibration, LegacyTableFieldsStillLoadAndPriceAsBefore) {
  // The built-in calibration holds the auto kernel's GQA tables at head dims 64 and 128 and the
  // flash kernel's MHA table (`cadre calibrate` writes GQA first, then by head dim).
  const StepCalibration& builtin = default_step_calibration();
  ASSERT_EQ(builtin.attention_tables.size(), 3u);
  EXPECT_EQ(builtin.attention_tables[0].head_dim, 64);
  EXPECT_FALSE(is_mha_table(builtin.attention_tables[0]));
  EXPECT_FALSE(is_mha_table(builtin.attention_tables[1]));
  EXPECT_TRUE(is_mha_table(builtin.attention_tables[2]));
  EXPECT_EQ(picked(builtin, shaped_model(32, 8, 128), 8), 1);
  EXPECT_EQ(picked(builtin, shaped_model(32, 8, 64), 8), 0);
  EXPECT_EQ(picked(builtin, shaped_model(32, 32, 128), 8), 2);
  // A legacy file with distinct rates per slot; the MHA slot without kv_heads (the slot said MHA).
  StepCalibration c = hand_calibration();
  c.attention_tables = {flat_table(4, 0, 16, 2.0, 1.0), flat_table(4, 0, 16, 5.0, 3.0)};
  calibration::StepCalibrationProto proto;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(step_calibration_json(c), &proto).ok());
  *proto.mutable_attention_table() = proto.attention_tables(0);
  *proto.mutable_attention_table_mha() = proto.attention_tables(1);
  proto.clear_attention_tables();
  std::string legacy_json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(proto, &legacy_json).ok());
  const StepCalibration legacy = parse_step_calibration(legacy_json, "legacy.json");
  ASSERT_EQ(legacy.attention_tables.size(), 2u);
  EXPECT_EQ(legacy.attention_tables[0].points[0].forward_tflops, 2.0);
  EXPECT_EQ(legacy.attention_tables[1].points[0].forward_tflops, 5.0);
  EXPECT_TRUE(is_mha_table(legacy.attention_tables[1]));
  // Before: GQA models were priced with attention_table, MHA models with attention_table_mha;
  // the same as naming that table in cluster.attention_calibration.
  const std::string gqa_path = write_temp("legacy_gqa.json", table_json(proto.attention_table()));
  const std::string mha_path =
      write_temp("legacy_mha.json", table_json(proto.attention_table_mha()));
  for (const bool mha : {false, true}) {
    config::RunConfig config;
    *config.mutable_model() = shaped_model(4, mha ? 4 : 2, 16);
    config.mutable_cluster()->set_num_gpus(1);
    config.mutable_cluster()->set_gpus_per_node(1);
    config.mutable_training()->set_attention("colocated");
    const std::vector<MicroBatchDocuments> docs = {{{{1000, 3000}, false, false}}};
    const StepPrice from_legacy = price_training_step(config, docs, legacy);
    config.mutable_cluster()->set_attention_calibration(mha ? mha_path : gqa_path);
    const StepPrice as_before = price_training_step(config, docs, legacy);
    EXPECT_GT(from_legacy.attention_us, 0);
    EXPECT_EQ(from_legacy.attention_us, as_before.attention_us) << (mha ? "MHA" : "GQA");
    EXPECT_EQ(from_legacy.step_us, as_before.step_us) << (mha ? "MHA" : "GQA");
  }
  // Written back, it is the new list, and reads back the same.
  EXPECT_EQ(step_calibration_json(parse_step_calibration(step_calibration_json(legacy), "x")),
            step_calibration_json(legacy));
}

TEST(StepCalibration, TwoKernelTablesOfOneShapeAreRejectedNamingBoth) {
  CalibrationInputs in;
  in.profiles = {synthetic_profile({1000, 3000}, false)};
  in.profile_names = {"a"};
  const std::string gqa64 = R"({"heads": 32, "kv_heads": 8, "head_dim": 64, "points": [
      {"q_tokens": 1024, "kv_tokens": 1024, "forward_tflops": 400, "backward_tflops": 300}]})";
  const std::string mha64 = R"({"heads": 32, "kv_heads": 32, "head_dim": 64, "points": [
      {"q_tokens": 1024, "kv_tokens": 1024, "forward_tflops": 410, "backward_tflops": 310}]})";
  in.kernel_json = {gqa64, mha64};
  in.kernel_names = {"gqa64.json", "mha64.json"};
  EXPECT_EQ(fit_step_calibration(in).attention_tables.size(), 2u);  // one GQA, one MHA: fine
  in.kernel_json = {gqa64, mha64, gqa64};
  in.kernel_names = {"A.json", "mha64.json", "B.json"};
  cadre::testing::expect_error([&] { fit_step_calibration(in); },
                               {"two attention tables for head dim 64, GQA: A.json and B.json; "
                                "accepted: one per head dim and GQA/MHA"});
  // A file with two such tables is rejected too.
  StepCalibration c = hand_calibration();
  c.attention_tables = {flat_table(32, 32, 64), flat_table(32, 32, 64)};
  cadre::testing::expect_error(
      [&] { parse_step_calibration(step_calibration_json(c), "'dup.json'"); },
      {"calibration file 'dup.json': two attention tables for head dim 64, MHA: "
       "attention_tables[0] and attention_tables[1]"});
}

TEST(StepCalibration, FitKeepsOneTablePerKernelInputAndScalesAgainstTheModelsOwn) {
  // The profiles' model has head dim 16 (GQA); their attention follows the d16 table x 1.3 / 0.9.
  const CalibrationTable d16 = flat_table(4, 2, 16, 2.0, 1.0);
  const CalibrationTable d8 = flat_table(4, 2, 8, 7.0, 5.0);
  CalibrationInputs in;
  in.profiles = {synthetic_profile({1000, 3000}, false), synthetic_profile({7000}, false)};
  for (auto& p : in.profiles) set_attention(&p, 1.3, 0.9, 25, &d16);
  in.profile_names = {"a", "b"};
  auto kernel = [](const CalibrationTable& t) {
    char point[160];
    std::snprintf(point, sizeof(point),
                  R"({"q_tokens": 1024, "kv_tokens": 1024, "forward_tflops": %g, )"
                  R"("backward_tflops": %g})",
                  t.points[0].forward_tflops, t.points[0].backward_tflops);
    return R"({"config": {"kv_heads": )" + std::to_string(t.kv_heads) +
           R"(}, "calibration": {"device": "d)" + std::to_string(t.head_dim) + R"(", "heads": )" +
           std::to_string(t.heads) + R"(, "head_dim": )" + std::to_string(t.head_dim) +
           R"(, "points": [)" + point + "]}}";
  };
  // The d16 input first, but the d8 table sorts first: the fit must still price the d16 model
  // with the d16 table.
  in.kernel_json = {kernel(d16), kernel(d8)};
  in.kernel_names = {"d16.json", "d8.json"};
  const StepCalibration c = fit_step_calibration(in);
  ASSERT_EQ(c.attention_tables.size(), 2u);
  EXPECT_EQ(c.attention_tables[0].head_dim, 8);  // ordered by head dim
  EXPECT_EQ(c.attention_tables[1].head_dim, 16);
  EXPECT_EQ(c.attention_tables[1].kv_heads, 2);
  EXPECT_NEAR(c.attention_forward_scale, 1.3, 1e-6);
  EXPECT_NEAR(c.attention_backward_scale, 0.9, 1e-6);
  EXPECT_NEAR(c.attention_call_us, 25, 1e-4);
  // The tables' order does not depend on the order of the kernel inputs.
  CalibrationInputs swapped = in;
  swapped.kernel_json = {kernel(d8), kernel(d16)};
  swapped.kernel_names = {"d8.json", "d16.json"};
  const StepCalibration s = fit_step_calibration(swapped);
  ASSERT_EQ(s.attention_tables.size(), 2u);
  EXPECT_EQ(s.attention_tables[0].head_dim, 8);
  EXPECT_EQ(s.attention_tables[1].head_dim, 16);
  EXPECT_EQ(s.attention_forward_scale, c.attention_forward_scale);
}

TEST(StepModel, EachModelIsPricedWithTheTableOfItsHeadDim) {
  StepCalibration c = hand_calibration();
  c.attention_call_us = 0;
  c.attention_tables = {flat_table(4, 2, 128, 2.0, 1.0), flat_table(4, 2, 64, 2.0, 1.0)};
  StepCalibration halved = c;  // the d64 table at half the TFLOP/s
  for (CalibrationPoint& p : halved.attention_tables[1].points) {
    p.forward_tflops /= 2;
    p.backward_tflops /= 2;
  }
  auto attention_us = [](int32_t head_dim, const StepCalibration& cal) {
    config::RunConfig config;
    *config.mutable_model() = shaped_model(4, 2, head_dim);
    config.mutable_cluster()->set_num_gpus(1);
    config.mutable_cluster()->set_gpus_per_node(1);
    config.mutable_training()->set_attention("colocated");
    return price_training_step(config, {{{{1000, 3000}, false, false}}}, cal).attention_us;
  };
  EXPECT_NEAR(attention_us(64, halved), 2 * attention_us(64, c), 1e-9 * attention_us(64, c));
  EXPECT_EQ(attention_us(128, halved), attention_us(128, c));
}

}  // namespace
}  // namespace cadre::scheduler
