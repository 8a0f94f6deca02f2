#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>

#include <fstream>

#include "src/common/error.h"
#include "src/io/atomic_file.h"
#include "src/io/module_weights.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {
// A safetensors file assembled by hand: header JSON + raw data.
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               int64_t declared_length = -1) {
  uint64_t n = declared_length >= 0 ? static_cast<uint64_t>(declared_length) : header.size();
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  bytes += header + data;
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string io_error(const std::string& path) {
  try {
    read_safetensors(path);
  } catch (const IoError& e) {
    return e.what();
  }
  FAIL("expected an IoError for " + path);
  return "";
}
}  // namespace

TEST_CASE("safetensors round trip keeps names, dtypes, shapes, values and metadata", "[safetensors]") {
  TempDir dir("st");
  std::map<std::string, at::Tensor> tensors = {
      {"f32", at::randn({3, 4, 5})},
      {"f64", at::randn({2}, at::kDouble)},
      {"bf16", at::randn({4, 2}).to(at::kBFloat16)},
      {"f16", at::randn({3}).to(at::kHalf)},
      {"i64", at::arange(10, at::kLong)},
      {"u8", at::arange(7, at::kByte)},
      {"bool", at::tensor({1, 0, 1}).to(at::kBool)},
      {"scalar", at::tensor(3.5)},
      {"empty", at::empty({0, 3})},
      {"strided", at::randn({4, 6}).t()},  // non-contiguous input
  };
  write_safetensors(dir / "a.safetensors", tensors, {{"config", "a: 1\nb: \"x\"\n"}, {"k", "v"}});
  auto back = read_safetensors(dir / "a.safetensors");
  REQUIRE(back.tensors.size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    INFO(name);
    CHECK(back.tensors[name].scalar_type() == t.scalar_type());
    CHECK(back.tensors[name].sizes() == t.sizes());
    CHECK(at::equal(back.tensors[name], t));
  }
  CHECK(back.metadata["config"] == "a: 1\nb: \"x\"\n");
  CHECK(back.metadata["k"] == "v");
  // Data starts 8-byte aligned, as the reference writer does.
  auto bytes = read_file(dir / "a.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  CHECK(n % 8 == 0);
}

TEST_CASE("every malformed safetensors file is an error naming the file and the problem",
          "[safetensors]") {
  TempDir dir("st");
  const std::string four = std::string(4, '\0');
  CHECK_THAT(io_error(dir / "missing.safetensors"), Catch::Contains("cannot open"));

  std::ofstream(dir / "short.safetensors") << "abc";
  CHECK_THAT(io_error(dir / "short.safetensors"), Catch::Contains("truncated"));

  write_raw(dir / "long.safetensors", "{}", "", 1 << 20);
  CHECK_THAT(io_error(dir / "long.safetensors"), Catch::Contains("exceeds the file"));

  write_raw(dir / "notjson.safetensors", "[1, 2]", "");
  CHECK_THAT(io_error(dir / "notjson.safetensors"), Catch::Contains("not a JSON object"));

  write_raw(dir / "badjson.safetensors", "{\"a\": {", "");
  CHECK_THAT(io_error(dir / "badjson.safetensors"), Catch::Contains("not valid JSON"));

  write_raw(dir / "dtype.safetensors",
            R"({"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", four);
  auto msg = io_error(dir / "dtype.safetensors");
  CHECK_THAT(msg, Catch::Contains("'w'"));
  CHECK_THAT(msg, Catch::Contains("unsupported dtype 'Q7'"));

  write_raw(dir / "fields.safetensors", R"({"w":{"dtype":"F32","shape":[1]}})", four);
  CHECK_THAT(io_error(dir / "fields.safetensors"), Catch::Contains("data_offsets"));

  write_raw(dir / "size.safetensors",
            R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four);
  CHECK_THAT(io_error(dir / "size.safetensors"), Catch::Contains("do not hold 8 bytes"));

  write_raw(dir / "trunc.safetensors",
            R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", four);
  CHECK_THAT(io_error(dir / "trunc.safetensors"), Catch::Contains("truncated"));

  write_raw(dir / "hole.safetensors",
            R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
            std::string(12, '\0'));
  CHECK_THAT(io_error(dir / "hole.safetensors"), Catch::Contains("hole or overlap"));

  write_raw(dir / "overlap.safetensors",
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
            std::string(8, '\0'));
  CHECK_THAT(io_error(dir / "overlap.safetensors"), Catch::Contains("hole or overlap"));

  write_raw(dir / "trailing.safetensors",
            R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(6, '\0'));
  CHECK_THAT(io_error(dir / "trailing.safetensors"), Catch::Contains("trailing bytes"));

  write_raw(dir / "dup.safetensors",
            R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
            std::string(8, '\0'));
  CHECK_THROWS_AS(read_safetensors(dir / "dup.safetensors"), IoError);

  write_raw(dir / "meta.safetensors", R"({"__metadata__":{"a":{"b":1}}})", "");
  CHECK_THAT(io_error(dir / "meta.safetensors"), Catch::Contains("__metadata__"));

  write_raw(dir / "dtypelist.safetensors",
            R"({"w":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}})", four);
  CHECK_THAT(io_error(dir / "dtypelist.safetensors"), Catch::Contains("'w'"));

  write_raw(dir / "neg.safetensors",
            R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four);
  CHECK_THAT(io_error(dir / "neg.safetensors"), Catch::Contains("'w'"));
}

TEST_CASE("a file written by hand in the reference layout is read exactly", "[safetensors]") {
  TempDir dir("st");
  float values[2] = {1.5f, -2.0f};
  write_raw(dir / "ok.safetensors",
            R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
            std::string(reinterpret_cast<const char*>(values), 8));
  auto f = read_safetensors(dir / "ok.safetensors");
  CHECK(f.metadata.at("format") == "pt");
  CHECK(f.tensors.at("w")[0].item<float>() == 1.5f);
  CHECK(f.tensors.at("w")[1].item<float>() == -2.0f);
}

TEST_CASE("an empty tensor may start where a non-empty one starts", "[safetensors]") {
  // Listed after "w" that starts at the same byte: sorting by begin alone kept "w" first, then
  // "e" seemed to start before the end of "w" and the valid file was refused.
  TempDir dir("st");
  float values[2] = {1.5f, -2.0f};
  write_raw(dir / "empty.safetensors",
            R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},)"
            R"("z":{"dtype":"I64","shape":[0],"data_offsets":[8,8]}})",
            std::string(reinterpret_cast<const char*>(values), 8));
  auto f = read_safetensors(dir / "empty.safetensors");
  CHECK(f.tensors.at("e").sizes() == at::IntArrayRef({0, 3}));
  CHECK(f.tensors.at("z").numel() == 0);
  CHECK(f.tensors.at("w")[1].item<float>() == -2.0f);
}

TEST_CASE("loading weights into a module is strict and names each bad key", "[safetensors]") {
  TempDir dir("st");
  torch::nn::Linear source(3, 2), target(3, 2);
  save_weights(*source, dir / "w.safetensors", {{"note", "x"}});
  auto meta = load_weights(*target, dir / "w.safetensors");
  CHECK(meta.at("note") == "x");
  CHECK(at::equal(source->weight, target->weight));
  CHECK(at::equal(source->bias, target->bias));

  auto problem = [&](std::map<std::string, at::Tensor> weights) {
    try {
      load_state_dict(*target, weights, "test.safetensors");
    } catch (const ShapeError& e) {
      return std::string(e.what());
    }
    FAIL("expected a ShapeError");
    return std::string();
  };
  auto before = target->weight.clone();
  auto msg = problem({{"weight", at::zeros({2, 3})}});
  CHECK_THAT(msg, Catch::Contains("missing key 'bias'"));
  CHECK_THAT(msg, Catch::Contains("test.safetensors"));
  CHECK(at::equal(before, target->weight));  // nothing changed on failure
  CHECK_THAT(problem({{"weight", at::zeros({2, 3})}, {"bias", at::zeros({2})}, {"extra", at::zeros({1})}}),
             Catch::Contains("unexpected key 'extra'"));
  CHECK_THAT(problem({{"weight", at::zeros({3, 3})}, {"bias", at::zeros({2})}}),
             Catch::Contains("key 'weight' has shape [3, 3], the model expects [2, 3]"));
}

TEST_CASE("loading weights converts between floating dtypes only", "[safetensors]") {
  TempDir dir("st-dtype");
  torch::nn::Linear target(3, 2);
  auto dtype_error = [&](std::map<std::string, at::Tensor> weights, torch::nn::Module& module) {
    try {
      load_state_dict(module, weights, "test.safetensors");
    } catch (const IoError& e) {
      return std::string(e.what());
    }
    FAIL("expected an IoError");
    return std::string();
  };
  // float16 and float64 files load into a float32 model, rounded to float32.
  const auto w = at::randn({2, 3}), b = at::randn({2});
  load_state_dict(*target, {{"weight", w.to(at::kHalf)}, {"bias", b.to(at::kDouble)}}, "test.safetensors");
  CHECK(at::equal(target->weight, w.to(at::kHalf).to(at::kFloat)));
  CHECK(at::equal(target->bias, b));
  // Integer and boolean tensors are not weights of a float model; nothing is modified.
  const auto before = target->weight.clone();
  CHECK_THAT(dtype_error({{"weight", at::ones({2, 3}, at::kChar)}, {"bias", b}}, *target),
             Catch::Contains("test.safetensors") && Catch::Contains("key 'weight'") &&
                 Catch::Contains("int8") && Catch::Contains("float32"));
  CHECK_THAT(dtype_error({{"weight", w}, {"bias", at::ones({2}, at::kBool)}}, *target),
             Catch::Contains("key 'bias'") && Catch::Contains("bool"));
  CHECK(at::equal(target->weight, before));
  // The same through a file: uint8 is named with the file.
  write_safetensors(dir / "u8.safetensors", {{"weight", at::ones({2, 3}, at::kByte)}, {"bias", b}});
  CHECK_THROWS_WITH(load_weights(*target, dir / "u8.safetensors"),
                    Catch::Contains("u8.safetensors") && Catch::Contains("uint8"));
  // A non-floating buffer needs its exact dtype.
  torch::nn::Module counter;
  counter.register_buffer("count", at::zeros({1}, at::kLong));
  CHECK_NOTHROW(load_state_dict(counter, {{"count", at::full({1}, 7, at::kLong)}}, "test.safetensors"));
  CHECK(counter.named_buffers()["count"].item<int64_t>() == 7);
  CHECK_THAT(dtype_error({{"count", at::ones({1}, at::kInt)}}, counter),
             Catch::Contains("key 'count'") && Catch::Contains("int32") && Catch::Contains("int64"));
  CHECK_THAT(dtype_error({{"count", at::ones({1}, at::kFloat)}}, counter),
             Catch::Contains("key 'count'") && Catch::Contains("float32"));
}

TEST_CASE("a mapped safetensors file reads like a copied one and its views outlive the file object",
          "[safetensors]") {
  TempDir dir("st-map");
  std::map<std::string, at::Tensor> tensors = {{"a", at::randn({5, 3})},
                                                {"b", at::arange(4, at::kLong)},
                                                {"c", at::randn({2, 2}).to(at::kBFloat16)}};
  write_safetensors(dir / "m.safetensors", tensors, {{"k", "v"}});
  const std::string original = read_file(dir / "m.safetensors");
  at::Tensor kept;
  {
    auto mapped = map_safetensors(dir / "m.safetensors");
    CHECK(mapped.metadata.at("k") == "v");
    for (const auto& [name, t] : tensors) {
      INFO(name);
      CHECK(at::equal(mapped.tensors.at(name), t));
    }
    kept = mapped.tensors.at("a");
  }
  // The view keeps the mapping alive after the file object is gone; read_safetensors' tensors
  // own their memory and may be written.
  CHECK(at::equal(kept, tensors.at("a")));
  auto owned = read_safetensors(dir / "m.safetensors").tensors.at("a");
  owned.fill_(7.0);
  CHECK(read_file(dir / "m.safetensors") == original);
  CHECK(at::equal(kept, tensors.at("a")));
  // The same validation as read_safetensors: a truncated file names the file.
  std::ofstream(dir / "t.safetensors", std::ios::binary) << original.substr(0, original.size() - 3);
  CHECK_THROWS_WITH(map_safetensors(dir / "t.safetensors"),
                    Catch::Contains("t.safetensors") && Catch::Contains("truncated"));
  CHECK_THROWS_WITH(map_safetensors(dir / "missing.safetensors"), Catch::Contains("missing.safetensors"));
}
