// Loading, overriding, completing and checking the RunConfig (see launch/config.h and
// docs/configuration.md): text-format parsing with located errors, `--set` overrides walked by
// field name, model presets, and one validation pass whose errors name field, value and accepted.
#include "launch/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>

#include "common/error.h"
#include "runtime/data_sources.h"
#include "runtime/hf_config.h"

namespace cadre::launch {
namespace {

namespace pb = google::protobuf;

// ---------------------------------------------------------------------------------------------
// Names that string fields accept. One table serves validation and error hints.

struct NamedChoice {
  const char* path;
  std::vector<std::string> accepted;
};

const std::vector<NamedChoice>& named_choices() {
  static const std::vector<NamedChoice> kChoices = {
      {"data.distribution", {"wlb", "prolong", "lognormal", "uniform", "fixed", "file"}},
      {"data.token_dtype", {"uint16", "uint32"}},
      {"data.packing", {"whole", "fill", "span"}},
      {"data.format", {"tokens", "megatron"}},
      {"model.rope_scaling", {"none", "llama3"}},
      {"model.tpla_transform", {"none", "hadamard"}},
      {"scheduler.mla_shipping", {"latent", "expanded"}},
      {"scheduler.server_mode", {"in_place", "dedicated"}},
      {"training.attention", {"cad", "colocated"}},
      {"training.dtype", {"fp32", "bf16"}},
      {"training.recompute", {"none", "linear"}},
      {"training.device", {"auto", "cpu", "cuda"}},
      {"training.attention_kernel", {"auto", "flash", "cudnn", "reference"}},
      {"simulate.distributions", {"wlb", "prolong", "lognormal", "uniform", "fixed", "file"}},
      {"simulate.strategies", {"cad", "fixed", "cp", "wlb", "ideal"}},
      {"simulate.elementwise_ops", {"fused", "composite"}},
  };
  return kChoices;
}

std::string join(const std::vector<std::string>& items, const char* separator = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += separator;
    out += items[i];
  }
  return out;
}

bool contains(const std::vector<std::string>& items, const std::string& item) {
  for (const auto& x : items) {
    if (x == item) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Model presets. head_dim 0 means "hidden_size / num_heads" (the Llama convention).

struct ModelPreset {
  const char* name;
  const char* description;
  int32_t num_layers;
  int32_t hidden_size;
  int32_t num_heads;
  int32_t num_kv_heads;
  int32_t head_dim;
  int32_t ffn_hidden_size;
  int32_t vocab_size;
  bool tie_embeddings;
  double rope_theta;
  int32_t kv_latent_dim;
  int32_t rope_head_dim;
  int32_t q_latent_dim = 0;
  int32_t v_head_dim = 0;  // 0: head_dim
};

const std::vector<ModelPreset>& model_presets() {
  static const std::vector<ModelPreset> kPresets = {
      {"tiny", "CPU tests", 2, 64, 4, 2, 0, 128, 256, false, 10000, 0, 0},
      {"llama-1b", "Llama-3.2-1B-like", 16, 2048, 32, 8, 0, 8192, 128256, true, 500000, 0, 0},
      {"llama-3b", "Llama-3.2-3B-like", 28, 3072, 24, 8, 0, 8192, 128256, true, 500000, 0, 0},
      {"llama-8b", "Llama-3-8B-like", 32, 4096, 32, 8, 0, 14336, 128256, false, 500000, 0, 0},
      {"llama-34b", "CodeLlama-34B-like", 48, 8192, 64, 8, 0, 22016, 32000, false, 1000000, 0, 0},
      // DeepSeek-V3's attention (MLA: 128 heads of 128 + a 512-wide K/V latent and a 64-wide
      // decoupled RoPE key) with a dense FFN of its first layers' width; no mixture of experts.
      {"deepseek-v3-mla-like", "DeepSeek-V3-like MLA attention, dense FFN", 61, 7168, 128, 128, 128,
       18432, 129280, false, 10000, 512, 64, 1536, 128},
      // DeepSeek-V2-Lite's attention (16 heads, no query compression, 512 + 64 latent) with a
      // dense SwiGLU FFN of 5632 instead of its experts: ~1.7B parameters, trainable on one GPU.
      {"deepseek-v2-lite-like", "DeepSeek-V2-Lite-like MLA, dense FFN (~1.7B)", 27, 2048, 16, 16,
       128, 5632, 102400, false, 10000, 512, 64, 0, 128},
      {"mla-tiny", "CPU tests of latent attention", 2, 64, 4, 4, 16, 128, 256, false, 10000, 32, 8,
       0, 16},
  };
  return kPresets;
}

const char* const kCustomPreset = "custom";
const char* const kFromInitPreset = "from_init";

const ModelPreset* find_preset(const std::string& name) {
  for (const auto& p : model_presets()) {
    if (name == p.name) return &p;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Field descriptions for error messages.

std::string field_names(const pb::Descriptor* type) {
  std::vector<std::string> names;
  for (int i = 0; i < type->field_count(); ++i) names.push_back(type->field(i)->name());
  return join(names);
}

const NamedChoice* choice_for(const std::string& path) {
  for (const auto& c : named_choices()) {
    if (path == c.path) return &c;
  }
  return nullptr;
}

// What a field accepts, in words. `in_override` words it for --set (no quotes, lists with commas).
std::string describe_field(const pb::FieldDescriptor* field, const std::string& path,
                           bool in_override) {
  std::string what;
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      what = "an int32 (a whole number)";
      break;
    case pb::FieldDescriptor::CPPTYPE_INT64:
      what = "an int64 (a whole number)";
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      what = "a uint32 (a whole number >= 0)";
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      what = "a uint64 (a whole number >= 0)";
      break;
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      what = "a number";
      break;
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      what = "a bool (true or false)";
      break;
    case pb::FieldDescriptor::CPPTYPE_STRING:
      what = in_override ? "a string" : "a quoted string";
      break;
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      std::vector<std::string> names;
      for (int i = 0; i < field->enum_type()->value_count(); ++i) {
        names.push_back(field->enum_type()->value(i)->name());
      }
      what = "one of " + join(names);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      return "a block of settings (" + field->name() + " { ... }) with fields " +
             field_names(field->message_type());
  }
  if (const NamedChoice* c = choice_for(path)) what += " naming one of: " + join(c->accepted);
  if (field->is_repeated()) {
    what = (in_override ? "a comma-separated list, each "
                        : "a list ([a, b] or the field "
                          "repeated), each ") +
           what;
  }
  return what;
}

// ---------------------------------------------------------------------------------------------
// Text-format errors: protobuf reports line, column and a terse message; we add the field's
// path (found by following the `name {` nesting of the text) and what the field accepts.

class FirstErrorCollector : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (has_error) return;  // later errors are consequences of the first
    has_error = true;
    this->line = line;
    this->column = column;
    this->message = message;
  }
  void AddWarning(int, pb::io::ColumnNumber, const std::string&) override {}

  bool has_error = false;
  int line = 0;
  int column = 0;
  std::string message;
};

// Where a text-format error happened, in terms of fields: the blocks open at that point (from the
// top level down), the field being parsed inside the innermost one, and whether only whitespace
// and comments follow (the text ended early).
struct TextPosition {
  std::vector<std::string> blocks;
  std::string field;
  bool at_end = false;
  int char_column = 0;  // 0-based, counting a tab as one character (as editors and compilers do)
};

// line and column are 0-based, with tab stops every 8 columns as protobuf's tokenizer counts.
TextPosition position_in_text(const std::string& text, int line, int column) {
  const size_t n = text.size();
  size_t limit = 0;
  for (int l = 0; l < line && limit < n; ++limit) {
    if (text[limit] == '\n') ++l;
  }
  const size_t line_start = limit;
  for (int c = 0; limit < n && text[limit] != '\n' && c < column; ++limit) {
    c = text[limit] == '\t' ? c + 8 - c % 8 : c + 1;
  }
  auto skip_space = [&](size_t j) {
    while (j < n) {
      if (std::isspace(static_cast<unsigned char>(text[j]))) {
        ++j;
      } else if (text[j] == '#') {
        while (j < n && text[j] != '\n') ++j;
      } else {
        break;
      }
    }
    return j;
  };
  TextPosition at;
  at.char_column = static_cast<int>(limit - line_start);
  int list_depth = 0;  // inside [a, b] the field stays the list's
  // A value ends its field; the token at the error position itself is not consumed, so a bad
  // value is still attributed to its field.
  auto value_seen = [&] {
    if (list_depth == 0) at.field.clear();
  };
  for (size_t i = skip_space(0); i < n && i < limit; i = skip_space(i)) {
    const char ch = text[i];
    if (std::isalpha(static_cast<unsigned char>(ch)) || ch == '_') {
      const size_t start = i;
      while (i < n && (std::isalnum(static_cast<unsigned char>(text[i])) || text[i] == '_')) ++i;
      const size_t next = skip_space(i);
      if (next < n && (text[next] == ':' || text[next] == '{' || text[next] == '<')) {
        at.field = text.substr(start, i - start);
      } else {
        value_seen();
      }
    } else if (ch == '"' || ch == '\'') {
      for (++i; i < n && text[i] != ch && text[i] != '\n'; ++i) {
        if (text[i] == '\\') ++i;
      }
      ++i;
      value_seen();
    } else if (std::isdigit(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.') {
      while (i < n && (std::isalnum(static_cast<unsigned char>(text[i])) || text[i] == '.' ||
                       text[i] == '-' || text[i] == '+')) {
        ++i;
      }
      value_seen();
    } else if (ch == '[') {
      ++list_depth;
      ++i;
    } else if (ch == ']') {
      list_depth = std::max(0, list_depth - 1);
      ++i;
      value_seen();
    } else if (ch == '{' || ch == '<') {
      if (!at.field.empty()) at.blocks.push_back(at.field);
      at.field.clear();
      ++i;
    } else if (ch == '}' || ch == '>') {
      if (!at.blocks.empty()) at.blocks.pop_back();
      at.field.clear();
      ++i;
    } else {
      ++i;
    }
  }
  at.at_end = skip_space(limit) >= n;
  return at;
}

// Resolves names from RunConfig downwards; returns the deepest field found and its dotted path.
const pb::FieldDescriptor* resolve_path(const std::vector<std::string>& names, std::string* path) {
  const pb::Descriptor* type = config::RunConfig::descriptor();
  const pb::FieldDescriptor* field = nullptr;
  path->clear();
  for (const auto& name : names) {
    if (type == nullptr) break;
    const pb::FieldDescriptor* f = type->FindFieldByName(name);
    if (f == nullptr) break;
    field = f;
    *path += (path->empty() ? "" : ".") + name;
    type = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE ? f->message_type() : nullptr;
  }
  return field;
}

std::string strip_period(std::string s) {
  while (!s.empty() && (s.back() == '.' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string format_parse_error(const std::string& text, const std::string& source,
                               const FirstErrorCollector& error) {
  const TextPosition at = position_in_text(text, error.line, error.column);
  const std::string where = str_cat(source, ":", error.line + 1, ":", at.char_column + 1, ": ");
  std::string blocks_path;
  resolve_path(at.blocks, &blocks_path);

  static const std::regex kNoField(R"re(Message type "([\w.]+)" has no field named "([\w.]+)")re");
  std::smatch m;
  if (std::regex_search(error.message, m, kNoField)) {
    const pb::Descriptor* type =
        pb::DescriptorPool::generated_pool()->FindMessageTypeByName(m[1].str());
    const std::string level = blocks_path.empty() ? "at the top level" : "in " + blocks_path;
    return str_cat(where, "unknown field \"", m[2].str(), "\" ", level, "; accepted: ",
                   type ? field_names(type) : std::string("the fields of scheduler/config.proto"));
  }
  if (at.at_end && !at.blocks.empty()) {
    return str_cat(where, "the text ends inside the block ", blocks_path, " (",
                   strip_period(error.message),
                   "); accepted: a closing '}' for every "
                   "opened block");
  }
  std::vector<std::string> names = at.blocks;
  if (!at.field.empty()) names.push_back(at.field);
  std::string path;
  const pb::FieldDescriptor* field = resolve_path(names, &path);
  if (field != nullptr && error.message.find("specified multiple times") != std::string::npos) {
    return str_cat(where, path, " is given twice; accepted: ",
                   field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE
                       ? "one " + field->name() + " { ... } block holding all its fields"
                       : std::string("each field once (use --set to change a value from the "
                                     "command line)"));
  }
  if (field == nullptr || at.field.empty()) {
    return where + strip_period(error.message) +
           (blocks_path.empty() ? std::string() : " (inside " + blocks_path + ")");
  }
  std::string hint;
  if (error.message.rfind("Expected string", 0) == 0) hint = " (strings are quoted: \"...\")";
  return str_cat(where, "bad value for ", path, ": ", strip_period(error.message), hint,
                 "; accepted: ", describe_field(field, path, false));
}

// ---------------------------------------------------------------------------------------------
// Override values, parsed per field type.

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// A whole number with an optional binary suffix K (2^10), M (2^20) or G (2^30): 128K = 131072.
bool parse_integer(const std::string& text, bool is_unsigned, int64_t min_value, uint64_t max_value,
                   uint64_t* magnitude, bool* negative) {
  std::string s = trim(text);
  if (s.empty()) return false;
  *negative = false;
  size_t i = 0;
  if (s[0] == '+' || s[0] == '-') {
    *negative = s[0] == '-';
    ++i;
  }
  if (*negative && is_unsigned) return false;
  uint64_t scale = 1;
  const char last = static_cast<char>(std::toupper(static_cast<unsigned char>(s.back())));
  if (last == 'K' || last == 'M' || last == 'G') {
    scale = last == 'K' ? (1ull << 10) : last == 'M' ? (1ull << 20) : (1ull << 30);
    s.pop_back();
  }
  if (i >= s.size()) return false;
  uint64_t value = 0;
  for (; i < s.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
    const uint64_t digit = static_cast<uint64_t>(s[i] - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) return false;
    value = value * 10 + digit;
  }
  if (value > std::numeric_limits<uint64_t>::max() / scale) return false;
  value *= scale;
  if (*negative) {
    if (value > static_cast<uint64_t>(-(min_value + 1)) + 1) return false;
  } else if (value > max_value) {
    return false;
  }
  *magnitude = value;
  return true;
}

template <typename T>
bool parse_integer_as(const std::string& text, T* out) {
  uint64_t magnitude = 0;
  bool negative = false;
  if (!parse_integer(text, !std::numeric_limits<T>::is_signed, std::numeric_limits<T>::min(),
                     static_cast<uint64_t>(std::numeric_limits<T>::max()), &magnitude, &negative)) {
    return false;
  }
  if (negative) {
    // -(magnitude) computed without overflow for the most negative value.
    *out = static_cast<T>(-static_cast<int64_t>(magnitude - 1) - 1);
  } else {
    *out = static_cast<T>(magnitude);
  }
  return true;
}

bool parse_double(const std::string& text, double* out) {
  const std::string s = trim(text);
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

bool parse_bool(const std::string& text, bool* out) {
  const std::string s = trim(text);
  if (s == "true" || s == "1") {
    *out = true;
  } else if (s == "false" || s == "0") {
    *out = false;
  } else {
    return false;
  }
  return true;
}

// Sets (or, for a repeated field, appends) one value parsed from `text`.
void set_field_value(pb::Message* message, const pb::FieldDescriptor* field,
                     const std::string& path, const std::string& text) {
  const pb::Reflection* r = message->GetReflection();
  const bool rep = field->is_repeated();
  auto fail = [&]() {
    CADRE_FAIL("--set ", path, ": cannot read \"", text,
               "\"; accepted: ", describe_field(field, path, true));
  };
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32: {
      int32_t v = 0;
      if (!parse_integer_as(text, &v)) fail();
      rep ? r->AddInt32(message, field, v) : r->SetInt32(message, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_INT64: {
      int64_t v = 0;
      if (!parse_integer_as(text, &v)) fail();
      rep ? r->AddInt64(message, field, v) : r->SetInt64(message, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_UINT32: {
      uint32_t v = 0;
      if (!parse_integer_as(text, &v)) fail();
      rep ? r->AddUInt32(message, field, v) : r->SetUInt32(message, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t v = 0;
      if (!parse_integer_as(text, &v)) fail();
      rep ? r->AddUInt64(message, field, v) : r->SetUInt64(message, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
      double v = 0;
      if (!parse_double(text, &v)) fail();
      rep ? r->AddDouble(message, field, v) : r->SetDouble(message, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_FLOAT: {
      double v = 0;
      if (!parse_double(text, &v)) fail();
      const float f = static_cast<float>(v);
      rep ? r->AddFloat(message, field, f) : r->SetFloat(message, field, f);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      bool v = false;
      if (!parse_bool(text, &v)) fail();
      rep ? r->AddBool(message, field, v) : r->SetBool(message, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_STRING: {
      const std::string v = rep ? trim(text) : text;
      rep ? r->AddString(message, field, v) : r->SetString(message, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* v = field->enum_type()->FindValueByName(trim(text));
      if (v == nullptr) fail();
      rep ? r->AddEnum(message, field, v) : r->SetEnum(message, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      fail();
  }
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t at = text.find(separator, start);
    parts.push_back(text.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) break;
    start = at + 1;
  }
  return parts;
}

// Writes every unset singular field's default, so that printing shows the whole effective config.
void fill_defaults(pb::Message* message) {
  const pb::Descriptor* type = message->GetDescriptor();
  const pb::Reflection* r = message->GetReflection();
  for (int i = 0; i < type->field_count(); ++i) {
    const pb::FieldDescriptor* f = type->field(i);
    if (f->is_repeated()) continue;
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      fill_defaults(r->MutableMessage(message, f));
      continue;
    }
    if (r->HasField(*message, f)) continue;
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_INT32:
        r->SetInt32(message, f, f->default_value_int32());
        break;
      case pb::FieldDescriptor::CPPTYPE_INT64:
        r->SetInt64(message, f, f->default_value_int64());
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT32:
        r->SetUInt32(message, f, f->default_value_uint32());
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT64:
        r->SetUInt64(message, f, f->default_value_uint64());
        break;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE:
        r->SetDouble(message, f, f->default_value_double());
        break;
      case pb::FieldDescriptor::CPPTYPE_FLOAT:
        r->SetFloat(message, f, f->default_value_float());
        break;
      case pb::FieldDescriptor::CPPTYPE_BOOL:
        r->SetBool(message, f, f->default_value_bool());
        break;
      case pb::FieldDescriptor::CPPTYPE_STRING:
        r->SetString(message, f, f->default_value_string());
        break;
      case pb::FieldDescriptor::CPPTYPE_ENUM:
        r->SetEnum(message, f, f->default_value_enum());
        break;
      case pb::FieldDescriptor::CPPTYPE_MESSAGE:
        break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Validation helpers: each error is "<path>=<value> <problem>; accepted: <what>".

template <typename T>
void check_at_least(const char* path, T value, T minimum) {
  CADRE_CHECK(value >= minimum, path, "=", value,
              " is too small; accepted: an integer >= ", minimum);
}

void check_positive_number(const char* path, double value) {
  CADRE_CHECK(value > 0, path, "=", value, " is not positive; accepted: a number > 0");
}

void check_name(const char* path, const std::string& value) {
  const NamedChoice* c = choice_for(path);
  CADRE_CHECK(c != nullptr && contains(c->accepted, value), path, "=\"", value,
              "\" is not a known name; accepted: ", c ? join(c->accepted) : std::string());
}

void check_file_readable(const char* path, const std::string& file, const char* role) {
  std::error_code ec;
  const char* problem = nullptr;
  if (!std::filesystem::exists(file, ec)) {
    problem = "does not exist";
  } else if (std::filesystem::is_directory(file, ec)) {
    problem = "is a directory";
  } else if (!std::ifstream(file).good()) {
    problem = "cannot be opened for reading";
  }
  CADRE_CHECK(problem == nullptr, path, "=\"", file, "\": the ", role, " ", problem,
              "; accepted: a path to a readable file (relative paths start from the working "
              "directory)");
}

std::string divisors_of(int64_t n) {
  std::vector<std::string> d;
  for (int64_t i = 1; i <= n && d.size() < 16; ++i) {
    if (n % i == 0) d.push_back(std::to_string(i));
  }
  return join(d);
}

void finalize_model(config::ModelConfig& m) {
  const std::string& preset_name = m.preset();
  // from_init: finalize_config has filled the sizes from training.init_from's config.json.
  if (preset_name == kCustomPreset || preset_name == kFromInitPreset) {
    const std::pair<const char*, bool> required[] = {{"num_layers", m.has_num_layers()},
                                                     {"hidden_size", m.has_hidden_size()},
                                                     {"num_heads", m.has_num_heads()},
                                                     {"num_kv_heads", m.has_num_kv_heads()},
                                                     {"ffn_hidden_size", m.has_ffn_hidden_size()},
                                                     {"vocab_size", m.has_vocab_size()}};
    for (const auto& [name, present] : required) {
      CADRE_CHECK(present, "model.", name,
                  " is not set; model.preset=\"custom\" takes every size from the config; "
                  "accepted: set num_layers, hidden_size, num_heads, num_kv_heads, "
                  "ffn_hidden_size and vocab_size (head_dim defaults to hidden_size/num_heads), "
                  "or choose a preset: ",
                  join(std::vector<std::string>(model_preset_names().begin(),
                                                model_preset_names().end() - 1)));
    }
  } else {
    const ModelPreset* p = find_preset(preset_name);
    CADRE_CHECK(p != nullptr, "model.preset=\"", preset_name,
                "\" is not a known preset; accepted: ", join(model_preset_names()), ", ",
                kFromInitPreset, " (sizes from training.init_from's config.json)");
    if (!m.has_num_layers()) m.set_num_layers(p->num_layers);
    if (!m.has_hidden_size()) m.set_hidden_size(p->hidden_size);
    if (!m.has_num_heads()) m.set_num_heads(p->num_heads);
    if (!m.has_num_kv_heads()) m.set_num_kv_heads(p->num_kv_heads);
    if (!m.has_head_dim() && p->head_dim > 0) m.set_head_dim(p->head_dim);
    if (!m.has_ffn_hidden_size()) m.set_ffn_hidden_size(p->ffn_hidden_size);
    if (!m.has_vocab_size()) m.set_vocab_size(p->vocab_size);
    if (!m.has_tie_embeddings()) m.set_tie_embeddings(p->tie_embeddings);
    if (!m.has_rope_theta()) m.set_rope_theta(p->rope_theta);
    if (!m.has_kv_latent_dim()) m.set_kv_latent_dim(p->kv_latent_dim);
    if (!m.has_rope_head_dim()) m.set_rope_head_dim(p->rope_head_dim);
    if (!m.has_q_latent_dim()) m.set_q_latent_dim(p->q_latent_dim);
    if (!m.has_v_head_dim() && p->v_head_dim > 0) m.set_v_head_dim(p->v_head_dim);
  }
  if (!m.has_tie_embeddings()) m.set_tie_embeddings(false);

  check_at_least("model.num_layers", m.num_layers(), 1);
  check_at_least("model.hidden_size", m.hidden_size(), 1);
  check_at_least("model.num_heads", m.num_heads(), 1);
  check_at_least("model.num_kv_heads", m.num_kv_heads(), 1);
  check_at_least("model.ffn_hidden_size", m.ffn_hidden_size(), 1);
  check_at_least("model.vocab_size", m.vocab_size(), 1);
  CADRE_CHECK(m.num_heads() % m.num_kv_heads() == 0, "model.num_kv_heads=", m.num_kv_heads(),
              " does not divide model.num_heads=", m.num_heads(),
              " (grouped-query attention shares each K/V head among a whole group of query "
              "heads); accepted: a divisor of ",
              m.num_heads(), ": ", divisors_of(m.num_heads()));
  if (!m.has_head_dim()) {
    CADRE_CHECK(m.hidden_size() % m.num_heads() == 0, "model.hidden_size=", m.hidden_size(),
                " is not divisible by model.num_heads=", m.num_heads(),
                ", so head_dim cannot be derived; accepted: a hidden_size that is a multiple of "
                "num_heads, or an explicit model.head_dim");
    m.set_head_dim(m.hidden_size() / m.num_heads());
  }
  check_at_least("model.head_dim", m.head_dim(), 2);
  CADRE_CHECK(m.head_dim() % 2 == 0, "model.head_dim=", m.head_dim(),
              " is odd; accepted: an even number (RoPE rotates pairs of dimensions)");
  check_positive_number("model.rope_theta", m.rope_theta());
  check_name("model.rope_scaling", m.rope_scaling());
  if (m.rope_scaling() == "llama3") {
    check_positive_number("model.rope_scaling_factor", m.rope_scaling_factor());
    check_positive_number("model.rope_low_freq_factor", m.rope_low_freq_factor());
    CADRE_CHECK(m.rope_high_freq_factor() > m.rope_low_freq_factor(),
                "model.rope_high_freq_factor=", m.rope_high_freq_factor(),
                " is not above model.rope_low_freq_factor=", m.rope_low_freq_factor(),
                "; accepted: high > low (4 and 1 for Llama 3.1)");
    check_at_least<int64_t>("model.rope_original_max_positions", m.rope_original_max_positions(), 1);
  }
  check_positive_number("model.norm_eps", m.norm_eps());
  check_at_least("model.kv_latent_dim", m.kv_latent_dim(), 0);
  check_at_least("model.rope_head_dim", m.rope_head_dim(), 0);
  if (m.kv_latent_dim() > 0) {
    CADRE_CHECK(m.rope_head_dim() > 0 && m.rope_head_dim() % 2 == 0,
                "model.rope_head_dim=", m.rope_head_dim(),
                " is invalid for latent attention (model.kv_latent_dim=", m.kv_latent_dim(),
                "); accepted: an even number >= 2 (64 for DeepSeek-V3 sizes)");
    check_at_least("model.q_latent_dim", m.q_latent_dim(), 0);
    if (m.v_head_dim() == 0) m.set_v_head_dim(m.head_dim());
    check_at_least("model.v_head_dim", m.v_head_dim(), 1);
    CADRE_CHECK(m.num_kv_heads() == m.num_heads(), "model.num_kv_heads=", m.num_kv_heads(),
                " differs from model.num_heads=", m.num_heads(),
                " under latent attention (model.kv_latent_dim=", m.kv_latent_dim(),
                "), where every head expands its own key and value from the shared latent; "
                "accepted: num_kv_heads = num_heads = ", m.num_heads());
    check_name("model.tpla_transform", m.tpla_transform());
    if (m.tpla_transform() == "hadamard") {
      const int32_t d = m.kv_latent_dim();
      CADRE_CHECK((d & (d - 1)) == 0, "model.tpla_transform=\"hadamard\" needs a power-of-two "
                  "model.kv_latent_dim (the Sylvester-Hadamard matrix), got ", d,
                  "; accepted: kv_latent_dim 2^k (512), or tpla_transform \"none\"");
    }
  } else {
    CADRE_CHECK(m.rope_head_dim() == 0, "model.rope_head_dim=", m.rope_head_dim(),
                " is set but model.kv_latent_dim=0 (ordinary attention); accepted: 0, or a "
                "positive model.kv_latent_dim for latent attention");
    for (const auto& [name, set] : std::vector<std::pair<const char*, bool>>{
             {"q_latent_dim", m.q_latent_dim() != 0},
             {"v_head_dim", m.v_head_dim() != 0},
             {"tpla", m.tpla()},
             {"tpla_transform", m.tpla_transform() != "none"}}) {
      CADRE_CHECK(!set, "model.", name, " is set but model.kv_latent_dim=0 (ordinary "
                  "attention); accepted: leave it unset, or a positive model.kv_latent_dim for "
                  "latent attention");
    }
  }
}

void finalize_cluster(const config::ModelConfig& m, config::ClusterConfig& c) {
  check_at_least("cluster.num_gpus", c.num_gpus(), 1);
  check_at_least("cluster.gpus_per_node", c.gpus_per_node(), 1);
  check_at_least("cluster.tensor_parallel", c.tensor_parallel(), 1);
  check_at_least("cluster.pipeline_parallel", c.pipeline_parallel(), 1);
  check_at_least("cluster.context_parallel", c.context_parallel(), 1);
  const int64_t tp = c.tensor_parallel(), pp = c.pipeline_parallel();
  CADRE_CHECK(tp <= c.gpus_per_node(), "cluster.tensor_parallel=", tp,
              " exceeds cluster.gpus_per_node=", c.gpus_per_node(),
              " (a tensor-parallel group stays inside one node); accepted: 1 to ",
              c.gpus_per_node());
  CADRE_CHECK(c.num_gpus() % (tp * pp) == 0, "cluster.num_gpus=", c.num_gpus(),
              " is not divisible by cluster.tensor_parallel*cluster.pipeline_parallel=", tp * pp,
              " (TP ", tp, " x PP ", pp, "); accepted: a multiple of ", tp * pp);
  CADRE_CHECK(m.num_heads() % tp == 0, "model.num_heads=", m.num_heads(),
              " is not divisible by cluster.tensor_parallel=", tp,
              " (heads are split across the tensor-parallel group); accepted: a tensor_parallel "
              "that divides ",
              m.num_heads(), ": ", divisors_of(m.num_heads()));
  CADRE_CHECK(m.num_kv_heads() % tp == 0 || tp % m.num_kv_heads() == 0,
              "model.num_kv_heads=", m.num_kv_heads(), " and cluster.tensor_parallel=", tp,
              " do not divide one another (K/V heads are either split across the group or "
              "replicated); accepted: a tensor_parallel that divides or is a multiple of ",
              m.num_kv_heads());
  if (m.tpla()) {
    CADRE_CHECK(tp > 1, "model.tpla=true needs cluster.tensor_parallel > 1 (TPLA partitions the "
                "latent across the tensor-parallel group; at T = 1 it is MLA); accepted: "
                "cluster.tensor_parallel >= 2, or model.tpla=false (`cadre eval --tpla T` runs "
                "an MLA checkpoint in TPLA form on one process)");
    CADRE_CHECK(m.kv_latent_dim() % tp == 0, "model.kv_latent_dim=", m.kv_latent_dim(),
                " is not divisible by cluster.tensor_parallel=", tp,
                " (TPLA gives each rank an equal latent slice); accepted: a tensor_parallel "
                "that divides ", m.kv_latent_dim(), ": ", divisors_of(m.kv_latent_dim()));
  }
  CADRE_CHECK(m.num_layers() % pp == 0, "model.num_layers=", m.num_layers(),
              " is not divisible by cluster.pipeline_parallel=", pp,
              " (every stage holds the same number of layers); accepted: a pipeline_parallel "
              "that divides ",
              m.num_layers(), ": ", divisors_of(m.num_layers()));
  const int64_t dp = c.num_gpus() / (tp * pp);
  CADRE_CHECK(dp % c.context_parallel() == 0, "cluster.context_parallel=", c.context_parallel(),
              " does not divide the data-parallel size ", dp,
              " (cluster.num_gpus / (tensor_parallel*pipeline_parallel)); accepted: a divisor "
              "of ",
              dp, ": ", divisors_of(dp));
  check_positive_number("cluster.intra_node_bandwidth_gbps", c.intra_node_bandwidth_gbps());
  check_positive_number("cluster.inter_node_bandwidth_gbps", c.inter_node_bandwidth_gbps());
  check_positive_number("cluster.gemm_tflops", c.gemm_tflops());
  check_positive_number("cluster.gpu_memory_gib", c.gpu_memory_gib());
  check_positive_number("cluster.peak_tflops", c.peak_tflops());
  if (!c.attention_calibration().empty()) {
    check_file_readable("cluster.attention_calibration", c.attention_calibration(),
                        "attention calibration table (JSON)");
  }
}

void finalize_data(const config::ModelConfig& m, const config::DataConfig& d) {
  check_name("data.distribution", d.distribution());
  if (d.distribution() == "file") {
    CADRE_CHECK(!d.lengths_file().empty(),
                "data.lengths_file is empty but data.distribution=\"file\" reads document "
                "lengths from it; accepted: a path to a JSON array of lengths or a file with one "
                "length per line (--set data.lengths_file=PATH)");
    check_file_readable("data.lengths_file", d.lengths_file(), "document-lengths file");
  }
  check_at_least<int64_t>("data.context_length", d.context_length(), 1);
  check_positive_number("data.lognormal_sigma", d.lognormal_sigma());
  check_at_least<int64_t>("data.uniform_min_tokens", d.uniform_min_tokens(), 1);
  CADRE_CHECK(d.uniform_max_tokens() >= d.uniform_min_tokens(),
              "data.uniform_max_tokens=", d.uniform_max_tokens(),
              " is below data.uniform_min_tokens=", d.uniform_min_tokens(),
              "; accepted: an integer >= ", d.uniform_min_tokens());
  check_at_least<int64_t>("data.fixed_tokens", d.fixed_tokens(), 1);
  check_at_least<int64_t>("data.split_threshold_tokens", d.split_threshold_tokens(), 1);
  CADRE_CHECK(d.short_keep_fraction() > 0 && d.short_keep_fraction() <= 1,
              "data.short_keep_fraction=", d.short_keep_fraction(),
              " is out of range; accepted: a number in (0, 1]");
  check_at_least("data.long_replicas", d.long_replicas(), 1);
  check_positive_number("data.elongation", d.elongation());
  check_name("data.token_dtype", d.token_dtype());
  check_name("data.packing", d.packing());
  if (!d.token_file().empty()) {
    check_file_readable("data.token_file", d.token_file(), "token file");
  }
  check_name("data.format", d.format());
  if (d.format() == "megatron") {
    CADRE_CHECK(d.token_file().empty(), "data.token_file=\"", d.token_file(),
                "\" is set but data.format=\"megatron\" reads data.path or data.blend; "
                "accepted: data.token_file empty with format megatron, or data.format=tokens");
    // Names the field, prefix and problem (missing .idx/.bin, bad weight).
    runtime::megatron_sources(d);
  } else {
    CADRE_CHECK(d.path().empty() && d.blend_size() == 0,
                "data.path / data.blend are set but data.format=\"", d.format(),
                "\" reads data.token_file; accepted: --set data.format=megatron for indexed "
                "datasets");
  }
  const uint64_t dtype_limit = d.token_dtype() == "uint16" ? (1ull << 16) : (1ull << 32);
  CADRE_CHECK(d.eod_token() < static_cast<uint64_t>(m.vocab_size()) && d.eod_token() < dtype_limit,
              "data.eod_token=", d.eod_token(), " is not a valid token id; accepted: 0 to ",
              std::min<uint64_t>(m.vocab_size(), dtype_limit) - 1,
              " (below model.vocab_size=", m.vocab_size(), " and the range of data.token_dtype=\"",
              d.token_dtype(), "\")");
}

void finalize_scheduler(const config::ClusterConfig& c, const config::SchedulerConfig& s) {
  CADRE_CHECK(s.tolerance() > 0 && s.tolerance() < 1, "scheduler.tolerance=", s.tolerance(),
              " is out of range; accepted: a number in (0, 1), e.g. 0.03 for max <= 1.03 x mean");
  check_at_least<int64_t>("scheduler.min_shard_tokens", s.min_shard_tokens(), 1);
  check_name("scheduler.server_mode", s.server_mode());
  check_name("scheduler.mla_shipping", s.mla_shipping());
  if (s.server_mode() == "dedicated") {
    CADRE_CHECK(s.num_dedicated_servers() > 0 && s.num_dedicated_servers() < c.num_gpus(),
                "scheduler.num_dedicated_servers=", s.num_dedicated_servers(),
                " is invalid with scheduler.server_mode=\"dedicated\" and cluster.num_gpus=",
                c.num_gpus(), "; accepted: 1 to ", c.num_gpus() - 1,
                " (servers are taken from the GPUs; at least one must remain a worker)");
  } else {
    CADRE_CHECK(s.num_dedicated_servers() == 0,
                "scheduler.num_dedicated_servers=", s.num_dedicated_servers(),
                " is only used with scheduler.server_mode=\"dedicated\" (server_mode is \"",
                s.server_mode(), "\"); accepted: 0, or --set scheduler.server_mode=dedicated");
  }
}

void finalize_training(const config::TrainingConfig& t) {
  check_name("training.attention", t.attention());
  check_at_least("training.steps", t.steps(), 1);
  check_at_least("training.micro_batches", t.micro_batches(), 1);
  check_positive_number("training.learning_rate", t.learning_rate());
  CADRE_CHECK(t.min_learning_rate() >= 0 && t.min_learning_rate() <= t.learning_rate(),
              "training.min_learning_rate=", t.min_learning_rate(),
              " is out of range; accepted: a number in [0, training.learning_rate=",
              t.learning_rate(), "]");
  check_at_least("training.warmup_steps", t.warmup_steps(), 0);
  CADRE_CHECK(t.weight_decay() >= 0, "training.weight_decay=", t.weight_decay(),
              " is negative; accepted: a number >= 0");
  CADRE_CHECK(t.grad_clip() >= 0, "training.grad_clip=", t.grad_clip(),
              " is negative; accepted: a number >= 0 (0 turns clipping off)");
  CADRE_CHECK(t.adam_beta1() >= 0 && t.adam_beta1() < 1, "training.adam_beta1=", t.adam_beta1(),
              " is out of range; accepted: a number in [0, 1)");
  CADRE_CHECK(t.adam_beta2() >= 0 && t.adam_beta2() < 1, "training.adam_beta2=", t.adam_beta2(),
              " is out of range; accepted: a number in [0, 1)");
  check_positive_number("training.adam_eps", t.adam_eps());
  check_name("training.dtype", t.dtype());
  check_name("training.recompute", t.recompute());
  check_name("training.device", t.device());
  check_name("training.attention_kernel", t.attention_kernel());
  check_at_least<int64_t>("training.loss_chunk_tokens", t.loss_chunk_tokens(), 0);
  check_at_least("training.trace_step", t.trace_step(), 1);
  check_at_least("training.grad_bucket_mib", t.grad_bucket_mib(), 1);
  check_at_least("training.checkpoint_every", t.checkpoint_every(), 0);
  check_at_least("training.keep_checkpoints", t.keep_checkpoints(), 1);
  CADRE_CHECK(t.checkpoint_every() == 0 || !t.checkpoint_dir().empty(),
              "training.checkpoint_every=", t.checkpoint_every(),
              " needs a directory but training.checkpoint_dir is empty; accepted: "
              "--set training.checkpoint_dir=DIR, or checkpoint_every=0");
  CADRE_CHECK(!t.resume() || !t.checkpoint_dir().empty(),
              "training.resume=true needs training.checkpoint_dir, which is empty; accepted: "
              "--set training.checkpoint_dir=DIR, or resume=false");
}

void finalize_simulate(const config::ClusterConfig& c, const config::SimulateConfig& s) {
  check_name("simulate.elementwise_ops", s.elementwise_ops());
  const int64_t tp_pp = static_cast<int64_t>(c.tensor_parallel()) * c.pipeline_parallel();
  for (int i = 0; i < s.gpu_counts_size(); ++i) {
    const int32_t g = s.gpu_counts(i);
    CADRE_CHECK(g > 0 && g % tp_pp == 0, "simulate.gpu_counts[", i, "]=", g,
                " is not a positive multiple of cluster.tensor_parallel*"
                "cluster.pipeline_parallel=",
                tp_pp, "; accepted: multiples of ", tp_pp, " (e.g. 8,16,32,64)");
  }
  for (int i = 0; i < s.context_lengths_size(); ++i) {
    CADRE_CHECK(s.context_lengths(i) > 0, "simulate.context_lengths[", i,
                "]=", s.context_lengths(i), " is not positive; accepted: token counts >= 1");
  }
  for (int i = 0; i < s.models_size(); ++i) {
    CADRE_CHECK(find_preset(s.models(i)) != nullptr, "simulate.models[", i, "]=\"", s.models(i),
                "\" is not a known preset; accepted: ",
                join(std::vector<std::string>(model_preset_names().begin(),
                                              model_preset_names().end() - 1)));
  }
  for (int i = 0; i < s.distributions_size(); ++i) {
    const auto& accepted = choice_for("simulate.distributions")->accepted;
    CADRE_CHECK(contains(accepted, s.distributions(i)), "simulate.distributions[", i, "]=\"",
                s.distributions(i), "\" is not a known name; accepted: ", join(accepted));
  }
  for (int i = 0; i < s.strategies_size(); ++i) {
    const auto& accepted = choice_for("simulate.strategies")->accepted;
    CADRE_CHECK(contains(accepted, s.strategies(i)), "simulate.strategies[", i, "]=\"",
                s.strategies(i), "\" is not a known name; accepted: ", join(accepted));
  }
  check_at_least("simulate.batches", s.batches(), 1);
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

// -------------------------------------------------------------------------------------------------

config::RunConfig parse_config_text(const std::string& text, const std::string& source_name) {
  config::RunConfig config;
  pb::TextFormat::Parser parser;
  FirstErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) {
    CADRE_CHECK(errors.has_error, source_name, ": cannot parse the config (text format)");
    CADRE_FAIL(format_parse_error(text, source_name, errors));
  }
  return config;
}

config::RunConfig load_config_file(const std::string& path) {
  std::error_code ec;
  CADRE_CHECK(std::filesystem::exists(path, ec), "config file \"", path,
              "\" does not exist; accepted: a text-format RunConfig such as "
              "configs/default.pbtxt (relative paths start from the working directory)");
  CADRE_CHECK(!std::filesystem::is_directory(path, ec), "config file \"", path,
              "\" is a directory; accepted: a text-format RunConfig file such as "
              "configs/default.pbtxt");
  std::ifstream in(path, std::ios::binary);
  CADRE_CHECK(in.good(), "cannot open config file \"", path, "\": ", std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  CADRE_CHECK(!in.bad(), "cannot read config file \"", path, "\": ", std::strerror(errno));
  return parse_config_text(text.str(), path);
}

void apply_override(config::RunConfig& config, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  CADRE_CHECK(eq != std::string::npos && eq > 0, "--set \"", assignment,
              "\" is not an assignment; accepted: --set path.to.field=value, e.g. "
              "--set scheduler.tolerance=0.02");
  const std::string path = trim(assignment.substr(0, eq));
  const std::string value = assignment.substr(eq + 1);
  const std::vector<std::string> names = split(path, '.');

  pb::Message* message = &config;
  std::string walked;  // the path resolved so far
  for (size_t i = 0; i < names.size(); ++i) {
    const pb::Descriptor* type = message->GetDescriptor();
    const std::string level = walked.empty() ? "at the top level" : "in " + walked;
    CADRE_CHECK(!names[i].empty(), "--set ", path, ": empty field name ", level,
                "; accepted: ", field_names(type));
    const pb::FieldDescriptor* field = type->FindFieldByName(names[i]);
    CADRE_CHECK(field != nullptr, "--set ", path, ": unknown field \"", names[i], "\" ", level,
                "; accepted: ", field_names(type));
    walked += (walked.empty() ? "" : ".") + names[i];
    const bool is_message = field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE;
    if (i + 1 < names.size()) {
      CADRE_CHECK(is_message && !field->is_repeated(), "--set ", path, ": ", walked, " is ",
                  describe_field(field, walked, true),
                  ", not a block of settings, so it has no "
                  "field \"",
                  names[i + 1], "\"; accepted: --set ", walked, "=value");
      message = message->GetReflection()->MutableMessage(message, field);
      continue;
    }
    CADRE_CHECK(!is_message, "--set ", path, ": ", walked,
                " is a block of settings, not a value; accepted: one of its fields, --set ", walked,
                ".<field>=value with <field> one of ", field_names(field->message_type()));
    if (field->is_repeated()) {
      // A list replaces the whole field; an empty value clears it.
      message->GetReflection()->ClearField(message, field);
      if (trim(value).empty()) return;
      for (const auto& item : split(value, ',')) set_field_value(message, field, walked, item);
    } else {
      set_field_value(message, field, walked, value);
    }
  }
}

void finalize_config(config::RunConfig& config, int world_size) {
  const std::string& init_from = config.training().init_from();
  if (config.model().preset() == kFromInitPreset) {
    CADRE_CHECK(!init_from.empty(), "model.preset=\"", kFromInitPreset,
                "\" takes the model sizes from training.init_from, which is empty; accepted: "
                "--set training.init_from=DIR (a Hugging Face model directory), or another "
                "preset");
    runtime::fill_model_from_hf(config.mutable_model(), init_from);
  }
  finalize_model(*config.mutable_model());
  if (!init_from.empty()) runtime::check_hf_config_matches(config.model(), init_from);
  finalize_cluster(config.model(), *config.mutable_cluster());
  finalize_data(config.model(), config.data());
  finalize_scheduler(config.cluster(), config.scheduler());
  finalize_training(config.training());
  CADRE_CHECK(
      config.training().attention() == "cad" || config.scheduler().server_mode() != "dedicated",
      "training.attention=\"", config.training().attention(),
      "\" computes attention where the documents are, so it has no use for "
      "scheduler.server_mode=\"dedicated\"; accepted: training.attention=cad with "
      "dedicated servers, or server_mode=in_place");
  finalize_simulate(config.cluster(), config.simulate());
  CADRE_CHECK(!config.output().dir().empty(),
              "output.dir is empty; accepted: a directory path (default \"out\")");
  check_positive_number("comm.timeout_seconds", config.comm().timeout_seconds());
  if (world_size > 0) {
    CADRE_CHECK(world_size == config.cluster().num_gpus(),
                "cluster.num_gpus=", config.cluster().num_gpus(), " but the job was launched with ",
                world_size, " ranks; accepted: equal numbers: --set cluster.num_gpus=", world_size,
                " or mpirun -np ", config.cluster().num_gpus());
  }
}

config::RunConfig raw_config_from_args(const std::vector<std::string>& args,
                                       std::vector<std::string>* rest) {
  std::string config_path;
  std::vector<std::string> overrides;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    std::string value;
    bool is_config = false;
    if (a == "--config" || a == "--set") {
      CADRE_CHECK(i + 1 < args.size(), a, " needs a value; accepted: ",
                  a == "--config" ? "--config FILE" : "--set path.to.field=value");
      value = args[++i];
      is_config = a == "--config";
    } else if (starts_with(a, "--config=")) {
      value = a.substr(std::strlen("--config="));
      is_config = true;
    } else if (starts_with(a, "--set=")) {
      value = a.substr(std::strlen("--set="));
    } else {
      CADRE_CHECK(rest != nullptr, "unknown argument \"", a,
                  "\"; accepted: --config FILE, --set path.to.field=value");
      rest->push_back(a);
      continue;
    }
    if (is_config) {
      CADRE_CHECK(config_path.empty(), "--config given twice (\"", config_path, "\" and \"", value,
                  "\"); accepted: one config file, with --set for changes to it");
      CADRE_CHECK(!value.empty(), "--config needs a file; accepted: --config FILE");
      config_path = value;
    } else {
      overrides.push_back(value);
    }
  }
  // The file first, then overrides in command-line order, wherever they appear.
  config::RunConfig config =
      config_path.empty() ? config::RunConfig() : load_config_file(config_path);
  for (const auto& o : overrides) apply_override(config, o);
  return config;
}

config::RunConfig config_from_args(const std::vector<std::string>& args,
                                   std::vector<std::string>* rest, int world_size) {
  config::RunConfig config = raw_config_from_args(args, rest);
  finalize_config(config, world_size);
  return config;
}

const std::vector<std::string>& model_preset_names() {
  static const std::vector<std::string> kNames = [] {
    std::vector<std::string> names;
    for (const auto& p : model_presets()) names.push_back(p.name);
    names.push_back(kCustomPreset);
    return names;
  }();
  return kNames;
}

std::string config_options_help() {
  std::ostringstream out;
  out << "configuration (every command):\n"
         "  --config FILE        text-format RunConfig (see configs/*.pbtxt); fields it omits\n"
         "                       keep their defaults (scheduler/config.proto)\n"
         "  --set PATH=VALUE     override one field after the file, e.g.\n"
         "                       --set scheduler.tolerance=0.02; repeatable, applied in order;\n"
         "                       lists are comma-separated and replace the list\n"
         "                       (--set simulate.gpu_counts=8,64); integers take K/M/G suffixes\n"
         "                       (--set data.context_length=128K is 131072)\n"
         "  sections: model, cluster, data, scheduler, training, simulate, output, comm\n"
         "  model.preset fills every model size not set explicitly:\n";
  for (const auto& p : model_presets()) {
    out << "    " << p.name << std::string(22 - std::strlen(p.name), ' ') << p.num_layers
        << " layers, hidden " << p.hidden_size << ", heads " << p.num_heads << "/" << p.num_kv_heads
        << " (" << p.description << ")\n";
  }
  out << "    custom                every size from the config\n"
         "  Full reference: docs/configuration.md\n";
  return out.str();
}

std::string config_to_text(const config::RunConfig& config, bool include_defaults) {
  config::RunConfig copy = config;
  if (include_defaults) fill_defaults(&copy);
  std::string text;
  pb::TextFormat::Printer printer;
  CADRE_CHECK(printer.PrintToString(copy, &text), "cannot print the config as text");
  return text;
}

}  // namespace cadre::launch
