// `dit <command> ...`: dispatches to a subcommand and turns ditlab's typed errors into one clear
// message and a non-zero exit code.
#include <c10/util/Exception.h>
#include <yaml-cpp/exceptions.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "src/cli/commands.h"
#include "src/common/blas_tuning.h"
#include "src/common/error.h"
#include "src/common/log.h"

namespace {

const char* kUsage =
    "usage: dit <command> [options] [key.sub=value ...]\n"
    "commands:\n"
    "  train    train a backbone (default config: configs/default.yaml); --resume auto|DIR\n"
    "  sample   draw class-conditional samples from a run or a weights file\n"
    "  forward  one float32 forward pass on given weights and inputs (parity checks)\n"
    "  config   print the resolved config, or the reference of every key (--docs)\n"
    "  export   the weights of a checkpoint alone, in the official key layout\n"
    "  convert  an official DiT .pt checkpoint (torch.save) to safetensors\n"
    "  flops    parameters, tokens and GMACs of a model, from its config (nothing is built)\n"
    "  bench    time training steps (or sampling) on synthetic latents; prints one JSON line\n"
    "  train-vae  train an AutoencoderKL on the configured images (for latent diffusion)\n"
    "  encode   encode the configured images once into a latent cache (data.name latents)\n"
    "  train-classifier  train the feature network of dit eval on the configured images\n"
    "  eval     sample a run's EMA weights and measure FID, precision, recall, IS, accuracy\n"
    "  sweep    run a grid of experiments (or print their commands) and tabulate the results\n"
    "  mup      µP checks: coord-check (activations vs width), lr-sweep (loss vs lr per width)\n"
    "Run `dit <command> --help` for a command's options.\n";

}  // namespace

int main(int argc, char** argv) {
  using namespace ditlab;
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  ensure_fast_openblas_kernels(argv);
  keep_freed_memory_mapped();
  log::init_console();
  std::string command = argv[1];
  try {
    if (command == "train") return cli::run_train(argc, argv);
    if (command == "sample") return cli::run_sample(argc, argv);
    if (command == "forward") return cli::run_forward(argc, argv);
    if (command == "config") return cli::run_config(argc, argv);
    if (command == "export") return cli::run_export(argc, argv);
    if (command == "convert") return cli::run_convert(argc, argv);
    if (command == "flops") return cli::run_flops(argc, argv);
    if (command == "bench") return cli::run_bench(argc, argv);
    if (command == "mup") return cli::run_mup(argc, argv);
    if (command == "train-vae") return cli::run_train_vae(argc, argv);
    if (command == "encode") return cli::run_encode(argc, argv);
    if (command == "train-classifier") return cli::run_train_classifier(argc, argv);
    if (command == "eval") return cli::run_eval(argc, argv);
    if (command == "sweep") return cli::run_sweep(argc, argv);
    std::fprintf(stderr, "dit: unknown command '%s'\n%s", command.c_str(), kUsage);
    return 2;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    return 1;
  } catch (const c10::Error& e) {
    spdlog::error("LibTorch: {}", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}
