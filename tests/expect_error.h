// expect_error: runs a callable that must throw cadre::Error and checks that the message holds
// every listed piece (each missing piece is reported with the whole message). Tests of bad input
// (configs, files, model sizes) use it.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "common/error.h"

namespace cadre::testing {

template <typename F>
void expect_error(F&& f, const std::vector<std::string>& pieces) {
  try {
    std::forward<F>(f)();
  } catch (const Error& e) {
    for (const auto& p : pieces) {
      EXPECT_NE(e.message().find(p), std::string::npos) << "message lacks '" << p << "':\n"
                                                        << e.message();
    }
    return;
  }
  ADD_FAILURE() << "no cadre::Error thrown; expected one mentioning '" << pieces.front() << "'";
}

}  // namespace cadre::testing
