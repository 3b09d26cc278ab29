// data.path / data.blend parsed and checked (see data_sources.h).
#include "runtime/data_sources.h"

#include <cmath>
#include <cstdlib>

#include "common/error.h"
#include "common/posix_fs.h"

namespace cadre::runtime {
namespace {

void check_prefix(const std::string& field, const std::string& entry, const std::string& prefix) {
  for (const char* suffix : {".idx", ".bin"}) {
    CADRE_CHECK(posix_fs::exists(prefix + suffix) && !posix_fs::is_directory(prefix + suffix),
                field, "=\"", entry, "\": '", prefix, suffix,
                "' does not exist; accepted: a dataset prefix P with P.idx and P.bin (written "
                "by Megatron-LM's tools/preprocess_data.py), without the suffix");
  }
}

}  // namespace

std::vector<WeightedPrefix> megatron_sources(const config::DataConfig& data) {
  CADRE_CHECK(data.path().empty() != (data.blend_size() == 0),
              data.path().empty() ? "data.format=\"megatron\" needs data.path or data.blend; both "
                                    "are empty"
                                  : "data.path and data.blend are both set",
              "; accepted: data.path=PREFIX for one dataset, or data.blend=W1:PREFIX1,W2:PREFIX2 "
              "for a weighted blend");
  std::vector<WeightedPrefix> out;
  if (!data.path().empty()) {
    check_prefix("data.path", data.path(), data.path());
    out.push_back({1.0, data.path()});
    return out;
  }
  for (int i = 0; i < data.blend_size(); ++i) {
    const std::string& entry = data.blend(i);
    const std::string field = str_cat("data.blend[", i, "]");
    const size_t colon = entry.find(':');
    double weight = 0;
    bool parsed = false;
    if (colon != std::string::npos && colon > 0) {
      const std::string w = entry.substr(0, colon);
      char* end = nullptr;
      weight = std::strtod(w.c_str(), &end);
      parsed = end == w.c_str() + w.size();
    }
    CADRE_CHECK(parsed && weight > 0 && std::isfinite(weight) && colon + 1 < entry.size(), field,
                "=\"", entry,
                "\" is not WEIGHT:PREFIX with a positive weight; accepted: e.g. "
                "\"0.7:/data/web_text_document\"");
    const std::string prefix = entry.substr(colon + 1);
    check_prefix(field, entry, prefix);
    out.push_back({weight, prefix});
  }
  return out;
}

}  // namespace cadre::runtime
