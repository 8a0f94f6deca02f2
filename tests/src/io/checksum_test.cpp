#include <catch2/catch.hpp>

#include <fstream>

#include "src/common/error.h"
#include "src/io/checksum.h"
#include "tests/test_support.h"

using namespace ditlab;

TEST_CASE("crc32 matches the standard check value and is the same for bytes and files", "[checksum]") {
  // The CRC-32 (ISO-HDLC) check value of "123456789" is 0xCBF43926.
  CHECK(crc32_of(std::string("123456789")) == 0xCBF43926u);
  CHECK(crc32_of(std::string()) == 0u);
  ditlab::testing::TempDir dir("crc");
  std::string bytes(100000, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 7919) % 251);
  std::ofstream(dir / "f.bin", std::ios::binary) << bytes;
  CHECK(crc32_of_file(dir / "f.bin") == crc32_of(bytes));
  bytes[5000] ^= 1;  // one flipped bit changes it
  CHECK(crc32_of_file(dir / "f.bin") != crc32_of(bytes));
  std::ofstream(dir / "empty.bin", std::ios::binary).flush();
  CHECK(crc32_of_file(dir / "empty.bin") == 0u);
  CHECK_THROWS_WITH(crc32_of_file(dir / "none.bin"), Catch::Contains("none.bin"));
}
