#include "src/config/option_table.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "src/common/error.h"

namespace ditlab {
namespace {

template <class T>
using Accessor = T& (*)(ExperimentConfig&);

[[noreturn]] void bad_value(const std::string& key, const YAML::Node& value,
                            const std::string& source, const std::string& expected) {
  std::string shown = value.IsScalar() ? "'" + value.Scalar() + "'"
                      : value.IsMap()  ? "a map"
                      : value.IsSequence() ? "a list"
                                           : "nothing";
  throw ConfigError(source + ": key '" + key + "' has value " + shown + ", expected " + expected);
}

std::string format_double(double v) {
  // The shortest decimal that reads back to the same double (0.1, not 0.10000000000000001).
  std::string s;
  for (int precision = 1; precision <= std::numeric_limits<double>::max_digits10; ++precision) {
    std::ostringstream out;
    out.precision(precision);
    out << v;
    s = out.str();
    // strtod, not stod: stod throws out_of_range on subnormals (1e-310) although they read back.
    if (std::strtod(s.c_str(), nullptr) == v) break;
  }
  // Keep floats recognisable as floats when read back ("1" would parse as an int elsewhere).
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

// A YAML integer read as decimal: yaml-cpp's as<int64_t>() detects the base, so `010` would be
// 8 and `0x10` 16. An optional sign, then digits only; false for anything else or out of range.
bool parse_decimal(const YAML::Node& v, int64_t& out) {
  if (!v.IsScalar()) return false;
  const std::string& s = v.Scalar();
  const size_t first_digit = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
  if (first_digit >= s.size() ||
      !std::all_of(s.begin() + first_digit, s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  try {
    out = std::stoll(s, nullptr, 10);
    return true;
  } catch (const std::out_of_range&) {
    return false;
  }
}

OptionSpec int_option(const char* key, Accessor<int64_t> field, int64_t lo, int64_t hi,
                      std::string help) {
  std::string range = hi == std::numeric_limits<int64_t>::max()
                          ? ">= " + std::to_string(lo)
                          : std::to_string(lo) + " .. " + std::to_string(hi);
  auto set = [=](ExperimentConfig& c, const YAML::Node& v, const std::string& src) {
    int64_t parsed = 0;
    if (!parse_decimal(v, parsed)) bad_value(key, v, src, "an integer (" + range + ")");
    if (parsed < lo || parsed > hi) bad_value(key, v, src, "an integer in " + range);
    field(c) = parsed;
  };
  auto get = [=](const ExperimentConfig& c) {
    return std::to_string(field(const_cast<ExperimentConfig&>(c)));
  };
  return {key, "int", range, std::move(help), set, get};
}

// lo_open: the lower bound itself is not allowed (learning rates must be > 0).
// A float in [lo, hi], with either end open (lo_open, hi_open).
OptionSpec float_range(const char* key, Accessor<double> field, double lo, double hi, bool lo_open,
                       bool hi_open, std::string help) {
  std::string range = (lo_open ? "> " : ">= ") + format_double(lo);
  if (hi != std::numeric_limits<double>::infinity()) range += (hi_open ? " and < " : " and <= ") + format_double(hi);
  auto set = [=](ExperimentConfig& c, const YAML::Node& v, const std::string& src) {
    double parsed = 0;
    try {
      if (!v.IsScalar()) throw YAML::BadConversion(YAML::Mark());
      parsed = v.as<double>();
    } catch (const YAML::Exception&) {
      bad_value(key, v, src, "a number (" + range + ")");
    }
    bool ok = std::isfinite(parsed) && (lo_open ? parsed > lo : parsed >= lo) && (hi_open ? parsed < hi : parsed <= hi);
    if (!ok) bad_value(key, v, src, "a number " + range);
    field(c) = parsed;
  };
  auto get = [=](const ExperimentConfig& c) {
    return format_double(field(const_cast<ExperimentConfig&>(c)));
  };
  return {key, "float", range, std::move(help), set, get};
}

OptionSpec float_option(const char* key, Accessor<double> field, double lo, double hi, bool lo_open,
                        std::string help) {
  return float_range(key, std::move(field), lo, hi, lo_open, false, std::move(help));
}

OptionSpec bool_option(const char* key, Accessor<bool> field, std::string help) {
  auto set = [=](ExperimentConfig& c, const YAML::Node& v, const std::string& src) {
    try {
      if (!v.IsScalar()) throw YAML::BadConversion(YAML::Mark());
      field(c) = v.as<bool>();
    } catch (const YAML::Exception&) {
      bad_value(key, v, src, "true or false");
    }
  };
  auto get = [=](const ExperimentConfig& c) {
    return std::string(field(const_cast<ExperimentConfig&>(c)) ? "true" : "false");
  };
  return {key, "bool", "true, false", std::move(help), set, get};
}

// choices empty: any non-empty string.
OptionSpec string_option(const char* key, Accessor<std::string> field,
                         std::vector<std::string> choices, std::string help) {
  std::string range = "non-empty";
  if (!choices.empty()) {
    range = "one of: ";
    for (size_t i = 0; i < choices.size(); ++i) range += (i ? ", " : "") + choices[i];
  }
  auto set = [=](ExperimentConfig& c, const YAML::Node& v, const std::string& src) {
    if (!v.IsScalar() || v.Scalar().empty()) bad_value(key, v, src, "a string (" + range + ")");
    const std::string& s = v.Scalar();
    if (!choices.empty() && std::find(choices.begin(), choices.end(), s) == choices.end()) {
      bad_value(key, v, src, range);
    }
    field(c) = s;
  };
  auto get = [=](const ExperimentConfig& c) { return field(const_cast<ExperimentConfig&>(c)); };
  return {key, "string", range, std::move(help), set, get};
}

// A YAML sequence of integers, each within [lo, hi]; [] means "the preset's".
OptionSpec int_list_option(const char* key, Accessor<std::vector<int64_t>> field, int64_t lo,
                           int64_t hi, std::string help) {
  const std::string range = "a list of integers >= " + std::to_string(lo) + ", or [] for the preset's";
  auto set = [=](ExperimentConfig& c, const YAML::Node& v, const std::string& src) {
    if (!v.IsSequence()) bad_value(key, v, src, range);
    std::vector<int64_t> values;
    for (const auto& item : v) {
      int64_t parsed = 0;
      if (!parse_decimal(item, parsed)) bad_value(key, v, src, range);
      if (parsed < lo || parsed > hi) bad_value(key, v, src, range);
      values.push_back(parsed);
    }
    field(c) = values;
  };
  auto get = [=](const ExperimentConfig& c) {
    std::string out = "[";
    for (int64_t v : field(const_cast<ExperimentConfig&>(c))) out += (out.size() > 1 ? ", " : "") + std::to_string(v);
    return out + "]";
  };
  return {key, "int list", range, std::move(help), set, get};
}

// A file path that may be empty (or null): "" means none.
OptionSpec optional_path_option(const char* key, Accessor<std::string> field, std::string help) {
  auto set = [=](ExperimentConfig& c, const YAML::Node& v, const std::string& src) {
    if (v.IsNull()) {
      field(c).clear();
      return;
    }
    if (!v.IsScalar()) bad_value(key, v, src, "a file path, or \"\" for none");
    field(c) = v.Scalar();
  };
  auto get = [=](const ExperimentConfig& c) { return field(const_cast<ExperimentConfig&>(c)); };
  return {key, "string", "a path, or empty for none", std::move(help), set, get};
}

// FIELD(train.lr) expands to the key "train.lr" and an accessor of that member, so the key
// names and the struct can never drift apart.
#define FIELD(path) #path, [](ExperimentConfig& c) -> auto& { return c.path; }

constexpr int64_t kNoMax = std::numeric_limits<int64_t>::max();
constexpr double kInf = std::numeric_limits<double>::infinity();

std::vector<OptionSpec> build_table() {
  return {
      string_option(FIELD(model.name), {},
                    "Backbone preset (DiT-S/2 ... DiT-XL/8) or family (dit) with explicit sizes"),
      int_option(FIELD(model.depth), 0, kNoMax, "Number of transformer blocks; 0 = preset's"),
      int_option(FIELD(model.hidden_size), 0, kNoMax, "Token width D; 0 = preset's"),
      int_option(FIELD(model.num_heads), 0, kNoMax, "Attention heads; 0 = preset's"),
      int_option(FIELD(model.patch_size), 0, kNoMax, "Patch size p; 0 = preset's"),
      float_option(FIELD(model.mlp_ratio), 0, kInf, false,
                   "MLP hidden width / D; 0 = the family's (dit 4, u-dit 2)"),
      int_list_option(FIELD(model.level_depths), 0, 1024,
                      "u-dit: blocks per level [enc1, enc2, latent, dec2, dec1]; [] = preset's"),
      int_option(FIELD(model.input_size), 0, kNoMax,
                 "Spatial size of the backbone's input; 0 = from the data"),
      int_option(FIELD(model.in_channels), 0, kNoMax, "Input channels; 0 = from the data"),
      int_option(FIELD(model.num_classes), 0, kNoMax, "Classes (without the null class); 0 = from the data"),
      bool_option(FIELD(model.learn_sigma), "Predict the variance too (output channels x2)"),
      float_option(FIELD(model.class_dropout_prob), 0, 1, false,
                   "Probability of replacing a label by the null class (classifier-free guidance)"),
      string_option(FIELD(model.conditioning), {"adaln_zero", "adaln", "cross_attention", "in_context"},
                    "How t and y condition the blocks (the DiT paper's ablation)"),
      bool_option(FIELD(model.checkpoint_blocks),
                  "Recompute each block in backward instead of storing its activations (less memory, one more forward; not dit-moe)"),
      int_option(FIELD(model.moe.num_experts), 0, 4096,
                 "dit-moe: routed experts per layer; 0 = the preset's"),
      int_option(FIELD(model.moe.experts_per_token), 0, 4096,
                 "dit-moe: experts each token is routed to (top-k); 0 = the preset's (2)"),
      float_option(FIELD(model.moe.capacity_factor), 0, kInf, false,
                   "dit-moe: at most ceil(cf * tokens * k / experts) tokens per expert; 0 = no limit"),
      float_option(FIELD(model.moe.aux_loss_weight), 0, kInf, false,
                   "dit-moe: load-balancing loss weight alpha (paper 0.005, official code 0.01)"),
      bool_option(FIELD(model.mup.enabled),
                  "Maximal update parametrization: hyper-parameters tuned at mup.base_width transfer to wider models"),
      int_option(FIELD(model.mup.base_width), 0, kNoMax,
                 "mup: the hidden_size the hyper-parameters were tuned at (required with mup.enabled)"),
      int_option(FIELD(model.mup.base_num_heads), 0, kNoMax,
                 "mup: attention heads of the base model; 0 = the model's own (fixed heads, head_dim grows)"),
      float_option(FIELD(model.mup.output_mult), 0, kInf, true,
                   "mup: multiplier of the readout layer's input at the base width (DiT-muP's 2^logstd)"),
      float_option(FIELD(model.mup.attn_mult), 0, kInf, false,
                   "mup: attention logits scale attn_mult / head_dim; 0 = sqrt(base head_dim), the standard model at the base width"),

      int_option(FIELD(diffusion.steps), 1, kNoMax, "Diffusion steps T"),
      string_option(FIELD(diffusion.schedule), {"linear", "scaled_linear", "cosine"},
                    "Noise schedule (scaled_linear: Stable Diffusion's, DiM's recipe with betas 0.00085..0.012)"),
      float_range(FIELD(diffusion.beta_start), 0, 1, true, true,
                  "First beta of the linear schedules (linear: at T=1000, rescaled by 1000/T)"),
      float_range(FIELD(diffusion.beta_end), 0, 1, true, true,
                  "Last beta of the linear schedules (linear: at T=1000, rescaled by 1000/T)"),

      string_option(FIELD(data.name), {"fashion_mnist", "image_folder", "latents"},
                    "Dataset (latents: a cache written by dit encode)"),
      string_option(FIELD(data.path), {}, "Dataset location (folder; latents: the cache folder)"),
      string_option(FIELD(data.split), {"train", "test", "all"}, "Fashion-MNIST split"),
      int_option(FIELD(data.image_size), 8, kNoMax,
                 "Side of the square training images (latents: of the encoded images)"),
      int_option(FIELD(data.limit), 0, kNoMax, "Use only the first N images; 0 = all"),
      bool_option(FIELD(data.random_flip),
                  "Random horizontal flips (latents: picks the cache's flip copies, dit encode --flip)"),
      int_option(FIELD(data.prefetch), 0, 64, "Batches prepared ahead of the training step"),

      int_option(FIELD(train.steps), 1, kNoMax, "Optimizer steps"),
      int_option(FIELD(train.global_batch_size), 1, kNoMax, "Images per optimizer step, all ranks together"),
      int_option(FIELD(train.grad_accum_steps), 1, kNoMax, "Micro-batches per optimizer step"),
      float_option(FIELD(train.lr), 0, kInf, true, "AdamW learning rate"),
      int_option(FIELD(train.lr_warmup_steps), 0, kNoMax,
                 "Linear learning-rate warm-up: step s (from 0) uses lr * min(1, s / N), as DiM's LambdaLR; 0 = none"),
      float_option(FIELD(train.weight_decay), 0, kInf, false,
                   "AdamW weight decay, on every parameter a backbone does not exempt (the shipped ones exempt none)"),
      // 1 would divide by zero in the bias corrections.
      float_range(FIELD(train.adam_beta1), 0, 1, false, true, "AdamW beta1"),
      float_range(FIELD(train.adam_beta2), 0, 1, false, true, "AdamW beta2"),
      float_option(FIELD(train.adam_eps), 0, kInf, true, "AdamW epsilon"),
      float_option(FIELD(train.grad_clip), 0, kInf, false, "Max global gradient norm; 0 = off"),
      float_option(FIELD(train.ema_decay), 0, 1, false, "EMA decay per step"),
      bool_option(FIELD(train.ema_warmup), "EMA decay min(ema_decay, (1+s)/(10+s)) at step s"),
      int_option(FIELD(train.seed), 0, kNoMax, "Seed of every random choice in the run"),
      string_option(FIELD(train.precision), {"auto", "fp32", "bf16"},
                    "Autocast precision; auto = bf16 on CUDA, fp32 on CPU"),
      string_option(FIELD(train.device), {}, "auto, cpu, cuda or cuda:N"),
      int_option(FIELD(train.threads), 0, 1024, "CPU threads for LibTorch; 0 = its default"),
      bool_option(FIELD(train.tf32),
                  "TF32 tensor cores for float32 matrix products and convolutions on CUDA (Ampere and "
                  "later), as DiT's train.py and sample.py set; fp32 work only (bf16 autocast's "
                  "products are bf16 already); no effect on CPUs"),
      int_option(FIELD(train.log_every), 1, kNoMax, "Steps between log lines and metrics records"),
      float_option(FIELD(train.peak_tflops), 0, kInf, false,
                   "Peak TFLOP/s of one device for the logged MFU; 0 = the device's: known GPUs' "
                   "dense peaks (H100/H200 SXM bf16 989.4, H100 PCIe 756.5, NVL 835.5, A100 312), a CPU's measured matmul rate "
                   "(an unknown GPU logs TFLOP/s only)"),
      optional_path_option(FIELD(train.init_from),
                    "Weights to start from (.safetensors, or a torch .pt such as an official DiT "
                    "checkpoint); model keys they lack keep their initialisation"),
      string_option(FIELD(train.dist_backend), {"auto", "gloo", "nccl"},
                    "Collective backend for several ranks; auto = nccl on CUDA, gloo on CPU"),
      int_option(FIELD(train.dist_timeout_s), 1, kNoMax,
                 "Seconds a collective may wait for the other ranks before the run fails"),
      int_option(FIELD(train.grad_bucket_mb), 1, 4096, "Gradient all-reduce bucket size in MB"),
      string_option(FIELD(train.grad_reduce_dtype), {"fp32", "bf16"},
                    "Dtype of the gradient all-reduce; bf16 halves the traffic"),
      bool_option(FIELD(train.grad_reduce_overlap),
                  "Start each bucket's all-reduce during backward, as soon as its gradients exist"),
      bool_option(FIELD(train.cuda_graph),
                  "Record the whole step as a CUDA graph after two eager steps and replay it (one GPU, "
                  "LibTorch 2.4+, not dit-moe): removes the host's kernel-launch cost, for small models"),
      int_option(FIELD(train.max_bad_steps), 1, kNoMax,
                 "Consecutive steps with a non-finite loss or gradient (each skipped) before the run stops"),

      int_option(FIELD(checkpoint.every), 0, kNoMax, "Steps between checkpoints; 0 = only at the end"),
      int_option(FIELD(checkpoint.keep), 0, kNoMax, "Newest checkpoints to keep; 0 = all"),
      int_option(FIELD(checkpoint.keep_every), 0, kNoMax,
                 "Also keep forever the checkpoints of steps that are multiples of this; 0 = none"),

      string_option(FIELD(sample.sampler), {"ddpm", "ddim"}, "Sampler"),
      int_option(FIELD(sample.steps), 1, kNoMax, "Sampling steps (respaced)"),
      float_option(FIELD(sample.eta), 0, kInf, false, "DDIM eta (0 = deterministic)"),
      bool_option(FIELD(sample.clip_denoised),
                  "Clamp the predicted x0 to [-1, 1] (pixels; the official DiT turns it off for latents)"),
      float_option(FIELD(sample.cfg_scale), 0, kInf, false, "Classifier-free guidance scale; 1 = none"),
      int_option(FIELD(sample.cfg_channels), 0, kNoMax,
                 "Guided output channels; 0 = all noise channels, 3 = official DiT"),
      int_option(FIELD(sample.cache_interval), 1, kNoMax,
                 "Skip-Cache (skip-dit): run the whole network every N-th step; 1 = off"),
      int_option(FIELD(sample.cache_depth), 1, kNoMax,
                 "Skip-Cache: blocks at each end that run on the cached steps"),
      int_option(FIELD(sample.num_per_class), 1, kNoMax, "Samples per class in a grid"),
      string_option(FIELD(sample.precision), {"fp32", "bf16"},
                    "The backbone's forward when sampling: fp32 (as DiT's sample.py) or under bf16 autocast "
                    "(faster on GPUs; the sampler's arithmetic stays fp32)"),
      int_option(FIELD(sample.batch_size), 1, kNoMax,
                 "Samples drawn (and decoded) at a time, twice the rows with guidance; the samples do not depend on it"),
      int_option(FIELD(sample.seed), 0, kNoMax, "Sampling seed"),
      bool_option(FIELD(sample.at_end), "Write a sample grid when training ends"),
      int_option(FIELD(sample.every), 0, kNoMax,
                 "Also write a grid every N steps, to run.dir/samples/step-N (EMA, same noise each time); 0 = never"),

      string_option(FIELD(autoencoder.type), {"identity", "kl"},
                    "Between images and the backbone: identity (pixels) or kl (an AutoencoderKL's latents)"),
      optional_path_option(FIELD(autoencoder.weights),
                           "kl: the autoencoder's weights (.safetensors in diffusers' layout, or from dit train-vae)"),
      optional_path_option(FIELD(autoencoder.config),
                           "kl: diffusers' config.json; empty = the weights' metadata, else config.json beside them"),
      float_option(FIELD(autoencoder.scaling_factor), 0, kInf, false,
                   "kl: latents = scaling_factor * posterior sample; 0 = the weights' own (SD: 0.18215)"),
      bool_option(FIELD(autoencoder.sample_posterior),
                  "kl: draw a posterior sample per use (as DiT); false = the posterior mean"),
      int_list_option(FIELD(autoencoder.block_out_channels), 1, kNoMax,
                      "train-vae: widths per level (levels - 1 halvings of the size)"),
      int_option(FIELD(autoencoder.layers_per_block), 1, 64, "train-vae: resnet blocks per encoder level"),
      int_option(FIELD(autoencoder.latent_channels), 1, 4096, "train-vae: latent channels"),
      int_option(FIELD(autoencoder.norm_num_groups), 1, 4096, "train-vae: GroupNorm groups"),
      int_option(FIELD(autoencoder.train.steps), 1, kNoMax, "train-vae: optimizer steps"),
      int_option(FIELD(autoencoder.train.batch_size), 1, kNoMax, "train-vae: images per step"),
      float_option(FIELD(autoencoder.train.lr), 0, kInf, true, "train-vae: Adam learning rate"),
      string_option(FIELD(autoencoder.train.loss), {"l1", "l2"}, "train-vae: reconstruction loss"),
      float_option(FIELD(autoencoder.train.kl_weight), 0, kInf, false,
                   "train-vae: weight of the KL term (LDM: 1e-6)"),
      int_option(FIELD(autoencoder.train.eval_images), 1, kNoMax,
                 "train-vae: N images spread evenly over the dataset, held out for the reported PSNR and the scaling factor"),

      int_list_option(FIELD(classifier.channels), 1, kNoMax,
                      "train-classifier: widths per stage (two 3x3 convs, then 2x pooling)"),
      int_option(FIELD(classifier.steps), 1, kNoMax, "train-classifier: optimizer steps"),
      int_option(FIELD(classifier.batch_size), 1, kNoMax, "train-classifier: images per step"),
      float_option(FIELD(classifier.lr), 0, kInf, true, "train-classifier: AdamW learning rate (cosine decay)"),
      int_option(FIELD(classifier.eval_images), 1, kNoMax,
                 "train-classifier: N images spread evenly over the dataset, held out for the reported accuracy"),

      string_option(FIELD(eval.features), {"classifier", "inception"},
                    "eval: feature network (classifier: dit train-classifier; inception: TorchScript)"),
      optional_path_option(FIELD(eval.classifier), "eval: the classifier's weights (dit train-classifier)"),
      optional_path_option(FIELD(eval.inception),
                           "eval: TorchScript Inception (e.g. inception-2015-12-05.pt)"),
      int_option(FIELD(eval.num_samples), 2, kNoMax, "eval: generated images (classes in turn)"),
      int_option(FIELD(eval.batch_size), 1, kNoMax, "eval: images per sampling / feature batch"),
      int_option(FIELD(eval.reference_images), 0, kNoMax, "eval: real images for the statistics; 0 = all"),
      int_option(FIELD(eval.nearest_k), 1, kNoMax, "eval: k of the precision / recall neighbourhoods"),
      int_option(FIELD(eval.is_splits), 1, kNoMax, "eval: Inception Score splits"),
      string_option(FIELD(eval.reference_dir), {}, "eval: folder of cached real-data statistics"),

      string_option(FIELD(run.dir), {}, "Run directory (config, logs, metrics, weights)"),
  };
}

#undef FIELD

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

}  // namespace

const std::vector<OptionSpec>& option_table() {
  static const std::vector<OptionSpec> table = build_table();
  return table;
}

const OptionSpec* find_option(const std::string& key) {
  for (const auto& spec : option_table()) {
    if (spec.key == key) return &spec;
  }
  return nullptr;
}

std::string closest_option(const std::string& key) {
  std::string best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const auto& spec : option_table()) {
    size_t d = edit_distance(key, spec.key);
    if (d < best_distance) {
      best_distance = d;
      best = spec.key;
    }
  }
  return best;
}

}  // namespace ditlab
