#include "data/dataset.h"

#include "data/fashion_mnist.h"
#include "data/latent_cache.h"
#include "src/common/error.h"
#ifdef DITLAB_WITH_OPENCV
#include "data/image_folder.h"
#endif

namespace ditlab {
namespace {

// A cache's flip copies stand in for data.random_flip (latents cannot be mirrored), and its
// images must be the configured size.
std::shared_ptr<Dataset> make_latent_cache(const DataConfig& config) {
  auto cache = std::make_shared<LatentCache>(config.path, config.limit);
  const LatentCacheManifest& m = *cache->latent_cache();
  if (config.random_flip && m.orientations != 2) {
    throw ConfigError("data.random_flip needs flip copies, but the latent cache " + config.path +
                      " has none; encode it again with `dit encode --flip`, or set "
                      "data.random_flip=false");
  }
  if (config.image_size != m.source.image_size) {
    throw ConfigError("data.image_size is " + std::to_string(config.image_size) +
                      " but the latent cache " + config.path + " encodes " +
                      std::to_string(m.source.image_size) + "x" + std::to_string(m.source.image_size) +
                      " images; set data.image_size=" + std::to_string(m.source.image_size));
  }
  return cache;
}

}  // namespace

std::shared_ptr<Dataset> make_dataset(const DataConfig& config) {
  if (config.name == "fashion_mnist") {
    return std::make_shared<FashionMnist>(config.path, config.split, config.image_size,
                                          config.limit);
  }
  if (config.name == "image_folder") {
#ifdef DITLAB_WITH_OPENCV
    return std::make_shared<ImageFolder>(config.path, config.image_size, config.limit);
#else
    throw ConfigError("data.name 'image_folder' needs OpenCV; this build has it switched off "
                      "(DITLAB_WITH_OPENCV=OFF)");
#endif
  }
  if (config.name == "latents") return make_latent_cache(config);
  throw ConfigError("data.name '" + config.name + "' is unknown; expected fashion_mnist, "
                    "image_folder or latents");
}

}  // namespace ditlab
