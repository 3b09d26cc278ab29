// Placeholder until `cadre simulate` lands; its owner deletes this file.
#include <iostream>

#include "launch/commands.h"

namespace cadre::launch {
int run_simulate(const Args&) {
  std::cerr << "cadre: 'simulate' is not built yet\n";
  return 2;
}
}  // namespace cadre::launch
