// One writer per output directory. Two processes writing the same run directory (a job queued
// twice, a sweep started in two shells) would interleave checkpoints and logs, and a fresh
// `--resume auto` start clears a run that has not checkpointed yet, so the second writer must be
// refused before it touches anything.
#pragma once
#include <string>

namespace ditlab {

// An exclusive flock(2) on DIR/.lock (the directory is created if needed), held while the object
// lives. The kernel drops it when the process ends, however it ends, so a crashed run leaves no
// stale lock to clear by hand. The file records the holder (pid, host, what) for the message that
// refuses the next one.
class DirectoryLock {
 public:
  // Throws IoError naming the directory and the holder when another process holds the lock. On a
// filesystem without flock support it warns and holds nothing.
  DirectoryLock(const std::string& dir, const std::string& what);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace ditlab
