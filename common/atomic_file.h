// Atomic file replacement: the bytes go to a temporary file beside the target, which is fsynced,
// renamed over the target, and the directory fsynced. Readers see the old file or the whole new
// one, never a part; a crash leaves no half-written target.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "common/error.h"

namespace cadre {

inline void write_file_atomically(const std::string& path, const void* data, size_t size) {
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CADRE_CHECK(fd >= 0, "cannot create '", temp, "' (for '", path, "'): ", std::strerror(errno),
              "; accepted: a path in an existing, writable directory");
  const char* bytes = static_cast<const char*>(data);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, bytes + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = errno;
      ::close(fd);
      ::unlink(temp.c_str());
      CADRE_FAIL("writing '", temp, "' failed: ", std::strerror(error), " (disk full?)");
    }
    done += static_cast<size_t>(n);
  }
  const int synced = ::fsync(fd) == 0 ? 0 : errno;
  const int closed = ::close(fd) == 0 ? 0 : errno;
  if (synced != 0 || closed != 0) {
    ::unlink(temp.c_str());
    CADRE_FAIL("flushing '", temp, "' failed: ", std::strerror(synced != 0 ? synced : closed));
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(temp.c_str());
    CADRE_FAIL("renaming '", temp, "' to '", path, "' failed: ", std::strerror(error));
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dir_fd = ::open(dir.c_str(), O_RDONLY);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

inline void write_file_atomically(const std::string& path, const std::string& bytes) {
  write_file_atomically(path, bytes.data(), bytes.size());
}

}  // namespace cadre
