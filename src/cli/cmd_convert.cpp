// `dit convert`: an official facebookresearch/DiT checkpoint (a torch.save file) to safetensors.
#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/common/log.h"
#include "src/io/safetensors.h"
#include "src/io/torch_pickle.h"

namespace ditlab::cli {

int run_convert(int argc, char** argv) {
  Args args("convert",
            {{"from", "a torch.save file: a state dict (e.g. DiT-XL-2-256x256.pt) or a training "
                      "checkpoint holding several"},
             {"out", "the safetensors file to write"},
             {"key", "for training checkpoints: which state dict (default: ema, else model)"}},
            argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  args.reject_overrides();
  const std::string from = args.require("from"), out = args.require("out");
  auto tensors = read_torch_state_dict(from, args.get_or("key", ""));
  write_safetensors(out, tensors, {{"format", "pt"}, {"converted_from", from}});
  spdlog::info("wrote {} ({} tensors)", out, tensors.size());
  return 0;
}

}  // namespace ditlab::cli
