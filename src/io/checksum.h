// CRC-32 (zlib's) of bytes or of a whole file: detects corrupt checkpoints and tells one
// autoencoder's weights from another's. Not a cryptographic hash.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ditlab {

uint32_t crc32_of(const char* bytes, size_t size);
inline uint32_t crc32_of(const std::string& bytes) { return crc32_of(bytes.data(), bytes.size()); }
// Throws IoError naming the path when the file cannot be read.
uint32_t crc32_of_file(const std::string& path);

}  // namespace ditlab
