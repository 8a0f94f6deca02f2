#include "src/io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "src/common/error.h"

namespace ditlab {
namespace fs = std::filesystem;

namespace {
[[noreturn]] void fail(const std::string& what, const std::string& path) {
  throw IoError("cannot " + what + " '" + path + "': " + std::strerror(errno));
}

// Fails as fail() does, after closing and removing the temporary file (keeping errno).
[[noreturn]] void fail_removing(int fd, const std::string& what, const std::string& tmp,
                                const std::string& path) {
  const int error = errno;
  if (fd >= 0) ::close(fd);
  ::unlink(tmp.c_str());
  errno = error;
  fail(what, path);
}

void fsync_path(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags);
  if (fd < 0) fail("open", path);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) fail("fsync", path);
}
}  // namespace

void write_file_atomically(const std::string& path, const std::string& bytes) {
  fs::path target(path);
  if (target.has_parent_path()) fs::create_directories(target.parent_path());
  // A name of its own: two processes writing the same file (parallel sweep runs caching the same
  // reference statistics) must not write into one temporary file.
  std::string tmp = path + ".tmp.XXXXXX";
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) fail("create", tmp);
  if (::fchmod(fd, 0644) != 0) fail_removing(fd, "chmod", tmp, tmp);  // mkstemp makes it 0600
  size_t written = 0;
  while (written < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_removing(fd, "write", tmp, tmp);
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) fail_removing(fd, "fsync", tmp, tmp);
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail_removing(-1, "rename into", tmp, path);
  std::string dir = target.has_parent_path() ? target.parent_path().string() : ".";
  fsync_path(dir, O_RDONLY | O_DIRECTORY);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot open '" + path + "': " + std::strerror(errno));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) throw IoError("cannot read '" + path + "'");
  return bytes.str();
}

}  // namespace ditlab
