// Paths and helpers shared by the tests.
#pragma once
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <functional>
#include <thread>
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

// Starts a shell command line (exec'd: the pid is the command's own) in a process group of its
// own, output into `log`; returns its pid, which is also the group's id, so that a test that
// fails can end it with everything it started (wait_or_kill_group).
inline pid_t start_in_own_group(const std::string& command, const std::string& log) {
  const std::string script = "exec " + command + " > '" + log + "' 2>&1";
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    execl("/bin/sh", "sh", "-c", script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

// Polls `condition` until it holds or `seconds` pass; whether it held.
inline bool wait_until(const std::function<bool()>& condition, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return condition();
}

// The exit code (or -signal) of `pid`; -1000 after `seconds`, its group then killed, so that a
// process that does not stop fails the test instead of hanging it.
inline int wait_or_kill_group(pid_t pid, double seconds) {
  int status = 0;
  if (!wait_until([&] { return waitpid(pid, &status, WNOHANG) == pid; }, seconds)) {
    kill(-pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1000;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

}  // namespace ditlab::testing
