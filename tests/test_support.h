// Paths and helpers shared by the tests.
#pragma once
#include <sys/wait.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <filesystem>
#include <string>

namespace ditlab::testing {

inline std::string source_dir() { return DITLAB_SOURCE_DIR; }
inline std::string dit_binary() { return std::string(DITLAB_BINARY_DIR) + "/dit"; }
inline std::string fashion_mnist_dir() { return "/usr/share/datasets/fashion-mnist"; }

// A fresh empty directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    std::string pattern = (std::filesystem::temp_directory_path() / ("ditlab-" + tag + "-XXXXXX")).string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("cannot create the test directory " + pattern + ": " +
                               std::strerror(errno) + " (set TMPDIR to a writable folder)");
    }
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Runs a shell command; returns its exit status (stdout and stderr into `log`).
inline int run_command(const std::string& command, const std::string& log) {
  int status = std::system((command + " > '" + log + "' 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Waits for a child process; its exit code, or -signal if a signal ended it.
inline int wait_for(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

}  // namespace ditlab::testing
