#include <catch2/catch.hpp>

#include <atomic>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "src/io/atomic_file.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

TEST_CASE("concurrent atomic writers of one path never mix or fail", "[io]") {
  // Parallel sweep runs cache the same reference statistics: several processes write one path.
  TempDir dir("atomic");
  const std::string path = dir / "shared.bin";
  std::atomic<int> failures{0};
  std::vector<std::thread> writers;
  for (char c = 'a'; c < 'a' + 6; ++c) {
    writers.emplace_back([&, c] {
      const std::string bytes(1 << 20, c);  // 1 MiB of one letter per writer
      for (int i = 0; i < 10; ++i) {
        try {
          write_file_atomically(path, bytes);
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : writers) t.join();
  CHECK(failures == 0);
  const std::string final_bytes = read_file(path);
  REQUIRE(final_bytes.size() == (1u << 20));
  CHECK(std::set<char>(final_bytes.begin(), final_bytes.end()).size() == 1);  // one writer's file, whole
  // No temporary file is left behind.
  int entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    INFO(entry.path());
    ++entries;
  }
  CHECK(entries == 1);
}

TEST_CASE("a failed atomic write names the path and leaves no temporary file", "[io]") {
  TempDir dir("atomic-fail");
  // The target is an existing directory: the rename over it fails.
  const std::string target = dir / "folder";
  std::filesystem::create_directories(target + "/inside");
  CHECK_THROWS_WITH(write_file_atomically(target, "bytes"), Catch::Contains("rename into '" + target + "'"));
  int entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    (void)entry;
    ++entries;
  }
  CHECK(entries == 1);  // only the folder
}
