// Placeholder until `cadre bench kernel` lands; its owner deletes this file.
#include <iostream>

#include "launch/commands.h"

namespace cadre::launch {
int run_bench_kernel(const Args&) {
  std::cerr << "cadre: 'bench kernel' is not built yet\n";
  return 2;
}
}  // namespace cadre::launch
