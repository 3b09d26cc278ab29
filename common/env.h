// Switches read from the environment (A/B knobs of the GPU kernels).
#pragma once

#include <cstdlib>
#include <cstring>

namespace cadre {

// Whether a switch that is on by default is on: anything but the variable set to "0".
inline bool env_switch_on(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr || std::strcmp(value, "0") != 0;
}

}  // namespace cadre
