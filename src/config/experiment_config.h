// The typed experiment configuration. Defaults live here, in the member initialisers, and
// nowhere else; `option_table.cpp` names every key, its help text and its valid range, and
// docs/config.md is generated from both (`dit config --docs`).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ditlab {

// DiT-MoE's sparse mixture of experts (model.moe.*).
struct MoeConfig {
  int64_t num_experts = 0;         // 0: the preset's (dit-moe), or dense (other families)
  int64_t experts_per_token = 0;   // k; 0: the preset's, or 2
  double capacity_factor = 0.0;    // 0: no limit (the official default)
  double aux_loss_weight = 0.005;  // the paper's alpha (the official code uses 0.01)
};

// µP, the maximal update parametrization (model.mup.*; models/mup/, docs/mup.md). The width
// multiplier of a model is hidden_size / base_width; at the base width a µP model is exactly the
// standard one.
struct MupConfig {
  bool enabled = false;
  int64_t base_width = 0;      // the hidden_size hyper-parameters were tuned at (required)
  int64_t base_num_heads = 0;  // heads of the base model; 0: the model's own
  double output_mult = 1.0;    // the readout's forward multiplier at the base width
  double attn_mult = 0.0;      // attention logits scale attn_mult / head_dim; 0: sqrt(base head_dim)
};

struct ModelConfig {
  std::string name = "DiT-S/4";  // a preset (DiT-XL/2 ...) or a family name (dit)
  int64_t depth = 0;             // 0: take it from the preset
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t patch_size = 0;
  double mlp_ratio = 0.0;             // 0: the family's default (dit 4, u-dit 2)
  std::vector<int64_t> level_depths;  // u-dit: blocks per level; empty: the preset's
  int64_t input_size = 0;   // 0: from the dataset (image size / autoencoder downsampling)
  int64_t in_channels = 0;  // 0: from the dataset
  int64_t num_classes = 0;  // 0: from the dataset
  bool learn_sigma = true;
  double class_dropout_prob = 0.1;
  std::string conditioning = "adaln_zero";
  bool checkpoint_blocks = false;  // activation checkpointing per block
  MoeConfig moe;
  MupConfig mup;
};

struct DiffusionConfig {
  int64_t steps = 1000;
  std::string schedule = "linear";
  double beta_start = 1e-4;
  double beta_end = 0.02;
};

struct DataConfig {
  std::string name = "fashion_mnist";
  std::string path = "/usr/share/datasets/fashion-mnist";
  std::string split = "train";
  int64_t image_size = 32;
  int64_t limit = 0;  // 0: the whole split; N: its first N images (debug runs)
  bool random_flip = false;
  int64_t prefetch = 2;
};

struct TrainConfig {
  int64_t steps = 2000;
  int64_t global_batch_size = 32;
  int64_t grad_accum_steps = 1;
  double lr = 1e-4;
  int64_t lr_warmup_steps = 0;  // linear warm-up from lr / N to lr over the first N steps
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double grad_clip = 0.0;  // 0: no clipping
  double ema_decay = 0.9999;
  bool ema_warmup = false;  // decay min(ema_decay, (1 + s) / (10 + s)) at step s
  int64_t seed = 0;
  std::string precision = "auto";
  std::string device = "auto";
  int64_t threads = 0;  // 0: LibTorch's default
  bool tf32 = true;     // TF32 for float32 products and convolutions on CUDA, as DiT's scripts
  int64_t log_every = 50;
  double peak_tflops = 0.0;  // per device, for the logged MFU; 0: the device's (src/common/peak_tflops.h)
  int64_t max_bad_steps = 20;  // consecutive non-finite steps (skipped) before the run stops
  std::string init_from;  // weights (.safetensors or torch .pt) to start from; keys may be missing
  std::string dist_backend = "auto";  // auto: nccl on CUDA, gloo on CPU
  int64_t dist_timeout_s = 300;       // a collective waiting longer fails, naming the rank
  int64_t grad_bucket_mb = 25;        // gradient all-reduce bucket size
  std::string grad_reduce_dtype = "fp32";  // bf16 halves the all-reduce traffic
  bool grad_reduce_overlap = true;         // start buckets from autograd hooks during backward
  bool cuda_graph = false;  // record the step as a CUDA graph after two eager steps, then replay it
};

struct CheckpointConfig {
  int64_t every = 0;       // 0: only at the end
  int64_t keep = 3;        // newest checkpoints kept; 0 keeps all
  int64_t keep_every = 0;  // also keep every step that is a multiple of this, forever
};

struct SampleConfig {
  std::string sampler = "ddim";
  int64_t steps = 50;
  double eta = 0.0;
  bool clip_denoised = true;  // clamp predicted x0 to [-1, 1]: right for pixels, not latents
  double cfg_scale = 4.0;
  int64_t cfg_channels = 0;  // 0: every predicted-noise channel; 3 reproduces the official DiT
  int64_t cache_interval = 1;  // Skip-Cache (skip-dit): full network every N-th step; 1 = off
  int64_t cache_depth = 4;     // Skip-Cache: blocks at each end that run on cached steps
  int64_t num_per_class = 8;
  int64_t batch_size = 256;  // samples per sampling batch (guidance doubles the rows)
  std::string precision = "fp32";  // the backbone's forward: fp32 (as DiT's sample.py) or bf16 autocast
  int64_t seed = 0;
  bool at_end = true;  // draw a sample grid when training ends
  int64_t every = 0;   // also every N steps during training (run.dir/samples/); 0 = never
};

// How `dit train-vae` trains an autoencoder (autoencoder.train.*).
struct AutoencoderTrainConfig {
  int64_t steps = 2000;
  int64_t batch_size = 32;
  double lr = 1e-3;
  std::string loss = "l1";   // reconstruction: l1 or l2 (summed over pixels, as LDM's)
  double kl_weight = 1e-6;   // LDM's weight of the KL term (summed over latent elements)
  int64_t eval_images = 1000;  // held out (the dataset's last images) for the reported PSNR
};

// The stage between images and the backbone (docs/latents.md): identity trains on pixels, kl on
// the latents of an AutoencoderKL.
struct AutoencoderConfig {
  std::string type = "identity";  // identity or kl
  std::string weights;            // kl: the weights (.safetensors, diffusers' layout)
  std::string config;             // kl: diffusers' config.json; "": the weights' metadata or beside
  double scaling_factor = 0.0;    // latents = scaling_factor * sample; 0: the weights' own
  bool sample_posterior = true;   // a posterior sample per use (as DiT); false: its mean
  // The architecture `dit train-vae` builds.
  std::vector<int64_t> block_out_channels = {32, 64, 64};
  int64_t layers_per_block = 1;
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 16;
  AutoencoderTrainConfig train;
};

// The small image classifier `dit train-classifier` trains (classifier.*; docs/research.md):
// its penultimate features give a Fréchet distance where no Inception network fits the data
// (Fashion-MNIST), its predictions the accuracy of class-conditional samples.
struct ClassifierConfig {
  std::vector<int64_t> channels = {32, 64, 128};  // per stage: two 3x3 convs, then 2x pooling
  int64_t steps = 3000;
  int64_t batch_size = 128;
  double lr = 2e-3;
  int64_t eval_images = 2000;  // held out (spread evenly over the dataset) for the accuracy
};

// `dit eval` (eval.*): sample quality of a run's EMA weights against the real data.
struct EvalConfig {
  std::string features = "classifier";  // classifier (dit train-classifier) or inception
  std::string classifier;               // the classifier's weights (.safetensors)
  std::string inception;                // a TorchScript Inception (inception-2015-12-05.pt)
  int64_t num_samples = 10000;          // generated images, classes in turn
  int64_t batch_size = 100;
  int64_t reference_images = 0;  // real images for the statistics; 0: all of data.*
  int64_t nearest_k = 3;         // precision / recall neighbourhoods
  int64_t is_splits = 10;        // Inception Score splits
  std::string reference_dir = "runs/reference";  // cached statistics of the real data
};

struct RunConfig {
  std::string dir = "runs/default";
};

struct ExperimentConfig {
  ModelConfig model;
  DiffusionConfig diffusion;
  DataConfig data;
  TrainConfig train;
  CheckpointConfig checkpoint;
  SampleConfig sample;
  AutoencoderConfig autoencoder;
  ClassifierConfig classifier;
  EvalConfig eval;
  RunConfig run;
};

}  // namespace ditlab
