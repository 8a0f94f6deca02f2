// Checks the link order that CMakeLists.txt gives every program linking ditlab: libstdc++ comes
// before all other libraries, so that a library linked ahead of it which exports
// std::filesystem (filesystem_interposer.cpp, linked first here) is not the one that runs.
// Exits 1 if the interposed copy answered.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

int filesystem_interposer_marker();

int main() {
  if (filesystem_interposer_marker() != 42) return 2;
  setenv("TMPDIR", "/", 1);  // a directory that exists, so libstdc++'s copy answers "/"
  const std::string answer = std::filesystem::temp_directory_path().string();
  if (answer != "/") {
    std::fprintf(stderr, "std::filesystem::temp_directory_path() gave '%s', not '/': a library "
                 "linked before libstdc++ interposed its copy\n", answer.c_str());
    return 1;
  }
  std::printf("std::filesystem resolved in libstdc++\n");
  return 0;
}
