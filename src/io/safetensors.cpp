#include "src/io/safetensors.h"

#include <ATen/ATen.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <set>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <vector>

#include "src/common/error.h"
#include "src/common/text.h"
#include "src/io/atomic_file.h"
#include "src/io/mapped_file.h"

namespace ditlab {
namespace {

// The reference reader refuses headers above 100 MB; so do we, before allocating anything.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

const std::vector<std::pair<std::string, at::ScalarType>>& dtype_names() {
  static const std::vector<std::pair<std::string, at::ScalarType>> names = {
      {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16},
      {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
      {"U8", at::kByte},    {"BOOL", at::kBool},
  };
  return names;
}

std::string dtype_name(at::ScalarType type) {
  for (const auto& [name, t] : dtype_names()) {
    if (t == type) return name;
  }
  throw IoError(std::string("safetensors cannot store dtype ") + c10::toString(type));
}

struct Entry {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

Entry parse_entry(const std::string& path, const std::string& name, const YAML::Node& info) {
  auto bad = [&](const std::string& what) -> IoError {
    return IoError(path + ": tensor '" + name + "': " + what);
  };
  if (!info.IsMap() || !info["dtype"] || !info["shape"] || !info["data_offsets"]) {
    throw bad("header entry needs dtype, shape and data_offsets");
  }
  Entry e{name, at::kFloat, {}, 0, 0};
  if (!info["dtype"].IsScalar()) throw bad("dtype must be a string");
  std::string dtype = info["dtype"].as<std::string>();
  auto it = std::find_if(dtype_names().begin(), dtype_names().end(),
                         [&](const auto& p) { return p.first == dtype; });
  if (it == dtype_names().end()) throw bad("unsupported dtype '" + dtype + "'");
  e.dtype = it->second;
  const YAML::Node& shape = info["shape"];
  const YAML::Node& offsets = info["data_offsets"];
  if (!shape.IsSequence() || !offsets.IsSequence() || offsets.size() != 2) {
    throw bad("shape must be a list and data_offsets a pair [begin, end]");
  }
  try {
    for (const auto& d : shape) {
      int64_t dim = d.as<int64_t>();
      if (dim < 0) throw bad("negative dimension in shape");
      e.shape.push_back(dim);
    }
    e.begin = offsets[0].as<uint64_t>();
    e.end = offsets[1].as<uint64_t>();
  } catch (const YAML::Exception&) {
    throw bad("shape and data_offsets must hold non-negative integers");
  }
  // Checked products: a crafted shape must not wrap around to a small byte count.
  uint64_t numel = 1;
  for (int64_t d : e.shape) {
    if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
      throw bad("shape has more elements than fit in 64 bits");
    }
    numel *= static_cast<uint64_t>(d);
  }
  const uint64_t element = c10::elementSize(e.dtype);
  if (numel > std::numeric_limits<uint64_t>::max() / element) throw bad("shape is too large");
  uint64_t bytes = numel * element;
  if (e.end < e.begin || e.end - e.begin != bytes) {
    std::ostringstream msg;
    msg << "data_offsets [" << e.begin << ", " << e.end << "] do not hold " << bytes
        << " bytes (" << dtype << " with " << numel << " elements)";
    throw bad(msg.str());
  }
  return e;
}

}  // namespace

SafetensorsFile map_safetensors(const std::string& path) {
  auto file_bytes = std::make_shared<MappedFile>(path);
  const char* bytes = file_bytes->data();
  const uint64_t size = file_bytes->size();
  if (size < 8) {
    throw IoError(path + ": truncated safetensors file (" + std::to_string(size) +
                  " bytes; the 8-byte header length is missing)");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[i]);
  if (header_len > kMaxHeaderBytes || header_len > size - 8) {
    throw IoError(path + ": header length " + std::to_string(header_len) +
                  " exceeds the file (" + std::to_string(size) +
                  " bytes): truncated or not a safetensors file");
  }
  std::string header(bytes + 8, header_len);
  auto first = header.find_first_not_of(" \t\r\n");
  if (first == std::string::npos || header[first] != '{') {
    throw IoError(path + ": header is not a JSON object: not a safetensors file");
  }
  YAML::Node json;  // JSON is YAML, so yaml-cpp parses the header
  try {
    json = YAML::Load(header);
  } catch (const YAML::Exception& e) {
    throw IoError(path + ": header is not valid JSON: " + e.what());
  }
  const uint64_t data_size = size - 8 - header_len;
  char* data = file_bytes->data() + 8 + header_len;

  SafetensorsFile file;
  std::vector<Entry> entries;
  std::set<std::string> names;
  try {
    for (const auto& item : json) {
      std::string name = item.first.as<std::string>();
      if (!names.insert(name).second) throw IoError(path + ": duplicate tensor name '" + name + "'");
      if (name == "__metadata__") {
        if (!item.second.IsMap()) throw IoError(path + ": __metadata__ must be a string map");
        for (const auto& m : item.second) {
          if (!m.second.IsScalar()) {
            throw IoError(path + ": __metadata__ value of '" + m.first.as<std::string>() +
                          "' is not a string");
          }
          file.metadata[m.first.as<std::string>()] = m.second.as<std::string>();
        }
        continue;
      }
      entries.push_back(parse_entry(path, name, item.second));
    }
  } catch (const YAML::Exception& e) {
    throw IoError(path + ": malformed header: " + e.what());
  }
  // The data buffer must be covered exactly: no holes, no overlaps, nothing past the end. Ties
  // on begin sort by end, so an empty tensor [b, b] comes before the one starting at b.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const auto& e : entries) {
    if (e.begin != cursor) {
      throw IoError(path + ": tensor '" + e.name + "' starts at byte " + std::to_string(e.begin) +
                    ", expected " + std::to_string(cursor) + " (hole or overlap in the data)");
    }
    if (e.end > data_size) {
      throw IoError(path + ": tensor '" + e.name + "' ends at byte " + std::to_string(e.end) +
                    " but the data holds only " + std::to_string(data_size) + " bytes (truncated)");
    }
    cursor = e.end;
  }
  if (cursor != data_size) {
    throw IoError(path + ": " + std::to_string(data_size - cursor) +
                  " trailing bytes after the last tensor");
  }
  // Each view holds the mapping, so the file stays mapped while any tensor of it lives.
  for (const auto& e : entries) {
    char* first = data + e.begin;
    at::Tensor tensor;
    if (reinterpret_cast<uintptr_t>(first) % c10::elementSize(e.dtype) == 0) {
      tensor = at::from_blob(first, e.shape, [file_bytes](void*) {}, at::TensorOptions().dtype(e.dtype));
    } else {  // other writers may not align the data: copy it out bytewise
      tensor = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
      if (e.end > e.begin) std::memcpy(tensor.data_ptr(), first, e.end - e.begin);
    }
    if (!file.tensors.emplace(e.name, tensor).second) {
      throw IoError(path + ": duplicate tensor name '" + e.name + "'");
    }
  }
  return file;
}

SafetensorsFile read_safetensors(const std::string& path) {
  SafetensorsFile file = map_safetensors(path);
  for (auto& [name, tensor] : file.tensors) tensor = tensor.clone();  // drops the mapping
  return file;
}

void write_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::ostringstream header;
  header << "{";
  bool first = true;
  if (!metadata.empty()) {
    header << "\"__metadata__\":{";
    for (auto it = metadata.begin(); it != metadata.end(); ++it) {
      if (it != metadata.begin()) header << ",";
      header << json_quoted(it->first) << ":" << json_quoted(it->second);
    }
    header << "}";
    first = false;
  }
  std::vector<at::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    auto c = t.detach().to(at::kCPU).contiguous();
    uint64_t nbytes = static_cast<uint64_t>(c.numel()) * c.element_size();
    header << (first ? "" : ",") << json_quoted(name) << ":{\"dtype\":\""
           << dtype_name(c.scalar_type()) << "\",\"shape\":[";
    for (int64_t d = 0; d < c.dim(); ++d) header << (d ? "," : "") << c.size(d);
    header << "],\"data_offsets\":[" << offset << "," << offset + nbytes << "]}";
    offset += nbytes;
    first = false;
    contiguous.push_back(c);
  }
  header << "}";
  std::string json = header.str();
  json.append((8 - json.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as the spec advises

  std::string bytes;
  bytes.reserve(8 + json.size() + offset);
  uint64_t len = json.size();
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  bytes += json;
  for (const auto& c : contiguous) {
    bytes.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  }
  write_file_atomically(path, bytes);
}

}  // namespace ditlab
