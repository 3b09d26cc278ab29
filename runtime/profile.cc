// Joins a step's timeline with the trainer's record of it (documents, plans, buckets) into the
// profile records of scheduler/profile.proto, and gathers and writes them.
#include "runtime/profile.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <map>
#include <regex>

#include "common/atomic_file.h"
#include "common/error.h"
#include "runtime/fused_ops.h"
#include "scheduler/step_model.h"

namespace cadre::runtime {
namespace {

struct ParsedName {
  std::string kind, direction;
  int layer = -1;
  int nano = -1;  // 0 = A, 1 = B, -1 none
};

// Compute span names of the step executor and trainer: "L3 qkv A", "L3 out+mlp bwd B",
// "L3 qkv recompute", "embed A", "embed bwd", "head+loss B", "optimizer step".
bool parse_compute_name(const std::string& name, ParsedName* out) {
  static const std::regex layer(R"(^L(\d+) (qkv|out\+mlp)( bwd| recompute)?( A| B)?$)");
  static const std::regex embed(R"(^embed( bwd)?( A| B)?$)");
  static const std::regex head(R"(^head\+loss( A| B)?$)");
  std::smatch m;
  auto nano = [](const std::ssub_match& s) { return !s.matched ? -1 : (s.str() == " A" ? 0 : 1); };
  if (std::regex_match(name, m, layer)) {
    out->layer = std::stoi(m[1].str());
    out->kind = m[2].str() == "qkv" ? "qkv" : "out_mlp";
    out->direction = !m[3].matched ? "forward" : (m[3].str() == " bwd" ? "backward" : "recompute");
    out->nano = nano(m[4]);
    return true;
  }
  if (std::regex_match(name, m, embed)) {
    out->kind = "embedding";
    out->direction = m[1].matched ? "backward" : "forward";
    out->nano = nano(m[2]);
    return true;
  }
  if (std::regex_match(name, m, head)) {
    out->kind = "head_loss";
    out->direction = "step";
    out->nano = nano(m[1]);
    return true;
  }
  if (name == kOptimizerSpan) {
    out->kind = "optimizer";
    out->direction = "step";
    return true;
  }
  return false;
}

}  // namespace

profile::ProfileRankStep rank_step_profile(const config::RunConfig& config, int rank,
                                           int64_t element_bytes,
                                           const std::vector<comm::Span>& spans,
                                           const StepRecord& record) {
  const auto& model = config.model();
  const int layers = model.num_layers();
  const int nano_count = std::max(1, record.nano_count);
  const int tp = std::max(1, config.cluster().tensor_parallel());
  const int64_t q_bytes =
      static_cast<int64_t>(model.num_heads() / tp) * model.head_dim() * element_bytes;
  const int64_t kv_bytes =
      2 * std::max<int64_t>(1, model.num_kv_heads() / tp) * model.head_dim() * element_bytes;
  CADRE_CHECK(!record.nanos.empty() && record.nanos.size() % nano_count == 0,
              "profile: the step record has ", record.nanos.size(), " nano-batches for ",
              nano_count, " per micro-batch; accepted: a positive multiple");
  const int micros = static_cast<int>(record.nanos.size()) / nano_count;

  profile::ProfileRankStep out;
  out.set_rank(rank);
  std::vector<int64_t> tokens(record.nanos.size(), 0);
  for (size_t i = 0; i < record.nanos.size(); ++i) {
    const NanoRecord& n = record.nanos[i];
    auto* nb = out.add_nano_batches();
    nb->set_micro_batch(n.micro_batch);
    nb->set_nano(n.nano);
    for (int64_t len : n.doc_lengths) {
      nb->add_doc_lengths(len);
      tokens[i] += len;
    }
    nb->set_tokens(tokens[i]);
  }

  // Occurrence counters: the k-th span of one name belongs to micro-batch k (segments), or the
  // k-th of a kind follows the executor's order (attention, exchanges, buckets).
  std::map<std::string, int> seen;
  int attention_forward = 0, attention_backward = 0, buckets = 0;
  std::map<std::string, int> exchange_seen;
  for (const comm::Span& s : spans) {
    const double us = std::max(0.0, s.end_us - s.start_us);
    if (s.lane == comm::Lane::kCompute) {
      ParsedName p;
      if (parse_compute_name(s.name, &p)) {
        const int micro = seen[s.name]++;
        CADRE_CHECK(p.layer < layers, "profile: span '", s.name, "' names layer ", p.layer,
                    " but the model has ", layers, " layers");
        auto* seg = out.add_segments();
        seg->set_name(s.name);
        seg->set_kind(p.kind);
        seg->set_direction(p.direction);
        seg->set_layer(p.layer);
        seg->set_start_us(s.start_us);
        seg->set_us(us);
        if (p.kind == "optimizer") {
          seg->set_nano(-1);
          seg->set_tokens(0);
          continue;
        }
        const int j = p.nano < 0 ? 0 : p.nano;
        CADRE_CHECK(j < nano_count && micro < micros, "profile: span '", s.name,
                    "' occurs more often than the step's ", micros, " micro-batch(es) of ",
                    nano_count, " nano-batch(es) allow");
        const int index = micro * nano_count + j;
        seg->set_nano(index);
        seg->set_tokens(tokens[index]);
        continue;
      }
      const bool forward = s.name.rfind("attention fwd", 0) == 0;
      const bool backward = s.name.rfind("attention bwd", 0) == 0;
      if (!forward && !backward) {
        auto* seg = out.add_segments();
        seg->set_name(s.name);
        seg->set_kind("other");
        seg->set_direction("step");
        seg->set_layer(-1);
        seg->set_nano(-1);
        seg->set_start_us(s.start_us);
        seg->set_us(us);
        continue;
      }
      // Executor order per micro-batch: forward layer-major 0..L-1, backward L-1..0, nano-minor.
      int& counter = forward ? attention_forward : attention_backward;
      const int k = counter++;
      const int per_micro = layers * nano_count;
      const int micro = k / per_micro, within = k % per_micro;
      CADRE_CHECK(micro < micros, "profile: more '", s.name, "' spans (", k + 1,
                  ") than layers x nano-batches x micro-batches (", per_micro * micros, ")");
      const int layer = forward ? within / nano_count : layers - 1 - within / nano_count;
      const int index = micro * nano_count + within % nano_count;
      const NanoRecord& n = record.nanos[index];
      auto* a = out.add_attention();
      a->set_direction(forward ? "forward" : "backward");
      a->set_where(s.name.find("(server)") != std::string::npos ? "server" : "local");
      a->set_layer(layer);
      a->set_nano(index);
      a->set_start_us(s.start_us);
      a->set_us(us);
      if (n.dispatched) {
        const auto& servers = n.plan.server_ranks;
        const auto it = std::find(servers.begin(), servers.end(), rank);
        CADRE_CHECK(it != servers.end(), "profile: rank ", rank,
                    " recorded a server attention span but is not a server of its plan");
        const auto& batch = n.plan.batches[it - servers.begin()];
        for (int32_t t : batch.tasks) {
          const auto& task = n.plan.tasks[t];
          auto* shape = a->add_shapes();
          shape->set_q_tokens(task.q_end - task.q_begin);
          shape->set_kv_tokens(task.q_end);
        }
      } else {
        for (int64_t len : n.doc_lengths) {
          auto* shape = a->add_shapes();
          shape->set_q_tokens(len);
          shape->set_kv_tokens(len);
        }
      }
      continue;
    }
    // Communication lane.
    if (s.name == "grad all-reduce") {
      const int k = buckets++;
      auto* b = out.add_gradient_buckets();
      const int nb = static_cast<int>(record.bucket_bytes.size());
      b->set_index(nb > 0 ? k % nb : k);
      b->set_bytes(nb > 0 ? record.bucket_bytes[k % nb] : 0);
      b->set_start_us(s.start_us);
      b->set_us(us);
      continue;
    }
    if (s.name.rfind("a2a ", 0) != 0) continue;
    const bool forward = s.name.rfind("a2a fwd", 0) == 0;
    const bool to_servers = s.name.size() >= 4 && s.name.compare(s.name.size() - 4, 4, " out") == 0;
    const bool with_kv = forward == to_servers;  // q,kv out and dq,dkv back carry K/V rows
    // The k-th span of this name is the k-th (micro, layer, nano) whose stage moves bytes, in
    // executor order.
    const int k = exchange_seen[s.name]++;
    int found = -1, found_layer = -1;
    scheduler::StageBytes bytes;
    int count = 0;
    for (int micro = 0; micro < micros && found < 0; ++micro) {
      for (int step = 0; step < layers && found < 0; ++step) {
        for (int j = 0; j < nano_count && found < 0; ++j) {
          const int index = micro * nano_count + j;
          const NanoRecord& n = record.nanos[index];
          if (!n.dispatched) continue;
          const scheduler::StageBytes b =
              scheduler::exchange_stage_bytes(n.plan, rank, to_servers, with_kv, q_bytes, kv_bytes);
          if (b.sent + b.received == 0) continue;
          if (count++ == k) {
            found = index;
            found_layer = forward ? step : layers - 1 - step;
            bytes = b;
          }
        }
      }
    }
    CADRE_CHECK(found >= 0, "profile: exchange span '", s.name, "' number ", k + 1,
                " has no nano-batch of the step's plans that moves bytes in that stage");
    auto* e = out.add_exchanges();
    e->set_name(s.name);
    e->set_direction(forward ? "forward" : "backward");
    e->set_stage(to_servers ? "out" : "back");
    e->set_layer(found_layer);
    e->set_nano(found);
    e->set_sent_bytes(bytes.sent);
    e->set_received_bytes(bytes.received);
    e->set_start_us(s.start_us);
    e->set_us(us);
  }
  // Dedicated attention servers are the last ranks; they run the executor's spans on empty inputs.
  const bool dedicated = config.scheduler().server_mode() == "dedicated";
  const int workers = config.cluster().num_gpus() -
                      (dedicated ? config.scheduler().num_dedicated_servers() : 0);
  out.set_worker(rank < workers);
  out.set_compute_busy_us(comm::busy_us(spans, comm::Lane::kCompute));
  out.set_exposed_communication_us(comm::exposed_communication_us(spans));
  return out;
}

#ifndef CADRE_WITH_CUDA
void device_memory_peaks(bool, int64_t* allocated, int64_t* reserved) {
  *allocated = 0;
  *reserved = 0;
}
#endif

profile::RunProfile profile_header(const config::RunConfig& config, int ranks, int workers,
                                   int64_t parameters, const std::string& description) {
  profile::RunProfile p;
  p.set_schema("cadre.profile/1");
  p.set_description(description);
  const auto& m = config.model();
  auto* pm = p.mutable_model();
  pm->set_preset(m.preset());
  pm->set_num_layers(m.num_layers());
  pm->set_hidden_size(m.hidden_size());
  pm->set_num_heads(m.num_heads());
  pm->set_num_kv_heads(m.num_kv_heads());
  pm->set_head_dim(m.head_dim());
  pm->set_ffn_hidden_size(m.ffn_hidden_size());
  pm->set_vocab_size(m.vocab_size());
  pm->set_tie_embeddings(m.tie_embeddings());
  pm->set_parameters(parameters);
  const auto& t = config.training();
  p.set_ranks(ranks);
  p.set_workers(workers);
  p.set_tensor_parallel(std::max(1, config.cluster().tensor_parallel()));
  p.set_attention(t.attention());
  p.set_ping_pong(t.attention() == "cad" && t.ping_pong());
  p.set_recompute(t.recompute());
  p.set_dtype(t.dtype());
  p.set_loss_chunk_tokens(t.loss_chunk_tokens());
  p.set_grad_bucket_mib(t.grad_bucket_mib());
  p.set_overlap_grad_reduce(t.overlap_grad_reduce());
  p.set_micro_batches(t.micro_batches());
  p.set_context_length(config.data().context_length());
  p.set_distribution(config.data().distribution());
  p.set_packing(config.data().packing());
  p.set_server_mode(config.scheduler().server_mode());
  p.set_shard_optimizer(t.shard_optimizer());
  p.set_warmup_steps(std::min<int>(2, std::max(0, t.steps() - 1)));
  return p;
}

ProfileWriter::ProfileWriter(const config::RunConfig& config, int rank, int64_t element_bytes)
    : config_(config), rank_(rank), element_bytes_(element_bytes) {}

void ProfileWriter::add_step(int64_t step, double step_ms, double rank_wall_ms,
                             int64_t kernel_graphs_built, int64_t kernel_choices_measured,
                             bool cuda,
                             const std::vector<comm::Span>& spans, const StepRecord& record) {
  cuda_ = cuda;
  profile::ProfileStep s;
  s.set_step(step);
  s.set_step_ms(step_ms);
  profile::ProfileRankStep* r = s.add_ranks();
  *r = rank_step_profile(config_, rank_, element_bytes_, spans, record);
  r->set_wall_ms(rank_wall_ms);
  r->set_kernel_graphs_built(kernel_graphs_built);
  r->set_kernel_choices_measured(kernel_choices_measured);
  int64_t allocated = 0, reserved = 0;
  device_memory_peaks(cuda, &allocated, &reserved);
  r->set_peak_allocated_bytes(allocated);
  r->set_peak_reserved_bytes(reserved);
  steps_.push_back(std::move(s));
}

void ProfileWriter::write(comm::Transport& control, const std::string& path, int workers,
                          int64_t parameters, const std::string& description) const {
  profile::RunProfile mine;
  for (const auto& s : steps_) *mine.add_steps() = s;
  const std::string bytes = mine.SerializeAsString();
  int64_t length = static_cast<int64_t>(bytes.size());
  std::vector<int64_t> lengths(control.size());
  control.all_gather(&length, lengths.data(), sizeof(int64_t));
  const int64_t width = std::max<int64_t>(1, *std::max_element(lengths.begin(), lengths.end()));
  std::string padded = bytes;
  padded.resize(width, '\0');
  std::string all(width * control.size(), '\0');
  control.all_gather(padded.data(), all.data(), width);
  if (control.rank() != 0) return;
  profile::RunProfile run =
      profile_header(config_, control.size(), workers, parameters, description);
  run.set_elementwise_ops(fused::elementwise_ops(cuda_));
  for (int r = 0; r < control.size(); ++r) {
    profile::RunProfile theirs;
    CADRE_CHECK(theirs.ParseFromString(all.substr(r * width, lengths[r])), "profile: rank ", r,
                "'s steps could not be decoded");
    CADRE_CHECK(r == 0 || theirs.steps_size() == run.steps_size(), "profile: rank ", r, " has ",
                theirs.steps_size(), " steps but rank 0 has ", run.steps_size());
    for (int i = 0; i < theirs.steps_size(); ++i) {
      if (r == 0) {
        auto* s = run.add_steps();
        s->set_step(theirs.steps(i).step());
        s->set_step_ms(theirs.steps(i).step_ms());
      }
      for (const auto& rank_step : theirs.steps(i).ranks()) {
        *run.mutable_steps(i)->add_ranks() = rank_step;
      }
    }
  }
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;  // layer 0, nano 0 are data, not absent
  const auto status = google::protobuf::util::MessageToJsonString(run, &json, options);
  CADRE_CHECK(status.ok(), "profile: cannot encode JSON: ", status.ToString());
  write_file_atomically(path, json + "\n");
}

}  // namespace cadre::runtime
