#include "data/dataset.h"

#include "data/fashion_mnist.h"
#include "src/common/error.h"
#ifdef DITLAB_WITH_OPENCV
#include "data/image_folder.h"
#endif

namespace ditlab {

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
  throw ConfigError("data.name '" + config.name + "' is unknown; expected fashion_mnist or image_folder");
}

}  // namespace ditlab
