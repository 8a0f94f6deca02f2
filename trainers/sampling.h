// Class-conditional sampling with a backbone: the glue between a Backbone, the diffusion
// samplers and classifier-free guidance.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <string>

#include "models/backbone.h"
#include "src/config/experiment_config.h"

namespace ditlab {

class AutoencoderStage;

// Refuses sampling settings that cannot work with this model, before any work is done: more
// steps than the diffusion has, guidance without a null class, guided channels beyond the noise
// channels. Throws ConfigError naming the key.
void check_sample_config(const ModelConfig& model, const DiffusionConfig& diffusion,
                         const SampleConfig& sample, const AutoencoderConfig& autoencoder = {});

// Refuses an output name that is neither .png nor .safetensors (UsageError), or .png in a build
// without OpenCV (IoError).
void check_sample_output(const std::string& path);

// Draws one sample per entry of `labels` ([N] int64), sample.batch_size at a time. With
// sample.cfg_scale != 1 each batch is doubled with the null label and guided. With a `decoder`
// each batch is decoded to images as soon as it is drawn. Returns [N, C, H, W] float32 on the
// CPU (N = 0: an empty tensor of the backbone's shape).
// Sample i is the sample numbered first_index + i: all of its noise (the start and, for DDPM or
// DDIM with eta > 0, every step's) comes from a stream of its own, seeded by (sample.seed, that
// number). A sample therefore does not depend on the batch it is drawn in: an evaluation gives
// the same images, and the same FID, at any eval.batch_size and on any number of ranks.
at::Tensor generate_samples(Backbone& model, const DiffusionConfig& diffusion,
                            const SampleConfig& sample, const at::Tensor& labels,
                            const c10::Device& device, int64_t first_index = 0,
                            const AutoencoderStage* decoder = nullptr);

// num_per_class copies of each class id, class-major: one grid row per class.
at::Tensor grid_labels(int64_t num_classes, int64_t num_per_class);

// `.png`: a grid with `columns` per row; `.safetensors`: `samples` and `labels`.
void write_samples(const std::string& path, const at::Tensor& samples, const at::Tensor& labels,
                   int64_t columns);

}  // namespace ditlab
