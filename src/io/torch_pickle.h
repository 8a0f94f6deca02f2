// Reading PyTorch's `torch.save` files without Python: the zip container (PyTorch >= 1.6) and
// the subset of the pickle protocol that state dicts use. LibTorch's own torch::pickle_load
// turns the collections.OrderedDict of every state dict into None (1.13), so official
// checkpoints such as DiT-XL-2-256x256.pt need this.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace ditlab {

// The tensors of a saved state dict. If the file holds a dict of state dicts (a training
// checkpoint such as {"model": ..., "ema": ..., "opt": ..., "args": ...}), `key` picks one;
// an empty key takes "ema" if present, else "model". Throws IoError naming the file and what
// it could not read (not a zip, compressed entries, unsupported pickle content, ...).
std::map<std::string, at::Tensor> read_torch_state_dict(const std::string& path,
                                                        const std::string& key = "");

}  // namespace ditlab
