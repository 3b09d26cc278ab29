// The `cadre` command line, run as a child process: help, exit codes, and that bad arguments end
// with one message naming the field.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>
#include <vector>

namespace {

struct CliResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `cadre <args>` from the source directory (so configs/ paths resolve).
CliResult run_cadre(const std::string& args) {
  const std::string command =
      std::string("cd '") + CADRE_SOURCE_DIR + "' && '" + CADRE_BINARY + "' " + args + " 2>&1";
  CliResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

void expect_output(const CliResult& r, int exit_code, const std::vector<std::string>& pieces) {
  EXPECT_EQ(r.exit_code, exit_code) << r.output;
  for (const auto& p : pieces) {
    EXPECT_NE(r.output.find(p), std::string::npos) << "output lacks \"" << p << "\":\n" << r.output;
  }
}

TEST(Cli, TopLevelHelpAndBadCommands) {
  expect_output(run_cadre("--help"), 0, {"simulate", "plan", "train", "bench attention", "--set"});
  expect_output(run_cadre(""), 2, {"usage: cadre <command>"});
  expect_output(run_cadre("frobnicate"), 2, {"unknown command 'frobnicate'", "simulate, plan"});
  expect_output(run_cadre("bench"), 2, {"missing benchmark", "attention, kernel, comm"});
  expect_output(run_cadre("bench --help"), 0, {"usage: cadre bench"});
  expect_output(run_cadre("bench warp"), 2, {"unknown benchmark 'warp'"});
}

// Other commands share the config handling: a bad field fails before any work.
// Skipped while a command is still a placeholder.
TEST(Cli, OtherCommandsRejectBadConfig) {
  int checked = 0;
  for (const char* command : {"simulate", "train"}) {
    SCOPED_TRACE(command);
    const CliResult r = run_cadre(std::string(command) + " --set model.num_heads=0");
    if (r.output.find("not built yet") != std::string::npos) continue;
    ++checked;
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("model.num_heads"), std::string::npos) << r.output;
  }
  if (checked == 0) GTEST_SKIP() << "simulate and train are placeholders still";
}

}  // namespace
