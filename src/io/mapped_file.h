// A whole file mapped read-only into memory (POSIX mmap). Pages are read on first touch, so
// opening a large file costs nothing until its bytes are used, and several processes reading the
// same file share one copy in the page cache.
#pragma once
#include <cstddef>
#include <string>

namespace ditlab {

class MappedFile {
 public:
  // Throws IoError naming the path when the file cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // The mapping is read-only: writing through it is a crash. (A writable private mapping would
  // count against the memory commit limit, which strict-overcommit nodes enforce.) The file must
  // not be truncated while mapped: reading past its new end, or a page whose storage fails,
  // raises SIGBUS, on which the process writes an error naming this file and exits with status
  // 1 (a handler installed with the first mapping; see mapped_file.cpp).
  char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  char* data_ = nullptr;
  size_t size_ = 0;
  void* slot_ = nullptr;  // this mapping's entry in the SIGBUS handler's table
};

}  // namespace ditlab
