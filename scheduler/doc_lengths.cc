// Document-length generators with their own sampling on mt19937_64 (std:: distributions differ
// between standard libraries; these do not), length files, and the up-sampling recipe.
#include "scheduler/doc_lengths.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace cadre::scheduler {

namespace {

constexpr double kPi = 3.14159265358979323846;

double uniform01(std::mt19937_64& rng) {
  // 53 random bits -> [0, 1).
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
}

int64_t uniform_int(std::mt19937_64& rng, int64_t lo, int64_t hi) {  // inclusive
  return lo + static_cast<int64_t>(uniform01(rng) * static_cast<double>(hi - lo + 1));
}

int64_t log_uniform(std::mt19937_64& rng, double lo, double hi) {
  return static_cast<int64_t>(std::llround(std::exp(std::log(lo) + uniform01(rng) * (std::log(hi) - std::log(lo)))));
}

}  // namespace

std::vector<int64_t> load_lengths_file(const std::string& path) {
  std::ifstream in(path);
  CADRE_CHECK(in.good(), "cannot read lengths file '", path,
              "' (data.lengths_file); accepted: a readable file with a JSON array of integers "
              "or one integer per line");
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  std::vector<int64_t> lengths;
  const bool json = text.find('[') != std::string::npos;
  if (json) {
    const size_t open = text.find('['), close = text.rfind(']');
    CADRE_CHECK(close != std::string::npos && close > open, "lengths file '", path,
                "' starts a JSON array but does not close it; accepted: [1, 2, 3] or one integer "
                "per line");
    text = text.substr(open + 1, close - open - 1);
    for (char& c : text) {
      if (c == ',') c = '\n';
    }
  }
  std::istringstream lines(text);
  std::string line;
  int line_number = 0;
  while (std::getline(lines, line)) {
    ++line_number;
    const size_t hash = line.find('#');
    if (!json && hash != std::string::npos) line = line.substr(0, hash);
    const size_t first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos) continue;
    const size_t last = line.find_last_not_of(" \t\r");
    const std::string token = line.substr(first, last - first + 1);
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(token, &used);
    } catch (...) {
      used = 0;
    }
    CADRE_CHECK(used == token.size() && value >= 1, "lengths file '", path, "' ",
                json ? "entry " : "line ", line_number, " is '", token,
                "'; accepted: positive integers (tokens per document)");
    lengths.push_back(value);
  }
  CADRE_CHECK(!lengths.empty(), "lengths file '", path, "' holds no lengths");
  return lengths;
}

DocLengthSource::DocLengthSource(const config::DataConfig& data, uint64_t seed)
    : data_(data), rng_(seed) {
  const std::string& d = data_.distribution();
  if (d == "file") {
    CADRE_CHECK(!data_.lengths_file().empty(),
                "data.distribution is 'file' but data.lengths_file is empty; set it to a file of "
                "lengths");
    file_lengths_ = load_lengths_file(data_.lengths_file());
    file_position_ = static_cast<size_t>(seed % file_lengths_.size());
  } else if (d == "lognormal") {
    CADRE_CHECK(data_.lognormal_sigma() > 0, "data.lognormal_sigma is ", data_.lognormal_sigma(),
                "; accepted: > 0");
  } else if (d == "uniform") {
    CADRE_CHECK(data_.uniform_min_tokens() >= 1 &&
                    data_.uniform_max_tokens() >= data_.uniform_min_tokens(),
                "data.uniform_min_tokens ", data_.uniform_min_tokens(), " and uniform_max_tokens ",
                data_.uniform_max_tokens(), "; accepted: 1 <= min <= max");
  } else if (d == "fixed") {
    CADRE_CHECK(data_.fixed_tokens() >= 1, "data.fixed_tokens is ", data_.fixed_tokens(),
                "; accepted: >= 1");
  } else {
    CADRE_CHECK(d == "wlb" || d == "prolong", "data.distribution is '", d,
                "'; accepted: wlb, prolong, lognormal, uniform, fixed, file");
  }
}

double DocLengthSource::uniform01() { return cadre::scheduler::uniform01(rng_); }

double DocLengthSource::normal() {
  // Box-Muller: one normal from two uniforms (1 - u keeps the log finite).
  const double u1 = 1.0 - uniform01(), u2 = uniform01();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
}

int64_t DocLengthSource::next() {
  const std::string& d = data_.distribution();
  if (d == "wlb") {
    // shared/doclen/README.md's WLB-like fit: a body of short documents and a log-uniform tail.
    const double p = uniform01();
    if (p < 0.16) return uniform_int(rng_, 1, 1023);
    if (p < 0.973) return uniform_int(rng_, 1024, 6250);
    if (p < 0.987) return log_uniform(rng_, 6400, 16384);
    if (p < 0.995) return log_uniform(rng_, 16384, 65536);
    return log_uniform(rng_, 65536, 125000);
  }
  if (d == "prolong") {
    // ProLong-like fit: LogNormal(7.60, 0.76) truncated below at 575, or a Pareto tail.
    if (uniform01() < 0.993) {
      while (true) {
        const double x = std::exp(7.60 + 0.76 * normal());
        if (x >= 575) return static_cast<int64_t>(std::llround(x));
      }
    }
    const double x = 16384.0 / std::pow(1.0 - uniform01(), 1.0 / 1.35);
    return static_cast<int64_t>(std::llround(std::min(x, 340000.0)));
  }
  if (d == "lognormal") {
    const double x = std::exp(data_.lognormal_mu() + data_.lognormal_sigma() * normal());
    return std::max<int64_t>(1, static_cast<int64_t>(std::llround(x)));
  }
  if (d == "uniform") return uniform_int(rng_, data_.uniform_min_tokens(), data_.uniform_max_tokens());
  if (d == "fixed") return data_.fixed_tokens();
  const int64_t length = file_lengths_[file_position_];
  file_position_ = (file_position_ + 1) % file_lengths_.size();
  return length;
}

std::vector<int64_t> upsample_lengths(const std::vector<int64_t>& lengths,
                                      const config::DataConfig& data, uint64_t seed) {
  CADRE_CHECK(data.short_keep_fraction() > 0 && data.short_keep_fraction() <= 1,
              "data.short_keep_fraction is ", data.short_keep_fraction(), "; accepted: (0, 1]");
  CADRE_CHECK(data.long_replicas() >= 1, "data.long_replicas is ", data.long_replicas(),
              "; accepted: >= 1");
  CADRE_CHECK(data.elongation() > 0, "data.elongation is ", data.elongation(), "; accepted: > 0");
  const bool identity = data.short_keep_fraction() == 1.0 && data.long_replicas() == 1 &&
                        data.elongation() == 1.0;
  if (identity) return lengths;
  std::mt19937_64 rng(seed ^ 0x9E3779B97F4A7C15ULL);
  std::vector<int64_t> out;
  for (int64_t len : lengths) {
    if (len >= data.split_threshold_tokens()) {
      for (int i = 0; i < data.long_replicas(); ++i) out.push_back(len);
    } else if (uniform01(rng) < data.short_keep_fraction()) {
      out.push_back(len);
    }
  }
  // Fisher-Yates with our own index draw (std::shuffle is not portable across libraries).
  for (size_t i = out.size(); i > 1; --i) {
    std::swap(out[i - 1], out[static_cast<size_t>(uniform_int(rng, 0, static_cast<int64_t>(i) - 1))]);
  }
  for (int64_t& len : out) {
    len = std::max<int64_t>(1, static_cast<int64_t>(std::llround(len * data.elongation())));
  }
  return out;
}

std::vector<int64_t> draw_global_batch(const config::DataConfig& data, int64_t total_tokens,
                                       uint64_t seed) {
  CADRE_CHECK(total_tokens >= 1, "a global batch needs >= 1 token; got ", total_tokens);
  DocLengthSource source(data, seed);
  std::vector<int64_t> batch;
  int64_t sum = 0;
  for (uint64_t round = 0; sum < total_tokens; ++round) {
    std::vector<int64_t> drawn;
    int64_t drawn_sum = 0;
    while (drawn_sum < total_tokens - sum) {
      drawn.push_back(source.next());
      drawn_sum += drawn.back();
    }
    for (int64_t len : upsample_lengths(drawn, data, seed + round)) {
      batch.push_back(len);
      sum += len;
    }
    CADRE_CHECK(round < 1000, "the up-sampling recipe keeps too few documents to fill ",
                total_tokens, " tokens; raise data.short_keep_fraction");
  }
  return batch;
}

}  // namespace cadre::scheduler
