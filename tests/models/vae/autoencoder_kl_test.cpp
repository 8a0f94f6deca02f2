#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <fstream>

#include "models/vae/autoencoder_kl.h"
#include "models/vae/vae_weights.h"
#include "src/common/error.h"
#include "src/io/module_weights.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {
AutoencoderKLOptions small_options() {
  AutoencoderKLOptions o;
  o.in_channels = 1;
  o.out_channels = 1;
  o.block_out_channels = {16, 32, 32};  // downsampling 4
  o.layers_per_block = 1;
  o.latent_channels = 4;
  o.norm_num_groups = 8;
  return o;
}
}  // namespace

TEST_CASE("the autoencoder maps images to latents f times smaller and back", "[vae]") {
  at::manual_seed(0);
  AutoencoderKL vae(small_options());
  CHECK(vae->options().downsampling() == 4);
  auto x = at::rand({2, 1, 16, 24}) * 2 - 1;
  auto posterior = vae->encode(x);
  CHECK(posterior.mean.sizes() == at::IntArrayRef({2, 4, 4, 6}));
  CHECK(posterior.logvar.sizes() == at::IntArrayRef({2, 4, 4, 6}));
  CHECK(vae->decode(posterior.sample()).sizes() == x.sizes());
  CHECK_THROWS_AS(vae->encode(at::zeros({1, 1, 18, 16})), ShapeError);  // not a multiple of 4
  CHECK_THROWS_WITH(vae->decode(at::zeros({1, 3, 4, 4})), Catch::Contains("[N, 4, h, w]"));
}

TEST_CASE("the Stable Diffusion VAE has diffusers' keys and its 83.65M parameters", "[vae]") {
  AutoencoderKLOptions sd;  // the defaults are sd-vae-ft-ema/mse's config.json
  sd.in_channels = sd.out_channels = 3;
  AutoencoderKL vae(sd);
  int64_t count = 0;
  for (const auto& p : vae->parameters()) count += p.numel();
  CHECK(count == 83653863);  // AutoencoderKL.from_pretrained("stabilityai/sd-vae-ft-mse")
  const auto keys = state_dict(*vae);
  for (const char* key :
       {"encoder.conv_in.weight", "encoder.down_blocks.0.resnets.1.norm2.bias",
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "encoder.down_blocks.2.downsamplers.0.conv.weight",
        "encoder.mid_block.attentions.0.group_norm.weight", "encoder.mid_block.attentions.0.to_q.weight",
        "encoder.mid_block.attentions.0.to_out.0.bias", "encoder.mid_block.resnets.1.conv2.weight",
        "encoder.conv_norm_out.weight", "encoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.bias",
        "decoder.conv_in.weight", "decoder.up_blocks.0.resnets.2.conv1.weight",
        "decoder.up_blocks.2.resnets.0.conv_shortcut.weight", "decoder.up_blocks.2.upsamplers.0.conv.weight",
        "decoder.conv_out.bias"}) {
    INFO(key);
    CHECK(keys.count(key) == 1);
  }
  CHECK(keys.count("decoder.up_blocks.3.upsamplers.0.conv.weight") == 0);  // none at the last level
  CHECK(keys.at("encoder.conv_out.weight").size(0) == 8);                   // mean and log-variance
}

TEST_CASE("the posterior's KL to N(0, I) matches its closed form and a Monte-Carlo estimate", "[vae]") {
  // One element: KL(N(1, 1) || N(0, 1)) = 1/2.
  DiagonalGaussian unit{at::ones({1, 1, 1, 1}), at::zeros({1, 1, 1, 1})};
  CHECK(unit.kl().item<double>() == Approx(0.5));
  // A small posterior: E_q[log q(z) - log p(z)] over many samples.
  at::manual_seed(1);
  DiagonalGaussian q{at::randn({1, 2, 2, 2}), at::randn({1, 2, 2, 2}) * 0.5};
  const int64_t draws = 200000;
  auto mean = q.mean.expand({draws, 2, 2, 2}), logvar = q.logvar.expand({draws, 2, 2, 2});
  DiagonalGaussian many{mean, logvar};
  auto z = many.sample();
  auto log_q = -0.5 * ((z - mean).pow(2) / at::exp(logvar) + logvar);  // constants cancel
  auto log_p = -0.5 * z.pow(2);
  const double monte_carlo = (log_q - log_p).sum({1, 2, 3}).mean().item<double>();
  CHECK(q.kl().item<double>() == Approx(monte_carlo).epsilon(0.02));
  // Sampling follows mean and std.
  CHECK(z.mean(0).allclose(q.mean[0], 0.02, 0.02));
  CHECK(z.std(0).allclose(q.std()[0], 0.02, 0.02));
}

TEST_CASE("autoencoder weights load from diffusers' layout, old attention names included, and mismatches name the key", "[vae]") {
  TempDir dir("vae");
  at::manual_seed(2);
  AutoencoderKL vae(small_options());
  AutoencoderSpec spec{small_options(), 0.5};
  vae->eval();
  auto x = at::rand({1, 1, 16, 16}) * 2 - 1;
  auto mean = vae->encode(x).mean;
  auto decoded = vae->decode(mean);

  // Ours: architecture in the metadata.
  save_autoencoder(vae, spec, dir / "ours.safetensors");
  AutoencoderSpec read_spec;
  auto loaded = load_autoencoder(dir / "ours.safetensors", "", &read_spec);
  CHECK(read_spec.scaling_factor == 0.5);
  CHECK(read_spec.options.block_out_channels == small_options().block_out_channels);
  CHECK(at::equal(loaded->encode(x).mean, mean));
  CHECK(at::equal(loaded->decode(mean), decoded));

  // diffusers' older files: query/key/value/proj_attn as 1x1 convs, config.json beside them.
  std::map<std::string, at::Tensor> old_layout;
  for (const auto& [name, t] : state_dict(*vae)) {
    std::string key = name;
    for (const auto& [now, before] : {std::pair<std::string, std::string>{"to_q.", "query."}, {"to_k.", "key."},
                                      {"to_v.", "value."}, {"to_out.0.", "proj_attn."}}) {
      auto at = key.find(now);
      if (at != std::string::npos) key.replace(at, now.size(), before);
    }
    const bool attention_weight = key != name && t.dim() == 2;
    old_layout[key] = attention_weight ? t.unsqueeze(-1).unsqueeze(-1).contiguous() : t;
  }
  CHECK(old_layout.count("encoder.mid_block.attentions.0.query.weight") == 1);
  std::filesystem::create_directories(dir / "sd-vae");
  write_safetensors(dir / "sd-vae/diffusion_pytorch_model.safetensors", old_layout, {{"format", "pt"}});
  std::ofstream(dir / "sd-vae/config.json") << autoencoder_config_json(spec);
  auto from_diffusers = load_autoencoder(dir / "sd-vae/diffusion_pytorch_model.safetensors", "");
  CHECK(at::equal(from_diffusers->decode(mean), decoded));

  // A wrong key and a wrong shape are named.
  auto bad = old_layout;
  bad["decoder.conv_out.weightt"] = bad.at("decoder.conv_out.weight");
  bad.erase("decoder.conv_out.weight");
  write_safetensors(dir / "sd-vae/diffusion_pytorch_model.safetensors", bad);
  CHECK_THROWS_WITH(load_autoencoder(dir / "sd-vae/diffusion_pytorch_model.safetensors", ""),
                    Catch::Contains("missing key 'decoder.conv_out.weight'") &&
                        Catch::Contains("unexpected key 'decoder.conv_out.weightt'"));
  bad = old_layout;
  bad["quant_conv.weight"] = at::zeros({8, 8, 3, 3});
  write_safetensors(dir / "sd-vae/diffusion_pytorch_model.safetensors", bad);
  CHECK_THROWS_WITH(load_autoencoder(dir / "sd-vae/diffusion_pytorch_model.safetensors", ""),
                    Catch::Contains("quant_conv.weight") && Catch::Contains("[8, 8, 3, 3]") &&
                        Catch::Contains("old attention names, such as 'decoder.mid_block.attentions.0."));
  // No architecture anywhere; a config that is not AutoencoderKL's.
  std::filesystem::remove(dir / "sd-vae/config.json");
  CHECK_THROWS_WITH(load_autoencoder(dir / "sd-vae/diffusion_pytorch_model.safetensors", ""),
                    Catch::Contains("no architecture found"));
  CHECK_THROWS_WITH(parse_autoencoder_config("{\"down_block_types\": [\"CrossAttnDownBlock2D\"], "
                                             "\"block_out_channels\": [8]}", "cfg.json"),
                    Catch::Contains("cfg.json") && Catch::Contains("CrossAttnDownBlock2D"));
}

TEST_CASE("a weights file holding both the old and the current name of one weight is refused", "[vae]") {
  TempDir dir("vae-clash");
  AutoencoderSpec spec{small_options(), 0.5};
  AutoencoderKL vae(spec.options);
  auto tensors = state_dict(*vae);
  // query is the old name of to_q: renaming made one silently overwrite the other.
  const std::string to_q = "encoder.mid_block.attentions.0.to_q.weight";
  const std::string query = "encoder.mid_block.attentions.0.query.weight";
  tensors[query] = at::zeros_like(tensors.at(to_q));
  write_safetensors(dir / "both.safetensors", tensors,
                    {{"autoencoder_config", autoencoder_config_json(spec)}});
  CHECK_THROWS_AS(current_vae_keys(tensors), IoError);
  CHECK_THROWS_WITH(load_autoencoder(dir / "both.safetensors", ""),
                    Catch::Contains("both.safetensors") && Catch::Contains("'" + query + "'") &&
                        Catch::Contains("'" + to_q + "'"));
}

TEST_CASE("a diffusers config with a value of the wrong type or size names the file and the key", "[vae]") {
  auto config_error = [](const std::string& json) {
    try {
      parse_autoencoder_config(json, "cfg.json");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    FAIL("expected a ConfigError for " + json);
    return std::string();
  };
  // Types yaml-cpp cannot convert were its bare exceptions.
  CHECK_THAT(config_error(R"({"act_fn": ["silu"]})"),
             Catch::Contains("cfg.json") && Catch::Contains("\"act_fn\" must be a string"));
  CHECK_THAT(config_error(R"({"mid_block_add_attention": "maybe"})"),
             Catch::Contains("cfg.json") && Catch::Contains("mid_block_add_attention"));
  CHECK_THAT(config_error(R"({"block_out_channels": [8], "down_block_types": [["DownEncoderBlock2D"]]})"),
             Catch::Contains("cfg.json") && Catch::Contains("down_block_types"));
  CHECK_THAT(config_error(R"({"block_out_channels": [8], "up_block_types": "UpDecoderBlock2D"})"),
             Catch::Contains("up_block_types") && Catch::Contains("list"));
  // Sizes no AutoencoderKL has are refused before the model is built.
  CHECK_THAT(config_error(R"({"block_out_channels": [64, 1048576]})"),
             Catch::Contains("cfg.json") && Catch::Contains("\"block_out_channels\" is 1048576"));
  CHECK_THAT(config_error(R"({"latent_channels": 100000})"), Catch::Contains("\"latent_channels\" is 100000"));
  CHECK_THAT(config_error(R"({"in_channels": 0})"), Catch::Contains("\"in_channels\" is 0"));
  CHECK_THAT(config_error(R"({"layers_per_block": 1000})"), Catch::Contains("\"layers_per_block\" is 1000"));
  CHECK_THAT(config_error(R"({"block_out_channels": [32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32]})"),
             Catch::Contains("17 blocks"));
  // diffusers' own values pass.
  CHECK_NOTHROW(parse_autoencoder_config(autoencoder_config_json(AutoencoderSpec{}), "cfg.json"));
  CHECK(parse_autoencoder_config(R"({"act_fn": "silu", "mid_block_add_attention": true})", "cfg.json")
            .options.block_out_channels.size() == 4);
}

TEST_CASE("diffusers' AutoencoderKL configs parse, and keys this model would ignore are refused", "[vae]") {
  // stabilityai/sd-vae-ft-mse's config.json (diffusers 0.4.2), then the same saved by a recent
  // diffusers, which writes every argument, the unused ones as null or their neutral value.
  const std::string blocks = R"("down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D",
      "DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D",
      "UpDecoderBlock2D"], "block_out_channels": [128, 256, 512, 512])";
  const std::string sd = R"({"_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", "act_fn": "silu", )" +
                         blocks + R"(, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
      "norm_num_groups": 32, "out_channels": 3, "sample_size": 256})";
  const AutoencoderSpec spec = parse_autoencoder_config(sd, "config.json");
  CHECK(spec.options.block_out_channels == std::vector<int64_t>{128, 256, 512, 512});
  CHECK(spec.scaling_factor == 0.18215);
  const std::string recent = R"({"_class_name": "AutoencoderKL", "act_fn": "silu", )" + blocks +
                             R"(, "force_upcast": true, "latents_mean": null, "latents_std": null,
      "shift_factor": null, "use_quant_conv": true, "use_post_quant_conv": true, "mid_block_add_attention": true,
      "scaling_factor": 0.13025, "sample_size": 1024})";
  CHECK(parse_autoencoder_config(recent, "config.json").scaling_factor == 0.13025);
  CHECK_NOTHROW(parse_autoencoder_config(R"({"act_fn": "swish"})", "config.json"));  // diffusers' alias

  auto error_of = [](const std::string& json) {
    try {
      parse_autoencoder_config(json, "config.json");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // SD3's shift would give wrong latents if ignored; so would per-channel statistics.
  CHECK_THAT(error_of(R"({"shift_factor": 0.0609})"), Catch::Contains("config.json") && Catch::Contains("shift_factor"));
  CHECK_THAT(error_of(R"({"latents_mean": [0.1, 0.2, 0.3, 0.4]})"), Catch::Contains("latents_mean"));
  CHECK_THAT(error_of(R"({"use_quant_conv": false})"), Catch::Contains("use_quant_conv"));
  CHECK_THAT(error_of(R"({"use_post_quant_conv": false})"), Catch::Contains("use_post_quant_conv"));
  CHECK_THAT(error_of(R"({"num_attention_heads": 8})"),
             Catch::Contains("unknown AutoencoderKL key \"num_attention_heads\"") && Catch::Contains("scaling_factor"));
  CHECK(error_of(R"({"shift_factor": 0.0})") == "no error");
}
