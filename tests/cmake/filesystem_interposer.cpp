// A library that exports its own std::filesystem::temp_directory_path, as PyTorch's pip wheels
// export the std::filesystem they link in statically (pytorch/pytorch#133437). Defining a
// standard-library function is undefined behaviour on purpose: it is what such a wheel does.
#include <filesystem>

// What the program needs this library for (libtorch's own functions), so the linker keeps it.
int filesystem_interposer_marker() { return 42; }

namespace std::filesystem {
path temp_directory_path() { return path("/interposed-std-filesystem"); }
}  // namespace std::filesystem
