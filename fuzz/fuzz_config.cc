// libFuzzer target: the config text loader and --set overrides. Input: a text-format RunConfig,
// optionally followed by a line "%%" and one override (path=value) per line. Every bad input must
// end in cadre::Error (one clear message); any other exception, a crash or a sanitizer report is
// a failure. Accepted configs must print and parse back to the same config.
#include <google/protobuf/util/message_differencer.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/error.h"
#include "launch/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  std::string text = input;
  std::vector<std::string> overrides;
  const size_t split = input.find("\n%%\n");
  if (split != std::string::npos) {
    text = input.substr(0, split);
    size_t begin = split + 4;
    while (begin <= input.size()) {
      size_t end = input.find('\n', begin);
      if (end == std::string::npos) end = input.size();
      overrides.push_back(input.substr(begin, end - begin));
      begin = end + 1;
    }
  }
  try {
    cadre::config::RunConfig config = cadre::launch::parse_config_text(text, "fuzz.pbtxt");
    for (const std::string& o : overrides) cadre::launch::apply_override(config, o);
    const int world = size > 0 ? data[0] % 9 : 0;  // 0: no launched world to check against
    cadre::launch::finalize_config(config, world);
    // What was accepted round-trips through its text form.
    const std::string printed = cadre::launch::config_to_text(config);
    const cadre::config::RunConfig again = cadre::launch::parse_config_text(printed, "printed");
    if (!google::protobuf::util::MessageDifferencer::Equivalent(config, again)) {
      std::fprintf(stderr, "fuzz_config: an accepted config does not parse back equal:\n%s\n",
                   printed.c_str());
      std::abort();
    }
  } catch (const cadre::Error&) {
    // The expected outcome for bad input.
  }
  return 0;
}
