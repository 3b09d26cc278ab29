// `cadre bench kernel` and `cadre bench comm` (GPU build): fused core-attention kernel throughput
// of query-shard batches against whole documents, and NCCL all-to-all-v bandwidth against NCCL's
// own all-to-all. CUDA-event timing after warm-up, medians of repeats, JSON records with device,
// versions and config.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime.h>
#include <mpi.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "attention_server/cudnn_kernel.h"
#include "attention_server/device_timing.h"
#include "attention_server/flash_kernel.h"
#include "comm/cuda_check.h"
#include "comm/nccl_transport.h"
#include "common/error.h"
#include "launch/bench_gpu_command.h"
#include "launch/commands.h"

namespace cadre::launch {
namespace {

// --key value options; flags without a value map to "1".
class Options {
 public:
  Options(const Args& args, const std::vector<std::string>& flags) {
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& arg = args[i];
      CADRE_CHECK(arg.rfind("--", 0) == 0, "unexpected argument '", arg,
                  "'; options start with -- (see --help)");
      std::string key = arg.substr(2);
      if (std::find(flags.begin(), flags.end(), key) != flags.end() || key == "help") {
        values_[key] = "1";
        continue;
      }
      CADRE_CHECK(i + 1 < args.size(), "option ", arg, " needs a value");
      values_[key] = args[++i];
    }
  }
  bool has(const std::string& key) const { return values_.count(key) > 0; }
  // A flag without a value; marks it as understood.
  bool flag(const std::string& key) {
    used_.push_back(key);
    return has(key);
  }
  std::string text(const std::string& key, const std::string& fallback) {
    used_.push_back(key);
    return has(key) ? values_.at(key) : fallback;
  }
  int64_t integer(const std::string& key, int64_t fallback) {
    used_.push_back(key);
    if (!has(key)) return fallback;
    try {
      size_t end = 0;
      int64_t value = std::stoll(values_.at(key), &end);
      if (end == values_.at(key).size()) return value;
    } catch (const std::exception&) {
    }
    CADRE_FAIL("--", key, " takes an integer; got '", values_.at(key), "'");
  }
  double real(const std::string& key, double fallback) {
    used_.push_back(key);
    if (!has(key)) return fallback;
    try {
      return std::stod(values_.at(key));
    } catch (const std::exception&) {
      CADRE_FAIL("--", key, " takes a number; got '", values_.at(key), "'");
    }
  }
  // Rejects options nobody asked for (typos).
  void check_all_used(const std::string& command) const {
    for (const auto& [key, value] : values_) {
      CADRE_CHECK(key == "help" || std::find(used_.begin(), used_.end(), key) != used_.end(),
                  "cadre bench ", command, ": unknown option --", key, " (see --help)");
    }
  }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> used_;
};

double median(std::vector<double> values) {
  CADRE_CHECK(!values.empty(), "median of no values");
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) >= 0x20) {
      out += c;
    }
  }
  return out + "\"";
}

std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  std::ostringstream out;
  out << std::setprecision(6) << value;
  return out.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  CADRE_CHECK(out.good(), "cannot write '", path, "'");
  out << text;
  CADRE_CHECK(out.good(), "writing '", path, "' failed");
}

struct DeviceInfo {
  std::string name;
  std::string cuda_runtime, cuda_driver, torch, nccl;
  int sm_count = 0;
  double memory_gib = 0;
};

DeviceInfo device_info(int device, const std::string& nccl) {
  cudaDeviceProp props{};
  CADRE_CUDA_CHECK(cudaGetDeviceProperties(&props, device));
  int runtime = 0, driver = 0;
  CADRE_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  CADRE_CUDA_CHECK(cudaDriverGetVersion(&driver));
  DeviceInfo info;
  info.name = props.name;
  info.sm_count = props.multiProcessorCount;
  info.memory_gib = static_cast<double>(props.totalGlobalMem) / (1 << 30);
  info.cuda_runtime = str_cat(runtime / 1000, ".", (runtime % 1000) / 10);
  info.cuda_driver = str_cat(driver / 1000, ".", (driver % 1000) / 10);
  info.torch = TORCH_VERSION;
  info.nccl = nccl;
  return info;
}

std::string device_json(const DeviceInfo& info) {
  return str_cat("{\"name\": ", json_string(info.name), ", \"sm_count\": ", info.sm_count,
                 ", \"memory_gib\": ", json_number(info.memory_gib),
                 ", \"cuda_runtime\": ", json_string(info.cuda_runtime),
                 ", \"cuda_driver\": ", json_string(info.cuda_driver),
                 ", \"libtorch\": ", json_string(info.torch),
                 ", \"nccl\": ", json_string(info.nccl), "}");
}

// Times `body` on the current stream with CUDA events: `warmup` untimed runs, then the median of
// `repeats` timed ones, in milliseconds of device time.
template <typename Body>
double time_median_ms(int warmup, int repeats, Body&& body) {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int i = 0; i < warmup; ++i) body();
  cudaEvent_t start = nullptr, stop = nullptr;
  CADRE_CUDA_CHECK(cudaEventCreate(&start));
  CADRE_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    // Not the host's launch latency, which the host cost line measures on its own.
    attention_server::cover_host_launches();
    CADRE_CUDA_CHECK(cudaEventRecord(start, stream));
    body();
    CADRE_CUDA_CHECK(cudaEventRecord(stop, stream));
    CADRE_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CADRE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  CADRE_CUDA_CHECK(cudaEventDestroy(start));
  CADRE_CUDA_CHECK(cudaEventDestroy(stop));
  return median(times);
}

// ------------------------------------------------------------------------------------------------
// bench kernel

using Sequences = std::vector<std::pair<int64_t, int64_t>>;  // (query tokens, key tokens)

// Query-key pairs under the bottom-right-aligned causal mask: q*kv - q(q-1)/2.
int64_t causal_pairs(int64_t q, int64_t kv) { return q * kv - q * (q - 1) / 2; }

int64_t total_pairs(const Sequences& sequences) {
  int64_t pairs = 0;
  for (auto [q, kv] : sequences) pairs += causal_pairs(q, kv);
  return pairs;
}

struct KernelConfig {
  int64_t heads = 32, kv_heads = 8, head_dim = 128;
  int64_t v_dim = 0;  // value head dim (0: head_dim); latent attention runs 192 / 128
  torch::ScalarType dtype = torch::kBFloat16;
  int64_t max_kv = 131072;
  int64_t work_pairs = int64_t{1} << 30;
  int64_t kv_rows_cap = int64_t{2} << 20;
  int warmup = 3, repeats = 10;
};

struct KernelTiming {
  int64_t sequences = 0, q_tokens = 0, kv_tokens = 0, pairs = 0;
  double forward_ms = 0, backward_ms = 0;
  double forward_tflops = 0, backward_tflops = 0;
};

KernelTiming time_kernel(attention_server::CoreAttentionKernel& kernel, const Sequences& sequences,
                         const KernelConfig& config, int warmup, int repeats) {
  const torch::Device device(torch::kCUDA, 0);
  std::vector<int64_t> cq{0}, ck{0};
  for (auto [q, kv] : sequences) {
    cq.push_back(cq.back() + q);
    ck.push_back(ck.back() + kv);
  }
  attention_server::VarlenBatch batch = attention_server::make_varlen_batch(cq, ck, device);
  KernelTiming timing;
  timing.sequences = static_cast<int64_t>(sequences.size());
  timing.q_tokens = cq.back();
  timing.kv_tokens = ck.back();
  timing.pairs = total_pairs(sequences);
  {
    auto opts = torch::TensorOptions().dtype(config.dtype).device(device);
    auto q = torch::randn({timing.q_tokens, config.heads, config.head_dim}, opts);
    auto k = torch::randn({timing.kv_tokens, config.kv_heads, config.head_dim}, opts);
    const int64_t v_dim = config.v_dim > 0 ? config.v_dim : config.head_dim;
    auto v = torch::randn({timing.kv_tokens, config.kv_heads, v_dim}, opts);
    auto dout = torch::randn({timing.q_tokens, config.heads, v_dim}, opts);
    attention_server::ForwardResult fwd;
    timing.forward_ms =
        time_median_ms(warmup, repeats, [&] { fwd = kernel.forward(q, k, v, batch, 0.0); });
    CADRE_CHECK(torch::isfinite(fwd.out).all().item<bool>(),
                "bench kernel: the forward output has non-finite values");
    timing.backward_ms = time_median_ms(
        warmup, repeats, [&] { kernel.backward(dout, q, k, v, fwd.out, fwd.lse, batch, 0.0); });
  }
  c10::cuda::CUDACachingAllocator::emptyCache();
  // QK^T over the query/key width and PV over the value width (4 d for equal widths).
  const double forward_flops =
      2.0 * static_cast<double>(timing.pairs) *
      (config.head_dim + (config.v_dim > 0 ? config.v_dim : config.head_dim)) * config.heads;
  timing.forward_tflops = forward_flops / (timing.forward_ms * 1e-3) / 1e12;
  timing.backward_tflops = 2.5 * forward_flops / (timing.backward_ms * 1e-3) / 1e12;
  return timing;
}

// Shards of `shard` query tokens, each the tail of a prefix spread evenly over [shard, max_kv],
// as many as the work and memory budgets allow.
Sequences shard_batch(int64_t shard, const KernelConfig& config) {
  const int64_t candidates = config.max_kv / shard;
  double mean_kv = 0.5 * static_cast<double>(shard) * (candidates + 1);
  double mean_pairs = shard * mean_kv - 0.5 * shard * (shard - 1);
  int64_t by_work = static_cast<int64_t>(static_cast<double>(config.work_pairs) / mean_pairs);
  int64_t by_memory = static_cast<int64_t>(static_cast<double>(config.kv_rows_cap) / mean_kv);
  int64_t count = std::max<int64_t>(1, std::min({candidates, by_work, by_memory}));
  Sequences sequences;
  for (int64_t i = 0; i < count; ++i) {
    int64_t j = count == 1 ? candidates
                           : 1 + static_cast<int64_t>(std::llround(static_cast<double>(i) *
                                                                   (candidates - 1) / (count - 1)));
    sequences.emplace_back(shard, shard * j);
  }
  return sequences;
}

// Whole documents (queries = keys) of one length, with about `pairs` query-key pairs in all.
Sequences whole_documents(int64_t pairs, int64_t max_kv) {
  int64_t length = std::min<int64_t>(max_kv, static_cast<int64_t>(std::sqrt(2.0 * pairs)));
  length = std::max<int64_t>(128, length / 128 * 128);
  int64_t count =
      std::max<int64_t>(1, std::llround(static_cast<double>(pairs) / causal_pairs(length, length)));
  return Sequences(count, {length, length});
}

// "128,2048" -> {128, 2048}: positive multiples of 128 (a whole number of query blocks).
std::vector<int64_t> parse_shard_sizes(const std::string& text) {
  std::vector<int64_t> sizes;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    const long long value = std::strtoll(item.c_str(), &end, 10);
    CADRE_CHECK(!item.empty() && end != nullptr && *end == '\0' && value >= 128 &&
                    value % 128 == 0,
                "bench kernel: --shards '", text, "': '", item,
                "' is not a shard size; accepted: comma-separated multiples of 128, e.g. "
                "128,2048");
    sizes.push_back(value);
  }
  CADRE_CHECK(!sizes.empty(), "bench kernel: --shards is empty; accepted: e.g. 128,2048");
  return sizes;
}

// bf16 GEMM rate on this GPU (8192^3), the ceiling the kernel is reported against.
double measure_gemm_tflops(torch::ScalarType dtype) {
  auto opts = torch::TensorOptions().dtype(dtype).device(torch::kCUDA, 0);
  auto a = torch::randn({8192, 8192}, opts), b = torch::randn({8192, 8192}, opts);
  double ms = time_median_ms(3, 10, [&] { torch::matmul(a, b); });
  return 2.0 * 8192.0 * 8192.0 * 8192.0 / (ms * 1e-3) / 1e12;
}

std::string timing_json(const KernelTiming& t) {
  return str_cat("\"sequences\": ", t.sequences, ", \"q_tokens\": ", t.q_tokens,
                 ", \"kv_tokens\": ", t.kv_tokens, ", \"pairs\": ", t.pairs,
                 ", \"forward_ms\": ", json_number(t.forward_ms),
                 ", \"backward_ms\": ", json_number(t.backward_ms),
                 ", \"forward_tflops\": ", json_number(t.forward_tflops),
                 ", \"backward_tflops\": ", json_number(t.backward_tflops));
}

std::string human_tokens(int64_t tokens) {
  return tokens >= 1024 && tokens % 1024 == 0 ? str_cat(tokens / 1024, "K") : str_cat(tokens);
}

// cuDNN's fused attention against FlashAttention-2 in the same run: one causal 64K document at
// head dims 128 (16/4 heads) and 64 (32/8 heads), fwd/bwd TFLOP/s and their ratios (issue
// targets: >= 1.6 / 1.5 at 128, >= 1.4 both at 64); and the host cost of one call once its
// graph is cached (200 forward calls on a one-tile batch, host wall time each, median).
struct KernelComparison {
  std::string json;
};

KernelComparison compare_kernels(const KernelConfig& base) {
  KernelComparison result;
  if (!attention_server::cudnn_kernel_built()) {
    std::cout << "kernel comparison skipped: " << attention_server::cudnn_kernel_unavailable_reason()
              << "\n\n";
    return result;
  }
  attention_server::FlashKernelOptions unsplit;
  unsplit.split_short_shards = false;
  auto flash = attention_server::make_flash_kernel(unsplit);
  auto cudnn = attention_server::make_kernel("cudnn");
  struct Case {
    int64_t heads, kv_heads, head_dim;
    Sequences sequences;
    const char* label;
    double fwd_target, bwd_target;
    int64_t v_dim = 0;
  };
  // A ProLong-like 64K fill-packed step of llama-1b (the documents of one step of
  // benchmarks/results/profiles/h200x1_1gpu_prolong_colocated.profile.json): padded shape
  // classes serve it, so it prices their idle tiles.
  Sequences prolong;
  for (int64_t n : {4286, 693, 2631, 1296, 1570, 1402, 3301, 2956, 2978, 1436, 1770, 1914, 2362,
                    1615, 2532, 859, 3464, 664, 600, 1633, 7481, 2087, 5908, 1748, 5306, 3044}) {
    prolong.emplace_back(n, n);
  }
  const std::vector<Case> cases = {
      {16, 4, 128, Sequences{{65536, 65536}}, "one 64K document, d 128, 16/4 heads", 1.6, 1.5},
      {32, 8, 64, Sequences{{65536, 65536}}, "one 64K document, d 64, 32/8 heads", 1.4, 1.4},
      {32, 8, 128, Sequences(8, {8192, 8192}), "8 documents of 8K, d 128, 32/8 heads", 0, 0},
      {32, 8, 128, Sequences(64, {1024, 1024}), "64 documents of 1K, d 128, 32/8 heads", 0, 0},
      {32, 32, 128, Sequences{{32768, 32768}}, "one 32K document, d 128, 32/32 heads", 0, 0},
      {32, 8, 64, prolong, "ProLong-like 64K step (26 documents), d 64, 32/8", 0, 0},
      {32, 8, 64, Sequences(64, {1024, 1024}), "64 documents of 1K, d 64, 32/8 heads", 0, 0},
      // Latent attention (DeepSeek-V2-Lite's 16 heads, expanded form): FlashAttention-2 needs
      // equal widths, so the flash kernel pads V to 192 (flash_kernel_gpu.cc).
      {16, 16, 192, Sequences{{65536, 65536}}, "one 64K document, MLA q/k 192 v 128, 16 heads",
       0, 0, 128},
  };
  std::cout << "cuDNN fused attention vs FlashAttention-2 (same run; TFLOP/s fwd / bwd)\n";
  std::ostringstream rows;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    KernelConfig config = base;
    config.heads = c.heads;
    config.kv_heads = c.kv_heads;
    config.head_dim = c.head_dim;
    config.v_dim = c.v_dim;
    KernelTiming f = time_kernel(*flash, c.sequences, config, base.warmup, base.repeats);
    KernelTiming d = time_kernel(*cudnn, c.sequences, config, base.warmup, base.repeats);
    const double fr = d.forward_tflops / f.forward_tflops, br = d.backward_tflops / f.backward_tflops;
    const bool met = fr >= c.fwd_target && br >= c.bwd_target;
    std::printf("  %-40s flash %5.0f / %5.0f  cudnn %5.0f / %5.0f  ratio %.2f / %.2f%s\n",
                c.label, f.forward_tflops, f.backward_tflops, d.forward_tflops,
                d.backward_tflops, fr, br,
                c.fwd_target > 0 ? (met ? "  (target met)" : "  (below target)") : "");
    std::fflush(stdout);
    rows << (i == 0 ? "" : ",\n") << "    {\"case\": " << json_string(c.label)
         << ", \"flash\": {" << timing_json(f) << "}, \"cudnn\": {" << timing_json(d)
         << "}, \"forward_ratio\": " << json_number(fr) << ", \"backward_ratio\": "
         << json_number(br) << ", \"forward_target\": " << json_number(c.fwd_target)
         << ", \"backward_target\": " << json_number(c.bwd_target) << "}";
  }
  // Host cost of a call with a cached graph.
  const torch::Device device(torch::kCUDA, 0);
  auto opts = torch::TensorOptions().dtype(base.dtype).device(device);
  auto q = torch::randn({128, 32, 128}, opts), k = torch::randn({128, 8, 128}, opts);
  attention_server::VarlenBatch batch =
      attention_server::make_varlen_batch({0, 128}, {0, 128}, device);
  for (int i = 0; i < 5; ++i) cudnn->forward(q, k, k, batch, 0.0);
  CADRE_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> host_us;
  for (int i = 0; i < 200; ++i) {
    const auto start = std::chrono::steady_clock::now();
    cudnn->forward(q, k, k, batch, 0.0);
    host_us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
            .count());
  }
  CADRE_CUDA_CHECK(cudaDeviceSynchronize());
  const double host = median(host_us);
  std::printf("  host cost of one cudnn forward call with its graph cached: %.1f us (target < 50)\n\n",
              host);
  result.json = str_cat("{\"cudnn_version\": ", json_string(attention_server::cudnn_kernel_version()),
                        ", \"cases\": [\n", rows.str(), "\n  ], \"host_us_per_call\": ",
                        json_number(host), "}");
  return result;
}

int bench_kernel(const Args& args) {
  Options options(args, {"no-calibration", "compare", "compare-only"});
  if (options.has("help")) {
    std::cout << bench_kernel_usage();
    return 0;
  }
  const std::string kernel_name = options.text("kernel", "flash");
  const bool compare_only = options.flag("compare-only");
  const bool compare = options.flag("compare") || compare_only;
  KernelConfig config;
  const std::string out_path = options.text("out", "");
  const std::string calibration_path = options.text("calibration-out", "");
  config.heads = options.integer("heads", config.heads);
  config.kv_heads = options.integer("kv-heads", config.kv_heads);
  config.head_dim = options.integer("head-dim", config.head_dim);
  config.v_dim = options.integer("v-head-dim", config.v_dim);
  const std::string dtype = options.text("dtype", "bf16");
  config.max_kv = options.integer("max-kv", config.max_kv);
  config.work_pairs = options.integer("work-pairs", config.work_pairs);
  config.kv_rows_cap = options.integer("kv-rows-cap", config.kv_rows_cap);
  config.warmup = static_cast<int>(options.integer("warmup", config.warmup));
  config.repeats = static_cast<int>(options.integer("repeats", config.repeats));
  const bool calibration = !options.flag("no-calibration");
  attention_server::FlashKernelOptions kernel_options;
  kernel_options.max_forward_split_queries = options.integer(
      "forward-split-max-queries", kernel_options.max_forward_split_queries);
  kernel_options.max_backward_split_queries = options.integer(
      "backward-split-max-queries", kernel_options.max_backward_split_queries);
  kernel_options.prefix_chunk_keys =
      options.integer("prefix-chunk-keys", kernel_options.prefix_chunk_keys);
  const std::vector<int64_t> shards =
      parse_shard_sizes(options.text("shards", "128,256,512,1024,2048,8192"));
  options.check_all_used("kernel");
  CADRE_CHECK(kernel_options.max_forward_split_queries >= 0 &&
                  kernel_options.max_backward_split_queries >= 0,
              "bench kernel: --forward-split-max-queries and --backward-split-max-queries must "
              "be >= 0 (0 = never split)");
  CADRE_CHECK(kernel_options.prefix_chunk_keys > 0, "bench kernel: --prefix-chunk-keys ",
              kernel_options.prefix_chunk_keys, " is not a chunk length; accepted: a positive "
              "number of keys");
  CADRE_CHECK(dtype == "bf16" || dtype == "fp16", "--dtype '", dtype, "'; accepted: bf16, fp16");
  config.dtype = dtype == "bf16" ? torch::kBFloat16 : torch::kHalf;
  CADRE_CHECK(config.heads > 0 && config.kv_heads > 0 && config.heads % config.kv_heads == 0,
              "--heads ", config.heads, " must be a positive multiple of --kv-heads ",
              config.kv_heads);
  CADRE_CHECK(config.max_kv >= 8192 && config.work_pairs > 0 && config.kv_rows_cap > 0 &&
                  config.repeats > 0 && config.warmup >= 0,
              "bench kernel: --max-kv must be >= 8192 and budgets and --repeats positive");
  for (int64_t shard : shards) {
    CADRE_CHECK(shard <= config.max_kv, "bench kernel: --shards has ", shard,
                " queries, more than --max-kv ", config.max_kv,
                "; accepted: shard sizes up to the longest prefix");
  }
  CADRE_CHECK(torch::cuda::is_available(), "bench kernel: no CUDA device is visible");
  CADRE_CUDA_CHECK(cudaSetDevice(0));

  CADRE_CHECK(kernel_name == "flash" || kernel_name == "cudnn" || kernel_name == "cudnn-split" ||
                  kernel_name == "auto",
              "bench kernel: --kernel '", kernel_name,
              "'; accepted: flash, cudnn, cudnn-split (the flash kernel's split on cuDNN), auto");
  std::unique_ptr<attention_server::CoreAttentionKernel> kernel;
  if (kernel_name == "flash" || kernel_name == "cudnn-split") {
    attention_server::FlashKernelOptions split_options = kernel_options;
    split_options.cudnn_parts = kernel_name == "cudnn-split";
    kernel = attention_server::make_flash_kernel(split_options);
  } else {
    kernel = attention_server::make_kernel(kernel_name);
  }
  attention_server::FlashKernelOptions unsplit;
  unsplit.split_short_shards = false;
  auto direct_kernel = attention_server::make_flash_kernel(unsplit);
  DeviceInfo info = device_info(0, "not used");
  const double gemm_tflops = measure_gemm_tflops(config.dtype);
  std::cout << "cadre bench kernel: " << info.name << ", LibTorch " << info.torch << ", CUDA "
            << info.cuda_runtime << "; " << dtype << " heads " << config.heads << "/"
            << config.kv_heads << " head_dim " << config.head_dim << "; measured " << dtype
            << " GEMM 8192^3: " << std::fixed << std::setprecision(0) << gemm_tflops
            << " TFLOP/s\n\n";
  KernelComparison comparison;
  if (compare) comparison = compare_kernels(config);
  if (compare_only) {
    if (!out_path.empty() && !comparison.json.empty()) {
      write_file(out_path, str_cat("{\n  \"benchmark\": \"cadre bench kernel --compare-only\",\n"
                                   "  \"device\": ", device_json(info), ",\n  \"comparison\": ",
                                   comparison.json, "\n}\n"));
      std::cout << "wrote " << out_path << "\n";
    }
    return 0;
  }
  if (kernel_name == "flash") {
    std::cout << "Shards run through the flash kernel as Cadre uses it (shards of up to "
              << kernel_options.max_forward_split_queries << " / "
              << kernel_options.max_backward_split_queries
              << " queries split into prefix and diagonal in forward / backward, backward with "
                 "GQA only; see docs/gpu.md); 'unsplit' is plain FlashAttention-2 on the same "
                 "batch.\n\n";
  } else {
    std::cout << "Shards run through the " << kernel->name()
              << " kernel (whole documents too); 'unsplit' is plain FlashAttention-2 on the same "
                 "batch.\n\n";
  }
  std::cout << "shard  shards  max_kv   pairs(M) | fwd TF/s  bwd TF/s | unsplit fwd  bwd | whole "
               "docs   fwd TF/s  bwd TF/s | fwd ratio  bwd ratio | fwd/GEMM\n";

  std::ostringstream rows;
  bool all_targets_met = true;
  for (size_t i = 0; i < shards.size(); ++i) {
    Sequences shard_seqs = shard_batch(shards[i], config);
    KernelTiming shard = time_kernel(*kernel, shard_seqs, config, config.warmup, config.repeats);
    KernelTiming direct =
        time_kernel(*direct_kernel, shard_seqs, config, config.warmup, config.repeats);
    Sequences whole_seqs = whole_documents(shard.pairs, config.max_kv);
    KernelTiming whole = time_kernel(*kernel, whole_seqs, config, config.warmup, config.repeats);
    double fwd_ratio = shard.forward_tflops / whole.forward_tflops;
    double bwd_ratio = shard.backward_tflops / whole.backward_tflops;
    bool met = fwd_ratio >= 0.9 && bwd_ratio >= 0.8;
    all_targets_met = all_targets_met && met;
    std::printf(
        "%5s  %6lld  %6s  %9.1f | %8.1f  %8.1f | %11.1f %5.1f | %3lld x %-5s  %8.1f  %8.1f | "
        "%8.2f  %9.2f | %7.2f %s\n",
        human_tokens(shards[i]).c_str(), static_cast<long long>(shard.sequences),
        human_tokens(shard_seqs.back().second).c_str(), shard.pairs / 1e6, shard.forward_tflops,
        shard.backward_tflops, direct.forward_tflops, direct.backward_tflops,
        static_cast<long long>(whole.sequences),
        human_tokens(whole_seqs[0].first).c_str(), whole.forward_tflops, whole.backward_tflops,
        fwd_ratio, bwd_ratio, shard.forward_tflops / gemm_tflops, met ? "" : "(below target)");
    std::fflush(stdout);
    rows << (i == 0 ? "" : ",\n") << "    {\"shard_tokens\": " << shards[i]
         << ", \"min_kv\": " << shard_seqs.front().second
         << ", \"max_kv\": " << shard_seqs.back().second << ",\n     \"shards\": {"
         << timing_json(shard) << "},\n     \"shards_unsplit\": {" << timing_json(direct)
         << "},\n     \"whole_documents\": {\"length\": " << whole_seqs[0].first << ", "
         << timing_json(whole) << "},\n     \"forward_ratio\": " << json_number(fwd_ratio)
         << ", \"backward_ratio\": " << json_number(bwd_ratio)
         << ", \"forward_fraction_of_gemm\": " << json_number(shard.forward_tflops / gemm_tflops)
         << ", \"targets_met\": " << (met ? "true" : "false") << "}";
  }
  std::cout << "\ntargets (shards >= 128 tokens keep >= 90% of whole-document forward and >= 80% "
               "of backward throughput): "
            << (all_targets_met ? "met" : "NOT met for every shard size") << "\n";

  // Calibration grid: identical shards of q tokens against kv-token prefixes.
  std::ostringstream points;
  if (calibration) {
    std::cout << "\ncalibration (q_tokens x kv_tokens: fwd / bwd TFLOP/s)\n";
    const std::vector<int64_t> qs = {128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
    const std::vector<int64_t> kvs = {1024, 4096, 16384, 65536, 131072};
    // Smaller batches than the table above: the backward of a GQA batch holds gradients of every
    // query head for every key row (fp32), so key rows are capped at 512K here.
    KernelConfig small = config;
    small.work_pairs = int64_t{1} << 28;
    small.kv_rows_cap = std::min<int64_t>(config.kv_rows_cap, int64_t{1} << 19);
    bool first = true;
    for (int64_t q : qs) {
      std::vector<int64_t> row = {q};
      for (int64_t kv : kvs) {
        if (kv > q && kv <= config.max_kv) row.push_back(kv);
      }
      std::cout << "  q " << std::setw(5) << human_tokens(q) << ":";
      for (int64_t kv : row) {
        // At most 256 sequences: LibTorch's varlen backward sizes some scratch by batch x
        // longest sequence (2048 shards of 128 x 1K asked it for 64 GiB).
        int64_t count = std::max<int64_t>(1, std::min({small.work_pairs / causal_pairs(q, kv),
                                                       small.kv_rows_cap / kv, int64_t{256}}));
        KernelTiming t = time_kernel(*kernel, Sequences(count, {q, kv}), small, 2, 5);
        std::cout << "  " << human_tokens(kv) << " " << std::setprecision(0) << t.forward_tflops
                  << "/" << t.backward_tflops;
        std::cout.flush();
        points << (first ? "" : ",\n") << "    {\"q_tokens\": " << q << ", \"kv_tokens\": " << kv
               << ", \"forward_tflops\": " << json_number(t.forward_tflops)
               << ", \"backward_tflops\": " << json_number(t.backward_tflops) << "}";
        first = false;
      }
      std::cout << "\n";
    }
  }

  const std::string device_label =
      kernel_name == "flash"
          ? str_cat(info.name, " / LibTorch ", info.torch,
                    " FlashAttention-2 through Cadre's flash kernel (short shards split; ", dtype,
                    ")")
          : str_cat(info.name, " / cuDNN ", attention_server::cudnn_kernel_version(),
                    " fused attention through Cadre's ", kernel_name, " kernel (", dtype, ")");
  const attention_server::KernelCounters counters = kernel->counters();
  std::cout << "\n" << kernel->name() << " kernel: " << counters.calls << " calls, "
            << counters.graphs_built << " graphs built (" << std::setprecision(1) << std::fixed
            << counters.graph_build_ms << " ms), " << counters.graph_cache_hits
            << " cache hits, " << counters.fallback_calls << " fallback calls, "
            << counters.flash_calls << " calls on flash, " << counters.choices_measured
            << " shape classes measured\n";
  // scheduler/calibration.proto's JSON (unknown fields are rejected there, so the details that
  // have no field of their own go into "source").
  const std::string source = str_cat(
      "cadre bench kernel: ", dtype, ", ", config.heads, " query heads, ", config.kv_heads,
      " KV heads; each point a fused batch of identical shards of q_tokens queries, each the tail "
      "of a kv_tokens prefix (up to 2^28 query-key pairs, 512K key rows, 256 sequences); median "
      "of 5 after 2 warm-up runs; split limits ", kernel_options.max_forward_split_queries,
      " (forward) / ", kernel_options.max_backward_split_queries, " (backward) queries");
  std::string calibration_json = str_cat(
      "{\n  \"device\": ", json_string(device_label), ",\n  \"source\": ", json_string(source),
      ",\n  \"heads\": ", config.heads, ",\n  \"kv_heads\": ", config.kv_heads,
      ",\n  \"head_dim\": ", config.head_dim, ",\n  \"points\": [\n", points.str(),
      "\n  ]\n}\n");
  if (!out_path.empty()) {
    std::string json = str_cat(
        "{\n  \"benchmark\": \"cadre bench kernel\",\n  \"kernel\": ", json_string(kernel_name),
        ",\n  \"graphs\": {\"built\": ", counters.graphs_built, ", \"cache_hits\": ",
        counters.graph_cache_hits, ", \"build_ms\": ", json_number(counters.graph_build_ms),
        ", \"fallback_calls\": ", counters.fallback_calls, ", \"flash_calls\": ",
        counters.flash_calls, ", \"choices_measured\": ", counters.choices_measured,
        "},\n  \"comparison\": ",
        comparison.json.empty() ? std::string("null") : comparison.json, ",\n  \"device\": ",
        device_json(info), ",\n  \"config\": {\"dtype\": ", json_string(dtype),
        ", \"heads\": ", config.heads, ", \"kv_heads\": ", config.kv_heads,
        ", \"head_dim\": ", config.head_dim, ", \"max_kv\": ", config.max_kv,
        ", \"work_pairs\": ", config.work_pairs, ", \"kv_rows_cap\": ", config.kv_rows_cap,
        ", \"warmup\": ", config.warmup, ", \"repeats\": ", config.repeats,
        ", \"forward_split_max_queries\": ", kernel_options.max_forward_split_queries,
        ", \"backward_split_max_queries\": ", kernel_options.max_backward_split_queries,
        ", \"flops\": \"forward 4 * causal pairs * head_dim * heads; backward 2.5x forward\"},\n"
        "  \"gemm_tflops_8192\": ",
        json_number(gemm_tflops),
        ",\n  \"targets\": {\"forward_ratio\": 0.9, \"backward_ratio\": 0.8, \"met\": ",
        all_targets_met ? "true" : "false",
        "},\n  \"schemas\": ", json_string(attention_server::flash_kernel_schemas()),
        ",\n  \"shard_batches\": [\n", rows.str(), "\n  ],\n  \"calibration\": ", calibration_json,
        "}\n");
    write_file(out_path, json);
    std::cout << "wrote " << out_path << "\n";
  }
  if (!calibration_path.empty() && calibration) {
    write_file(calibration_path, calibration_json);
    std::cout << "wrote " << calibration_path << "\n";
  }
  return 0;
}

// ------------------------------------------------------------------------------------------------
// bench comm

struct CommRow {
  int64_t bytes = 0;
  double ours_us = 0, nccl_us = 0;
};

// Median over repeats of one operation's time on the compute stream, then the slowest rank.
template <typename Issue>
double time_collective_us(comm::NcclTransport& transport, int warmup, int repeats, Issue&& issue) {
  cudaStream_t stream = static_cast<cudaStream_t>(transport.compute_stream());
  cudaEvent_t start = nullptr, stop = nullptr;
  CADRE_CUDA_CHECK(cudaEventCreate(&start));
  CADRE_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int i = 0; i < warmup + repeats; ++i) {
    CADRE_CUDA_CHECK(cudaStreamSynchronize(stream));
    MPI_Barrier(MPI_COMM_WORLD);
    CADRE_CUDA_CHECK(cudaEventRecord(start, stream));
    issue()->wait();
    CADRE_CUDA_CHECK(cudaEventRecord(stop, stream));
    CADRE_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CADRE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (i >= warmup) times.push_back(ms * 1e3);
  }
  CADRE_CUDA_CHECK(cudaEventDestroy(start));
  CADRE_CUDA_CHECK(cudaEventDestroy(stop));
  double mine = median(times), slowest = 0;
  MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest;
}

int bench_comm(const Args& args) {
  Options options(args, {});
  if (options.has("help")) {
    std::cout << bench_comm_usage();
    return 0;
  }
  const std::string out_path = options.text("out", "");
  const int64_t min_mib = options.integer("min-mib", 1);
  const int64_t max_mib = options.integer("max-mib", 1024);
  const int warmup = static_cast<int>(options.integer("warmup", 5));
  const int repeats = static_cast<int>(options.integer("repeats", 20));
  comm::NcclOptions nccl_options;
  nccl_options.timeout_seconds = options.real("timeout", 120);
  options.check_all_used("comm");
  CADRE_CHECK(min_mib > 0 && max_mib >= min_mib && repeats > 0 && warmup >= 0,
              "bench comm: need 0 < --min-mib <= --max-mib and --repeats > 0");

  auto transport = comm::make_nccl_transport(nccl_options);
  const int rank = transport->rank(), size = transport->size();
  CADRE_CHECK(size >= 2,
              "bench comm: run it with at least 2 ranks (mpirun -np 2 cadre bench "
              "comm); got ",
              size);
  DeviceInfo info = device_info(transport->device(), transport->nccl_version());
  const int64_t max_bytes = max_mib << 20;
  void* send = nullptr;
  void* recv = nullptr;
  CADRE_CUDA_CHECK(cudaMalloc(&send, max_bytes));
  CADRE_CUDA_CHECK(cudaMalloc(&recv, max_bytes));
  CADRE_CUDA_CHECK(cudaMemset(send, 0x5A + rank, max_bytes));
  CADRE_CUDA_CHECK(cudaDeviceSynchronize());

  if (rank == 0) {
    std::cout << "cadre bench comm: " << size << " ranks, " << info.name << ", NCCL " << info.nccl
              << ", CUDA " << info.cuda_runtime << "; equal bytes to every peer\n\n"
              << "   size/rank |  cadre us  NCCL us | cadre algbw  busbw GB/s | NCCL algbw  busbw "
                 "GB/s | cadre/NCCL\n";
  }
  std::vector<CommRow> rows;
  bool target_met = true;
  for (int64_t mib = min_mib; mib <= max_mib; mib *= 2) {
    CommRow row;
    row.bytes = mib << 20;
    const int64_t per_peer = row.bytes / size;
    comm::AllToAllLayout layout;
    for (int peer = 0; peer < size; ++peer) {
      layout.send_counts.push_back(per_peer);
      layout.send_displs.push_back(peer * per_peer);
      layout.recv_counts.push_back(per_peer);
      layout.recv_displs.push_back(peer * per_peer);
    }
    row.ours_us = time_collective_us(*transport, warmup, repeats,
                                     [&] { return transport->all_to_all_v(send, recv, layout); });
    row.nccl_us = time_collective_us(*transport, warmup, repeats, [&] {
      return transport->all_to_all_equal(send, recv, per_peer);
    });
    rows.push_back(row);
    double bus = static_cast<double>(size - 1) / size;
    double ours_alg = row.bytes / (row.ours_us * 1e-6) / 1e9;
    double nccl_alg = row.bytes / (row.nccl_us * 1e-6) / 1e9;
    double ratio = row.nccl_us / row.ours_us;
    if (mib >= 64 && ratio < 0.9) target_met = false;
    if (rank == 0) {
      std::printf("%8lld MiB | %9.1f %8.1f | %11.1f %6.1f      | %10.1f %6.1f      | %8.3f\n",
                  static_cast<long long>(mib), row.ours_us, row.nccl_us, ours_alg, ours_alg * bus,
                  nccl_alg, nccl_alg * bus, ratio);
      std::fflush(stdout);
    }
  }
  CADRE_CUDA_CHECK(cudaFree(send));
  CADRE_CUDA_CHECK(cudaFree(recv));
  if (rank == 0) {
    std::cout << "\ntarget (cadre all-to-all-v >= 90% of NCCL's all-to-all at >= 64 MiB): "
              << (target_met ? "met" : "NOT met") << "\n";
  }
  if (rank == 0 && !out_path.empty()) {
    std::ostringstream json;
    json << "{\n  \"benchmark\": \"cadre bench comm\",\n  \"ranks\": " << size
         << ",\n  \"device\": " << device_json(info) << ",\n  \"config\": {\"warmup\": " << warmup
         << ", \"repeats\": " << repeats
         << ", \"layout\": \"equal bytes to every peer (self included)\", \"timing\": \"CUDA "
            "events on the compute stream, median of repeats, slowest rank\", \"busbw\": "
            "\"bytes * (ranks - 1) / ranks / time\", \"baseline\": \"ncclAlltoAll\"},\n"
         << "  \"target\": {\"ratio_at_64MiB_and_above\": 0.9, \"met\": "
         << (target_met ? "true" : "false") << "},\n  \"rows\": [\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const CommRow& r = rows[i];
      double bus = static_cast<double>(size - 1) / size;
      double ours_alg = r.bytes / (r.ours_us * 1e-6) / 1e9;
      double nccl_alg = r.bytes / (r.nccl_us * 1e-6) / 1e9;
      json << "    {\"bytes_per_rank\": " << r.bytes << ", \"cadre_us\": " << json_number(r.ours_us)
           << ", \"nccl_us\": " << json_number(r.nccl_us)
           << ", \"cadre_algbw_gbps\": " << json_number(ours_alg)
           << ", \"cadre_busbw_gbps\": " << json_number(ours_alg * bus)
           << ", \"nccl_algbw_gbps\": " << json_number(nccl_alg)
           << ", \"nccl_busbw_gbps\": " << json_number(nccl_alg * bus)
           << ", \"ratio\": " << json_number(r.nccl_us / r.ours_us) << "}"
           << (i + 1 < rows.size() ? ",\n" : "\n");
    }
    json << "  ]\n}\n";
    write_file(out_path, json.str());
    std::cout << "wrote " << out_path << "\n";
  }
  transport.reset();
  return 0;
}

}  // namespace

int run_bench_kernel(const Args& args) { return bench_kernel(args); }
int run_bench_comm(const Args& args) { return bench_comm(args); }

}  // namespace cadre::launch
