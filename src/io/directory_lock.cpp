#include "src/io/directory_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "src/common/error.h"
#include "src/common/log.h"

namespace ditlab {
namespace {

std::string host_name() {
  char buf[256] = {};
  return ::gethostname(buf, sizeof(buf) - 1) == 0 ? std::string(buf) : std::string("unknown host");
}

// What the holder wrote into the lock file, for the message.
std::string holder_of(int fd) {
  char buf[512] = {};
  const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  std::string text = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text.empty() ? "another process" : text;
}

}  // namespace

DirectoryLock::DirectoryLock(const std::string& dir, const std::string& what) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw IoError("cannot create " + dir + ": " + ec.message());
  const std::string path = dir + "/.lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw IoError("cannot open the lock file " + path + ": " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string holder = err == EWOULDBLOCK ? holder_of(fd_) : std::string();
    ::close(fd_);
    fd_ = -1;
    if (err == ENOSYS || err == EOPNOTSUPP || err == ENOLCK) {
      // Some cluster mounts (Lustre without flock, some NFS and FUSE) cannot lock at all; a run
      // there must still start, unguarded.
      spdlog::warn("{} cannot be locked on this filesystem ({}); make sure no other process writes it", dir,
                   std::strerror(err));
      return;
    }
    if (err == EWOULDBLOCK) {
      throw IoError(dir + " is in use by " + holder + "; wait for it to finish, stop it, or choose another "
                    "directory (two writers would interleave their checkpoints and logs)");
    }
    throw IoError("cannot lock " + path + ": " + std::strerror(err));
  }
  const std::string record =
      "pid " + std::to_string(::getpid()) + " on " + host_name() + " (" + what + ")\n";
  // Best effort: the lock itself is what excludes; the record only names the holder.
  const bool recorded = ::ftruncate(fd_, 0) == 0 &&
                        ::pwrite(fd_, record.data(), record.size(), 0) == static_cast<ssize_t>(record.size());
  (void)recorded;
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the only descriptor releases the flock
}

}  // namespace ditlab
