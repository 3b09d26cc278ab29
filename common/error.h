// cadre::Error and the checking macros every layer uses at its API boundaries.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace cadre {

// An error at an API boundary: carries file:line and a message saying what was wrong and what is
// accepted.
class Error : public std::runtime_error {
 public:
  Error(const char* file, int line, const std::string& message)
      : std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + message),
        message_(message) {}
  // The message without the file:line prefix (what a user is shown).
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

namespace detail {
inline void append_all(std::ostringstream&) {}
template <typename T, typename... Rest>
void append_all(std::ostringstream& out, const T& first, const Rest&... rest) {
  out << first;
  append_all(out, rest...);
}
}  // namespace detail

// Concatenates its arguments with operator<< into one string.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream out;
  detail::append_all(out, args...);
  return out.str();
}

}  // namespace cadre

// CADRE_CHECK(cond, "what was wrong", value, "; accepted: ...") throws cadre::Error when !cond.
#define CADRE_CHECK(cond, ...)                                                 \
  do {                                                                         \
    if (!(cond)) {                                                             \
      throw ::cadre::Error(__FILE__, __LINE__, ::cadre::str_cat(__VA_ARGS__)); \
    }                                                                          \
  } while (0)

#define CADRE_FAIL(...) throw ::cadre::Error(__FILE__, __LINE__, ::cadre::str_cat(__VA_ARGS__))
