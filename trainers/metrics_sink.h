// Metrics as one JSON object per line (<run.dir>/metrics.jsonl): {"step": 100, "loss": 0.21, ...}.
// Flushed at every record so a crashed run keeps its curve.
#pragma once
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace ditlab {

class JsonlSink {
 public:
  explicit JsonlSink(const std::string& path);
  ~JsonlSink();
  JsonlSink(const JsonlSink&) = delete;
  JsonlSink& operator=(const JsonlSink&) = delete;

  void write(const std::vector<std::pair<std::string, double>>& record);

 private:
  std::FILE* file_;
  std::string path_;
};

}  // namespace ditlab
