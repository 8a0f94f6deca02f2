// One writer per output directory: a second lock is refused, naming the holder, until the first
// is released.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>

#include "src/common/error.h"
#include "src/io/atomic_file.h"
#include "src/io/directory_lock.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

TEST_CASE("a locked directory refuses a second lock until the first is released", "[io]") {
  TempDir dir("lock");
  const std::string run = dir / "run";  // created by the lock
  std::optional<DirectoryLock> first;
  first.emplace(run, "first writer");
  CHECK(std::filesystem::is_directory(run));
  const std::string pid = "pid " + std::to_string(::getpid());
  // flock excludes another open file description, within one process as across processes.
  CHECK_THROWS_WITH(DirectoryLock(run, "second writer"),
                    Catch::Contains(run + " is in use by " + pid) && Catch::Contains("(first writer)"));
  first.reset();
  { const DirectoryLock again(run, "second writer"); }
  CHECK_THAT(read_file(run + "/.lock"), Catch::Contains("(second writer)"));
  // A directory that cannot be created is an error naming it.
  std::ofstream(dir / "file") << "x";
  CHECK_THROWS_WITH(DirectoryLock(dir / "file/run", "w"), Catch::Contains(dir / "file/run"));
}
