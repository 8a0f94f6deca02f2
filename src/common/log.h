// Logging through spdlog: stderr always, plus `<run_dir>/train.log` once a run directory exists.
#pragma once
#include <spdlog/spdlog.h>

#include <string>

namespace ditlab::log {

// Console only, pattern "[time] level message". Safe to call more than once.
void init_console();

// Sends the default logger to `path` too (appending), replacing any earlier file.
void add_file_sink(const std::string& path);

// Whether standard error is a terminal (progress bars only then).
bool stderr_is_terminal();

}  // namespace ditlab::log
