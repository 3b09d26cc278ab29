// The host-clock timeline, interval arithmetic over spans, span serialisation and the Chrome trace
// writer. The CUDA-event timeline is in timeline_gpu.cc (GPU build).
#include "comm/timeline.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <sstream>
#include <utility>

#include "common/atomic_file.h"
#include "common/error.h"

namespace cadre::comm {
namespace {

class HostTimeline : public Timeline {
 public:
  void begin_step() override {
    spans_.clear();
    origin_ = Clock::now();
  }
  int begin_compute(const std::string& name) override { return open(Lane::kCompute, name); }
  void end_compute(int span) override { close(span); }
  int begin_communication(const std::string& name, void*) override {
    return open(Lane::kCommunication, name);
  }
  void communication_enqueued(int) override {}
  void communication_waited(int span) override { close(span); }
  std::vector<Span> resolve() override {
    std::vector<Span> done;
    for (const Span& s : spans_) {
      if (s.end_us >= s.start_us) done.push_back(s);
    }
    return done;
  }

 private:
  using Clock = std::chrono::steady_clock;
  double now_us() const {
    return std::chrono::duration<double, std::micro>(Clock::now() - origin_).count();
  }
  int open(Lane lane, const std::string& name) {
    spans_.push_back({lane, name, now_us(), -1.0});
    return static_cast<int>(spans_.size()) - 1;
  }
  void close(int span) {
    CADRE_CHECK(span >= 0 && span < static_cast<int>(spans_.size()), "timeline: unknown span ",
                span);
    spans_[span].end_us = now_us();
  }

  Clock::time_point origin_ = Clock::now();
  std::vector<Span> spans_;
};

// Sorted, merged [start, end) intervals of the spans that pass `keep`.
template <typename Keep>
std::vector<std::pair<double, double>> merged(const std::vector<Span>& spans, Keep keep) {
  std::vector<std::pair<double, double>> v;
  for (const Span& s : spans) {
    if (keep(s) && s.end_us > s.start_us) v.emplace_back(s.start_us, s.end_us);
  }
  std::sort(v.begin(), v.end());
  std::vector<std::pair<double, double>> out;
  for (const auto& iv : v) {
    if (!out.empty() && iv.first <= out.back().second) {
      out.back().second = std::max(out.back().second, iv.second);
    } else {
      out.push_back(iv);
    }
  }
  return out;
}

double total(const std::vector<std::pair<double, double>>& intervals) {
  double t = 0;
  for (const auto& iv : intervals) t += iv.second - iv.first;
  return t;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out;
}

}  // namespace

std::unique_ptr<Timeline> make_host_timeline() { return std::make_unique<HostTimeline>(); }

#ifndef CADRE_WITH_CUDA
std::unique_ptr<Timeline> make_cuda_timeline(void*, void*) {
  CADRE_FAIL("the CUDA timeline needs the GPU build (this is the CPU build)");
}
#endif

double busy_us(const std::vector<Span>& spans, Lane lane) {
  return total(merged(spans, [&](const Span& s) { return s.lane == lane; }));
}

double exposed_communication_us(const std::vector<Span>& spans, const std::string& prefix) {
  auto comm = merged(spans, [&](const Span& s) {
    return s.lane == Lane::kCommunication && s.name.compare(0, prefix.size(), prefix) == 0;
  });
  auto compute = merged(spans, [](const Span& s) { return s.lane == Lane::kCompute; });
  double exposed = 0;
  size_t j = 0;
  for (const auto& [start, end] : comm) {
    double covered = 0;
    while (j < compute.size() && compute[j].second <= start) ++j;
    for (size_t k = j; k < compute.size() && compute[k].first < end; ++k) {
      covered += std::min(end, compute[k].second) - std::max(start, compute[k].first);
    }
    exposed += (end - start) - covered;
  }
  return exposed;
}

void write_chrome_trace(const std::string& path, const std::vector<std::vector<Span>>& per_rank,
                        const std::string& title) {
  std::ostringstream out;
  out.precision(3);
  out << std::fixed << "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"title\":\""
      << json_escape(title) << "\"},\"traceEvents\":[";
  bool first = true;
  auto sep = [&]() {
    if (!first) out << ",\n";
    first = false;
  };
  for (size_t r = 0; r < per_rank.size(); ++r) {
    sep();
    out << "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":" << r
        << ",\"args\":{\"name\":\"rank " << r << "\"}}";
    sep();
    out << "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":" << r
        << ",\"tid\":1,\"args\":{\"name\":\"compute stream\"}}";
    sep();
    out << "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":" << r
        << ",\"tid\":2,\"args\":{\"name\":\"communication stream\"}}";
    for (const Span& s : per_rank[r]) {
      sep();
      out << "{\"ph\":\"X\",\"name\":\"" << json_escape(s.name) << "\",\"pid\":" << r
          << ",\"tid\":" << (s.lane == Lane::kCompute ? 1 : 2) << ",\"ts\":" << s.start_us
          << ",\"dur\":" << std::max(0.0, s.end_us - s.start_us) << "}";
    }
  }
  out << "]}\n";
  write_file_atomically(path, out.str());
}

std::string serialize_spans(const std::vector<Span>& spans) {
  std::string bytes;
  auto put = [&](const void* p, size_t n) { bytes.append(static_cast<const char*>(p), n); };
  for (const Span& s : spans) {
    const uint8_t lane = s.lane == Lane::kCompute ? 0 : 1;
    const uint32_t length = static_cast<uint32_t>(s.name.size());
    put(&lane, 1);
    put(&s.start_us, sizeof(double));
    put(&s.end_us, sizeof(double));
    put(&length, sizeof(length));
    put(s.name.data(), length);
  }
  return bytes;
}

std::vector<Span> deserialize_spans(const std::string& bytes) {
  std::vector<Span> spans;
  size_t at = 0;
  auto get = [&](void* p, size_t n) {
    CADRE_CHECK(at + n <= bytes.size(), "timeline: truncated span record at byte ", at);
    std::memcpy(p, bytes.data() + at, n);
    at += n;
  };
  while (at < bytes.size()) {
    Span s;
    uint8_t lane = 0;
    uint32_t length = 0;
    get(&lane, 1);
    get(&s.start_us, sizeof(double));
    get(&s.end_us, sizeof(double));
    get(&length, sizeof(length));
    CADRE_CHECK(lane <= 1 && at + length <= bytes.size(), "timeline: corrupt span record");
    s.lane = lane == 0 ? Lane::kCompute : Lane::kCommunication;
    s.name.assign(bytes.data() + at, length);
    at += length;
    spans.push_back(std::move(s));
  }
  return spans;
}

}  // namespace cadre::comm
