// Data fingerprints: canonical data settings plus file contents, hashed with FNV-1a.
#include "runtime/data_fingerprint.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <fstream>
#include <vector>

#include "common/error.h"

namespace cadre::runtime {
namespace {

constexpr uint64_t kFnvOffset = 0xCBF29CE484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001B3ull;

uint64_t fnv1a(uint64_t hash, const char* data, size_t size) {
  for (size_t i = 0; i < size; ++i) {
    hash ^= static_cast<unsigned char>(data[i]);
    hash *= kFnvPrime;
  }
  return hash;
}

uint64_t hash_file(uint64_t hash, const std::string& path, const std::string& field) {
  std::ifstream in(path, std::ios::binary);
  CADRE_CHECK(in.good(), "cannot open ", field, " '", path, "' to fingerprint the data");
  std::vector<char> buffer(1 << 20);
  uint64_t size = 0;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const size_t n = static_cast<size_t>(in.gcount());
    hash = fnv1a(hash, buffer.data(), n);
    size += n;
  }
  return fnv1a(hash, reinterpret_cast<const char*>(&size), sizeof(size));
}

// Sets every unset singular scalar field to its default, so that the serialisation depends on
// the values only (proto2 serialises set fields, defaults included, and leaves unset ones out).
void set_defaults(google::protobuf::Message* message) {
  using google::protobuf::FieldDescriptor;
  const auto* descriptor = message->GetDescriptor();
  const auto* reflection = message->GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const FieldDescriptor* f = descriptor->field(i);
    if (f->is_repeated() || reflection->HasField(*message, f)) continue;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32: reflection->SetInt32(message, f, f->default_value_int32()); break;
      case FieldDescriptor::CPPTYPE_INT64: reflection->SetInt64(message, f, f->default_value_int64()); break;
      case FieldDescriptor::CPPTYPE_UINT32: reflection->SetUInt32(message, f, f->default_value_uint32()); break;
      case FieldDescriptor::CPPTYPE_UINT64: reflection->SetUInt64(message, f, f->default_value_uint64()); break;
      case FieldDescriptor::CPPTYPE_DOUBLE: reflection->SetDouble(message, f, f->default_value_double()); break;
      case FieldDescriptor::CPPTYPE_FLOAT: reflection->SetFloat(message, f, f->default_value_float()); break;
      case FieldDescriptor::CPPTYPE_BOOL: reflection->SetBool(message, f, f->default_value_bool()); break;
      case FieldDescriptor::CPPTYPE_ENUM: reflection->SetEnum(message, f, f->default_value_enum()); break;
      case FieldDescriptor::CPPTYPE_STRING: reflection->SetString(message, f, f->default_value_string()); break;
      case FieldDescriptor::CPPTYPE_MESSAGE: set_defaults(reflection->MutableMessage(message, f)); break;
    }
  }
}

}  // namespace

uint64_t data_fingerprint(const config::DataConfig& data) {
  config::DataConfig canonical = data;
  canonical.clear_token_file();
  canonical.clear_lengths_file();
  set_defaults(&canonical);
  std::string bytes;
  CADRE_CHECK(canonical.SerializeToString(&bytes), "cannot serialise the data settings");
  uint64_t hash = fnv1a(kFnvOffset, bytes.data(), bytes.size());
  if (!data.token_file().empty()) hash = hash_file(hash, data.token_file(), "data.token_file");
  if (!data.lengths_file().empty()) {
    hash = hash_file(hash, data.lengths_file(), "data.lengths_file");
  }
  return hash;
}

std::string describe_data(const config::DataConfig& data) {
  std::string what = data.token_file().empty()
                         ? str_cat("synthetic ", data.distribution(), " documents, seed ", data.seed())
                         : str_cat("token file '", data.token_file(), "' (", data.token_dtype(),
                                   ", eod ", data.eod_token(), ")");
  if (!data.lengths_file().empty()) what += str_cat(", lengths file '", data.lengths_file(), "'");
  return str_cat(what, ", packing ", data.packing(), ", context ", data.context_length());
}

}  // namespace cadre::runtime
