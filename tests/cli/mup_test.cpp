// `dit mup coord-check | lr-sweep` end to end on a tiny DiT: the files, the summary, bad flags.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

#include "src/io/atomic_file.h"
#include "tests/test_support.h"

using ditlab::testing::TempDir;
using ditlab::testing::dit_binary;
using ditlab::testing::run_command;

namespace {
std::string read_all(const std::string& path) { return ditlab::read_file(path); }
const char* kTiny = " --config configs/debug/dit.yaml data.limit=32 data.image_size=16 train.threads=1";
}  // namespace

TEST_CASE("dit mup coord-check writes the CSV, the resolved config and a slope summary", "[mup][cli]") {
  TempDir dir("mup");
  REQUIRE(run_command(dit_binary() + " mup coord-check --widths 32,64 --steps 2 --out " + dir.path() + kTiny,
                      dir / "log") == 0);
  const std::string log = read_all(dir / "log");
  CAPTURE(log);
  CHECK_THAT(log, Catch::Contains("slope of log mean|activation|"));
  const std::string csv = read_all(dir / "coord_check.csv");
  CHECK(csv.rfind("parametrization,width,step,kind,mean_abs\n", 0) == 0);
  CHECK_THAT(csv, Catch::Contains("mup,64,1,attn,") && Catch::Contains("sp,32,0,embed,"));
  CHECK(std::filesystem::exists(dir / "config.yaml"));
  CHECK(std::filesystem::exists(dir / "run_info.yaml"));

  REQUIRE(run_command(dit_binary() + " mup lr-sweep --widths 32,64 --steps 2 --lrs 1e-3,1e-2 "
                      "--parametrizations mup --out " + dir.path() + kTiny, dir / "sweep.log") == 0);
  const std::string sweep = read_all(dir / "lr_sweep.csv");
  CHECK(sweep.rfind("parametrization,width,lr,loss\n", 0) == 0);
  CHECK(std::count(sweep.begin(), sweep.end(), '\n') == 1 + 4);
  CHECK_THAT(read_all(dir / "sweep.log"), Catch::Contains("best learning rate per width"));
}

TEST_CASE("dit mup rejects unknown subcommands, parametrizations and malformed lists", "[mup][cli]") {
  TempDir dir("mup-bad");
  CHECK(run_command(dit_binary() + " mup", dir / "a.log") == 2);
  CHECK_THAT(read_all(dir / "a.log"), Catch::Contains("coord-check|lr-sweep"));
  CHECK(run_command(dit_binary() + " mup coord-check --parametrizations mup,xp" + kTiny, dir / "b.log") == 2);
  CHECK_THAT(read_all(dir / "b.log"), Catch::Contains("not 'xp'"));
  CHECK(run_command(dit_binary() + " mup coord-check --widths 32,6x4" + kTiny, dir / "c.log") == 2);
  CHECK_THAT(read_all(dir / "c.log"), Catch::Contains("--widths") && Catch::Contains("integers"));
  CHECK(run_command(dit_binary() + " mup coord-check --widths 32 --out " + (dir / "d-out") + kTiny,
                    dir / "d.log") == 2);
  CHECK_THAT(read_all(dir / "d.log"), Catch::Contains("at least two widths"));
  CHECK_FALSE(std::filesystem::exists(dir / "d-out"));  // refused before anything is written
  // µP needs its base width.
  CHECK(run_command(dit_binary() + " train" + std::string(kTiny) + " model.mup.enabled=true train.steps=1 "
                    "run.dir=" + dir.path() + "/run", dir / "e.log") == 1);
  CHECK_THAT(read_all(dir / "e.log"), Catch::Contains("model.mup.base_width"));
}

TEST_CASE("dit export of a µP model says where its multipliers are, and dit sample applies them", "[mup][cli]") {
  TempDir dir("mup-export");
  REQUIRE(run_command(dit_binary() + " train" + std::string(kTiny) + " train.steps=2 sample.at_end=false "
                      "model.hidden_size=64 model.mup.enabled=true model.mup.base_width=32 run.dir=" +
                      dir.path() + "/run", dir / "train.log") == 0);
  REQUIRE(run_command(dit_binary() + " export --checkpoint " + dir.path() + "/run/checkpoints/step-00000002 --out " +
                      dir.path() + "/w.safetensors", dir / "export.log") == 0);
  CHECK_THAT(read_all(dir / "export.log"), Catch::Contains("µP model") && Catch::Contains("base width 32"));
  CHECK(run_command(dit_binary() + " sample --weights " + dir.path() + "/w.safetensors --steps 2 "
                    "--num-per-class 1 --out " + dir.path() + "/s.safetensors", dir / "sample.log") == 0);
}
