#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "src/common/error.h"
#include "src/config/config_loader.h"
#include "src/config/option_table.h"
#include "src/io/atomic_file.h"
#include "tests/test_support.h"
#include "trainers/sweep.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {
void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// The message of the ConfigError that `fn` throws (fails the test if none).
template <class Fn>
std::string config_error(Fn fn) {
  try {
    fn();
  } catch (const ConfigError& e) {
    return e.what();
  }
  FAIL("expected a ConfigError");
  return "";
}
}  // namespace

TEST_CASE("no file gives the documented defaults", "[config]") {
  auto c = load_experiment_config("");
  CHECK(c.model.name == "DiT-S/4");
  CHECK(c.train.lr == 1e-4);
  CHECK(c.train.ema_decay == 0.9999);
  CHECK(c.diffusion.steps == 1000);
}

TEST_CASE("a base file is overridden key by key, the command line wins over both", "[config]") {
  TempDir dir("cfg");
  write(dir / "base.yaml", "model:\n  name: DiT-B/2\n  depth: 3\ntrain:\n  lr: 0.5\n  steps: 7\n");
  write(dir / "child.yaml", "base: base.yaml\ntrain:\n  lr: 0.25\n");
  auto c = load_experiment_config(dir / "child.yaml", {"train.steps=9"});
  CHECK(c.model.name == "DiT-B/2");  // from the base
  CHECK(c.model.depth == 3);
  CHECK(c.train.lr == 0.25);  // child over base
  CHECK(c.train.steps == 9);  // command line over both
  // A '#' in a value on the command line is part of it, not a YAML comment.
  auto hashed = load_experiment_config(dir / "child.yaml", {"data.path=/data/run #2", "train.steps=4"});
  CHECK(hashed.data.path == "/data/run #2");
  CHECK(load_experiment_config(dir / "child.yaml", {"data.path=\"/data/run #2\""}).data.path == "/data/run #2");
  // null on the command line is null, as in a file: it clears an optional path.
  CHECK(load_experiment_config(dir / "child.yaml", {"train.init_from=w.safetensors", "train.init_from=null"})
            .train.init_from.empty());
  CHECK_THROWS_AS(load_experiment_config(dir / "child.yaml", {"train.steps=null"}), ConfigError);
  CHECK(hashed.train.steps == 4);
  CHECK_THROWS_AS(load_experiment_config(dir / "child.yaml", {"train.steps=4 #five"}), ConfigError);
}

TEST_CASE("bases chain through several files and cycles are refused", "[config]") {
  TempDir dir("cfg");
  write(dir / "a.yaml", "train:\n  seed: 1\n  steps: 1\n");
  write(dir / "b.yaml", "base: a.yaml\ntrain:\n  seed: 2\n");
  write(dir / "c.yaml", "base: b.yaml\ntrain:\n  steps: 3\n");
  auto c = load_experiment_config(dir / "c.yaml");
  CHECK(c.train.seed == 2);
  CHECK(c.train.steps == 3);
  write(dir / "x.yaml", "base: y.yaml\n");
  write(dir / "y.yaml", "base: x.yaml\n");
  CHECK_THAT(config_error([&] { load_experiment_config(dir / "x.yaml"); }),
             Catch::Contains("cycle"));
}

TEST_CASE("an unknown key names the file, the key and the closest valid key", "[config]") {
  TempDir dir("cfg");
  write(dir / "e.yaml", "train:\n  lrr: 0.1\n");
  auto msg = config_error([&] { load_experiment_config(dir / "e.yaml"); });
  CHECK_THAT(msg, Catch::Contains("e.yaml"));
  CHECK_THAT(msg, Catch::Contains("train.lrr"));
  CHECK_THAT(msg, Catch::Contains("did you mean 'train.lr'"));
  auto cli = config_error([] { load_experiment_config("", {"modle.name=DiT-S/2"}); });
  CHECK_THAT(cli, Catch::Contains("command line"));
  CHECK_THAT(cli, Catch::Contains("model.name"));
}

TEST_CASE("wrong types and out-of-range values name key, file and expectation", "[config]") {
  TempDir dir("cfg");
  struct Case {
    std::string yaml, key, expected;
  };
  std::vector<Case> cases = {
      {"train:\n  steps: many\n", "train.steps", "an integer"},
      {"train:\n  steps: 2.5\n", "train.steps", "an integer"},
      {"train:\n  steps: 0\n", "train.steps", ">= 1"},
      {"train:\n  lr: -1\n", "train.lr", "> 0"},
      {"train:\n  lr: fast\n", "train.lr", "a number"},
      {"train:\n  ema_decay: 1.5\n", "train.ema_decay", "<= 1"},
      {"model:\n  learn_sigma: maybe\n", "model.learn_sigma", "true or false"},
      {"model:\n  conditioning: film\n", "model.conditioning", "adaln_zero"},
      {"sample:\n  sampler: euler\n", "sample.sampler", "ddpm"},
      {"train:\n  steps: [1, 2]\n", "train.steps", "an integer"},
      {"model:\n  name: \"\"\n", "model.name", "a string"},
      // 1 divides by zero in AdamW's bias correction and in the diffusion's x0 from x_t.
      {"train:\n  adam_beta2: 1\n", "train.adam_beta2", "< 1"},
      {"diffusion:\n  beta_end: 1\n", "diffusion.beta_end", "< 1"},
  };
  for (const auto& c : cases) {
    write(dir / "bad.yaml", c.yaml);
    auto msg = config_error([&] { load_experiment_config(dir / "bad.yaml"); });
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains(c.key));
    CHECK_THAT(msg, Catch::Contains("bad.yaml"));
    CHECK_THAT(msg, Catch::Contains(c.expected));
  }
}

TEST_CASE("malformed files and overrides are clear errors", "[config]") {
  TempDir dir("cfg");
  CHECK_THAT(config_error([&] { load_experiment_config(dir / "missing.yaml"); }),
             Catch::Contains("not found"));
  write(dir / "syntax.yaml", "train: [unclosed\n");
  CHECK_THAT(config_error([&] { load_experiment_config(dir / "syntax.yaml"); }),
             Catch::Contains("invalid YAML"));
  write(dir / "list.yaml", "- a\n- b\n");
  CHECK_THAT(config_error([&] { load_experiment_config(dir / "list.yaml"); }),
             Catch::Contains("expected a YAML map"));
  CHECK_THAT(config_error([] { load_experiment_config("", {"train.steps"}); }),
             Catch::Contains("key.sub=value"));
}

TEST_CASE("the resolved YAML reads back to the same config", "[config]") {
  auto c = load_experiment_config("", {"model.name=dit", "train.lr=3e-4", "run.dir=a b/{time}",
                                       "data.path=123", "model.learn_sigma=false"});
  ExperimentConfig back;
  apply_yaml_text(back, to_yaml(c), "resolved");
  CHECK(differing_keys(c, back).empty());
  CHECK(back.data.path == "123");  // stays a string
  auto changed = c;
  changed.train.lr = 1e-3;
  CHECK(differing_keys(c, changed) == std::vector<std::string>{"train.lr"});
}

TEST_CASE("docs/config.md is the generated reference", "[config][docs]") {
  auto path = ditlab::testing::source_dir() + "/docs/config.md";
  INFO("regenerate with: build/dit config --docs > docs/config.md");
  CHECK(read_file(path) == config_reference_markdown());
}

TEST_CASE("every shipped config loads", "[config]") {
  namespace fs = std::filesystem;
  int count = 0;
  for (const auto& e : fs::recursive_directory_iterator(ditlab::testing::source_dir() + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    INFO(e.path().string());
    if (e.path().parent_path().filename() == "sweeps") {  // sweep files: each run's config loads
      CHECK_NOTHROW(expand_sweep(read_sweep(e.path().string())));
    } else {
      CHECK_NOTHROW(load_experiment_config(e.path().string()));
    }
    ++count;
  }
  CHECK(count >= 3);
}

TEST_CASE("integers are decimal: a leading zero is not octal, 0x is not hex", "[config]") {
  TempDir dir("cfg");
  // yaml-cpp's own conversion detects the base: 010 would be 8, 0x10 16.
  write(dir / "int.yaml", "train:\n  seed: 010\nmodel:\n  level_depths: [010, +2]\n");
  auto c = load_experiment_config(dir / "int.yaml");
  CHECK(c.train.seed == 10);
  CHECK(c.model.level_depths == std::vector<int64_t>{10, 2});
  CHECK(load_experiment_config("", {"train.seed=010"}).train.seed == 10);
  write(dir / "hex.yaml", "train:\n  seed: 0x10\n");
  auto msg = config_error([&] { load_experiment_config(dir / "hex.yaml"); });
  CHECK_THAT(msg, Catch::Contains("hex.yaml") && Catch::Contains("train.seed") &&
                      Catch::Contains("'0x10'") && Catch::Contains("an integer"));
  write(dir / "hex_list.yaml", "model:\n  level_depths: [1, 0x10]\n");
  msg = config_error([&] { load_experiment_config(dir / "hex_list.yaml"); });
  CHECK_THAT(msg, Catch::Contains("hex_list.yaml") && Catch::Contains("model.level_depths") &&
                      Catch::Contains("a list of integers"));
  CHECK_THAT(config_error([] { load_experiment_config("", {"train.seed=99999999999999999999"}); }),
             Catch::Contains("train.seed") && Catch::Contains("an integer"));
}

TEST_CASE("a subnormal float reads back from the resolved YAML", "[config]") {
  // Formatting it used std::stod, which throws a bare out_of_range("stod") on subnormals.
  auto c = load_experiment_config("", {"train.adam_eps=1e-310"});
  CHECK(c.train.adam_eps == 1e-310);
  ExperimentConfig back;
  apply_yaml_text(back, to_yaml(c), "resolved");
  CHECK(back.train.adam_eps == c.train.adam_eps);
  CHECK(differing_keys(c, back).empty());
}

TEST_CASE("an alias inside its own anchor is an error naming the key, not a stack overflow", "[config]") {
  TempDir dir("cfg");
  // yaml-cpp builds this into a cyclic node graph: model.x is model itself.
  write(dir / "cycle.yaml", "model: &m {depth: 2, x: *m}\n");
  auto msg = config_error([&] { load_experiment_config(dir / "cycle.yaml"); });
  CHECK_THAT(msg, Catch::Contains("cycle.yaml") && Catch::Contains("'model.x.x.x") &&
                      Catch::Contains("levels deep"));
  // A merely very deep map stops at the same limit.
  std::string deep = "a: ";
  for (int i = 0; i < 100; ++i) deep += "{k: ";
  deep += "1" + std::string(100, '}') + "\n";
  write(dir / "deep.yaml", deep);
  CHECK_THAT(config_error([&] { load_experiment_config(dir / "deep.yaml"); }),
             Catch::Contains("deep.yaml") && Catch::Contains("'a.k.k") && Catch::Contains("levels deep"));
}

TEST_CASE("a config or base that is a directory or an empty path is refused, naming it", "[config]") {
  namespace fs = std::filesystem;
  TempDir dir("cfg");
  CHECK_THAT(config_error([&] { load_experiment_config(dir.path()); }),
             Catch::Contains(dir.path()) && Catch::Contains("not a regular file"));
  write(dir / "dot.yaml", "base: .\ntrain:\n  seed: 3\n");
  CHECK_THAT(config_error([&] { load_experiment_config(dir / "dot.yaml"); }),
             Catch::Contains(dir.path()) && Catch::Contains("not a regular file"));
  write(dir / "empty.yaml", "base: \"\"\ntrain:\n  seed: 3\n");
  CHECK_THAT(config_error([&] { load_experiment_config(dir / "empty.yaml"); }),
             Catch::Contains("empty.yaml") && Catch::Contains("`base:` must be a file path"));
  // A link to a file is followed.
  write(dir / "real.yaml", "train:\n  seed: 5\n");
  fs::create_symlink(dir / "real.yaml", dir / "link.yaml");
  CHECK(load_experiment_config(dir / "link.yaml").train.seed == 5);
}

TEST_CASE("a sweep's dir must be a non-empty path", "[config][sweep]") {
  TempDir dir("cfg");
  // Empty (as<std::string>() gave "null"), an empty string, a map (a bare yaml bad conversion).
  for (const char* value : {"", " \"\"", " {a: 1}"}) {
    write(dir / "sweep.yaml", std::string("base: base.yaml\ndir:") + value + "\ngrid:\n  model.depth: [1]\n");
    INFO("dir:" << value);
    CHECK_THAT(config_error([&] { read_sweep(dir / "sweep.yaml"); }),
               Catch::Contains("sweep.yaml") && Catch::Contains("'dir'"));
  }
  write(dir / "sweep.yaml", "base: base.yaml\ndir: runs/x\ngrid:\n  model.depth: [1]\n");
  CHECK(read_sweep(dir / "sweep.yaml").dir == "runs/x");
}
