#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <zlib.h>

#include <fstream>

#include "data/dataset.h"
#include "data/fashion_mnist.h"
#include "src/common/error.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {
void write_gz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}
std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}
std::string idx_error(const std::string& path) {
  try {
    read_idx_gz(path);
  } catch (const IoError& e) {
    return e.what();
  }
  FAIL("expected an IoError for " + path);
  return "";
}
}  // namespace

TEST_CASE("Fashion-MNIST loads 60k/10k/70k images padded to 32x32 in [-1, 1]", "[data]") {
  FashionMnist train(ditlab::testing::fashion_mnist_dir(), "train", 32, 0);
  CHECK(train.size() == 60000);
  CHECK(train.num_classes() == 10);
  CHECK(train.channels() == 1);
  CHECK(FashionMnist(ditlab::testing::fashion_mnist_dir(), "test", 32, 0).size() == 10000);
  FashionMnist all(ditlab::testing::fashion_mnist_dir(), "all", 32, 0);
  CHECK(all.size() == 70000);
  auto batch = train.get_batch({0, 1, 59999});
  CHECK(batch.images.sizes() == at::IntArrayRef({3, 1, 32, 32}));
  CHECK(batch.images.min().item<float>() >= -1.0f);
  CHECK(batch.images.max().item<float>() <= 1.0f);
  CHECK(batch.images.max().item<float>() > 0.5f);  // real content, not padding only
  // The 2-pixel padding is black (-1).
  CHECK(batch.images.narrow(2, 0, 2).max().item<float>() == -1.0f);
  CHECK(batch.images.narrow(3, 30, 2).max().item<float>() == -1.0f);
  // The first training label of Fashion-MNIST is 9 (ankle boot); every class is present.
  CHECK(batch.labels[0].item<int64_t>() == 9);
  std::vector<int64_t> first_1000(1000);
  for (int i = 0; i < 1000; ++i) first_1000[i] = i;
  auto labels = train.get_batch(first_1000).labels;
  CHECK(std::get<0>(at::_unique(labels)).numel() == 10);
  // A limit keeps the first images; other sizes resize.
  FashionMnist small(ditlab::testing::fashion_mnist_dir(), "train", 16, 100);
  CHECK(small.size() == 100);
  CHECK(small.get_batch({0}).images.sizes() == at::IntArrayRef({1, 1, 16, 16}));
}

TEST_CASE("missing, corrupt and truncated Fashion-MNIST files are errors naming the file", "[data]") {
  TempDir dir("fm");
  CHECK_THROWS_WITH(FashionMnist(dir.path(), "train", 32, 0),
                    Catch::Contains("train-images-idx3-ubyte.gz") && Catch::Contains("not found"));
  std::ofstream(dir / "garbage.gz") << "this is not gzip data at all";
  CHECK_THROWS_WITH(read_idx_gz(dir / "garbage.gz"), Catch::Contains("garbage.gz"));
  write_gz(dir / "short.gz", std::string("\0\0\x08\x03", 4) + be32(5) + be32(28) + be32(28) + "xyz");
  CHECK_THROWS_WITH(read_idx_gz(dir / "short.gz"),
                    Catch::Contains("short.gz") && Catch::Contains("truncated"));
  write_gz(dir / "wrongmagic.gz", std::string("\0\0\x0d\x01", 4) + be32(1) + "x");
  CHECK_THROWS_WITH(read_idx_gz(dir / "wrongmagic.gz"), Catch::Contains("not an IDX file"));
  CHECK_THROWS_AS(read_idx_gz(dir / "absent.gz"), IoError);
}

TEST_CASE("an IDX header is checked before its data is read, in overflow-checked arithmetic",
          "[data]") {
  TempDir dir("fm-idx");
  const std::string header3 = std::string("\0\0\x08\x03", 4);
  // 2^22 * 2^22 * 2^20 wraps to 0 in 64 bits, which matched an empty data section.
  write_gz(dir / "wrap.gz", header3 + be32(1u << 22) + be32(1u << 22) + be32(1u << 20));
  CHECK_THAT(idx_error(dir / "wrap.gz"), Catch::Contains("wrap.gz") &&
                                             Catch::Contains("[4194304, 4194304, ...]") &&
                                             Catch::Contains("2^32"));
  // Data beyond what the header promises (10 MB of zeros, 10 kB compressed) is refused without
  // being decompressed: the message cannot say how much there is.
  write_gz(dir / "bomb.gz",
           header3 + be32(1) + be32(28) + be32(28) + std::string(10'000'000, '\0'));
  const std::string bomb = idx_error(dir / "bomb.gz");
  CHECK_THAT(bomb, Catch::Contains("bomb.gz") && Catch::Contains("promises 784 values") &&
                       Catch::Contains("holds more"));
  CHECK_THAT(bomb, !Catch::Contains("10000000"));
  // Exactly the promised values read back.
  write_gz(dir / "ok.gz", header3 + be32(2) + be32(1) + be32(3) + "abcdef");
  const at::Tensor ok = read_idx_gz(dir / "ok.gz");
  CHECK(ok.sizes() == at::IntArrayRef({2, 1, 3}));
  CHECK(ok[1][0][2].item<uint8_t>() == 'f');
}

TEST_CASE("Fashion-MNIST images that are not 28x28 are refused", "[data]") {
  TempDir dir("fm-shape");
  write_gz(dir / "train-labels-idx1-ubyte.gz",
           std::string("\0\0\x08\x01", 4) + be32(2) + std::string("\x01\x02", 2));
  auto write_images = [&](uint32_t rows, uint32_t cols) {
    write_gz(dir / "train-images-idx3-ubyte.gz", std::string("\0\0\x08\x03", 4) + be32(2) +
                                                     be32(rows) + be32(cols) +
                                                     std::string(2 * rows * cols, '\x7f'));
  };
  for (const auto& [rows, cols] : {std::pair<uint32_t, uint32_t>{28, 20}, {20, 28}, {32, 32}}) {
    INFO(rows << "x" << cols);
    write_images(rows, cols);
    CHECK_THROWS_WITH(FashionMnist(dir.path(), "train", 32, 0),
                      Catch::Contains("train-images-idx3-ubyte.gz") &&
                          Catch::Contains("[N, 28, 28]"));
  }
  write_images(28, 28);
  CHECK(FashionMnist(dir.path(), "train", 32, 0).size() == 2);
}

TEST_CASE("make_dataset names unknown datasets", "[data]") {
  DataConfig c;
  c.name = "cifar";
  CHECK_THROWS_AS(make_dataset(c), ConfigError);
  c.name = "fashion_mnist";
  c.limit = 10;
  CHECK(make_dataset(c)->size() == 10);
}
