// cadre-mpi-ranks: 2 4
// Tensor and sequence parallelism in the training loop: on T x D grids (T = 2 and 4 on 4 ranks,
// T = 2 on 2 ranks) the loss, every parameter's whole gradient and the weights after each
// optimizer step equal one process training every data-parallel group's documents with the
// unsplit model (fp32, relative 1e-5), for cad and colocated, ping-pong on and off, recomputation,
// sequence parallelism on and off, span packing and the sharded optimizer; checkpoints resume
// under another grid; bad grids and models are refused with messages naming the field.
#include <gtest/gtest.h>
#include <torch/types.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>

#include "comm/mpi_transport.h"
#include "common/error.h"
#include "common/posix_fs.h"
#include "runtime/attention_op.h"
#include "runtime/checkpoint.h"
#include "runtime/optimizer.h"
#include "runtime/trainer.h"
#include "scheduler/plan.h"
#include "tests/runtime/single_process_reference.h"

namespace cadre::runtime {
namespace {

using testing::expect_matches_single_process;
using testing::relative_difference;
using testing::SingleProcessReference;

comm::Transport& world() {
  static std::unique_ptr<comm::Transport> transport = comm::make_mpi_transport(120);
  return *transport;
}

config::RunConfig tp_run(const std::string& attention, int tensor_parallel) {
  config::RunConfig c;
  auto* m = c.mutable_model();
  m->set_preset("custom");
  m->set_num_layers(2);
  m->set_hidden_size(32);
  m->set_num_heads(4);
  m->set_num_kv_heads(2);  // T = 4 replicates each K/V head on two ranks
  m->set_head_dim(8);
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
  t->set_grad_clip(0.5);  // small enough to clip: the global norm must be right
  // AdamW's first step moves every weight by ~lr * sign(g) where |g| >> eps: a gradient element
  // near zero whose last bits differ (fp32 sums in another order) would flip its step. An eps
  // above those elements keeps the update proportional to g there, so weights compare at 1e-5.
  t->set_adam_eps(1e-6);
  t->set_seed(42);
  return c;
}

std::vector<int> grids() {
  std::vector<int> t;
  for (int tp : {2, 4}) {
    if (world().size() % tp == 0) t.push_back(tp);
  }
  return t;
}

TEST(TensorParallel, GridPutsConsecutiveRanksInOneGroup) {
  for (int tp : grids()) {
    Trainer trainer(tp_run("cad", tp), world());
    const ProcessGrid& grid = trainer.grid();
    EXPECT_EQ(grid.tensor_rank(), world().rank() % tp);
    EXPECT_EQ(grid.data_rank(), world().rank() / tp);
    ASSERT_NE(grid.tensor(), nullptr);
    EXPECT_EQ(grid.tensor()->size(), tp);
    EXPECT_EQ(grid.tensor()->rank(), world().rank() % tp);
    EXPECT_EQ(grid.data_parallel().size(), world().size() / tp);
    EXPECT_EQ(grid.attention().rank(), world().rank() / tp);
    EXPECT_EQ(grid.kv_replicas() != nullptr, tp > 2);
    // This rank's shards: heads and vocabulary split, norms whole.
    for (const auto& p : trainer.model().parameters()) {
      if (p.name == "layers.0.wq") {
        EXPECT_EQ(p.value.size(0), 4 * 8 / tp);
      }
      if (p.name == "layers.0.wk") {
        EXPECT_EQ(p.value.size(0), tp > 2 ? 8 : 2 * 8 / tp);
      }
      if (p.name == "layers.0.wo") {
        EXPECT_EQ(p.value.size(1), 4 * 8 / tp);
      }
      if (p.name == "layers.0.w_down") {
        EXPECT_EQ(p.value.size(1), 64 / tp);
      }
      if (p.name == "embedding") {
        EXPECT_EQ(p.value.size(0), 64 / tp);
      }
      if (p.name == "final_norm") {
        EXPECT_EQ(p.value.size(0), 32);
      }
    }
  }
}

// The ops on their own against one process: an uneven row split's gather and reduce-scatter,
// and the vocabulary-parallel loss and its gradient against cross_entropy_sum of whole logits.
TEST(TensorParallel, RowCollectivesAndVocabularyParallelLoss) {
  const int n = world().size(), me = world().rank();
  for (int64_t rows : {0, 1, 5, 2 * n + 1}) {
    const RowSplit split = RowSplit::even(rows, n);
    EXPECT_EQ(split.total(), rows);
    // Rank r's rows hold r + row/100: gathered, every rank sees every row in order.
    auto local = torch::arange(split.counts[me], torch::kFloat).add(split.begin(me)).unsqueeze(1);
    auto all = gather_rows(local.repeat({1, 3}), &world(), split);
    ASSERT_EQ(all.size(0), rows);
    EXPECT_TRUE(torch::equal(all.select(1, 2), torch::arange(rows, torch::kFloat)));
    // Every rank contributes (rank + 1) * row for all rows: rank me keeps its rows' sums.
    auto full = torch::arange(rows, torch::kFloat).unsqueeze(1) * static_cast<float>(me + 1);
    auto mine = reduce_scatter_rows(full, &world(), split);
    auto want = torch::arange(split.counts[me], torch::kFloat).add(split.begin(me)).unsqueeze(1) *
                static_cast<float>(n * (n + 1) / 2);
    EXPECT_TRUE(torch::allclose(mine, want)) << rows << " rows";
  }
  // Logits [7, 4n] drawn identically everywhere; rank me holds columns [4me, 4me + 4).
  torch::manual_seed(3);
  auto logits = torch::randn({7, 4 * n}, torch::kFloat) * 3;
  auto targets = torch::randint(0, 4 * n, {7}, torch::kLong);
  targets[2] = kIgnoreTarget;
  auto whole = logits.clone().requires_grad_(true);
  auto want = cross_entropy_sum(whole, targets);
  want.backward();
  auto shard = logits.narrow(1, 4 * me, 4).clone().requires_grad_(true);
  auto got = vocab_parallel_cross_entropy_sum(shard, targets, 4 * me, &world());
  got.backward();
  EXPECT_NEAR(got.item<double>(), want.item<double>(), 1e-5 * std::abs(want.item<double>()));
  EXPECT_LE(relative_difference(shard.grad(), whole.grad().narrow(1, 4 * me, 4)), 1e-5);
}

struct Variant {
  std::string what;
  std::function<void(config::RunConfig*)> set;
};

const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = {
      {"cad, ping-pong, sequence parallel", [](config::RunConfig*) {}},
      {"cad without ping-pong",
       [](config::RunConfig* c) { c->mutable_training()->set_ping_pong(false); }},
      {"colocated",
       [](config::RunConfig* c) { c->mutable_training()->set_attention("colocated"); }},
      {"cad, recompute=linear, loss in chunks of 7 tokens",
       [](config::RunConfig* c) {
         c->mutable_training()->set_recompute("linear");
         c->mutable_training()->set_loss_chunk_tokens(7);
       }},
      {"cad without sequence parallelism, tied embeddings",
       [](config::RunConfig* c) {
         c->mutable_training()->set_sequence_parallel(false);
         c->mutable_model()->set_tie_embeddings(true);
       }},
      {"cad, packing span", [](config::RunConfig* c) { c->mutable_data()->set_packing("span"); }},
      {"colocated, packing span, no overlapped reduction",
       [](config::RunConfig* c) {
         c->mutable_training()->set_attention("colocated");
         c->mutable_data()->set_packing("span");
         c->mutable_training()->set_overlap_grad_reduce(false);
       }},
      {"cad, two micro-batches, packing fill",
       [](config::RunConfig* c) {
         c->mutable_training()->set_micro_batches(2);
         c->mutable_data()->set_packing("fill");
       }},
      {"cad, sharded optimizer",
       [](config::RunConfig* c) { c->mutable_training()->set_shard_optimizer(true); }},
      {"colocated, sharded optimizer, packing span, no sequence parallelism, recompute",
       [](config::RunConfig* c) {
         c->mutable_training()->set_attention("colocated");
         c->mutable_training()->set_shard_optimizer(true);
         c->mutable_data()->set_packing("span");
         c->mutable_training()->set_sequence_parallel(false);
         c->mutable_training()->set_recompute("linear");
       }},
  };
  return v;
}

TEST(TensorParallel, EqualsOneProcessForEveryVariant) {
  for (int tp : grids()) {
    for (const Variant& v : variants()) {
      auto config = tp_run("cad", tp);
      v.set(&config);
      expect_matches_single_process(world(), config, "T=" + std::to_string(tp) + ", " + v.what);
    }
  }
}

// ZeRO-1's weight all-gathers finish inside the next forward (nothing in between asks for the
// weights here, unlike expect_matches_single_process): the losses and gradients of the next
// steps are still those of one process.
TEST(TensorParallel, ShardedWeightGathersFinishInsideTheNextForward) {
  for (int tp : {1, 2}) {
    auto config = tp_run("cad", tp);
    config.mutable_training()->set_shard_optimizer(true);
    config.mutable_training()->set_recompute("linear");
    Trainer trainer(config, world());
    SingleProcessReference reference(config, world().size() / tp);
    for (int step = 0; step < 3; ++step) {
      StepMetrics m = trainer.forward_backward();
      const double want = reference.forward_backward();
      EXPECT_LE(std::abs(m.loss - want), 1e-5 * std::abs(want))
          << "T=" << tp << ", step " << step << ": loss " << m.loss << " vs " << want;
      const auto& ref = reference.model().parameters();
      for (size_t i = 0; i < ref.size(); ++i) {
        const double rel = relative_difference(trainer.whole_gradient(i), ref[i].value.grad());
        EXPECT_LE(rel, 1e-5) << "T=" << tp << ", step " << step << ": gradient of " << ref[i].name
                             << " differs by " << rel;
      }
      trainer.optimizer_step(&m);
      reference.optimizer_step();
    }
  }
}

// Dedicated attention servers under TP: each serves one head group (its TP index's exchange).
// On 4 ranks: one T=2 group of workers and two servers; the workers' numbers are one
// process's.
TEST(TensorParallel, DedicatedServersServeOneHeadGroupEach) {
  if (world().size() != 4) GTEST_SKIP() << "needs 4 ranks";
  for (bool ping_pong : {true, false}) {
    auto config = tp_run("cad", 2);
    config.mutable_training()->set_shard_optimizer(!ping_pong);
    config.mutable_scheduler()->set_server_mode("dedicated");
    config.mutable_scheduler()->set_num_dedicated_servers(2);
    config.mutable_training()->set_ping_pong(ping_pong);
    Trainer trainer(config, world());
    EXPECT_EQ(trainer.grid().tensor_rank(), world().rank() % 2);
    EXPECT_EQ(trainer.grid().attention().size(), 2);  // one worker group + one server
    EXPECT_EQ(trainer.grid().attention_servers(), 1);
    SingleProcessReference reference(config, 1);
    for (int step = 0; step < 2; ++step) {
      StepMetrics m = trainer.forward_backward();
      const double want = reference.forward_backward();
      EXPECT_LE(std::abs(m.loss - want), 1e-5 * std::abs(want)) << "step " << step;
      // The workers' whole gradients (collective over their TP group: workers only).
      if (trainer.is_worker()) {
        const auto& ref = reference.model().parameters();
        for (size_t i = 0; i < ref.size(); ++i) {
          const double rel = relative_difference(trainer.whole_gradient(i), ref[i].value.grad());
          EXPECT_LE(rel, 1e-5) << "ping-pong " << ping_pong << ", step " << step << ": gradient of "
                               << ref[i].name << " differs by " << rel;
        }
      }
      trainer.optimizer_step(&m);
      reference.optimizer_step();
    }
  }
  auto odd = tp_run("cad", 2);
  odd.mutable_scheduler()->set_server_mode("dedicated");
  odd.mutable_scheduler()->set_num_dedicated_servers(1);
  try {
    Trainer trainer(odd, world());
    ADD_FAILURE() << "3 workers at T=2 accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("cluster.tensor_parallel=2 does not divide the 3 worker ranks"),
              std::string::npos)
        << e.message();
  }
}

// The reference itself: at T = 1 the trainer over D ranks matches it too (so a T > 1 failure is
// the tensor parallelism's).
TEST(TensorParallel, ReferenceMatchesTheDataParallelTrainer) {
  {
    auto c = tp_run("cad", 1);
    c.mutable_training()->set_micro_batches(2);
    c.mutable_data()->set_packing("fill");
    expect_matches_single_process(world(), c, "T=1, two micro-batches, packing fill");
  }
  expect_matches_single_process(world(), tp_run("cad", 1), "T=1");
  auto sharded = tp_run("cad", 1);
  sharded.mutable_training()->set_shard_optimizer(true);
  expect_matches_single_process(world(), sharded, "T=1, sharded optimizer", 3);
}

void expect_error(const config::RunConfig& config, const std::vector<std::string>& parts) {
  try {
    Trainer trainer(config, world());
    ADD_FAILURE() << "no error; expected one mentioning " << parts.front();
  } catch (const Error& e) {
    for (const std::string& part : parts) {
      EXPECT_NE(e.message().find(part), std::string::npos)
          << "message lacks '" << part << "': " << e.message();
    }
  }
}

TEST(TensorParallel, BadGridsAndModelsAreRefusedNamingTheField) {
  const int n = world().size();
  {
    auto c = tp_run("cad", 2);
    c.mutable_cluster()->set_gpus_per_node(3);
    expect_error(c, {"cluster.tensor_parallel=2", "cluster.gpus_per_node=3", "divisor of 3"});
  }
  {
    auto c = tp_run("cad", 2 * n);
    c.mutable_cluster()->set_gpus_per_node(2 * n);
    expect_error(c, {"cluster.tensor_parallel=" + std::to_string(2 * n),
                     "does not divide the " + std::to_string(n) + " worker ranks"});
  }
  {
    auto c = tp_run("cad", 2);
    c.mutable_model()->set_num_heads(3);
    c.mutable_model()->set_num_kv_heads(1);
    expect_error(c, {"model.num_heads=3", "cluster.tensor_parallel=2"});
  }
  {
    auto c = tp_run("cad", 2);
    c.mutable_model()->set_num_heads(6);
    c.mutable_model()->set_num_kv_heads(3);
    expect_error(c, {"model.num_kv_heads=3", "divides or is a multiple of 3"});
  }
  {
    auto c = tp_run("cad", 2);
    c.mutable_model()->set_ffn_hidden_size(63);
    expect_error(c, {"model.ffn_hidden_size=63", "cluster.tensor_parallel=2"});
  }
  {
    auto c = tp_run("cad", 2);
    c.mutable_model()->set_vocab_size(63);
    expect_error(c, {"model.vocab_size=63", "does not pad", "e.g. 64"});
  }
  {
    auto c = tp_run("cad", 2);
    c.mutable_cluster()->set_pipeline_parallel(2);
    expect_error(c, {"cluster.pipeline_parallel=2", "accepted: 1"});
  }
}

std::string shared_temp_dir(const std::string& tag) {
  int64_t id = ::getpid();
  world().broadcast(&id, sizeof(id), 0);
  return (std::filesystem::temp_directory_path() /
          ("cadre_mpi_test_tp_" + tag + "_" + std::to_string(id)))
      .string();
}

// Two checkpoint files hold the same counters and bitwise the same tensors.
void expect_same_checkpoint(const std::string& a, const std::string& b, const std::string& what) {
  CheckpointState x = read_checkpoint(a), y = read_checkpoint(b);
  EXPECT_EQ(x.counters, y.counters) << what;
  ASSERT_EQ(x.tensors.size(), y.tensors.size()) << what;
  for (size_t i = 0; i < x.tensors.size(); ++i) {
    EXPECT_EQ(x.tensors[i].first, y.tensors[i].first) << what;
    ASSERT_EQ(x.tensors[i].second.sizes(), y.tensors[i].second.sizes()) << what;
    EXPECT_TRUE(torch::equal(x.tensors[i].second, y.tensors[i].second))
        << what << ": " << x.tensors[i].first << " differs";
  }
}

// A checkpoint written under T x D holds whole tensors: read under T' x D' and written again it
// is the same file's content (weights, both AdamW moments, counters); training on from it under
// the same grid repeats the uninterrupted run's losses.
TEST(TensorParallel, CheckpointsResumeUnderAnotherGrid) {
  const int n = world().size();
  const std::string dir = shared_temp_dir("resume");
  auto at = [&](int tp, const std::string& sub) {
    auto c = tp_run("cad", tp);
    c.mutable_training()->set_steps(6);
    c.mutable_training()->set_checkpoint_dir(dir + "/" + sub);
    return c;
  };
  // T=2 x D=n/2: two steps, save, two more.
  std::string saved;
  std::vector<double> uninterrupted;
  {
    Trainer a(at(2, "a"), world());
    for (int s = 0; s < 2; ++s) a.train_step();
    saved = a.save_checkpoint();
    for (int s = 0; s < 2; ++s) uninterrupted.push_back(a.train_step().loss);
  }
  // Same grid: the resumed losses are the uninterrupted ones.
  {
    Trainer b(at(2, "b"), world());
    b.load_checkpoint(saved);
    for (int s = 0; s < 2; ++s) {
      const double loss = b.train_step().loss;
      EXPECT_LE(std::abs(loss - uninterrupted[s]), 1e-12 * std::abs(uninterrupted[s]))
          << "resumed step " << s << ": " << loss << " vs " << uninterrupted[s];
    }
  }
  // T=2 -> T=1 (D=n) and every T that fits: the state read is the state written.
  for (int tp : {1, 4}) {
    if (n % tp != 0) continue;
    const std::string sub = "t" + std::to_string(tp);
    Trainer c(at(tp, sub), world());
    c.load_checkpoint(saved);
    expect_same_checkpoint(saved, c.save_checkpoint(), "T=2 -> T=" + std::to_string(tp));
  }
  // And back: T=1 trains a step and saves; T=2 reads it and writes the same state.
  {
    Trainer c(at(1, "c"), world());
    c.load_checkpoint(saved);
    c.train_step();
    const std::string one = c.save_checkpoint();
    Trainer d(at(2, "d"), world());
    d.load_checkpoint(one);
    expect_same_checkpoint(one, d.save_checkpoint(), "T=1 -> T=2");
  }
  // The sharded optimizer's state is whole in the file too: T=2 sharded reads and writes the
  // same state, and a sharded run resumed unsharded (or the other way) is the same file.
  {
    auto sharded = at(2, "s");
    sharded.mutable_training()->set_shard_optimizer(true);
    Trainer s(sharded, world());
    s.load_checkpoint(saved);
    expect_same_checkpoint(saved, s.save_checkpoint(), "T=2 -> T=2 sharded");
    s.train_step();
    const std::string after = s.save_checkpoint();
    Trainer u(at(1, "u"), world());
    u.load_checkpoint(after);
    expect_same_checkpoint(after, u.save_checkpoint(), "T=2 sharded -> T=1");
  }
  // A checkpoint of another model is refused, naming the tensor and both shapes.
  {
    auto other = at(2, "e");
    other.mutable_model()->set_hidden_size(48);
    Trainer e(other, world());
    try {
      e.load_checkpoint(saved);
      ADD_FAILURE() << "a checkpoint of hidden_size 32 loaded into hidden_size 48";
    } catch (const Error& error) {
      EXPECT_NE(error.message().find("tensor 'model/embedding' is [64, 32]"), std::string::npos)
          << error.message();
      EXPECT_NE(error.message().find("expects [64, 48]"), std::string::npos) << error.message();
    }
  }
  world().barrier();
  // Not std::filesystem::remove_all, which crashes in the GPU build: see common/posix_fs.h.
  if (world().rank() == 0) posix_fs::remove_tree(dir);
}

}  // namespace
}  // namespace cadre::runtime
