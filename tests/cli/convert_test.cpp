// `dit convert` on torch.save files written by Debian's python3-torch the way the official DiT
// repository writes them (a plain state dict, and a training checkpoint).
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>

#include "src/common/error.h"
#include "src/io/atomic_file.h"
#include "src/io/safetensors.h"
#include "src/io/torch_pickle.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;
using ditlab::testing::run_command;

namespace {
const std::string kPython = "/usr/bin/python3 " + ditlab::testing::source_dir() + "/scripts/reference/";

void require_same(const std::map<std::string, at::Tensor>& a, const std::map<std::string, at::Tensor>& b,
                  double scale = 1.0) {
  REQUIRE(a.size() == b.size());
  for (const auto& [name, t] : a) {
    INFO(name);
    REQUIRE(b.count(name) == 1);
    CHECK(at::equal(t * scale, b.at(name)));
  }
}
}  // namespace

TEST_CASE("official-style torch.save checkpoints convert to the same weights", "[convert]") {
  TempDir dir("convert");
  REQUIRE(run_command(kPython + "dit_reference.py --preset DiT-S/8 --input-size 16 --batch 2 --out-weights " +
                          (dir / "w.safetensors") + " --out-inputs " + (dir / "in.safetensors") +
                          " --out-expected " + (dir / "expected.safetensors"),
                      dir / "ref.log") == 0);
  REQUIRE(run_command(kPython + "to_torch_checkpoint.py " + (dir / "w.safetensors") + " " + (dir / "official.pt"),
                      dir / "pt.log") == 0);
  REQUIRE(run_command(kPython + "to_torch_checkpoint.py " + (dir / "w.safetensors") + " " +
                          (dir / "train.pt") + " --training",
                      dir / "pt.log") == 0);
  auto weights = read_safetensors(dir / "w.safetensors").tensors;

  // A plain state dict (collections.OrderedDict of tensors).
  require_same(weights, read_torch_state_dict(dir / "official.pt"));
  // A training checkpoint: EMA by default, the trained weights on request; the optimizer state
  // and the argparse.Namespace alongside are read past.
  require_same(weights, read_torch_state_dict(dir / "train.pt"));
  require_same(weights, read_torch_state_dict(dir / "train.pt", "model"), 2.0);
  CHECK_THROWS_WITH(read_torch_state_dict(dir / "train.pt", "opt"), Catch::Contains("not a tensor"));
  CHECK_THROWS_WITH(read_torch_state_dict(dir / "train.pt", "nope"), Catch::Contains("top-level keys"));

  // Through the CLI, then a forward pass on the converted weights equals the reference's.
  REQUIRE(run_command(ditlab::testing::dit_binary() + " convert --from " + (dir / "official.pt") + " --out " +
                          (dir / "converted.safetensors"),
                      dir / "convert.log") == 0);
  REQUIRE(run_command(ditlab::testing::dit_binary() + " forward --model DiT-S/8 --input-size 16 --num-classes 10 --weights " +
                          (dir / "converted.safetensors") + " --inputs " + (dir / "in.safetensors") +
                          " --output " + (dir / "out.safetensors"),
                      dir / "forward.log") == 0);
  auto expected = read_safetensors(dir / "expected.safetensors").tensors.at("out");
  auto ours = read_safetensors(dir / "out.safetensors").tensors.at("out");
  CHECK((ours - expected).abs().max().item<double>() < 1e-4);
  // The official checkpoint itself, without converting it first.
  REQUIRE(run_command(ditlab::testing::dit_binary() + " forward --model DiT-S/8 --input-size 16 --num-classes 10 --weights " +
                          (dir / "official.pt") + " --inputs " + (dir / "in.safetensors") +
                          " --output " + (dir / "out_pt.safetensors"),
                      dir / "forward_pt.log") == 0);
  CHECK(at::equal(read_safetensors(dir / "out_pt.safetensors").tensors.at("out"), ours));
  // dit sample cannot guess its architecture: it asks for --config.
  CHECK(run_command(ditlab::testing::dit_binary() + " sample --weights " + (dir / "official.pt") + " --out " +
                        (dir / "s.safetensors"),
                    dir / "sample_pt.log") != 0);
  CHECK_THAT(read_file(dir / "sample_pt.log"), Catch::Contains("torch.save file") && Catch::Contains("--config"));
}

TEST_CASE("broken torch.save files are errors naming the file", "[convert]") {
  TempDir dir("convert");
  std::ofstream(dir / "text.pt") << "not a zip at all, just some text that is long enough";
  CHECK_THROWS_WITH(read_torch_state_dict(dir / "text.pt"),
                    Catch::Contains("text.pt") && Catch::Contains("not a zip"));
  REQUIRE(run_command("/usr/bin/python3 -c \"import torch; torch.save({'w': torch.ones(1000)}, '" +
                          (dir / "small.pt") + "')\"",
                      dir / "py.log") == 0);
  CHECK(read_torch_state_dict(dir / "small.pt").at("w").sum().item<double>() == 1000.0);
  auto bytes = read_file(dir / "small.pt");
  std::ofstream(dir / "truncated.pt", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  CHECK_THROWS_AS(read_torch_state_dict(dir / "truncated.pt"), IoError);
  CHECK_THROWS_WITH(read_torch_state_dict(dir / "absent.pt"), Catch::Contains("absent.pt"));
}
