// The torch.save reader on hand-built files: valid ones in the shapes torch.save writes, and
// hostile ones (views outside their storage, nesting that would overflow the stack when freed,
// zip headers that disagree, impossible counts) that must be IoErrors naming the file.
// Real torch.save output is tested in tests/cli/convert_test.cpp.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <cstring>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "src/common/error.h"
#include "src/io/checksum.h"
#include "src/io/torch_pickle.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {

std::string le(uint64_t v, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return out;
}
uint64_t get_le(const std::string& bytes, size_t pos, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(bytes[pos + i]);
  return v;
}
void put_le(std::string& bytes, size_t pos, uint64_t v, int n) { bytes.replace(pos, n, le(v, n)); }

// ---- A minimal pickle writer: the opcodes torch.save uses for state dicts (protocol 2).

std::string op(uint8_t code) { return std::string(1, static_cast<char>(code)); }
const std::string kProto = op(0x80) + op(2);
// LONG1 with 8 bytes: any int64.
std::string py_int(int64_t v) { return op(0x8a) + op(8) + le(static_cast<uint64_t>(v), 8); }
std::string py_str(const std::string& s) { return "X" + le(s.size(), 4) + s; }  // BINUNICODE
std::string py_global(const std::string& module, const std::string& name) {
  return "c" + module + "\n" + name + "\n";
}
std::string py_tuple(const std::vector<std::string>& items) {
  std::string out = "(";
  for (const auto& item : items) out += item;
  return out + "t";
}
std::string py_ints(const std::vector<int64_t>& values) {
  std::vector<std::string> items;
  for (int64_t v : values) items.push_back(py_int(v));
  return py_tuple(items);
}
std::string py_list(const std::vector<std::string>& items) {
  std::string out = "](";
  for (const auto& item : items) out += item;
  return out + "e";
}
std::string py_dict(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string out = "}(";
  for (const auto& [key, value] : entries) out += py_str(key) + value;
  return out + "u";
}
std::string py_pickle(const std::string& body) { return kProto + body + "."; }

// _rebuild_tensor_v2(<FloatStorage "0" of `numel` floats>, offset, sizes, strides, False,
// OrderedDict()), as torch.save writes every tensor.
std::string tensor_record(int64_t numel, int64_t offset, const std::vector<int64_t>& sizes,
                          const std::vector<int64_t>& strides) {
  const std::string storage = py_tuple({py_str("storage"), py_global("torch", "FloatStorage"),
                                        py_str("0"), py_str("cpu"), py_int(numel)}) +
                              "Q";
  return py_global("torch._utils", "_rebuild_tensor_v2") +
         py_tuple({storage, py_int(offset), py_ints(sizes), py_ints(strides), op(0x89),
                   py_global("collections", "OrderedDict") + ")R"}) +
         "R";
}
std::string sizes_record(const std::string& sizes) {  // sizes given as raw pickle
  const std::string storage = py_tuple({py_str("storage"), py_global("torch", "FloatStorage"),
                                        py_str("0"), py_str("cpu"), py_int(4)}) +
                              "Q";
  return py_global("torch._utils", "_rebuild_tensor_v2") +
         py_tuple({storage, py_int(0), sizes, py_ints({1}), op(0x89)}) + "R";
}

// The floats 0, 1, ..., n - 1, as a storage file holds them.
std::string float_storage(int n) {
  std::vector<float> values(n);
  for (int i = 0; i < n; ++i) values[i] = static_cast<float>(i);
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

// ---- A stored-method zip writer, as torch.save's (optionally with data descriptors: flag bit 3,
// zeros in the local header, the real CRC and sizes after the data).

struct ZipFile {
  std::string name, data;
};
std::string stored_zip(const std::vector<ZipFile>& files, bool data_descriptor = false) {
  std::string out, central;
  for (const auto& f : files) {
    const uint32_t crc = crc32_of(f.data);
    const uint64_t offset = out.size(), size = f.data.size();
    const uint16_t flags = data_descriptor ? 0x8 : 0;
    out += le(0x04034b50, 4) + le(20, 2) + le(flags, 2) + le(0, 2) + le(0, 4) +
           le(data_descriptor ? 0 : crc, 4) + le(data_descriptor ? 0 : size, 4) +
           le(data_descriptor ? 0 : size, 4) + le(f.name.size(), 2) + le(0, 2) + f.name + f.data;
    if (data_descriptor) out += le(0x08074b50, 4) + le(crc, 4) + le(size, 4) + le(size, 4);
    central += le(0x02014b50, 4) + le(20, 2) + le(20, 2) + le(flags, 2) + le(0, 2) + le(0, 4) +
               le(crc, 4) + le(size, 4) + le(size, 4) + le(f.name.size(), 2) + le(0, 2) +
               le(0, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(offset, 4) + f.name;
  }
  const uint64_t dir_offset = out.size();
  return out + central + le(0x06054b50, 4) + le(0, 4) + le(files.size(), 2) +
         le(files.size(), 2) + le(central.size(), 4) + le(dir_offset, 4) + le(0, 2);
}
// Where each central directory record starts (no extra fields or comments, as written above).
std::vector<size_t> central_records(const std::string& zip) {
  std::vector<size_t> starts = {get_le(zip, zip.size() - 22 + 16, 4)};
  const uint64_t entries = get_le(zip, zip.size() - 22 + 10, 2);
  while (starts.size() < entries) {
    starts.push_back(starts.back() + 46 + get_le(zip, starts.back() + 28, 2));
  }
  return starts;
}

// A torch.save file: archive/data.pkl (the first entry) and one float storage archive/data/0.
std::string checkpoint(const std::string& pickle, const std::string& storage,
                       bool data_descriptor = false) {
  return stored_zip({{"archive/data.pkl", pickle}, {"archive/data/0", storage}}, data_descriptor);
}
std::string checkpoint(const std::string& pickle) { return checkpoint(pickle, float_storage(6)); }

std::string write(const TempDir& dir, const std::string& bytes) {
  const std::string path = dir / "hostile.pt";
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}
// The IoError's message on reading `bytes`, checked to start with the file's path; any other
// exception fails the test.
std::string io_error(const TempDir& dir, const std::string& bytes) {
  const std::string path = write(dir, bytes);
  try {
    read_torch_state_dict(path);
  } catch (const IoError& e) {
    CHECK_THAT(std::string(e.what()), Catch::StartsWith(path + ": "));
    return e.what();
  }
  FAIL("expected an IoError");
  return "";
}

}  // namespace

TEST_CASE("hand-built torch.save files load like torch.save's own", "[torch_pickle]") {
  TempDir dir("torch_pickle");
  // A view into the middle of its storage: offset 1, [2, 2] row-major -> 1 2 / 3 4.
  const std::string view = py_pickle(py_dict({{"w", tensor_record(6, 1, {2, 2}, {2, 1})}}));
  const at::Tensor expected = at::arange(1, 5, at::kFloat).reshape({2, 2});
  CHECK(at::equal(read_torch_state_dict(write(dir, checkpoint(view))).at("w"), expected));
  // Data descriptors (flag bit 3, zero sizes in the local header) are read from the central
  // directory.
  const std::string with_descriptors = checkpoint(view, float_storage(6), true);
  CHECK(at::equal(read_torch_state_dict(write(dir, with_descriptors)).at("w"), expected));
  // A CRC of 0 means torch.save did not compute one (set_crc32_options(False)).
  std::string no_crc = checkpoint(view);
  for (size_t record : central_records(no_crc)) put_le(no_crc, record + 16, 0, 4);
  CHECK(at::equal(read_torch_state_dict(write(dir, no_crc)).at("w"), expected));

  // An expanded view (stride 0), the last element, and an empty view with any offset.
  const std::string edges = py_pickle(py_dict({{"expanded", tensor_record(6, 5, {3}, {0})},
                                               {"last", tensor_record(6, 5, {}, {})},
                                               {"empty", tensor_record(6, 100, {0, 4}, {4, 1})}}));
  auto tensors = read_torch_state_dict(write(dir, checkpoint(edges)));
  CHECK(at::equal(tensors.at("expanded"), at::full({3}, 5.0, at::kFloat)));
  CHECK(tensors.at("last").item<float>() == 5.0f);
  CHECK(tensors.at("empty").sizes().vec() == std::vector<int64_t>{0, 4});

  // A training checkpoint shaped like the official DiT one: model, ema, optimizer state nested
  // four dicts deep, a list of parameter ids, and an argparse.Namespace, plus a 900-deep value
  // to show the nesting limit leaves room.
  const std::string w = tensor_record(6, 0, {6}, {1});
  const std::string state = "}(" + py_int(0) + py_dict({{"step", py_int(7)}, {"exp_avg", w}}) + "u";
  const std::string group = py_dict({{"lr", py_int(1)}, {"params", py_list({py_int(0)})}});
  const std::string opt = py_dict({{"state", state}, {"param_groups", py_list({group})}});
  const std::string args = py_global("argparse", "Namespace") + ")" + op(0x81) +
                           py_dict({{"model", py_str("DiT-XL/2")}}) + "b";
  const std::string training =
      py_pickle(py_dict({{"model", py_dict({{"w", tensor_record(6, 1, {5}, {1})}})},
                         {"ema", py_dict({{"w", w}})},
                         {"opt", opt},
                         {"args", args},
                         {"deep", "N" + std::string(900, '\x85')}}));
  const std::string path = write(dir, checkpoint(training));
  CHECK(at::equal(read_torch_state_dict(path).at("w"), at::arange(6, at::kFloat)));
  CHECK(at::equal(read_torch_state_dict(path, "model").at("w"), at::arange(1, 6, at::kFloat)));
}

TEST_CASE("tensor views outside their storage are IoErrors naming the file", "[torch_pickle]") {
  TempDir dir("torch_pickle");
  auto view_error = [&](int64_t offset, std::vector<int64_t> sizes, std::vector<int64_t> strides) {
    const std::string record = tensor_record(4, offset, sizes, strides);
    return io_error(dir, checkpoint(py_pickle(py_dict({{"w", record}})), float_storage(4)));
  };
  // offset * 4 bytes wraps around int64 in LibTorch's own check, which then passes.
  CHECK_THAT(view_error((1LL << 62) - (1LL << 28), {4}, {1}),
             Catch::Contains("reaches past its storage"));
  CHECK_THAT(view_error(1, {4}, {1}), Catch::Contains("reaches past its storage of 4 elements"));
  CHECK_THAT(view_error(0, {2}, {1LL << 62}), Catch::Contains("reaches past its storage"));
  CHECK_THAT(view_error(0, {3}, {(1LL << 62) + 1}), Catch::Contains("overflows 64-bit indexing"));
  CHECK_THAT(view_error(1LL << 62, {1LL << 62, 1LL << 62}, {0, 0}), Catch::Contains("overflows"));
  CHECK_THAT(view_error(-1, {1}, {1}), Catch::Contains("negative storage offset"));
  CHECK_THAT(view_error(0, {-1}, {1}), Catch::Contains("negative size or stride"));
  CHECK_THAT(view_error(2, {2}, {-1}), Catch::Contains("negative size or stride"));
  CHECK_THAT(view_error(0, {2}, {}), Catch::Contains("unequal numbers of sizes and strides"));
  CHECK_THAT(io_error(dir, checkpoint(py_pickle(py_dict({{"w", sizes_record(py_int(4))}})), float_storage(4))),
             Catch::Contains("expected a tuple"));
}

TEST_CASE("pickles nested too deeply are refused before they can overflow the stack",
          "[torch_pickle]") {
  TempDir dir("torch_pickle");
  // A million nested one-element tuples: freeing them recursed a million levels deep.
  const std::string tuples = py_pickle("N" + std::string(1000000, '\x85'));
  CHECK_THAT(io_error(dir, checkpoint(tuples)), Catch::Contains("more than 1000 levels deep"));

  // The same depth built in stages that each stay under the limit: a list inside a chain of 998
  // tuples is fetched back from the memo and given the next such chain, whose own list is
  // memoized in its place ('b' pops the list, so the chain alone holds it).
  const int links = 998;
  std::string staged = "]q" + op(0) + std::string(links, '\x85');
  for (int stage = 1; stage < 1000; ++stage) {
    staged += "h" + op(0) + "]q" + op(0) + std::string(links, '\x85') + "ab";
  }
  CHECK_THAT(io_error(dir, checkpoint(py_pickle(staged))),
             Catch::Contains("deepens a container already placed inside another"));
}

TEST_CASE("zip entries whose headers disagree or whose bytes fail their CRC are refused",
          "[torch_pickle]") {
  TempDir dir("torch_pickle");
  const std::string good = checkpoint(py_pickle(py_dict({{"w", tensor_record(6, 0, {6}, {1})}})));
  const std::vector<size_t> central = central_records(good);

  std::string method = good;  // data.pkl's local header says deflate, the central directory stored
  put_le(method, 8, 8, 2);
  CHECK_THAT(io_error(dir, method), Catch::Contains("'archive/data.pkl' disagrees with the central "
                                                   "directory on the compression method"));
  std::string size = good;  // a local size one byte longer than the central one
  put_le(size, 18, get_le(size, 18, 4) + 1, 4);
  CHECK_THAT(io_error(dir, size), Catch::Contains("the local header of 'archive/data.pkl' gives"));
  std::string uncompressed = good;  // a stored entry "expanding" on reading
  put_le(uncompressed, central[0] + 24, get_le(uncompressed, central[0] + 24, 4) + 1, 4);
  CHECK_THAT(io_error(dir, uncompressed), Catch::Contains("bytes uncompressed but"));

  std::string flipped = good;  // one bit of the storage's data, which parses either way
  const size_t storage_at =
      get_le(flipped, central[1] + 42, 4) + 30 + std::strlen("archive/data/0");
  flipped[storage_at + 5] ^= 1;
  CHECK_THAT(io_error(dir, flipped), Catch::Contains("'archive/data/0' fails its CRC-32 check"));
}

TEST_CASE("malformed pickles are IoErrors, not crashes or std exceptions", "[torch_pickle]") {
  TempDir dir("torch_pickle");
  auto numel_error = [&](int64_t numel) {
    const std::string record = tensor_record(numel, 0, {0}, {1});
    return io_error(dir, checkpoint(py_pickle(py_dict({{"w", record}})), ""));
  };
  // Both make numel * 4 bytes wrap to 0, the size of the empty storage entry.
  CHECK_THAT(numel_error(-(1LL << 62)), Catch::Contains("impossible element count"));
  CHECK_THAT(numel_error(1LL << 62), Catch::Contains("impossible element count"));

  // MARK at stack height 2, two pops (BUILD), then TUPLE back to the mark.
  CHECK_THAT(io_error(dir, checkpoint(py_pickle("NN(bbt"))), Catch::Contains("below a mark"));
  const std::string no_args = py_global("torch._utils", "_rebuild_parameter") + ")R";
  CHECK_THAT(io_error(dir, checkpoint(py_pickle(no_args))),
             Catch::Contains("malformed parameter record"));
  CHECK_THAT(io_error(dir, checkpoint(py_pickle("}(" + py_str("w") + "u"))),
             Catch::Contains("a key without a value"));
  // 2^64 needs 9 bytes; truncated to 64 bits it would read as 0. As a tensor's offset it is an
  // error; as a value nothing reads (a stored seed), it is passed over.
  const std::string wide = op(0x8a) + op(9) + le(0, 8) + op(1);
  const std::string record = tensor_record(6, 0, {2}, {1});
  std::string wide_offset = record;
  const std::string offset_zero = py_int(0) + py_ints({2});
  REQUIRE(wide_offset.find(offset_zero) != std::string::npos);
  wide_offset.replace(wide_offset.find(offset_zero), offset_zero.size(), wide + py_ints({2}));
  CHECK_THAT(io_error(dir, checkpoint(py_pickle(py_dict({{"w", wide_offset}})))),
             Catch::Contains("wider than 64 bits"));
  const std::string with_seed = py_pickle(py_dict({{"model", py_dict({{"w", record}})}, {"seed", wide}}));
  const auto loaded = read_torch_state_dict(write(dir, checkpoint(with_seed)), "model");
  CHECK(at::equal(loaded.at("w"), at::arange(0, 2, at::kFloat)));
}
