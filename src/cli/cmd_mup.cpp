// `dit mup coord-check | lr-sweep`: the µP checks (trainers/width_study.h). Each trains the
// experiment of --config at several widths under µP and the standard parametrization, writes a
// CSV and the resolved config under --out, prints a summary and draws the plot.
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "models/registry.h"
#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/cli/config_file.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/config/config_loader.h"
#include "trainers/experiment.h"
#include "trainers/width_study.h"

namespace ditlab::cli {
namespace {

std::vector<bool> parse_parametrizations(const std::string& text) {
  std::vector<bool> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string part = text.substr(start, comma - start);
    if (part != "mup" && part != "sp") {
      throw UsageError("dit mup: --parametrizations lists mup and/or sp, not '" + part + "'");
    }
    out.push_back(part == "mup");
    start = comma + 1;
  }
  return out;
}

// Draws `png` from `csv` with the plotting script; a missing Python or matplotlib only warns.
void plot(const std::string& script, const std::string& csv, const std::string& png) {
  const std::string python = std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  const std::string path = std::filesystem::exists(script) ? script
                                                           : std::string(DITLAB_SOURCE_DIR) + "/" + script;
  const std::string command = python + " '" + path + "' '" + csv + "' '" + png + "'";
  if (std::system(command.c_str()) == 0) {
    spdlog::info("plot: {}", png);
  } else {
    spdlog::warn("the plot was not drawn (needs Python 3 with matplotlib); run: {}", command);
  }
}

int coord_check(const ExperimentConfig& config, const Dataset& data, WidthStudy study,
                const std::string& out_dir) {
  const auto rows = run_coord_check(config, data, study);
  const std::string csv = out_dir + "/coord_check.csv";
  std::ofstream out(csv);
  out << "parametrization,width,step,kind,mean_abs\n";
  for (const auto& r : rows) {
    out << r.parametrization << "," << r.width << "," << r.step << "," << r.kind << ","
        << fmt::format("{:.6g}", r.mean_abs) << "\n";
  }
  out.close();
  if (!out) throw IoError("cannot write " + csv);
  spdlog::info("wrote {}", csv);
  // The exponent of each kind's size in width at the last step: ~0 under µP, > 0 under SP.
  std::printf("slope of log mean|activation| against log width at step %lld (0 = flat):\n",
              static_cast<long long>(study.steps - 1));
  std::map<std::string, std::map<std::string, double>> table;  // kind -> parametrization -> slope
  for (const auto& s : coord_check_slopes(rows)) {
    if (s.step == study.steps - 1) table[s.kind][s.parametrization] = s.slope;
  }
  std::printf("  %-12s %8s %8s\n", "kind", "mup", "sp");
  for (const auto& [kind, by] : table) {
    auto cell = [&](const char* p) {
      auto it = by.find(p);
      return it == by.end() ? std::string("-") : fmt::format("{:+.3f}", it->second);
    };
    std::printf("  %-12s %8s %8s\n", kind.c_str(), cell("mup").c_str(), cell("sp").c_str());
  }
  plot("scripts/plot_coord_check.py", csv, out_dir + "/coord_check.png");
  return 0;
}

int lr_sweep(const ExperimentConfig& config, const Dataset& data, WidthStudy study,
             const std::string& out_dir) {
  const auto rows = run_lr_sweep(config, data, study);
  const std::string csv = out_dir + "/lr_sweep.csv";
  std::ofstream out(csv);
  out << "parametrization,width,lr,loss\n";
  for (const auto& r : rows) {
    out << r.parametrization << "," << r.width << "," << fmt::format("{:.6g}", r.lr) << ","
        << (std::isnan(r.loss) ? std::string("nan") : fmt::format("{:.6g}", r.loss)) << "\n";
  }
  out.close();
  if (!out) throw IoError("cannot write " + csv);
  spdlog::info("wrote {}", csv);
  std::printf("best learning rate per width (mean loss of the last fifth of %lld steps):\n",
              static_cast<long long>(study.steps));
  for (bool mup : study.mup) {
    for (int64_t width : study.widths) {
      const SweepRow* best = nullptr;
      for (const auto& r : rows) {
        if ((r.parametrization == "mup") != mup || r.width != width || std::isnan(r.loss)) continue;
        if (best == nullptr || r.loss < best->loss) best = &r;
      }
      if (best == nullptr) {
        std::printf("  %-4s width %5lld: every learning rate diverged\n", mup ? "mup" : "sp",
                    static_cast<long long>(width));
      } else {
        std::printf("  %-4s width %5lld: lr %-10.4g loss %.5f\n", mup ? "mup" : "sp",
                    static_cast<long long>(width), best->lr, best->loss);
      }
    }
  }
  plot("scripts/plot_lr_sweep.py", csv, out_dir + "/lr_sweep.png");
  return 0;
}

}  // namespace

int run_mup(int argc, char** argv) {
  const std::string sub = argc > 2 ? argv[2] : "";
  const std::string usage = "usage: dit mup coord-check|lr-sweep --config FILE [options] [key=value ...]\n"
                            "  coord-check  activation sizes over the first steps at several widths\n"
                            "  lr-sweep     the loss per learning rate at several widths\n"
                            "Run `dit mup coord-check --help` for the options.";
  if (sub == "--help" || sub == "-h") {  // asked for: the usage on stdout, exit 0, as every command
    std::printf("%s\n", usage.c_str());
    return 0;
  }
  if (sub != "coord-check" && sub != "lr-sweep") throw UsageError(usage);
  const bool sweep = sub == "lr-sweep";
  Args args("mup " + sub,
            {{"config", "experiment YAML (default: configs/default.yaml)"},
             {"widths", "model.hidden_size values, comma-separated (default 64,128,256,512)"},
             {"steps", sweep ? "training steps per run (default 200)" : "steps recorded (default 5)"},
             {"lrs", "learning rates, comma-separated (lr-sweep; default 2^-14 .. 2^-6)"},
             {"parametrizations", "mup and/or sp, comma-separated (default mup,sp)"},
             {"out", "output folder (default runs/mup/<command>)"}},
            argc, argv, 3);
  if (args.print_help_if_asked()) return 0;
  ExperimentConfig config =
      load_experiment_config(config_path_or_default(args.get("config")), args.overrides());
  apply_compute_settings(config.train);
  WidthStudy study;
  study.widths = args.get_int_list("widths", {64, 128, 256, 512});
  study.steps = args.get_int("steps", sweep ? 200 : 5);
  study.mup = parse_parametrizations(args.get_or("parametrizations", "mup,sp"));
  std::vector<double> default_lrs;
  for (int e = -14; e <= -6; ++e) default_lrs.push_back(std::ldexp(1.0, e));
  study.lrs = args.get_double_list("lrs", default_lrs);
  study.progress = [](const std::string& line) { spdlog::info("{}", line); };
  if (!config.model.mup.enabled && config.model.mup.base_width == 0) {
    spdlog::info("model.mup.base_width is not set: the first width, {}, is the base", study.widths.front());
  }

  if (sweep && config.train.grad_clip > 0) {
    spdlog::warn("train.grad_clip {} also limits the update size, differently at each width; "
                 "train.grad_clip=0 lets the learning rate alone set it", config.train.grad_clip);
  }
  if (sweep && config.train.lr_warmup_steps > study.steps / 10) {
    spdlog::warn("train.lr_warmup_steps {} is more than a tenth of the {} steps: the sweep mostly "
                 "measures the warm-up", config.train.lr_warmup_steps, study.steps);
  }
  check_study(study, sweep);  // before the dataset is read or anything written
  auto data = make_dataset(config.data);
  config.model = model_config_for_data(config, *data);
  // The config as the study runs it at its first width (resolved, so a bad one fails now).
  config = config_at_width(config, study.widths.front(), config.model.mup.enabled, study.widths.front());
  config.model = resolve_model_config(config.model);
  const std::string out_dir = args.get_or("out", std::string("runs/mup/") + sub);
  std::filesystem::create_directories(out_dir);
  write_run_metadata(out_dir, config, joined_command_line(argc, argv), select_device(config.train.device));
  return sweep ? lr_sweep(config, *data, study, out_dir) : coord_check(config, *data, study, out_dir);
}

}  // namespace ditlab::cli
