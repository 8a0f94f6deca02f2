#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>

#include "src/common/error.h"
#include "src/io/atomic_file.h"
#include "tests/test_support.h"
#include "trainers/checkpoint.h"

using namespace ditlab;
using ditlab::testing::TempDir;
namespace fs = std::filesystem;

namespace {
Checkpoint make_checkpoint(int64_t step) {
  Checkpoint c;
  c.step = step;
  c.model = {{"w", at::full({3}, static_cast<float>(step))}};
  c.ema = {{"w", at::full({3}, step + 0.5f)}};
  c.optimizer = {{"w.exp_avg", at::ones({3})}, {"w.exp_avg_sq", at::ones({3})},
                 {"w.step", at::tensor(step, at::kLong)}};
  c.trainer_state = {{"rng.cpu", at::arange(16, at::kByte)}};
  c.trainer_metadata = {{"step", std::to_string(step)}};
  c.config_yaml = "train:\n  steps: 100\n";
  return c;
}

void flip_byte(const std::string& path, size_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x5a));
}
}  // namespace

TEST_CASE("a checkpoint round-trips and carries a manifest and a latest pointer", "[checkpoint]") {
  TempDir dir("ckpt");
  auto path = save_checkpoint(dir.path(), make_checkpoint(7), 3, 0);
  CHECK(path == dir / "checkpoints/step-00000007");
  for (const char* f : {"model.safetensors", "ema.safetensors", "optimizer.safetensors",
                        "trainer_state.safetensors", "config.yaml", "manifest.json"}) {
    CHECK(fs::exists(path + "/" + f));
  }
  CHECK(read_file(dir / "checkpoints/latest") == "step-00000007\n");
  CHECK_THAT(read_file(path + "/manifest.json"), Catch::Contains("\"crc32\""));
  auto back = load_checkpoint(path);
  CHECK(back.step == 7);
  CHECK(at::equal(back.model.at("w"), at::full({3}, 7.0f)));
  CHECK(at::equal(back.ema.at("w"), at::full({3}, 7.5f)));
  CHECK(back.optimizer.at("w.step").item<int64_t>() == 7);
  CHECK(at::equal(back.trainer_state.at("rng.cpu"), at::arange(16, at::kByte)));
  CHECK(back.trainer_metadata.at("step") == "7");
  CHECK(back.config_yaml == "train:\n  steps: 100\n");
  CHECK(fs::is_empty(dir / "checkpoints") == false);
  CHECK_FALSE(fs::exists(path + ".partial"));
}

TEST_CASE("old checkpoints are pruned to checkpoint.keep, multiples of keep_every stay",
          "[checkpoint]") {
  TempDir dir("ckpt");
  for (int64_t step = 1; step <= 7; ++step) save_checkpoint(dir.path(), make_checkpoint(step), 2, 3);
  std::vector<std::string> names;
  for (const auto& d : list_checkpoints(dir.path())) names.push_back(fs::path(d).filename().string());
  CHECK(names == std::vector<std::string>{"step-00000007", "step-00000006", "step-00000003"});
  TempDir all("ckpt");
  for (int64_t step = 1; step <= 4; ++step) save_checkpoint(all.path(), make_checkpoint(step), 0, 0);
  CHECK(list_checkpoints(all.path()).size() == 4);
}

TEST_CASE("corrupt, truncated and partial checkpoints are detected and skipped", "[checkpoint]") {
  TempDir dir("ckpt");
  for (int64_t step : {1, 2, 3, 4}) save_checkpoint(dir.path(), make_checkpoint(step), 0, 0);
  const std::string root = dir / "checkpoints";
  // step 4: one flipped byte in the weights.
  flip_byte(root + "/step-00000004/model.safetensors", 100);
  CHECK_THROWS_WITH(load_checkpoint(root + "/step-00000004"),
                    Catch::Contains("model.safetensors") && Catch::Contains("checksum mismatch"));
  // step 3: a truncated optimizer file.
  fs::resize_file(root + "/step-00000003/optimizer.safetensors", 20);
  CHECK_THROWS_WITH(load_checkpoint(root + "/step-00000003"), Catch::Contains("truncated"));
  // A write that died before its manifest, and a leftover temporary folder.
  fs::create_directories(root + "/step-00000005");
  fs::create_directories(root + "/step-00000006.partial");
  CHECK_THROWS_WITH(load_checkpoint(root + "/step-00000005"), Catch::Contains("incomplete"));
  std::vector<std::string> skipped;
  auto latest = load_latest_complete(dir.path(), [&](const std::string& d, const std::string& why) {
    skipped.push_back(fs::path(d).filename().string() + ": " + why);
  });
  REQUIRE(latest.has_value());
  CHECK(latest->step == 2);
  REQUIRE(skipped.size() == 2);
  CHECK_THAT(skipped[0], Catch::StartsWith("step-00000004"));
  CHECK_THAT(skipped[1], Catch::StartsWith("step-00000003"));
  // A missing file listed in the manifest.
  fs::remove(root + "/step-00000002/ema.safetensors");
  CHECK_THROWS_WITH(load_checkpoint(root + "/step-00000002"), Catch::Contains("missing"));
  CHECK(load_latest_complete(dir.path())->step == 1);
  TempDir empty("ckpt");
  CHECK_FALSE(load_latest_complete(empty.path()).has_value());
}

TEST_CASE("an unwritable run directory is a clear error that keeps earlier checkpoints",
          "[checkpoint]") {
  TempDir dir("ckpt");
  save_checkpoint(dir.path(), make_checkpoint(1), 0, 0);
  // A file where the checkpoints folder must go stands in for a read-only or full disk (tests
  // run as root, so permissions would not stop the write).
  auto blocked = dir / "blocked";
  std::ofstream(blocked) << "a file, not a folder";
  CHECK_THROWS_AS(save_checkpoint(blocked, make_checkpoint(2), 0, 0), IoError);
  // A write that fails part-way (here: `latest` cannot be replaced) leaves step 1 intact.
  fs::remove(dir / "checkpoints/latest");
  fs::create_directories(dir / "checkpoints/latest/in-the-way");
  CHECK_THROWS_AS(save_checkpoint(dir.path(), make_checkpoint(2), 0, 0), IoError);
  CHECK(load_checkpoint(dir / "checkpoints/step-00000001").step == 1);
}
