// Whole-file writes that never leave a partial file behind under the final name.
#pragma once
#include <string>

namespace ditlab {

// Writes `bytes` to `path` through a temporary file of its own (`path.tmp.XXXXXX`, so that
// concurrent writers of one path never share it), fsyncs it, renames it over `path` and fsyncs
// the folder. Throws IoError naming the path on any failure, leaving no temporary file.
void write_file_atomically(const std::string& path, const std::string& bytes);

// Reads a whole file; throws IoError naming the path if it cannot.
std::string read_file(const std::string& path);

}  // namespace ditlab
