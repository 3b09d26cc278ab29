// cadre-mpi-ranks: 1 2 3 4
// Multi-head latent attention in the training loop: CAD shipping the latent (servers expand it
// with the layer's up-projection and return the latent's gradient), CAD shipping expanded K/V,
// and colocated attention all equal one process training the unsplit model (loss, every
// gradient, the weights after each step; fp32, relative 1e-5), with ping-pong on and off,
// recomputation, span packing, a low-rank query, T = 2 tensor parallelism and TPLA at T = 2
// (against one process computing both latent slices); the latent moves fewer bytes than the
// expanded keys and values; dedicated servers (no weights) get expanded K/V.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "comm/mpi_transport.h"
#include "common/error.h"
#include "runtime/trainer.h"
#include "tests/runtime/single_process_reference.h"

namespace cadre::runtime {
namespace {

using testing::expect_matches_single_process;

comm::Transport& world() {
  static std::unique_ptr<comm::Transport> transport = comm::make_mpi_transport(120);
  return *transport;
}

config::RunConfig mla_run(const std::string& attention, int tensor_parallel = 1) {
  config::RunConfig c;
  auto* m = c.mutable_model();
  m->set_preset("custom");
  m->set_num_layers(2);
  m->set_hidden_size(32);
  m->set_num_heads(4);
  m->set_num_kv_heads(4);
  m->set_head_dim(8);
  m->set_rope_head_dim(4);
  m->set_kv_latent_dim(16);
  m->set_v_head_dim(6);
  m->set_ffn_hidden_size(64);
  m->set_vocab_size(64);
  m->set_tie_embeddings(false);
  m->set_rope_theta(10000);
  c.mutable_cluster()->set_num_gpus(world().size());
  c.mutable_cluster()->set_gpus_per_node(world().size());
  c.mutable_cluster()->set_tensor_parallel(tensor_parallel);
  auto* d = c.mutable_data();
  d->set_distribution("uniform");
  d->set_uniform_min_tokens(8);
  d->set_uniform_max_tokens(120);
  d->set_context_length(128);
  d->set_seed(17);
  c.mutable_scheduler()->set_min_shard_tokens(16);
  auto* t = c.mutable_training();
  t->set_attention(attention);
  t->set_device("cpu");
  t->set_steps(3);
  t->set_learning_rate(3e-3);
  t->set_min_learning_rate(3e-4);
  t->set_warmup_steps(1);
  t->set_grad_clip(0.5);
  t->set_adam_eps(1e-6);  // see mpi_test_tensor_parallel.cc
  t->set_seed(42);
  return c;
}

struct Variant {
  std::string what;
  int tensor_parallel;
  std::function<void(config::RunConfig*)> set;
};

std::vector<Variant> variants() {
  auto expanded = [](config::RunConfig* c) { c->mutable_scheduler()->set_mla_shipping("expanded"); };
  std::vector<Variant> v = {
      {"cad latent, ping-pong", 1, [](config::RunConfig*) {}},
      {"cad latent, no ping-pong", 1,
       [](config::RunConfig* c) { c->mutable_training()->set_ping_pong(false); }},
      {"cad latent, recompute=linear", 1,
       [](config::RunConfig* c) { c->mutable_training()->set_recompute("linear"); }},
      {"cad latent, packing span", 1,
       [](config::RunConfig* c) { c->mutable_data()->set_packing("span"); }},
      {"cad latent, ping-pong, recompute=linear and packing span at once", 1,
       [](config::RunConfig* c) {
         c->mutable_training()->set_recompute("linear");
         c->mutable_data()->set_packing("span");
       }},
      {"cad latent, low-rank query, two micro-batches", 1,
       [](config::RunConfig* c) {
         c->mutable_model()->set_q_latent_dim(12);
         c->mutable_training()->set_micro_batches(2);
       }},
      {"cad expanded", 1, expanded},
      {"colocated", 1,
       [](config::RunConfig* c) { c->mutable_training()->set_attention("colocated"); }},
  };
  if (world().size() % 2 == 0) {
    v.push_back({"T=2 cad latent, sequence parallel", 2, [](config::RunConfig*) {}});
    v.push_back({"T=2 cad expanded, no sequence parallelism", 2, [expanded](config::RunConfig* c) {
                   expanded(c);
                   c->mutable_training()->set_sequence_parallel(false);
                 }});
    v.push_back({"T=2 colocated, recompute", 2, [](config::RunConfig* c) {
                   c->mutable_training()->set_attention("colocated");
                   c->mutable_training()->set_recompute("linear");
                 }});
    v.push_back({"T=2 TPLA, cad latent", 2,
                 [](config::RunConfig* c) { c->mutable_model()->set_tpla(true); }});
    v.push_back({"T=2 TPLA hadamard, cad expanded, packing span", 2,
                 [expanded](config::RunConfig* c) {
                   c->mutable_model()->set_tpla(true);
                   c->mutable_model()->set_tpla_transform("hadamard");
                   expanded(c);
                   c->mutable_data()->set_packing("span");
                 }});
    v.push_back({"T=2 TPLA, colocated, sharded optimizer", 2, [](config::RunConfig* c) {
                   c->mutable_model()->set_tpla(true);
                   c->mutable_training()->set_attention("colocated");
                   c->mutable_training()->set_shard_optimizer(true);
                 }});
  }
  return v;
}

TEST(LatentTraining, EveryShippingAndLayoutEqualsOneProcess) {
  for (const Variant& v : variants()) {
    auto config = mla_run("cad", v.tensor_parallel);
    v.set(&config);
    expect_matches_single_process(world(), config, v.what);
  }
}

TEST(LatentTraining, TheLatentMovesFewerBytesThanExpandedKeysAndValues) {
  if (world().size() < 2) GTEST_SKIP() << "one rank exchanges nothing";
  auto latent_config = mla_run("cad"), expanded_config = mla_run("cad");
  expanded_config.mutable_scheduler()->set_mla_shipping("expanded");
  Trainer latent(latent_config, world()), expanded(expanded_config, world());
  const StepMetrics a = latent.forward_backward(), b = expanded.forward_backward();
  // The two plans may differ: the planner prices an expanded K/V row (here 4 x 18 values) above a
  // latent one (20 values), so under expanded shipping it may move queries rather than keys, and
  // under latent shipping more keys (at 4 ranks the latent plan moved more bytes in all, 162 KB
  // against 108 KB, after a change to how whole documents are priced). So the totals are compared
  // only when both plans moved the same rows; every K/V row moved costs less latent.
  if (world().rank() == 0 && a.cad_kv_rows > 0 && b.cad_kv_rows > 0) {
    EXPECT_LT(a.cad_kv_bytes * b.cad_kv_rows, b.cad_kv_bytes * a.cad_kv_rows)
        << "latent " << a.cad_kv_bytes << " B over " << a.cad_kv_rows << " rows, expanded "
        << b.cad_kv_bytes << " B over " << b.cad_kv_rows;
    if (a.cad_kv_rows == b.cad_kv_rows && a.cad_query_rows == b.cad_query_rows) {
      EXPECT_LT(a.a2a_bytes, b.a2a_bytes) << "latent " << a.a2a_bytes << " B, expanded "
                                          << b.a2a_bytes << " B";
    }
  }
  // The dispatch counters, exactly (fp32, all ranks, one layer, forward + backward): a query row
  // carries Q and dQ (4 heads x (8 + 4)) and O and dO (4 heads x 6); a K/V row carries the
  // latent [c ; k_rope] (16 + 4) out and its gradient back, or expanded K (4 x 12) and V (4 x 6)
  // out and dK, dV back.
  for (const auto& [m, kv_values] : {std::pair<StepMetrics, int64_t>{a, 16 + 4},
                                     std::pair<StepMetrics, int64_t>{b, 4 * (12 + 6)}}) {
    EXPECT_EQ(m.cad_query_bytes, m.cad_query_rows * 2 * 4 * (12 + 6) * 4)
        << m.cad_query_rows << " query rows";
    EXPECT_EQ(m.cad_kv_bytes, m.cad_kv_rows * 2 * kv_values * 4) << m.cad_kv_rows << " K/V rows";
  }
  if (a.cad_query_rows > 0) EXPECT_GT(a.cad_kv_rows, 0);  // a moved query needs its own keys
  EXPECT_NE(latent.describe().find("MLA shipping latent"), std::string::npos) << latent.describe();
  EXPECT_NE(expanded.describe().find("MLA shipping expanded K/V"), std::string::npos);
}

TEST(LatentTraining, DedicatedServersGetExpandedKeysAndValues) {
  const int n = world().size();
  if (n < 2) GTEST_SKIP() << "a dedicated server needs a second rank";
  auto config = mla_run("cad");
  config.mutable_scheduler()->set_server_mode("dedicated");
  config.mutable_scheduler()->set_num_dedicated_servers(1);
  Trainer trainer(config, world());
  EXPECT_NE(trainer.describe().find("MLA shipping expanded K/V"), std::string::npos)
      << trainer.describe();
  // The workers' numbers are those of one process over the workers' documents.
  testing::SingleProcessReference reference(config, n - 1);
  for (int step = 0; step < 2; ++step) {
    StepMetrics m = trainer.forward_backward();
    const double want = reference.forward_backward();
    EXPECT_LE(std::abs(m.loss - want), 1e-5 * std::abs(want)) << "step " << step;
    if (trainer.is_worker()) {
      const auto& got = trainer.model().parameters();
      const auto& ref = reference.model().parameters();
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_LE(testing::relative_difference(trainer.whole_gradient(i), ref[i].value.grad()),
                  1e-5)
            << "step " << step << ": " << got[i].name;
      }
    }
    trainer.optimizer_step(&m);
    reference.optimizer_step();
  }
}

}  // namespace
}  // namespace cadre::runtime
