// `dit sweep`: a grid of training runs from one experiment (docs/research.md). A sweep file:
//
//   base: ../fashion_mnist/dit_small.yaml    # the experiment every run starts from (relative
//                                            # to the sweep file)
//   dir: runs/sweeps/conditioning            # each run in dir/<name>; results.{csv,md} here
//   overrides: [train.steps=600]             # applied to every run, before the grid's values
//   grid:                                    # the cartesian product, first key slowest
//     model.conditioning: [adaln_zero, adaln, cross_attention, in_context]
//   exclude:                                 # optional: combinations left out, each a map of
//     - {model.conditioning: adaln}          # grid keys to one of their values
//   eval: [--num-samples, "2000"]            # optional: dit eval after each run, with these
//                                            # arguments (and key=value overrides)
//
// A run is named by its grid values ("conditioning-adaln_zero", "name-DiT-S_patch_size-4").
// Every combination is loaded and checked before anything runs, so a bad key or value fails at
// once, naming the file and the run.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ditlab {

struct SweepSpec {
  std::string file;  // the sweep YAML
  std::string base;  // the experiment YAML, as a path usable from the working directory
  std::string dir;
  std::vector<std::string> overrides;
  std::vector<std::pair<std::string, std::vector<std::string>>> grid;  // in the file's order
  // Runs whose values match every key = value of one entry are left out.
  std::vector<std::vector<std::pair<std::string, std::string>>> exclude;
  bool eval = false;
  std::vector<std::string> eval_args;
};

struct SweepRun {
  std::string name;
  std::vector<std::pair<std::string, std::string>> values;  // the grid's key = value
  std::vector<std::string> overrides;  // everything after the base: the sweep's, the values, run.dir
  std::string run_dir;
};

// Throws ConfigError naming the file and the key for an unknown key, a missing base or grid, a
// grid entry that is not a non-empty list, or an exclude entry naming a key or value not in the
// grid (a typo there would silently run the combination).
SweepSpec read_sweep(const std::string& path);

// The runs of the grid; each one's config is loaded (and so validated) here.
std::vector<SweepRun> expand_sweep(const SweepSpec& spec);

// The shell commands of one run: `dit train ... --resume auto` (a finished run is left as it
// is) and, with `eval`, `dit eval --run-dir ...`. `dit` is the binary to call.
std::string train_command(const SweepSpec& spec, const SweepRun& run, const std::string& dit);
std::string eval_command(const SweepSpec& spec, const SweepRun& run, const std::string& dit);

// The step of a finished run (its last logged step equals train.steps and its weights exist), or
// -1; and the step of the weights its eval.json measured, or -1 without one.
int64_t finished_step(const std::string& run_dir);
int64_t evaluated_step(const std::string& run_dir);
// Whether eval.json measured the weights of `step` as the sweep asks: with the sweep's eval:
// arguments (its command line ends with them), or any evaluation when the sweep asks for none.
bool evaluation_is_current(const SweepSpec& spec, const SweepRun& run, int64_t step);

// One row per run: the grid values, the status (done, incomplete or missing), step, the mean
// loss of the last logged window, parameters, GMACs per image, training FLOPs (6 x MACs x images
// seen), and eval.json's metrics where present. Written to dir/results.csv and dir/results.md.
struct SweepTable {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
};
SweepTable collect_sweep(const SweepSpec& spec, const std::vector<SweepRun>& runs);
void write_sweep_table(const SweepSpec& spec, const SweepTable& table);

// What a run started with `--devices index` gets as CUDA_VISIBLE_DEVICES. The indices count the
// GPUs the sweep itself sees: with CUDA_VISIBLE_DEVICES inherited (`inherited`, null when unset)
// index k is that list's k-th entry (an index or a GPU-UUID, as given), else k itself. Throws
// UsageError naming both for an index beyond the inherited list (or a negative one).
std::string visible_device(int64_t index, const char* inherited);

// The signal that stopped a child process, from its waitpid() status, or 0: one that killed it,
// or n for an exit status 128 + n (dit train's _exit(130) after a second Ctrl-C, a shell's report
// of a killed command). -1 (no child) is 0.
int stop_signal_of(int wait_status);

}  // namespace ditlab
