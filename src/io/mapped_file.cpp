#include "src/io/mapped_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "src/common/error.h"

namespace ditlab {
namespace {

// Reading a mapped page whose file was truncated since, or whose storage fails (a disk error, a
// network file system gone), raises SIGBUS, which would end the process with no word of which
// file. The handler looks the faulting address up among the live mappings and, when it is one
// of them, writes an error naming the file and exits with status 1 like any other error; a
// SIGBUS elsewhere goes to the handler that was there before. The table is read in the handler,
// so it holds fixed-size slots of lock-free atomics and plain characters only.
struct Slot {
  std::atomic<uintptr_t> begin{0};  // 0: free (the path is written before begin is published)
  std::atomic<size_t> size{0};
  char path[480] = {};
};
constexpr size_t kSlots = 512;
Slot g_slots[kSlots];
struct sigaction g_previous_sigbus;

void write_stderr(const char* text) {
  size_t left = std::strlen(text);
  while (left > 0) {
    const ssize_t n = ::write(STDERR_FILENO, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<size_t>(n);
  }
}

void on_sigbus(int signal, siginfo_t* info, void* context) {
  // Sent by a process (kill -BUS: si_code <= 0), si_addr means nothing: the previous disposition
  // gets the signal again.
  if (info->si_code <= 0) {
    ::sigaction(SIGBUS, &g_previous_sigbus, nullptr);
    ::raise(SIGBUS);
    return;
  }
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  for (const Slot& slot : g_slots) {
    const uintptr_t begin = slot.begin.load();
    if (begin == 0 || address < begin || address - begin >= slot.size.load()) continue;
    write_stderr("error: reading the memory-mapped file '");
    write_stderr(slot.path);
    write_stderr("' failed (SIGBUS): the file was truncated or rewritten in place while this "
                 "process read it, or its storage failed. Restore or recreate the file (for a "
                 "latent cache, run the same dit encode again), then resume.\n");
    ::_exit(1);
  }
  // Not a mapped file of ours: as if this handler were not there. Returning re-runs the faulting
  // access under the previous disposition (the default one ends the process with SIGBUS).
  (void)signal;
  (void)context;
  ::sigaction(SIGBUS, &g_previous_sigbus, nullptr);
}

void install_sigbus_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGBUS, &action, &g_previous_sigbus);
  });
}

// The slot for a new mapping, or null when all are taken (the mapping then goes unnamed).
Slot* claim_slot(const std::string& path, const char* begin, size_t size) {
  static std::mutex mutex;  // claims and releases are rare; the handler only reads
  std::lock_guard<std::mutex> lock(mutex);
  for (Slot& slot : g_slots) {
    if (slot.begin.load() != 0) continue;
    const size_t n = std::min(path.size(), sizeof(slot.path) - 1);
    std::memcpy(slot.path, path.data(), n);
    slot.path[n] = '\0';
    slot.size.store(size);
    slot.begin.store(reinterpret_cast<uintptr_t>(begin));
    return &slot;
  }
  return nullptr;
}

static_assert(std::atomic<uintptr_t>::is_always_lock_free, "the SIGBUS handler reads these atomics");

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError("cannot open '" + path + "': " + std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const int error = errno;
    ::close(fd);
    throw IoError("cannot stat '" + path + "': " + std::strerror(error));
  }
  size_ = static_cast<size_t>(info.st_size);
  if (size_ > 0) {  // mmap refuses a zero length; an empty file maps to nothing
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      const int error = errno;
      ::close(fd);
      throw IoError("cannot map '" + path + "' (" + std::to_string(size_) + " bytes): " +
                    std::strerror(error));
    }
    data_ = static_cast<char*>(p);
    install_sigbus_handler();
    slot_ = claim_slot(path, data_, size_);
  }
  ::close(fd);  // the mapping keeps the file open
}

MappedFile::~MappedFile() {
  if (slot_ != nullptr) static_cast<Slot*>(slot_)->begin.store(0);  // before the pages go
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace ditlab
