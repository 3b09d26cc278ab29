// Placeholder until `cadre train` lands; its owner deletes this file.
#include <iostream>

#include "launch/commands.h"

namespace cadre::launch {
int run_train(const Args&) {
  std::cerr << "cadre: 'train' is not built yet\n";
  return 2;
}
}  // namespace cadre::launch
