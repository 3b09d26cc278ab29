// `cadre plan`: plans one step for given document lengths with the real planner, prints what each
// attention server computes and what balancing cost, and optionally writes the plan.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "scheduler/cost_model.h"
#include "scheduler/doc_lengths.h"
#include "scheduler/plan.h"
#include "scheduler/planner.h"

namespace cadre::launch {
namespace {

constexpr int kDefaultShownTasks = 6;

struct PlanArgs {
  std::string lengths;  // "a,b/c,d": ranks separated by '/', documents by ','
  bool pack = false;
  std::string out_path;
  std::string dump_path;
  int shown_tasks = kDefaultShownTasks;
  bool print_config = false;
};

std::string plan_help() {
  return "usage: cadre plan [--lengths L [--pack]] [--out FILE] [--dump FILE] "
         "[--show-tasks N]\n"
         "                  [--print-config] [--config FILE] [--set PATH=VALUE "
         "...]\n"
         "\n"
         "Plans one training step with the CAD scheduler (or the colocated "
         "baseline when\n"
         "training.attention=colocated) and prints the CA-tasks each attention "
         "server computes,\n"
         "the attention imbalance before and after planning, and the bytes "
         "moved.\n"
         "\n"
         "options:\n"
         "  --lengths L      document lengths in tokens: ranks separated by "
         "'/', documents by\n"
         "                   ',' (1000,2000/3000: rank 0 holds 1000 and 2000, "
         "rank 1 holds 3000;\n"
         "                   an empty group is an empty rank); K/M suffixes "
         "accepted (64K).\n"
         "                   cluster.num_gpus defaults to the number of ranks "
         "given.\n"
         "  --pack           read --lengths as one list (no '/') and pack it "
         "back to back into\n"
         "                   the ranks, data.context_length tokens each, "
         "splitting documents at\n"
         "                   rank boundaries (DistCA's sequential packing)\n"
         "  (no --lengths)   draw one global batch from the data section (data.distribution,\n"
         "                   data.seed, ...) and pack it like --pack\n"
         "  --out FILE       write the serialized plan (protobuf, "
         "cadre.plan.PlanProto) to FILE,\n"
         "                   atomically (a temporary file, then rename)\n"
         "  --dump FILE      write a full text dump: effective config, layout, "
         "tasks, server\n"
         "                   batches (cu_seqlens) and row transfers\n"
         "  --show-tasks N   tasks listed per server on the terminal (default "
         "6; 0 lists all)\n"
         "  --print-config   print the effective config (text format) and "
         "exit\n"
         "  -h, --help       this help\n"
         "\n"
         "Attention time is priced by the cost model "
         "(cluster.attention_calibration or the\n"
         "built-in table) for all layers of one pipeline stage, forward and "
         "backward.\n"
         "\n" +
         config_options_help();
}

bool wants_help(const Args& args) {
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") return true;
  }
  return false;
}

// Takes the value of option `name` at args[*i] ("--name V" or "--name=V"); false if not it.
bool take_value(const std::vector<std::string>& args, size_t* i, const std::string& name,
                std::string* value) {
  const std::string& a = args[*i];
  if (a == name) {
    CADRE_CHECK(*i + 1 < args.size(), name, " needs a value; see cadre plan --help");
    *value = args[++*i];
    return true;
  }
  if (a.rfind(name + "=", 0) == 0) {
    *value = a.substr(name.size() + 1);
    return true;
  }
  return false;
}

PlanArgs parse_plan_args(const std::vector<std::string>& rest) {
  PlanArgs p;
  for (size_t i = 0; i < rest.size(); ++i) {
    std::string value;
    if (take_value(rest, &i, "--lengths", &value)) {
      p.lengths = value;
    } else if (rest[i] == "--pack") {
      p.pack = true;
    } else if (take_value(rest, &i, "--out", &value)) {
      CADRE_CHECK(!value.empty(), "--out needs a file name");
      p.out_path = value;
    } else if (take_value(rest, &i, "--dump", &value)) {
      CADRE_CHECK(!value.empty(), "--dump needs a file name");
      p.dump_path = value;
    } else if (take_value(rest, &i, "--show-tasks", &value)) {
      char* end = nullptr;
      const long n = std::strtol(value.c_str(), &end, 10);
      CADRE_CHECK(!value.empty() && *end == '\0' && n >= 0 && n <= 1000000, "--show-tasks ", value,
                  " is not a count; accepted: an integer >= 0 "
                  "(0 lists all)");
      p.shown_tasks = static_cast<int>(n);
    } else if (rest[i] == "--print-config") {
      p.print_config = true;
    } else {
      CADRE_FAIL("unknown option \"", rest[i],
                 "\"; accepted: --lengths L, --pack, --out FILE, --dump FILE, "
                 "--show-tasks N, "
                 "--print-config, --config FILE, --set PATH=VALUE, --help");
    }
  }
  CADRE_CHECK(!p.pack || !p.lengths.empty(),
              "--pack needs --lengths; accepted: --lengths a,b,c --pack");
  return p;
}

// A document length: digits with an optional K (x1024) or M (x1048576) suffix.
int64_t parse_length(const std::string& text, size_t rank, size_t index) {
  std::string s = text;
  int64_t scale = 1;
  if (!s.empty() && (s.back() == 'K' || s.back() == 'k')) {
    scale = 1 << 10;
    s.pop_back();
  } else if (!s.empty() && (s.back() == 'M' || s.back() == 'm')) {
    scale = 1 << 20;
    s.pop_back();
  }
  const bool digits = !s.empty() && s.size() <= 12 &&
                      std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  const int64_t value = digits ? std::stoll(s) * scale : 0;
  CADRE_CHECK(value > 0, "--lengths: rank ", rank, " document ", index, " has length \"", text,
              "\"; accepted: a positive token count such as 4096 or 64K");
  return value;
}

std::vector<std::vector<int64_t>> parse_lengths(const std::string& text) {
  std::vector<std::vector<int64_t>> ranks(1);
  std::string item;
  auto flush = [&](bool end_of_rank) {
    if (!item.empty()) {
      ranks.back().push_back(parse_length(item, ranks.size() - 1, ranks.back().size()));
    } else if (!end_of_rank) {
      CADRE_FAIL("--lengths: empty document length in rank ", ranks.size() - 1,
                 "; accepted: lengths separated by ',' and ranks by '/', e.g. "
                 "1000,2000/3000");
    }
    item.clear();
  };
  for (char c : text) {
    if (c == ',') {
      flush(false);
    } else if (c == '/') {
      flush(true);
      ranks.emplace_back();
    } else if (c != ' ') {
      item += c;
    }
  }
  flush(true);
  return ranks;
}

int64_t sum(const std::vector<int64_t>& v) {
  int64_t total = 0;
  for (int64_t x : v) total += x;
  return total;
}

std::string format_bytes(int64_t bytes) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(2);
  if (bytes >= (int64_t{1} << 30)) {
    out << static_cast<double>(bytes) / (1 << 30) << " GiB";
  } else if (bytes >= (1 << 20)) {
    out << static_cast<double>(bytes) / (1 << 20) << " MiB";
  } else if (bytes >= (1 << 10)) {
    out << static_cast<double>(bytes) / (1 << 10) << " KiB";
  } else {
    out << bytes << " B";
  }
  return out.str();
}

// Milliseconds with about four significant digits, never in exponent notation.
std::string format_ms(double us) {
  const double ms = us / 1000.0;
  std::ostringstream out;
  out << std::fixed << std::setprecision(ms >= 100 ? 1 : ms >= 1 ? 3 : 5) << ms;
  return out.str();
}

// The ranks holding queries [q_begin, q_end) of a document: "@r3" or "@r3-4".
std::string owners_of(const scheduler::PlacedDocument& doc, int64_t q_begin, int64_t q_end) {
  int32_t first = -1, last = -1;
  for (const auto& piece : doc.pieces) {
    if (piece.doc_end <= q_begin || piece.doc_begin >= q_end) continue;
    if (first < 0) first = piece.rank;
    last = piece.rank;
  }
  if (first == last) return "@r" + std::to_string(first);
  return "@r" + std::to_string(first) + "-" + std::to_string(last);
}

// Attention time (forward + backward, all layers of one stage) of each server of a plan, in us.
std::vector<double> server_times_us(const scheduler::Plan& plan, const scheduler::CostModel& cost,
                                    int32_t layers) {
  std::vector<double> times(plan.server_ranks.size(), 0.0);
  for (const auto& task : plan.tasks) {
    times[task.server] += cost.attention_step_us(task.q_end - task.q_begin, task.q_end, layers);
  }
  return times;
}

double imbalance(const std::vector<double>& times) {
  if (times.empty()) return 1.0;
  double total = 0, most = 0;
  for (double t : times) {
    total += t;
    most = std::max(most, t);
  }
  return total > 0 ? most / (total / static_cast<double>(times.size())) : 1.0;
}

// Bytes each rank sends plus receives for one layer's forward dispatch (Q and K/V rows).
int64_t max_rank_bytes(const scheduler::Plan& plan, const scheduler::CostModel& cost,
                       int64_t* total) {
  std::vector<int64_t> per_rank(plan.world_size, 0);
  *total = 0;
  for (const auto& t : plan.transfers) {
    const int32_t server_rank = plan.server_ranks[t.server];
    if (server_rank == t.owner) continue;
    const int64_t bytes =
        t.q_rows() * cost.q_bytes_per_token() + t.kv_rows() * cost.kv_bytes_per_token();
    per_rank[t.owner] += bytes;
    per_rank[server_rank] += bytes;
    *total += bytes;
  }
  return per_rank.empty() ? 0 : *std::max_element(per_rank.begin(), per_rank.end());
}

std::string plan_text_dump(const scheduler::Plan& plan, const config::RunConfig& config) {
  std::ostringstream out;
  out << "# cadre plan: full dump\n# effective config:\n";
  std::istringstream config_text(config_to_text(config));
  for (std::string line; std::getline(config_text, line);) out << "#   " << line << "\n";
  const auto& layout = plan.layout;
  out << "\nlayout: " << layout.num_ranks << " worker ranks, world size " << plan.world_size
      << ", servers";
  for (int32_t r : plan.server_ranks) out << " " << r;
  out << "\n";
  for (int32_t r = 0; r < layout.num_ranks; ++r) {
    out << "  rank " << r << ": " << layout.tokens_per_rank[r] << " tokens\n";
  }
  out << "\ndocuments (id length: pieces rank[doc_begin, "
         "doc_end)@local_row):\n";
  for (size_t d = 0; d < layout.documents.size(); ++d) {
    const auto& doc = layout.documents[d];
    out << "  d" << d << " id " << doc.id << " length " << doc.length_tokens << ":";
    for (const auto& p : doc.pieces) {
      out << " r" << p.rank << "[" << p.doc_begin << "," << p.doc_end << ")@" << p.local_row;
    }
    out << "\n";
  }
  out << "\ntasks (document q[begin, end) kv[0, end) -> server):\n";
  for (size_t i = 0; i < plan.tasks.size(); ++i) {
    const auto& t = plan.tasks[i];
    out << "  t" << i << ": d" << t.document << " q[" << t.q_begin << "," << t.q_end << ") kv[0,"
        << t.q_end << ") -> server " << t.server << " (rank " << plan.server_ranks[t.server]
        << ")\n";
  }
  out << "\nserver batches:\n";
  for (size_t s = 0; s < plan.batches.size(); ++s) {
    const auto& b = plan.batches[s];
    out << "  server " << s << " (rank " << b.server_rank << "): q_rows " << b.q_rows
        << ", kv_rows " << b.kv_rows << ", max_seqlen_q " << b.max_seqlen_q << ", max_seqlen_k "
        << b.max_seqlen_k << "\n    tasks";
    for (int32_t t : b.tasks) out << " t" << t;
    out << "\n    cu_seqlens_q";
    for (int64_t x : b.cu_seqlens_q) out << " " << x;
    out << "\n    cu_seqlens_k";
    for (int64_t x : b.cu_seqlens_k) out << " " << x;
    out << "\n    kv prefixes (document tokens@kv_row):";
    for (const auto& p : b.prefixes) {
      out << " d" << p.document << ":" << p.prefix_tokens << "@" << p.kv_row;
    }
    out << "\n";
  }
  out << "\ntransfers (owner -> server; segments src_row->dst_row x rows):\n";
  for (const auto& t : plan.transfers) {
    out << "  r" << t.owner << " -> server " << t.server << " (rank " << plan.server_ranks[t.server]
        << "): q " << t.q_rows() << " rows, kv " << t.kv_rows() << " rows\n    q";
    for (const auto& seg : t.q) out << " " << seg.src_row << "->" << seg.dst_row << "x" << seg.rows;
    out << "\n    kv";
    for (const auto& seg : t.kv) {
      out << " " << seg.src_row << "->" << seg.dst_row << "x" << seg.rows;
    }
    out << "\n";
  }
  return out.str();
}

void print_plan(std::ostream& out, const scheduler::Plan& plan, const std::vector<double>& times_us,
                int shown_tasks) {
  double mean = 0;
  for (double t : times_us) mean += t;
  mean = times_us.empty() ? 0 : mean / static_cast<double>(times_us.size());
  std::vector<int64_t> q_tokens(plan.server_ranks.size(), 0),
      kv_tokens(plan.server_ranks.size(), 0);
  std::vector<std::vector<int32_t>> tasks_of(plan.server_ranks.size());
  for (size_t i = 0; i < plan.tasks.size(); ++i) {
    const auto& t = plan.tasks[i];
    q_tokens[t.server] += t.q_end - t.q_begin;
    kv_tokens[t.server] += t.q_end;
    tasks_of[t.server].push_back(static_cast<int32_t>(i));
  }
  out << "server  rank  tasks   q_tokens  kv_tokens    attn_ms  vs_mean  tasks: "
         "doc[q_begin,q_end)@owner\n";
  for (size_t s = 0; s < plan.server_ranks.size(); ++s) {
    out << std::setw(6) << s << std::setw(6) << plan.server_ranks[s] << std::setw(7)
        << tasks_of[s].size() << std::setw(11) << q_tokens[s] << std::setw(11) << kv_tokens[s]
        << std::setw(11) << format_ms(times_us[s]) << std::setw(9) << std::fixed
        << std::setprecision(3) << (mean > 0 ? times_us[s] / mean : 1.0) << " ";
    const size_t limit =
        shown_tasks == 0 ? tasks_of[s].size() : std::min<size_t>(tasks_of[s].size(), shown_tasks);
    for (size_t k = 0; k < limit; ++k) {
      const auto& t = plan.tasks[tasks_of[s][k]];
      out << " d" << t.document << "[" << t.q_begin << "," << t.q_end << ")"
          << owners_of(plan.layout.documents[t.document], t.q_begin, t.q_end);
    }
    if (limit < tasks_of[s].size()) out << " ... (+" << tasks_of[s].size() - limit << ")";
    out << "\n";
  }
}

}  // namespace

int run_plan(const Args& args) {
  if (wants_help(args)) {
    std::cout << plan_help();
    return 0;
  }
  std::vector<std::string> rest;
  config::RunConfig config = raw_config_from_args(args, &rest);
  const PlanArgs options = parse_plan_args(rest);

  // Documents per rank: given per rank, or one list packed into the ranks.
  const bool dedicated = config.scheduler().server_mode() == "dedicated";
  const int32_t dedicated_servers = dedicated ? config.scheduler().num_dedicated_servers() : 0;
  std::vector<std::vector<int64_t>> per_rank;
  if (!options.lengths.empty()) {
    per_rank = parse_lengths(options.lengths);
    CADRE_CHECK(!options.pack || per_rank.size() == 1,
                "--pack reads --lengths as one list, but it has ", per_rank.size(),
                " '/'-separated groups; accepted: --pack with a,b,c, or "
                "per-rank groups without "
                "--pack");
    if (!options.pack && !config.cluster().has_num_gpus()) {
      config.mutable_cluster()->set_num_gpus(static_cast<int32_t>(per_rank.size()) +
                                             dedicated_servers);
    }
  }
  finalize_config(config);
  if (options.print_config) {
    std::cout << config_to_text(config);
    return 0;
  }
  const int32_t world_size = config.cluster().num_gpus();
  const int32_t workers = world_size - dedicated_servers;
  // Without --lengths, one global batch drawn from the data section fills the workers.
  const bool drawn = options.lengths.empty();
  if (drawn) {
    per_rank.assign(1, scheduler::draw_global_batch(
                           config.data(), int64_t{workers} * config.data().context_length(),
                           config.data().seed()));
  }
  scheduler::Layout layout;
  int64_t given_tokens = 0;
  if (options.pack || drawn) {
    given_tokens = sum(per_rank[0]);
    layout = scheduler::pack_sequential(per_rank[0], workers, config.data().context_length());
  } else {
    CADRE_CHECK(static_cast<int32_t>(per_rank.size()) == workers, "--lengths gives ",
                per_rank.size(), " ranks but the cluster has ", workers,
                " worker ranks (cluster.num_gpus=", world_size,
                dedicated ? " minus scheduler.num_dedicated_servers" : "",
                "); accepted: as many '/'-separated groups as worker ranks, or --set "
                "cluster.num_gpus=",
                per_rank.size() + dedicated_servers);
    for (const auto& r : per_rank) given_tokens += sum(r);
    layout = scheduler::layout_from_rank_documents(per_rank);
  }

  const auto& cluster = config.cluster();
  const scheduler::CostModel cost(config.model(), cluster,
                                  scheduler::calibration_for(cluster, config.model()),
                                  scheduler::kv_shipping_for(config.scheduler()));
  const int32_t stage_layers = config.model().num_layers() / cluster.pipeline_parallel();

  std::vector<int32_t> server_ranks;
  for (int32_t r = 0; r < (dedicated ? dedicated_servers : workers); ++r) {
    server_ranks.push_back(dedicated ? workers + r : r);
  }
  const scheduler::PlannerOptions planner_options = scheduler::planner_options(config);

  const bool cad = config.training().attention() == "cad";
  scheduler::PlanStats stats;
  const auto start = std::chrono::steady_clock::now();
  scheduler::Plan plan =
      cad ? scheduler::plan_cad(layout, server_ranks, world_size, cost, planner_options, &stats)
          : scheduler::plan_colocated(layout);
  const double planning_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

  // "Before" is the colocated plan: every owner computes its own documents' attention.
  const scheduler::Plan colocated = cad ? scheduler::plan_colocated(layout) : plan;
  const std::vector<double> times_before = server_times_us(colocated, cost, stage_layers);
  const std::vector<double> times_after = server_times_us(plan, cost, stage_layers);
  int64_t total_bytes = 0;
  const int64_t max_bytes = max_rank_bytes(plan, cost, &total_bytes);

  int64_t placed_tokens = 0;
  for (int64_t t : layout.tokens_per_rank) placed_tokens += t;
  const auto& m = config.model();
  std::ostream& out = std::cout;
  out << "cadre plan: " << m.preset() << " (" << m.num_layers() << " layers, " << m.num_heads()
      << "/" << m.num_kv_heads() << " heads of " << m.head_dim() << "), " << workers
      << " worker ranks, " << server_ranks.size() << " servers ("
      << (cad ? config.scheduler().server_mode() : std::string("colocated")) << "), "
      << layout.documents.size() << " documents, " << placed_tokens << " tokens\n";
  if (drawn) {
    out << "documents drawn from data.distribution=\"" << config.data().distribution()
        << "\" (seed " << config.data().seed() << ") and packed " << config.data().context_length()
        << " tokens per rank\n";
  }
  if (placed_tokens < given_tokens && !drawn) {
    out << "note: " << given_tokens - placed_tokens
        << " tokens did not fit into the ranks (data.context_length="
        << config.data().context_length() << " each) and were dropped\n";
  }
  out << "strategy " << (cad ? "cad" : "colocated") << ": tolerance "
      << config.scheduler().tolerance() << ", min shard " << config.scheduler().min_shard_tokens()
      << " tokens, planned in " << std::fixed << std::setprecision(3) << planning_ms << " ms\n\n";
  print_plan(out, plan, times_after, options.shown_tasks);
  out << "\nattention imbalance (max/mean): before " << std::setprecision(3)
      << imbalance(times_before) << " -> after " << imbalance(times_after);
  if (cad) out << " (target <= " << 1.0 + config.scheduler().tolerance() << ")";
  out << "\n";
  out << "bytes moved per layer (forward Q + K/V): max rank " << format_bytes(max_bytes)
      << ", total " << format_bytes(total_bytes) << "\n";
  if (cad) {
    out << "tasks " << stats.tasks << ", documents split by the planner " << stats.splits << "\n";
  }

  if (!options.out_path.empty()) {
    write_file_atomically(options.out_path, scheduler::serialize_plan(plan));
    out << "wrote plan to " << options.out_path << "\n";
  }
  if (!options.dump_path.empty()) {
    write_file_atomically(options.dump_path, plan_text_dump(plan, config));
    out << "wrote text dump to " << options.dump_path << "\n";
  }
  return 0;
}

}  // namespace cadre::launch
