#include "src/common/log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <algorithm>
#include <unistd.h>

namespace ditlab::log {

void init_console() {
  static bool done = false;
  if (done) return;
  done = true;
  // stderr, like Python's logging: stdout stays clean for a command's own output.
  auto logger = spdlog::stderr_color_mt("ditlab");
  logger->set_pattern("[%Y-%m-%d %H:%M:%S] [%^%l%$] %v");
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
}

void add_file_sink(const std::string& path) {
  init_console();
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
  sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
  // One run's file at a time: a later run in the same process must not write into an earlier one.
  auto& sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::remove_if(sinks.begin(), sinks.end(),
                             [](const auto& s) {
                               return std::dynamic_pointer_cast<spdlog::sinks::basic_file_sink_mt>(s) != nullptr;
                             }),
              sinks.end());
  sinks.push_back(sink);
  spdlog::flush_every(std::chrono::seconds(5));
}

bool stderr_is_terminal() { return ::isatty(STDERR_FILENO) == 1; }

}  // namespace ditlab::log
