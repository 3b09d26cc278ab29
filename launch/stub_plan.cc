// Placeholder until `cadre plan` lands; its owner deletes this file.
#include <iostream>

#include "launch/commands.h"

namespace cadre::launch {
int run_plan(const Args&) {
  std::cerr << "cadre: 'plan' is not built yet\n";
  return 2;
}
}  // namespace cadre::launch
