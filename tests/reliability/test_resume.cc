// Checkpoint faults below `cadre train`: the resume choice over complete, truncated, corrupt and
// half-written checkpoints (a writer killed mid-write, a write that runs out of room), the
// reader's size checks, and the data fingerprint that --resume compares.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/temp_dir.h"
#include "common/error.h"
#include "runtime/checkpoint.h"
#include "runtime/data_fingerprint.h"
#include "runtime/resume.h"

namespace cadre::runtime {
namespace {

namespace fs = std::filesystem;

using cadre::testing::TempDir;

CheckpointState small_state(int64_t step, int64_t elements = 6) {
  CheckpointState s;
  s.counters["step"] = step;
  s.tensors.emplace_back("w", torch::arange(elements, torch::kFloat) * static_cast<double>(step));
  return s;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  }
  return "(no error)";
}

TEST(ResumeChoice, NewestCompleteCheckpointWins) {
  TempDir dir;
  save_checkpoint(dir.path(), 2, small_state(2), 5);
  save_checkpoint(dir.path(), 4, small_state(4), 5);
  write_all(dir.file("step_00000006.ckpt.tmp.123"), "half a checkpoint");  // a killed writer's
  const ResumeChoice choice = choose_resume_checkpoint(dir.path());
  EXPECT_EQ(choice.path, checkpoint_path(dir.path(), 4));
  EXPECT_TRUE(choice.skipped.empty());
}

TEST(ResumeChoice, TruncatedOrCorruptNewestFallsBackAndSaysWhy) {
  TempDir dir;
  save_checkpoint(dir.path(), 2, small_state(2), 5);
  const std::string newest = save_checkpoint(dir.path(), 4, small_state(4), 5);
  const std::string bytes = read_all(newest);
  write_all(newest, bytes.substr(0, bytes.size() / 2));
  ResumeChoice choice = choose_resume_checkpoint(dir.path());
  EXPECT_EQ(choice.path, checkpoint_path(dir.path(), 2));
  ASSERT_EQ(choice.skipped.size(), 1u);
  EXPECT_EQ(choice.skipped[0].first, newest);
  EXPECT_NE(choice.skipped[0].second.find("step_00000004.ckpt' is corrupt or truncated"),
            std::string::npos)
      << choice.skipped[0].second;
  // One flipped bit in the middle is caught by the hash.
  std::string flipped = bytes;
  flipped[flipped.size() / 2] ^= 0x10;
  write_all(newest, flipped);
  choice = choose_resume_checkpoint(dir.path());
  EXPECT_EQ(choice.path, checkpoint_path(dir.path(), 2));
  ASSERT_EQ(choice.skipped.size(), 1u);
  EXPECT_NE(choice.skipped[0].second.find("hash mismatch"), std::string::npos);
}

TEST(ResumeChoice, RefusesWhenNothingIsComplete) {
  TempDir dir;
  EXPECT_NE(message_of([&] { choose_resume_checkpoint(dir.path()); }).find("no checkpoint in"),
            std::string::npos);
  save_checkpoint(dir.path(), 2, small_state(2), 5);
  save_checkpoint(dir.path(), 4, small_state(4), 5);
  write_all(checkpoint_path(dir.path(), 2), "CADRECKP");
  write_all(checkpoint_path(dir.path(), 4), "not a checkpoint at all");
  const std::string m = message_of([&] { choose_resume_checkpoint(dir.path()); });
  EXPECT_NE(m.find("none of the 2 checkpoints"), std::string::npos) << m;
  EXPECT_NE(m.find("step_00000002.ckpt"), std::string::npos) << m;
  EXPECT_NE(m.find("step_00000004.ckpt"), std::string::npos) << m;
}

TEST(CheckpointReader, SizesBeyondTheFileAreRefusedBeforeAllocating) {
  TempDir dir;
  const std::string path = dir.file("big.ckpt");
  write_checkpoint(path, small_state(1));
  std::string bytes = read_all(path);
  // The tensor's one dim (i64, right before its 24 data bytes and the 8-byte hash): 2^50.
  const size_t dim_at = bytes.size() - 8 - 24 - 8;
  int64_t dim = 0;
  std::memcpy(&dim, bytes.data() + dim_at, 8);
  ASSERT_EQ(dim, 6);
  dim = int64_t{1} << 50;
  std::memcpy(bytes.data() + dim_at, &dim, 8);
  // Re-seal the hash (FNV-1a over everything before it) so the parser sees the size.
  uint64_t hash = 0xCBF29CE484222325ull;
  for (size_t i = 0; i + 8 < bytes.size(); ++i) {
    hash ^= static_cast<unsigned char>(bytes[i]);
    hash *= 0x100000001B3ull;
  }
  std::memcpy(bytes.data() + bytes.size() - 8, &hash, 8);
  write_all(path, bytes);
  const std::string m = message_of([&] { read_checkpoint(path); });
  EXPECT_NE(m.find("tensor 'w' is larger than the rest of the file"), std::string::npos) << m;
}

TEST(CheckpointReader, EmptyTensorsRoundTrip) {
  TempDir dir;
  CheckpointState s;
  s.tensors.emplace_back("empty", torch::zeros({0, 3}));
  write_checkpoint(dir.file("e.ckpt"), s);
  const CheckpointState back = read_checkpoint(dir.file("e.ckpt"));
  ASSERT_EQ(back.tensors.size(), 1u);
  EXPECT_EQ(back.tensors[0].second.sizes(), torch::IntArrayRef({0, 3}));
}

// A writer killed while it writes (SIGKILL as soon as its temporary file appears): the previous
// checkpoint is intact and is the one --resume takes; the half-written file is not listed.
TEST(CheckpointFaults, WriterKilledMidWriteLeavesThePreviousOne) {
  TempDir dir;
  save_checkpoint(dir.path(), 2, small_state(2), 5);
  const std::string before = read_all(checkpoint_path(dir.path(), 2));
  const CheckpointState big = small_state(4, int64_t{64} << 20);  // 256 MiB: a slow write
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    try {
      save_checkpoint(dir.path(), 4, big, 5);
    } catch (...) {
    }
    ::_exit(0);
  }
  bool seen = false;
  for (int i = 0; i < 20000 && !seen; ++i) {
    for (const std::string& name : posix_fs::list_directory(dir.path())) {
      seen |= name.rfind("step_00000004.ckpt.tmp.", 0) == 0;
    }
    if (!seen) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(seen) << "the writer's temporary file never appeared";
  ASSERT_TRUE(WIFSIGNALED(status)) << "the writer finished before it was killed";
  EXPECT_EQ(list_checkpoints(dir.path()), std::vector<std::string>{checkpoint_path(dir.path(), 2)});
  EXPECT_EQ(read_all(checkpoint_path(dir.path(), 2)), before);
  EXPECT_EQ(choose_resume_checkpoint(dir.path()).path, checkpoint_path(dir.path(), 2));
}

// A write that runs out of room (a file size limit, as a full disk would): the writer gets one
// error naming the file and the cause, removes its temporary file, and the previous checkpoint
// is intact.
TEST(CheckpointFaults, WriteWithoutRoomFailsCleanly) {
  TempDir dir;
  save_checkpoint(dir.path(), 2, small_state(2), 5);
  const std::string before = read_all(checkpoint_path(dir.path(), 2));
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(pipe_fds[0]);
    ::signal(SIGXFSZ, SIG_IGN);  // write() then fails with EFBIG instead of killing us
    rlimit limit{4096, 4096};
    ::setrlimit(RLIMIT_FSIZE, &limit);
    std::string message = "(no error)";
    try {
      save_checkpoint(dir.path(), 4, small_state(4, 100000), 5);
    } catch (const Error& e) {
      message = e.message();
    }
    (void)!::write(pipe_fds[1], message.data(), message.size());
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  std::string message;
  char buffer[512];
  ssize_t n;
  while ((n = ::read(pipe_fds[0], buffer, sizeof(buffer))) > 0) message.append(buffer, n);
  ::close(pipe_fds[0]);
  ::waitpid(child, nullptr, 0);
  EXPECT_NE(message.find("step_00000004.ckpt.tmp."), std::string::npos) << message;
  EXPECT_NE(message.find("File too large"), std::string::npos) << message;
  std::vector<std::string> left = posix_fs::list_directory(dir.path());  // not std::filesystem
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, std::vector<std::string>{"step_00000002.ckpt"});
  EXPECT_EQ(read_all(checkpoint_path(dir.path(), 2)), before);
}

TEST(DataFingerprint, FollowsTheDataNotItsSpelling) {
  TempDir dir;
  write_all(dir.file("a.bin"), std::string("\x05\x00\x06\x00\x00\x00\x07\x00", 8));
  write_all(dir.file("copy.bin"), read_all(dir.file("a.bin")));
  config::DataConfig data;
  data.set_token_file(dir.file("a.bin"));
  const uint64_t base = data_fingerprint(data);
  config::DataConfig moved = data;
  moved.set_token_file(dir.file("copy.bin"));
  EXPECT_EQ(data_fingerprint(moved), base) << "the same bytes elsewhere are the same data";
  config::DataConfig spelled = data;
  spelled.set_token_dtype("uint16");  // the default, written out
  spelled.set_eod_token(0);
  EXPECT_EQ(data_fingerprint(spelled), base);
  config::DataConfig other_eod = data;
  other_eod.set_eod_token(5);
  EXPECT_NE(data_fingerprint(other_eod), base);
  config::DataConfig other_context = data;
  other_context.set_context_length(1024);
  EXPECT_NE(data_fingerprint(other_context), base);
  write_all(dir.file("copy.bin"), std::string("\x05\x00\x06\x00\x00\x00\x08\x00", 8));
  EXPECT_NE(data_fingerprint(moved), base) << "one token changed";
  config::DataConfig synthetic_a, synthetic_b;
  synthetic_b.set_seed(synthetic_a.seed() + 1);
  EXPECT_NE(data_fingerprint(synthetic_a), data_fingerprint(synthetic_b));
  config::DataConfig missing = data;
  missing.set_token_file(dir.file("absent.bin"));
  EXPECT_NE(message_of([&] { data_fingerprint(missing); }).find("data.token_file"),
            std::string::npos);
}

}  // namespace
}  // namespace cadre::runtime
