// dit train and dit eval keep out of a run directory another process holds
// (src/io/directory_lock.h).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>

#include "src/io/atomic_file.h"
#include "src/io/directory_lock.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

TEST_CASE("dit train refuses a run directory another process is writing", "[io]") {
  TempDir dir("lock-train");
  const std::string run = dir / "run";
  const DirectoryLock held(run, "a test holding it");
  const std::string log = dir / "train.log";
  CHECK(ditlab::testing::run_command(ditlab::testing::dit_binary() + " train --config " +
                                         ditlab::testing::source_dir() + "/configs/debug/dit.yaml --resume auto "
                                         "train.steps=2 run.dir=" + run,
                                     log) == 1);
  CHECK_THAT(read_file(log), Catch::Contains(run + " is in use by pid " + std::to_string(::getpid())));
  // Nothing of a run was written.
  CHECK_FALSE(std::filesystem::exists(run + "/config.yaml"));
  CHECK_FALSE(std::filesystem::exists(run + "/train.log"));
}

TEST_CASE("dit eval refuses a run directory another process holds", "[io]") {
  TempDir dir("lock-eval");
  const std::string run = dir / "run";
  REQUIRE(ditlab::testing::run_command(ditlab::testing::dit_binary() + " train --config " +
                                           ditlab::testing::source_dir() +
                                           "/configs/debug/dit.yaml train.steps=2 sample.at_end=false run.dir=" + run,
                                       dir / "train.log") == 0);
  const DirectoryLock held(run, "a test holding it");  // as a dit train training it longer would
  const std::string log = dir / "eval.log";
  CHECK(ditlab::testing::run_command(ditlab::testing::dit_binary() + " eval --run-dir " + run, log) == 1);
  CHECK_THAT(read_file(log), Catch::Contains(run + " is in use by pid " + std::to_string(::getpid())));
  CHECK_FALSE(std::filesystem::exists(run + "/eval.json"));
}
