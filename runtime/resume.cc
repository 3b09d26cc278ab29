// The resume choice: list_checkpoints newest first, the first one read_checkpoint accepts wins.
#include "runtime/resume.h"

#include "common/error.h"
#include "runtime/checkpoint.h"

namespace cadre::runtime {

ResumeChoice choose_resume_checkpoint(const std::string& dir) {
  const std::vector<std::string> found = list_checkpoints(dir);
  CADRE_CHECK(!found.empty(), "--resume: no checkpoint in '", dir,
              "'; accepted: a directory written by a run with training.checkpoint_every > 0");
  ResumeChoice choice;
  for (auto it = found.rbegin(); it != found.rend(); ++it) {
    try {
      read_checkpoint(*it);  // reads and hashes every byte
      choice.path = *it;
      return choice;
    } catch (const Error& e) {
      choice.skipped.emplace_back(*it, e.message());
    }
  }
  std::string faults;
  for (const auto& [path, why] : choice.skipped) faults += "\n  " + why;
  CADRE_FAIL("--resume: none of the ", found.size(), " checkpoints in '", dir,
             "' reads back complete:", faults,
             "\naccepted: a directory holding at least one complete checkpoint");
}

}  // namespace cadre::runtime
