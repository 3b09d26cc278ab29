// A fresh directory under the test temporary directory for one test, removed with its contents
// when the test ends. Tests of files (checkpoints, exports, datasets) use it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "common/posix_fs.h"

namespace cadre::testing {

class TempDir {
 public:
  // tag names the directory (with the process id and a counter, so tests never share one).
  explicit TempDir(const std::string& tag = "cadre_test")
      : path_(::testing::TempDir() + tag + "_" + std::to_string(::getpid()) + "_" +
              std::to_string(counter_++)) {
    posix_fs::remove_tree(path_);
    posix_fs::make_directories(path_);
  }
  ~TempDir() { posix_fs::remove_tree(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  static inline int counter_ = 0;
  std::string path_;
};

}  // namespace cadre::testing
