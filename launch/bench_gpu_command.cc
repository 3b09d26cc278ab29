// `cadre bench kernel` and `cadre bench comm`: their usage text in every build, and in the CPU
// build a fallback that says they need the GPU build. The GPU build runs them from
// bench_gpu_command_gpu.cc.
#include "launch/bench_gpu_command.h"

#include <iostream>

#include "launch/commands.h"

namespace cadre::launch {

std::string bench_kernel_usage() {
  return "usage: cadre bench kernel [options]            (GPU build, one GPU)\n\n"
         "Fused core-attention kernel throughput (LibTorch FlashAttention-2, varlen, causal):\n"
         "batches of query shards of 128..8K tokens against prefixes up to --max-kv, beside\n"
         "whole documents of equal work; forward and backward TFLOP/s (FLOPs = 2 * causal\n"
         "query-key pairs * (q/k dim + v dim) * heads, backward 2.5x), ratio to whole\n"
         "documents and to the measured bf16 GEMM rate; then a calibration table for the\n"
         "scheduler's cost model.\n\n"
         "options:\n"
         "  --out FILE               write the results as JSON\n"
         "  --calibration-out FILE   write the calibration table (scheduler/data format)\n"
         "  --heads N                query heads (32)\n"
         "  --kv-heads N             key/value heads (8)\n"
         "  --head-dim N             64 or 128, or 192 with --v-head-dim 128 (128)\n"
         "  --v-head-dim N           value head dim when it differs (latent attention: 128)\n"
         "  --dtype bf16|fp16        (bf16)\n"
         "  --max-kv N               longest prefix in tokens (131072)\n"
         "  --work-pairs N           query-key pairs per timed batch (1073741824)\n"
         "  --kv-rows-cap N          key rows per batch at most, bounds memory (2097152)\n"
         "  --warmup N --repeats N   untimed and timed runs per batch (3, 10); median reported\n"
         "  --shards LIST            shard sizes of the table, comma-separated\n"
         "                           (128,256,512,1024,2048,8192)\n"
         "  --forward-split-max-queries N, --backward-split-max-queries N\n"
         "                           longest shard the flash kernel splits in each direction\n"
         "                           (2048, 2048; 0 = never; docs/gpu.md)\n"
         "  --prefix-chunk-keys N    forward prefix chunk length of the split kernels (32768)\n"
         "  --kernel K               the kernel the shard table and calibration run: flash,\n"
         "                           cudnn, cudnn-split (flash's split with cuDNN parts), auto\n"
         "                           (flash)\n"
         "  --compare                first compare cuDNN's fused attention with FlashAttention-2\n"
         "                           on whole documents (64K at head dims 128 and 64) and time\n"
         "                           the host cost of a cached-graph call\n"
         "  --compare-only           the comparison alone\n"
         "  --no-calibration         skip the calibration grid\n";
}

std::string bench_comm_usage() {
  return "usage: mpirun -np 2 cadre bench comm [options]   (GPU build, one GPU per rank)\n\n"
         "All-to-all-v bandwidth through Cadre's NCCL transport (grouped send/recv on its\n"
         "communication stream) against NCCL's own all-to-all (ncclAlltoAll), equal bytes to\n"
         "every peer, message sizes from --min-mib to --max-mib per rank. Times are CUDA events,\n"
         "median of repeats, slowest rank; bus bandwidth = bytes * (ranks - 1) / ranks / time.\n\n"
         "options:\n"
         "  --out FILE               write the results as JSON (rank 0)\n"
         "  --min-mib N --max-mib N  message sizes per rank, powers of two (1, 1024)\n"
         "  --warmup N --repeats N   (5, 20)\n"
         "  --timeout S              watchdog timeout in seconds (120)\n";
}

#ifndef CADRE_WITH_CUDA

namespace {

int needs_gpu_build(const Args& args, const std::string& which, const std::string& usage) {
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") {
      std::cout << usage;
      return 0;
    }
  }
  std::cerr << "cadre bench " << which
            << ": error: needs the GPU build (this cadre was built without CUDA LibTorch and "
               "NCCL); configure with CMAKE_PREFIX_PATH pointing at a CUDA LibTorch, see "
               "docs/gpu.md\n";
  return 1;
}

}  // namespace

int run_bench_kernel(const Args& args) {
  return needs_gpu_build(args, "kernel", bench_kernel_usage());
}

int run_bench_comm(const Args& args) { return needs_gpu_build(args, "comm", bench_comm_usage()); }

#endif  // CADRE_WITH_CUDA

}  // namespace cadre::launch
