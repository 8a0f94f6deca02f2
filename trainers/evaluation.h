// `dit eval`: sample quality of a training run (docs/research.md).
//   1. The real data's feature statistics (data.*, or the source images of a latent cache) are
//      computed once per (feature network, dataset) and cached in eval.reference_dir.
//   2. eval.num_samples images are sampled from the run's EMA weights with its sample.* settings,
//      classes in turn, decoded by its autoencoder; under a launcher the ranks share the batches.
//      Sample i's noise is its own stream (sample.seed, i), so the samples depend neither on
//      eval.batch_size nor on the ranks.
//   3. FID (Fréchet distance of the features), precision and recall (k-NN manifolds), and where the
//      network gives class probabilities the Inception Score and, for the classifier, the
//      accuracy of the samples' classes, go to run_dir/eval.json (and a line of evals.jsonl).
//      A kept checkpoint's weights (checkpoint_step) can be measured too: its line goes to
//      evals.jsonl only, since eval.json describes the run's final weights (dit sweep reads it).
#pragma once
#include <cmath>
#include <string>

#include "src/config/experiment_config.h"

namespace ditlab {

struct EvalOptions {
  std::string run_dir;
  std::string weights = "ema";  // ema or model (the raw weights)
  int64_t checkpoint_step = -1;  // >= 0: the weights of run_dir/checkpoints/step-N instead of the final ones
  std::string command_line;
};

struct EvalResult {
  double fid = NAN;
  double precision = NAN, recall = NAN;
  double inception_score = NAN, inception_score_std = NAN;  // NaN without class probabilities
  double accuracy = NAN;      // the classifier's agreement with the sampled classes, or NaN
  int64_t num_samples = 0;
  int64_t reference_images = 0;
  int64_t step = 0;           // of the weights evaluated
  double gmacs_per_image = 0.0;
  double training_flops = 0.0;  // 6 x forward MACs x images seen (steps x global batch)
  double seconds = 0.0;
  std::string json;           // what was written to eval.json
};

// `config` is the run's config.yaml with the command line's overrides.
EvalResult evaluate_run(const ExperimentConfig& config, const EvalOptions& options);

}  // namespace ditlab
