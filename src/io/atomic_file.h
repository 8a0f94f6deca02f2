// Whole-file writes that never leave a partial file behind under the final name.
#pragma once
#include <string>

namespace ditlab {

// Writes `bytes` to `path` through `path.tmp`, fsyncs it, renames it over `path` and fsyncs the
// folder. Throws IoError naming the path on any failure.
void write_file_atomically(const std::string& path, const std::string& bytes);

// Reads a whole file; throws IoError naming the path if it cannot.
std::string read_file(const std::string& path);

}  // namespace ditlab
