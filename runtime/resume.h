// Which checkpoint `--resume` continues from: the newest one that reads back complete. A newer
// file that is truncated or corrupt (or not a checkpoint) is skipped and reported by name, never
// deleted; the run says which one it fell back to (docs/reliability.md explains the choice).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace cadre::runtime {

struct ResumeChoice {
  std::string path;  // the newest complete checkpoint
  // Newer checkpoints passed over: (path, why it cannot be read), newest first.
  std::vector<std::pair<std::string, std::string>> skipped;
};

// Throws cadre::Error when `dir` holds no checkpoint, or none that reads back complete (naming
// each file and its fault).
ResumeChoice choose_resume_checkpoint(const std::string& dir);

}  // namespace cadre::runtime
