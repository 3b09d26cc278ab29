// Directory and file operations on POSIX calls. Code that links LibTorch uses these instead of
// std::filesystem's directory functions: the LibTorch wheels on the GPU machines export their own
// copies of std::filesystem symbols (remove_all, directory iteration), which the dynamic linker
// binds in place of libstdc++'s, and those copies jump to address 0 there (seen as a SIGSEGV in
// std::filesystem::remove_all inside libtorch.so). Path joining (std::filesystem::path) is inline
// and safe.
#pragma once

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "common/error.h"

namespace cadre::posix_fs {

inline bool exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

inline bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Names of the entries of `dir` (not "." or ".."); empty if it cannot be read.
inline std::vector<std::string> list_directory(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  return names;
}

// mkdir -p. Throws cadre::Error naming the first directory that could not be made.
inline void make_directories(const std::string& path) {
  if (path.empty() || is_directory(path)) return;
  const size_t slash = path.find_last_of('/');
  if (slash != std::string::npos && slash > 0) make_directories(path.substr(0, slash));
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    CADRE_FAIL("cannot create directory '", path, "': ", std::strerror(errno));
  }
}

inline bool remove_file(const std::string& path) { return ::unlink(path.c_str()) == 0; }

// rm -rf; silent about what cannot be removed.
inline void remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    for (const std::string& name : list_directory(path)) remove_tree(path + "/" + name);
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

}  // namespace cadre::posix_fs
