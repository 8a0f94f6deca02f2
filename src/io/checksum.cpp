#include "src/io/checksum.h"

#include <zlib.h>

#include <algorithm>

#include "src/io/mapped_file.h"

namespace ditlab {

uint32_t crc32_of(const char* bytes, size_t size) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes lengths as uInt: feed large buffers in chunks.
  for (size_t off = 0; off < size; off += 1u << 30) {
    const size_t n = std::min<size_t>(size - off, 1u << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes + off), static_cast<uInt>(n));
  }
  return static_cast<uint32_t>(crc);
}

uint32_t crc32_of_file(const std::string& path) {
  MappedFile file(path);
  return crc32_of(file.data(), file.size());
}

}  // namespace ditlab
