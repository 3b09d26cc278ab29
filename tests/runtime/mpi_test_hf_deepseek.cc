// cadre-mpi-ranks: 2
// training.init_from of a DeepSeek directory under tensor parallelism: every rank exports the
// same whole MLA model (T = 1, the same seed), then loads the directory into its tensor-parallel
// shards; each shard equals its slice of the whole parameter (heads of the query and
// up-projections, columns of the output projection; replicated latent projections and norms
// whole), with the rotary rows back in Cadre's order.
#include <gtest/gtest.h>
#include <torch/types.h>

#include "comm/mpi_transport.h"
#include "runtime/hf_weights.h"
#include "runtime/model.h"
#include "runtime/parameter_shards.h"
#include "runtime/tensor_parallel.h"
#include "tests/runtime/tiny_model.h"
#include "tests/temp_dir.h"

namespace cadre::runtime {
namespace {

comm::Transport& world() {
  static std::unique_ptr<comm::Transport> transport = comm::make_mpi_transport(120);
  return *transport;
}

TEST(HfDeepSeekTensorParallel, EachRankLoadsItsSliceOfTheExportedWeights) {
  ASSERT_EQ(world().size(), 2);
  TensorParallelGroup group(&world(), nullptr, /*sequence_parallel=*/false);
  for (int q_latent : {0, 12}) {
    const auto m = testing::mla_export_model(q_latent, /*tied=*/false);
    LlamaModel whole(m, 31);
    cadre::testing::TempDir dir;  // one per rank: both write the same files
    std::vector<std::pair<std::string, torch::Tensor>> weights;
    for (const auto& p : whole.parameters()) weights.emplace_back(p.name, p.value.detach());
    export_hf(weights, m, dir.path(), HfExportOptions());
    LlamaModel sharded(m, 32, torch::kCPU, &group);
    load_hf_weights(sharded, dir.path());
    ASSERT_EQ(sharded.parameters().size(), whole.parameters().size());
    int sliced = 0;
    for (size_t i = 0; i < whole.parameters().size(); ++i) {
      const NamedParameter& p = sharded.parameters()[i];
      ASSERT_EQ(p.name, whole.parameters()[i].name);
      const torch::Tensor expected = slice_shard(p, whole.parameters()[i].value);
      EXPECT_TRUE(torch::equal(p.value, expected))
          << p.name << " on rank " << world().rank() << " q_latent " << q_latent;
      if (p.value.numel() < whole.parameters()[i].value.numel()) ++sliced;
    }
    EXPECT_GT(sliced, 0) << "no parameter was split across the two ranks";
  }
}

}  // namespace
}  // namespace cadre::runtime
