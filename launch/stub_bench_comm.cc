// Placeholder until `cadre bench comm` lands; its owner deletes this file.
#include <iostream>

#include "launch/commands.h"

namespace cadre::launch {
int run_bench_comm(const Args&) {
  std::cerr << "cadre: 'bench comm' is not built yet\n";
  return 2;
}
}  // namespace cadre::launch
