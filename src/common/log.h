// Logging through spdlog: console always, plus `<run_dir>/train.log` once a run directory exists.
#pragma once
#include <spdlog/spdlog.h>

#include <string>

namespace ditlab::log {

// Console only, pattern "[time] level message". Safe to call more than once.
void init_console();

// Adds a file sink at `path` (appending) to the default logger.
void add_file_sink(const std::string& path);

// Whether standard output is a terminal (progress bars only then; periodic lines otherwise).
bool stdout_is_terminal();

}  // namespace ditlab::log
