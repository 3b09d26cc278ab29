// Step-cost calibration: the file format (calibration.proto's StepCalibrationProto), profile
// validation, and the fits of `cadre calibrate`.
#include "scheduler/step_calibration.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "common/error.h"
#include "scheduler/calibration.pb.h"

namespace cadre::scheduler {

extern const char* const kDefaultStepCalibrationJson;

namespace {

std::string key(const std::string& kind, const std::string& direction) {
  return kind + "/" + direction;
}

CalibrationTable table_from_proto(const calibration::CalibrationTableProto& proto,
                                  const std::string& source) {
  std::string json;
  google::protobuf::util::MessageToJsonString(proto, &json);
  return parse_calibration_json(json, source);
}

calibration::CalibrationTableProto table_to_proto(const CalibrationTable& t) {
  calibration::CalibrationTableProto p;
  p.set_device(t.device);
  p.set_heads(t.heads);
  p.set_kv_heads(t.kv_heads);
  p.set_head_dim(t.head_dim);
  for (const CalibrationPoint& c : t.points) {
    auto* q = p.add_points();
    q->set_q_tokens(c.q_tokens);
    q->set_kv_tokens(c.kv_tokens);
    q->set_forward_tflops(c.forward_tflops);
    q->set_backward_tflops(c.backward_tflops);
  }
  return p;
}

// At most one kernel table per (head_dim, GQA-ness): two would leave the choice to their order.
// `names` say where each table came from.
void check_one_table_per_shape(const std::vector<CalibrationTable>& tables,
                               const std::vector<std::string>& names, const std::string& where) {
  for (size_t i = 0; i < tables.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      CADRE_CHECK(tables[j].head_dim != tables[i].head_dim ||
                      is_mha_table(tables[j]) != is_mha_table(tables[i]),
                  where, ": two attention tables for head dim ", tables[i].head_dim, ", ",
                  is_mha_table(tables[i]) ? "MHA" : "GQA", ": ", names[j], " and ", names[i],
                  "; accepted: one per head dim and GQA/MHA");
    }
  }
}

// A line y = a x + b fitted by least squares with relative-error weights (1 / y^2), so that small
// and large calls count alike. b = 0 when the x values do not vary or the fit makes b negative.
struct Line {
  double a = 0, b = 0, rms = 0;
  int n = 0;
};
Line fit_line(const std::vector<double>& x, const std::vector<double>& y, bool with_intercept) {
  Line line;
  line.n = static_cast<int>(x.size());
  if (x.empty()) return line;
  double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  double lo = x[0], hi = x[0];
  for (size_t i = 0; i < x.size(); ++i) {
    const double w = 1.0 / std::max(1e-12, y[i] * y[i]);
    sw += w;
    sx += w * x[i];
    sy += w * y[i];
    sxx += w * x[i] * x[i];
    sxy += w * x[i] * y[i];
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  const double det = sw * sxx - sx * sx;
  bool through_origin =
      !with_intercept || hi - lo <= 1e-9 * std::max(1.0, std::fabs(hi)) || std::fabs(det) < 1e-30;
  if (!through_origin) {
    line.a = (sw * sxy - sx * sy) / det;
    line.b = (sy - line.a * sx) / sw;
    if (line.b < 0 || line.a < 0) through_origin = true;
  }
  if (through_origin) {
    line.b = 0;
    line.a = sxx > 0 ? sxy / sxx : 0;
  }
  double err = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double r = (line.a * x[i] + line.b - y[i]) / std::max(1e-12, y[i]);
    err += r * r;
  }
  line.rms = std::sqrt(err / x.size());
  return line;
}

// Rounds to 6 significant digits so the file's bytes do not depend on the last bits of a sum.
double round6(double v) {
  if (v == 0 || !std::isfinite(v)) return 0;
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return std::strtod(buf, nullptr);
}

// Steps of a profile that calibration uses: after its warm-up steps (all if it has no more).
// The steps after warm-up, without those that built a kernel graph or timed a kernel choice (a
// one-time stall, docs/gpu.md) when any others remain.
std::vector<int> measured_steps(const profile::RunProfile& p) {
  std::vector<int> steps, steady;
  const int skip = p.steps_size() > p.warmup_steps() ? p.warmup_steps() : 0;
  for (int i = skip; i < p.steps_size(); ++i) {
    steps.push_back(i);
    int64_t stalls = 0;
    for (const auto& r : p.steps(i).ranks()) {
      stalls += r.kernel_graphs_built() + r.kernel_choices_measured();
    }
    if (stalls == 0) steady.push_back(i);
  }
  return steady.empty() ? steps : steady;
}

// Attention calls: measured = scale x table time + per call + per sequence and query head on the
// GPU (each sequence of a fused batch adds its own partly idle tiles, per head), fitted by least squares on relative errors; the
// per-sequence term is dropped (0) when it or the others would come out negative.
struct AttentionFit {
  double scale = 1, call_us = 0, sequence_us = 0;
};
AttentionFit fit_attention(const std::vector<double>& pred, const std::vector<double>& seqs,
                           const std::vector<double>& meas) {
  AttentionFit fit;
  if (pred.empty()) return fit;
  double m[3][3] = {}, v[3] = {};
  for (size_t i = 0; i < pred.size(); ++i) {
    const double w = 1.0 / std::max(1e-12, meas[i] * meas[i]);
    const double x[3] = {pred[i], 1.0, seqs[i]};
    for (int r = 0; r < 3; ++r) {
      v[r] += w * x[r] * meas[i];
      for (int c = 0; c < 3; ++c) m[r][c] += w * x[r] * x[c];
    }
  }
  // Cramer's rule on the 3x3 normal equations.
  auto det3 = [](const double a[3][3]) {
    return a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) -
           a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
           a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
  };
  const double d = det3(m);
  if (std::fabs(d) > 1e-30) {
    double solution[3];
    for (int k = 0; k < 3; ++k) {
      double mk[3][3];
      for (int r = 0; r < 3; ++r) {
        for (int c = 0; c < 3; ++c) mk[r][c] = c == k ? v[r] : m[r][c];
      }
      solution[k] = det3(mk) / d;
    }
    if (solution[0] > 0 && solution[1] >= 0 && solution[2] >= 0) {
      fit.scale = solution[0];
      fit.call_us = solution[1];
      fit.sequence_us = solution[2];
      return fit;
    }
  }
  const Line line = fit_line(pred, meas, true);
  fit.scale = line.a > 0 ? line.a : 1;
  fit.call_us = line.b;
  return fit;
}

config::ModelConfig model_of(const profile::RunProfile& p) {
  config::ModelConfig m;
  const auto& pm = p.model();
  m.set_preset(pm.preset());
  m.set_num_layers(pm.num_layers());
  m.set_hidden_size(pm.hidden_size());
  m.set_num_heads(pm.num_heads());
  m.set_num_kv_heads(pm.num_kv_heads());
  m.set_head_dim(pm.head_dim());
  m.set_ffn_hidden_size(pm.ffn_hidden_size());
  m.set_vocab_size(pm.vocab_size());
  m.set_tie_embeddings(pm.tie_embeddings());
  return m;
}

// A `bench kernel` result ({"config": {..., "kv_heads"}, "calibration": {table}}) or a bare table.
CalibrationTable kernel_table(const std::string& json, const std::string& name) {
  google::protobuf::Struct root;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &root);
  CADRE_CHECK(status.ok(), "kernel results '", name, "' are not JSON: ", status.ToString(),
              "; accepted: a `cadre bench kernel` JSON result or an attention table");
  const auto& fields = root.fields();
  if (fields.count("points")) return parse_calibration_json(json, "'" + name + "'");
  CADRE_CHECK(fields.count("calibration") && fields.at("calibration").has_struct_value(),
              "kernel results '", name,
              "' have no \"calibration\" table; accepted: a `cadre "
              "bench kernel` result run with its calibration grid, or an attention table");
  std::string table_json;
  google::protobuf::util::MessageToJsonString(fields.at("calibration").struct_value(), &table_json);
  CalibrationTable table = parse_calibration_json(table_json, "'" + name + "' calibration");
  if (fields.count("config") && fields.at("config").has_struct_value()) {
    const auto& config = fields.at("config").struct_value().fields();
    if (config.count("kv_heads"))
      table.kv_heads = static_cast<int32_t>(config.at("kv_heads").number_value());
  }
  return table;
}

// `bench comm` rows: (bytes a rank sends to other ranks, microseconds).
void comm_samples(const std::string& json, const std::string& name, std::vector<double>* bytes,
                  std::vector<double>* us, std::string* device) {
  google::protobuf::Struct root;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &root);
  CADRE_CHECK(status.ok(), "comm results '", name, "' are not JSON: ", status.ToString());
  const auto& f = root.fields();
  CADRE_CHECK(f.count("rows") && f.count("ranks"), "comm results '", name,
              "' lack \"rows\" or \"ranks\"; accepted: a `cadre bench comm` JSON result");
  const double ranks = f.at("ranks").number_value();
  CADRE_CHECK(ranks >= 2, "comm results '", name, "' have ranks ", ranks, "; accepted: >= 2");
  if (f.count("device") && f.at("device").has_struct_value()) {
    const auto& d = f.at("device").struct_value().fields();
    if (d.count("name")) *device = d.at("name").string_value();
  }
  for (const auto& row : f.at("rows").list_value().values()) {
    const auto& r = row.struct_value().fields();
    CADRE_CHECK(r.count("bytes_per_rank") && r.count("cadre_us"), "comm results '", name,
                "': a row lacks bytes_per_rank or cadre_us");
    // Equal bytes to every peer, self included: (ranks - 1) / ranks of them leave the rank.
    bytes->push_back(r.at("bytes_per_rank").number_value() * (ranks - 1) / ranks);
    us->push_back(r.at("cadre_us").number_value());
  }
}

}  // namespace

const std::vector<std::pair<std::string, std::string>>& calibrated_segments() {
  static const std::vector<std::pair<std::string, std::string>> all = {
      {"qkv", "forward"},     {"qkv", "backward"},      {"qkv", "recompute"},
      {"out_mlp", "forward"}, {"out_mlp", "backward"},  {"out_mlp", "recompute"},
      {"head_loss", "step"},  {"embedding", "forward"}, {"embedding", "backward"},
      {"optimizer", "step"}};
  return all;
}

std::string segment_unit(const std::string& kind) {
  if (kind == "embedding") return "mvalue";
  if (kind == "optimizer") return "mparam";
  return "gflop";
}

double segment_work(const std::string& kind, const config::ModelConfig& m, int32_t tp,
                    int64_t tokens, double parameters) {
  const double t = static_cast<double>(tokens), h = m.hidden_size();
  const double q = static_cast<double>(m.num_heads()) * m.head_dim();
  const double kv = static_cast<double>(m.num_kv_heads()) * m.head_dim();
  const double shards = std::max(1, tp);
  if (kind == "qkv") return 2.0 * t * h * (q + 2 * kv) / shards / 1e9;
  if (kind == "out_mlp") return 2.0 * t * (q * h + 3.0 * h * m.ffn_hidden_size()) / shards / 1e9;
  if (kind == "head_loss") return 2.0 * t * h * m.vocab_size() / shards / 1e9;
  if (kind == "embedding") return t * h / 1e6;
  if (kind == "optimizer") return parameters / shards / 1e6;
  CADRE_FAIL("unknown segment kind '", kind,
             "'; accepted: qkv, out_mlp, head_loss, embedding, "
             "optimizer");
}

const SegmentCost& StepCalibration::segment(const std::string& kind,
                                            const std::string& direction) const {
  auto it = segments.find(key(kind, direction));
  if (it != segments.end()) return it->second;
  std::string have;
  for (const auto& [k, v] : segments) have += (have.empty() ? "" : ", ") + k;
  CADRE_FAIL("the calibration has no segment '", key(kind, direction), "'; it has: ", have);
}

const LinkCost* StepCalibration::link(const std::string& name) const {
  auto it = links.find(name);
  return it == links.end() || it->second.gbps <= 0 ? nullptr : &it->second;
}

bool is_mha_table(const CalibrationTable& table) {
  return table.kv_heads > 0 && table.kv_heads == table.heads;
}

const CalibrationTable* attention_table_for(const StepCalibration& calibration,
                                            const config::ModelConfig& model,
                                            int32_t tensor_parallel) {
  const bool mha = uses_mha_kernel(model, tensor_parallel);
  const int64_t width = qk_head_dim(model);
  const auto& tables = calibration.attention_tables;
  const bool shape_measured = std::any_of(tables.begin(), tables.end(),
                                          [&](const auto& t) { return is_mha_table(t) == mha; });
  const CalibrationTable* best = nullptr;
  int64_t best_distance = 0;
  for (const CalibrationTable& t : tables) {
    if (shape_measured && is_mha_table(t) != mha) continue;
    const int64_t distance = std::abs(static_cast<int64_t>(t.head_dim) - width);
    if (best == nullptr || distance < best_distance) {  // strict: ties keep the earlier table
      best = &t;
      best_distance = distance;
    }
  }
  return best;
}

StepCalibration parse_step_calibration(const std::string& json, const std::string& source) {
  calibration::StepCalibrationProto proto;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &proto, options);
  CADRE_CHECK(status.ok(), "calibration file ", source, " is not valid: ", status.ToString(),
              "; accepted: the JSON `cadre calibrate` writes (scheduler/calibration.proto, "
              "StepCalibrationProto)");
  CADRE_CHECK(proto.schema() == "cadre.calibration/1", "calibration file ", source, " has schema '",
              proto.schema(), "'; accepted: cadre.calibration/1");
  StepCalibration c;
  c.device = proto.device();
  c.sources.assign(proto.sources().begin(), proto.sources().end());
  c.notes.assign(proto.notes().begin(), proto.notes().end());
  for (const auto& s : proto.segments()) {
    CADRE_CHECK(s.us_per_unit() >= 0 && s.fixed_us() >= 0, "calibration file ", source, " segment ",
                key(s.kind(), s.direction()), " has us_per_unit ", s.us_per_unit(),
                " and fixed_us ", s.fixed_us(), "; accepted: both >= 0");
    c.segments[key(s.kind(), s.direction())] =
        SegmentCost{s.kind(),    s.direction(),          s.unit(),  s.us_per_unit(), s.fixed_us(),
                    s.samples(), s.rms_relative_error(), s.source()};
  }
  for (const auto& [kind, direction] : calibrated_segments()) {
    CADRE_CHECK(c.segments.count(key(kind, direction)), "calibration file ", source,
                " lacks segment ", key(kind, direction),
                "; accepted: every one of qkv, "
                "out_mlp (forward, backward, recompute), head_loss/step, embedding (forward, "
                "backward), optimizer/step");
  }
  c.attention_forward_scale =
      proto.attention_forward_scale() > 0 ? proto.attention_forward_scale() : 1;
  c.attention_backward_scale =
      proto.attention_backward_scale() > 0 ? proto.attention_backward_scale() : 1;
  c.attention_forward_sequence_us = proto.attention_forward_sequence_us();
  c.attention_backward_sequence_us = proto.attention_backward_sequence_us();
  c.attention_call_us = proto.attention_call_us();
  std::vector<std::string> table_names;
  for (int i = 0; i < proto.attention_tables_size(); ++i) {
    table_names.push_back("attention_tables[" + std::to_string(i) + "]");
    c.attention_tables.push_back(
        table_from_proto(proto.attention_tables(i), source + " " + table_names.back()));
  }
  // Legacy files: their two slots said GQA and MHA, whatever kv_heads recorded; keep that.
  if (proto.has_attention_table()) {
    CalibrationTable t = table_from_proto(proto.attention_table(), source + " attention_table");
    if (is_mha_table(t)) t.kv_heads = 0;
    c.attention_tables.push_back(t);
    table_names.push_back("attention_table");
  }
  if (proto.has_attention_table_mha()) {
    CalibrationTable t =
        table_from_proto(proto.attention_table_mha(), source + " attention_table_mha");
    t.kv_heads = t.heads;
    c.attention_tables.push_back(t);
    table_names.push_back("attention_table_mha");
  }
  check_one_table_per_shape(c.attention_tables, table_names, "calibration file " + source);
  for (const auto& l : proto.links()) {
    CADRE_CHECK(l.link() == "intra_node" || l.link() == "inter_node" || l.link() == "all_reduce",
                "calibration file ", source, " has link '", l.link(),
                "'; accepted: intra_node, inter_node, all_reduce");
    CADRE_CHECK(l.gbps() > 0 && l.latency_us() >= 0, "calibration file ", source, " link ",
                l.link(), " has gbps ", l.gbps(), " and latency_us ", l.latency_us(),
                "; accepted: gbps > 0, latency_us >= 0");
    c.links[l.link()] = LinkCost{l.latency_us(), l.gbps(), l.samples(), l.source()};
  }
  c.step_overhead_us = proto.step_overhead_us();
  c.call_overhead_us = proto.call_overhead_us();
  c.activation_memory_scale =
      proto.activation_memory_scale() > 0 ? proto.activation_memory_scale() : 1;
  c.memory_fixed_gib = proto.memory_fixed_gib();
  return c;
}

std::string step_calibration_json(const StepCalibration& c) {
  calibration::StepCalibrationProto p;
  p.set_schema("cadre.calibration/1");
  p.set_device(c.device);
  for (const auto& s : c.sources) p.add_sources(s);
  for (const auto& [kind, direction] : calibrated_segments()) {
    auto it = c.segments.find(key(kind, direction));
    if (it == c.segments.end()) continue;
    const SegmentCost& s = it->second;
    auto* q = p.add_segments();
    q->set_kind(s.kind);
    q->set_direction(s.direction);
    q->set_unit(s.unit);
    q->set_us_per_unit(round6(s.us_per_unit));
    q->set_fixed_us(round6(s.fixed_us));
    q->set_samples(s.samples);
    q->set_rms_relative_error(round6(s.rms_relative_error));
    q->set_source(s.source);
  }
  p.set_attention_forward_scale(round6(c.attention_forward_scale));
  p.set_attention_backward_scale(round6(c.attention_backward_scale));
  p.set_attention_forward_sequence_us(round6(c.attention_forward_sequence_us));
  p.set_attention_backward_sequence_us(round6(c.attention_backward_sequence_us));
  p.set_attention_call_us(round6(c.attention_call_us));
  for (const CalibrationTable& t : c.attention_tables)
    *p.add_attention_tables() = table_to_proto(t);
  for (const auto& [name, l] : c.links) {
    auto* q = p.add_links();
    q->set_link(name);
    q->set_latency_us(round6(l.latency_us));
    q->set_gbps(round6(l.gbps));
    q->set_samples(l.samples);
    q->set_source(l.source);
  }
  p.set_step_overhead_us(round6(c.step_overhead_us));
  p.set_call_overhead_us(round6(c.call_overhead_us));
  p.set_activation_memory_scale(round6(c.activation_memory_scale));
  p.set_memory_fixed_gib(round6(c.memory_fixed_gib));
  for (const auto& n : c.notes) p.add_notes(n);
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  google::protobuf::util::MessageToJsonString(p, &json, options);
  return json;
}

const StepCalibration& default_step_calibration() {
  static const StepCalibration c =
      parse_step_calibration(kDefaultStepCalibrationJson, "(built-in h200_calibration.json)");
  return c;
}

StepCalibration load_step_calibration(const std::string& path) {
  std::ifstream in(path);
  CADRE_CHECK(in.good(), "cannot read calibration file '", path,
              "' (cluster.calibration); accepted: a readable JSON file written by `cadre "
              "calibrate`");
  std::stringstream text;
  text << in.rdbuf();
  return parse_step_calibration(text.str(), "'" + path + "'");
}

StepCalibration step_calibration_for(const config::ClusterConfig& cluster) {
  return cluster.calibration().empty() ? default_step_calibration()
                                       : load_step_calibration(cluster.calibration());
}

// --- profiles --------------------------------------------------------------------------------

profile::RunProfile parse_profile_json(const std::string& json, const std::string& name) {
  profile::RunProfile p;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &p, options);
  CADRE_CHECK(status.ok(), "profile '", name, "' is not valid: ", status.ToString(),
              "; accepted: the JSON `cadre train` writes with output.profile=true "
              "(scheduler/profile.proto)");
  validate_profile(p, name);
  return p;
}

void validate_profile(const profile::RunProfile& p, const std::string& name) {
  CADRE_CHECK(p.schema() == "cadre.profile/1", "profile '", name, "' has schema '", p.schema(),
              "'; accepted: cadre.profile/1");
  const auto& m = p.model();
  CADRE_CHECK(m.num_layers() > 0 && m.hidden_size() > 0 && m.num_heads() > 0 &&
                  m.num_kv_heads() > 0 && m.head_dim() > 0 && m.ffn_hidden_size() > 0 &&
                  m.vocab_size() > 0,
              "profile '", name, "' has an incomplete model shape (num_layers ", m.num_layers(),
              ", hidden_size ", m.hidden_size(), ", num_heads ", m.num_heads(), ", num_kv_heads ",
              m.num_kv_heads(), ", head_dim ", m.head_dim(), ", ffn_hidden_size ",
              m.ffn_hidden_size(), ", vocab_size ", m.vocab_size(), "); accepted: all > 0");
  CADRE_CHECK(p.steps_size() > 0, "profile '", name, "' has no steps");
  const bool recompute = p.recompute() == "linear";
  const int layers = m.num_layers();
  for (const auto& step : p.steps()) {
    CADRE_CHECK(step.ranks_size() == p.ranks(), "profile '", name, "' step ", step.step(), " has ",
                step.ranks_size(), " ranks; the run has ", p.ranks());
    for (const auto& r : step.ranks()) {
      const std::string where = "profile '" + name + "' step " + std::to_string(step.step()) +
                                " rank " + std::to_string(r.rank());
      if (!r.worker()) continue;
      const int nanos = r.nano_batches_size();
      CADRE_CHECK(nanos > 0, where, " is a worker without nano-batches");
      // (kind, direction, layer, nano) -> count
      std::set<std::tuple<std::string, std::string, int, int>> have;
      int optimizer = 0;
      for (const auto& s : r.segments()) {
        if (s.kind() == "other") continue;
        if (s.kind() == "optimizer") {
          ++optimizer;
          continue;
        }
        CADRE_CHECK(s.nano() >= 0 && s.nano() < nanos, where, " segment '", s.name(),
                    "' names nano-batch ", s.nano(), " of ", nanos);
        CADRE_CHECK(s.tokens() == r.nano_batches(s.nano()).tokens(), where, " segment '", s.name(),
                    "' has ", s.tokens(), " tokens but its nano-batch has ",
                    r.nano_batches(s.nano()).tokens());
        CADRE_CHECK(s.us() >= 0, where, " segment '", s.name(), "' has negative time ", s.us());
        have.insert({s.kind(), s.direction(), s.layer(), s.nano()});
      }
      auto require = [&](const std::string& kind, const std::string& direction, int layer,
                         int nano) {
        CADRE_CHECK(have.count({kind, direction, layer, nano}), where, " lacks segment ", kind, " ",
                    direction, layer >= 0 ? " of layer " + std::to_string(layer) : "",
                    " for nano-batch ", nano, " (every worker step has qkv and out_mlp forward ",
                    "and backward per layer and nano-batch", recompute ? ", their recompute" : "",
                    ", embedding forward and backward and head_loss per nano-batch)");
      };
      for (int n = 0; n < nanos; ++n) {
        require("embedding", "forward", -1, n);
        require("embedding", "backward", -1, n);
        require("head_loss", "step", -1, n);
        for (int l = 0; l < layers; ++l) {
          for (const char* kind : {"qkv", "out_mlp"}) {
            require(kind, "forward", l, n);
            require(kind, "backward", l, n);
            if (recompute) require(kind, "recompute", l, n);
          }
        }
      }
      CADRE_CHECK(optimizer == 1, where, " has ", optimizer,
                  " optimizer step segments; accepted: exactly 1");
      int forward = 0, backward = 0;
      for (const auto& a : r.attention()) (a.direction() == "forward" ? forward : backward)++;
      // A worker serves every layer of every nano-batch (in place, colocated), or none (a
      // worker beside dedicated attention servers).
      const bool none = forward == 0 && backward == 0 && p.server_mode() == "dedicated";
      CADRE_CHECK(none || (forward == layers * nanos && backward == layers * nanos), where,
                  " has ", forward, " forward and ", backward,
                  " backward attention calls; accepted: layers x nano-batches = ", layers * nanos,
                  " each (or none beside dedicated servers)");
      for (const auto& b : r.gradient_buckets()) {
        CADRE_CHECK(b.bytes() > 0, where, " gradient bucket ", b.index(), " has no bytes");
      }
    }
  }
}

// --- fitting ---------------------------------------------------------------------------------

StepCalibration fit_step_calibration(const CalibrationInputs& in) {
  StepCalibration c;
  CADRE_CHECK(!in.profiles.empty(),
              "calibration needs at least one profile (--profiles); "
              "accepted: profile.json files from `cadre train` with output.profile=true");
  // Kernel tables: one per input, one per (head_dim, GQA-ness), ordered GQA first and then by
  // head_dim so the file does not depend on the order of the inputs.
  for (size_t i = 0; i < in.kernel_json.size(); ++i) {
    c.attention_tables.push_back(kernel_table(in.kernel_json[i], in.kernel_names[i]));
    c.sources.push_back("kernel: " + in.kernel_names[i]);
    if (c.device.empty()) c.device = c.attention_tables.back().device;
  }
  check_one_table_per_shape(c.attention_tables, in.kernel_names, "calibration");
  std::stable_sort(c.attention_tables.begin(), c.attention_tables.end(),
                   [](const CalibrationTable& a, const CalibrationTable& b) {
                     return std::make_pair(is_mha_table(a), a.head_dim) <
                            std::make_pair(is_mha_table(b), b.head_dim);
                   });
  // Segments.
  std::map<std::string, std::vector<double>> xs, ys;
  std::map<std::string, std::set<std::string>> names_of;
  std::vector<double> attn_pred_f, attn_meas_f, attn_pred_b, attn_meas_b, attn_seq_f, attn_seq_b;
  std::vector<double> overhead_calls, overhead_us;
  std::vector<double> bucket_bytes, bucket_us;
  for (size_t pi = 0; pi < in.profiles.size(); ++pi) {
    const profile::RunProfile& p = in.profiles[pi];
    const std::string& name = in.profile_names[pi];
    validate_profile(p, name);
    c.sources.push_back("profile: " + name);
    const config::ModelConfig model = model_of(p);
    const int tp = std::max(1, p.tensor_parallel());
    config::ClusterConfig cluster = in.cluster;
    cluster.set_tensor_parallel(tp);
    const CalibrationTable* measured = attention_table_for(c, model, tp);
    const double heads_per_gpu = std::max(1, model.num_heads() / tp);
    CostModel cost(model, cluster,
                   measured != nullptr ? *measured : default_calibration_for(model, tp));
    for (int si : measured_steps(p)) {
      const auto& step = p.steps(si);
      for (const auto& r : step.ranks()) {
        if (!r.worker()) continue;
        int calls = 0;
        for (const auto& s : r.segments()) {
          if (s.kind() == "other") continue;
          const double work = segment_work(s.kind(), model, tp, s.tokens(),
                                           static_cast<double>(p.model().parameters()) * tp);
          if (work <= 0) continue;
          const std::string k = key(s.kind(), s.direction());
          xs[k].push_back(work);
          ys[k].push_back(s.us());
          ++calls;
        }
        double attention_us = 0;
        for (const auto& a : r.attention()) {
          attention_us += a.us();
          ++calls;
          if (a.shapes_size() == 0) continue;  // converted from a trace: no shapes
          double predicted = 0, sequences = 0;
          for (const auto& shape : a.shapes()) {
            if (shape.q_tokens() > 0) sequences += heads_per_gpu;
            predicted += a.direction() == "forward"
                             ? cost.attention_forward_us(shape.q_tokens(), shape.kv_tokens())
                             : cost.attention_backward_us(shape.q_tokens(), shape.kv_tokens());
          }
          if (predicted <= 0) continue;
          (a.direction() == "forward" ? attn_pred_f : attn_pred_b).push_back(predicted);
          (a.direction() == "forward" ? attn_meas_f : attn_meas_b).push_back(a.us());
          (a.direction() == "forward" ? attn_seq_f : attn_seq_b).push_back(sequences);
        }
        for (const auto& b : r.gradient_buckets()) {
          const double n = p.workers();
          bucket_bytes.push_back(n > 1 ? b.bytes() * 2.0 * (n - 1) / n : 0.0);
          bucket_us.push_back(b.us());
        }
        // Host time of the step outside the GPU's compute and exposed communication.
        const double outside =
            r.wall_ms() * 1e3 - r.compute_busy_us() - r.exposed_communication_us();
        if (r.wall_ms() > 0 && outside > 0) {
          overhead_calls.push_back(calls);
          overhead_us.push_back(outside);
        }
      }
    }
  }
  for (const auto& [kind, direction] : calibrated_segments()) {
    std::string k = key(kind, direction);
    std::string source = "fit";
    if (!xs.count(k) && direction == "recompute" && xs.count(key(kind, "forward"))) {
      k = key(kind, "forward");  // no profile recomputed: a recomputation costs a forward
      source = "no recompute samples: the forward fit";
    }
    CADRE_CHECK(xs.count(k), "calibration: no profile has samples of segment ",
                key(kind, direction),
                "; accepted: profiles of workers that run it (`cadre train`, output.profile)");
    const bool intercept = kind != "optimizer";
    const Line line = fit_line(xs[k], ys[k], intercept);
    SegmentCost s{kind, direction, segment_unit(kind), line.a, line.b, line.n, line.rms, source};
    if (line.n > 0 && line.b == 0 && source == "fit") s.source = "fit through the origin";
    c.segments[key(kind, direction)] = s;
  }
  // Attention: kernel-table time x scale + a fixed cost per call + a cost per sequence.
  const AttentionFit fit_f = fit_attention(attn_pred_f, attn_seq_f, attn_meas_f);
  const AttentionFit fit_b = fit_attention(attn_pred_b, attn_seq_b, attn_meas_b);
  c.attention_forward_scale = fit_f.scale;
  c.attention_backward_scale = fit_b.scale;
  c.attention_call_us = 0.5 * (fit_f.call_us + fit_b.call_us);
  c.attention_forward_sequence_us = fit_f.sequence_us;
  c.attention_backward_sequence_us = fit_b.sequence_us;
  if (attn_pred_f.empty()) {
    c.notes.push_back(
        "attention: no profile has attention shapes; the kernel table is used "
        "unscaled");
  }
  // Links: `bench comm` rows (intra-node all-to-all-v), profile buckets (all-reduce).
  std::vector<double> comm_bytes, comm_us;
  for (size_t i = 0; i < in.comm_json.size(); ++i) {
    std::string device;
    comm_samples(in.comm_json[i], in.comm_names[i], &comm_bytes, &comm_us, &device);
    c.sources.push_back("comm: " + in.comm_names[i]);
  }
  if (!comm_bytes.empty()) {
    const Line line = fit_line(comm_bytes, comm_us, true);
    c.links["intra_node"] =
        LinkCost{line.b, 1.0 / (line.a * 1e3), line.n, "fit to bench comm rows"};
  } else {
    c.links["intra_node"] = LinkCost{0, in.cluster.intra_node_bandwidth_gbps(), 0,
                                     "cluster.intra_node_bandwidth_gbps (not measured)"};
  }
  c.links["inter_node"] = LinkCost{0, in.cluster.inter_node_bandwidth_gbps(), 0,
                                   "cluster.inter_node_bandwidth_gbps (not measured)"};
  {
    std::vector<double> bx, by, lat;
    for (size_t i = 0; i < bucket_bytes.size(); ++i) {
      if (bucket_bytes[i] > 0) {
        bx.push_back(bucket_bytes[i]);
        by.push_back(bucket_us[i]);
      } else {
        lat.push_back(bucket_us[i]);
      }
    }
    LinkCost ar = c.links["intra_node"];
    ar.source = "the intra_node link (no multi-rank bucket samples)";
    ar.samples = 0;
    if (!bx.empty()) {
      const Line line = fit_line(bx, by, true);
      if (line.a > 0) ar = LinkCost{line.b, 1.0 / (line.a * 1e3), line.n, "fit to profile buckets"};
    }
    if (!lat.empty()) {
      // One rank: a bucket costs its latency alone.
      std::sort(lat.begin(), lat.end());
      if (bx.empty()) ar.latency_us = lat[lat.size() / 2];
    }
    c.links["all_reduce"] = ar;
  }
  // Host overhead: fixed per step + per call (segments and attention calls).
  if (!overhead_us.empty()) {
    const Line line = fit_line(overhead_calls, overhead_us, true);
    c.step_overhead_us = line.b;
    c.call_overhead_us = line.a;
    if (line.b == 0) {
      // One call count: all of it per step.
      double sum = 0;
      for (double v : overhead_us) sum += v;
      c.step_overhead_us = sum / overhead_us.size();
      c.call_overhead_us = 0;
    }
  }
  // Memory: needs measured peaks (profiles from the GPU build).
  c.activation_memory_scale = 1;
  c.memory_fixed_gib = 0;
  if (c.device.empty()) c.device = in.profiles.front().description();
  return c;
}

}  // namespace cadre::scheduler
