#include "trainers/metrics_sink.h"

#include <cerrno>
#include <cmath>
#include <cstring>

#include "src/common/error.h"

namespace ditlab {

JsonlSink::JsonlSink(const std::string& path) : path_(path) {
  file_ = std::fopen(path.c_str(), "a");
  if (!file_) throw IoError("cannot open '" + path + "' for metrics: " + std::strerror(errno));
}

JsonlSink::~JsonlSink() {
  if (file_) std::fclose(file_);
}

void JsonlSink::write(const std::vector<std::pair<std::string, double>>& record) {
  std::string line = "{";
  for (size_t i = 0; i < record.size(); ++i) {
    const auto& [key, value] = record[i];
    char number[64];
    if (!std::isfinite(value)) {
      std::snprintf(number, sizeof(number), "null");  // JSON has no NaN or infinity
    } else if (value == std::floor(value) && std::fabs(value) < 1e15) {
      std::snprintf(number, sizeof(number), "%.0f", value);
    } else {
      std::snprintf(number, sizeof(number), "%.9g", value);
    }
    line += (i ? ", \"" : "\"") + key + "\": " + number;
  }
  line += "}\n";
  if (std::fputs(line.c_str(), file_) < 0 || std::fflush(file_) != 0) {
    throw IoError("cannot write metrics to '" + path_ + "': " + std::strerror(errno));
  }
}

}  // namespace ditlab
