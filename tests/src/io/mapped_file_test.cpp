#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "src/common/error.h"
#include "src/io/mapped_file.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {
void write_bytes(const std::string& path, size_t n, char value) {
  std::ofstream(path, std::ios::binary) << std::string(n, value);
}

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}
}  // namespace

TEST_CASE("a mapped file shows the file's bytes", "[mapped_file]") {
  TempDir dir("mapped");
  write_bytes(dir / "a.bin", 10000, 'x');
  MappedFile file(dir / "a.bin");
  REQUIRE(file.size() == 10000);
  CHECK(file.data()[0] == 'x');
  CHECK(file.data()[9999] == 'x');
  write_bytes(dir / "empty.bin", 0, 'x');
  CHECK(MappedFile(dir / "empty.bin").size() == 0);
  CHECK_THROWS_AS(MappedFile(dir / "missing.bin"), IoError);
}

TEST_CASE("reading a mapped file truncated underneath ends the process with an error naming it",
          "[mapped_file]") {
  TempDir dir("mapped-truncated");
  const std::string path = dir / "shard.bin";
  const long page = ::sysconf(_SC_PAGESIZE);
  write_bytes(path, static_cast<size_t>(4 * page), 'x');
  // In a child process: the read ends it.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    FILE* log = std::freopen((dir / "child.log").c_str(), "w", stderr);
    if (log == nullptr) ::_exit(3);
    {
      MappedFile kept(path);  // another live mapping: the table holds several
      MappedFile file(path);
      if (::truncate(path.c_str(), page) != 0) ::_exit(4);
      volatile char first = file.data()[0];  // still inside the file
      volatile char beyond = file.data()[3 * page];  // past the new end: SIGBUS
      (void)first;
      (void)beyond;
    }
    ::_exit(0);  // not reached
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  const std::string log = read_all(dir / "child.log");
  CAPTURE(log);
  REQUIRE(WIFEXITED(status));  // exited, not killed by SIGBUS
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(log, Catch::Contains(path) && Catch::Contains("SIGBUS") && Catch::Contains("truncated"));
}
