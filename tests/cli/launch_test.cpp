// scripts/launch.sh on a signal: it passes SIGTERM on to its ranks and waits for all of them,
// exiting with their status. The ranks are shell stand-ins that, like dit train, take a moment
// to "checkpoint" on SIGTERM and then exit.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <thread>

#include "src/common/text.h"
#include "src/io/atomic_file.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;
using ditlab::testing::wait_or_kill_group;
using ditlab::testing::wait_until;
namespace fs = std::filesystem;

namespace {

// launch.sh with 2 ranks of a stand-in that writes started.RANK, and on SIGTERM waits a second,
// writes stopped.RANK and exits with RANK * `rank_code`; output into `log`. Started in a process
// group of its own (whose id is the returned pid), so that a test that fails leaves nothing behind.
pid_t start_launch(const TempDir& dir, int rank_code, const std::string& log) {
  const std::string d = dir.path();
  const std::string rank = "trap 'kill $! 2>/dev/null; sleep 1; touch " + d + "/stopped.$RANK; exit $((RANK * " +
                           std::to_string(rank_code) + "))' TERM; touch " + d + "/started.$RANK; sleep 60 & wait";
  return ditlab::testing::start_in_own_group(
      ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 2 -- sh -c " + shell_quoted(rank), log);
}

}  // namespace

TEST_CASE("launch.sh passes SIGTERM on to its ranks and waits for them to exit", "[launch][faults]") {
  // rank_code 0: both ranks exit 0 and so does launch.sh; 3: rank 1 exits 3, and launch.sh with it.
  // A second signal (SIGINT) while the ranks are stopping changes nothing.
  for (const int rank_code : {0, 3}) {
    for (const bool twice : {false, true}) {
      INFO("ranks exit with RANK * " << rank_code << (twice ? ", launch.sh signalled twice" : ""));
      TempDir dir("launch");
      const pid_t launch = start_launch(dir, rank_code, dir / "log");
      REQUIRE(wait_until([&] { return fs::exists(dir / "started.0") && fs::exists(dir / "started.1"); }, 20));
      kill(launch, SIGTERM);
      if (twice) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        kill(launch, SIGINT);
      }
      const int code = wait_or_kill_group(launch, 20);
      INFO(read_file(dir / "log"));
      CHECK(code == rank_code);
      // Both ranks had finished "checkpointing" when launch.sh exited.
      CHECK(fs::exists(dir / "stopped.0"));
      CHECK(fs::exists(dir / "stopped.1"));
      CHECK_THAT(read_file(dir / "log"), !Catch::Contains("unbound variable"));
      kill(-launch, SIGKILL);  // nothing should be left; just in case
    }
  }
}

TEST_CASE("launch.sh stops the other ranks when one fails and exits with its code", "[launch]") {
  TempDir dir("launch-fail");
  // Rank 1 fails once rank 0 is up; rank 0 is stopped by launch.sh and exits 0.
  const std::string d = dir.path();
  const std::string rank = "if [ $RANK = 1 ]; then while [ ! -e " + d + "/started.0 ]; do sleep 0.05; done; exit 4; fi; "
                           "trap 'kill $! 2>/dev/null; touch " + d + "/stopped.0; exit 0' TERM; touch " + d +
                           "/started.0; sleep 60 & wait";
  const auto start = std::chrono::steady_clock::now();
  const int code = ditlab::testing::run_command(
      ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 2 -- sh -c " + shell_quoted(rank), dir / "log");
  const std::string log = read_file(dir / "log");
  INFO(log);
  CHECK(code == 4);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30));
  CHECK(fs::exists(dir / "stopped.0"));
  CHECK_THAT(log, Catch::Contains("exited with 4; stopping the others"));
}
