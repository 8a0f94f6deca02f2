// `dit train-classifier`: trains the small image classifier (models/classifier/, classifier.*)
// on the configured images (cross-entropy, AdamW with a cosine decay, data.random_flip), holds out
// classifier.eval_images images spread evenly over the dataset, and writes into run.dir:
//   classifier.safetensors  the weights, the architecture and the held-out accuracy in the metadata
//   config.yaml, run_info.yaml, train.log
// `dit eval` then uses its penultimate features (eval.features: classifier).
#pragma once
#include <string>

#include "src/config/experiment_config.h"

namespace ditlab {

struct ClassifierTrainSummary {
  std::string weights_path;
  double first_loss = 0.0, last_loss = 0.0;  // mean cross-entropy of the first / last log window
  double held_out_accuracy = 0.0;
  double seconds = 0.0;
};

ClassifierTrainSummary train_classifier(const ExperimentConfig& config, const std::string& command_line);

}  // namespace ditlab
