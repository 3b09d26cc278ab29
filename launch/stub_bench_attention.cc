// Placeholder until `cadre bench attention` lands; its owner deletes this file.
#include <iostream>

#include "launch/commands.h"

namespace cadre::launch {
int run_bench_attention(const Args&) {
  std::cerr << "cadre: 'bench attention' is not built yet\n";
  return 2;
}
}  // namespace cadre::launch
