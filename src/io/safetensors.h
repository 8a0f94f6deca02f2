// safetensors: 8-byte little-endian header length N, N bytes of JSON
// ({name: {dtype, shape, data_offsets}}, optional "__metadata__"), then the raw C-order bytes.
// The interchange format for weights, inputs and samples (readable by Python without ditlab).
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace ditlab {

struct SafetensorsFile {
  std::map<std::string, at::Tensor> tensors;  // CPU tensors, owning their memory
  std::map<std::string, std::string> metadata;
};

// Reads and validates the whole file; throws IoError naming the file and the problem
// (truncated, bad header, unknown dtype, offsets out of range, holes or overlaps).
SafetensorsFile read_safetensors(const std::string& path);

// The same checks, but the tensors view a read-only memory mapping of the file instead of owning
// copies: opening costs only the header, and bytes are read from disk when a tensor is first
// used. Each tensor keeps the mapping alive. They must not be written to (copy or clone them
// first), and the file must not be truncated while mapped (the writers here replace files by
// renaming, which leaves a mapping of the old file intact on a local file system).
SafetensorsFile map_safetensors(const std::string& path);

// Writes atomically (temporary file, fsync, rename): readers never see a partial file.
void write_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace ditlab
