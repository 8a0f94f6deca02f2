// Typed errors that cross library boundaries. Only the CLI turns them into messages and exit
// codes; every message says what went wrong, where (file, key, value) and what was expected.
#pragma once
#include <stdexcept>
#include <string>

#include <c10/util/Exception.h>

namespace ditlab {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A config file, key or value that is not acceptable.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A file that is missing, unreadable, truncated or malformed.
class IoError : public Error {
 public:
  using Error::Error;
};

// Weights or tensors whose names or shapes do not fit the model.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// A command line that cannot be understood.
class UsageError : public Error {
 public:
  using Error::Error;
};

}  // namespace ditlab

// An invariant of ditlab itself: failing means a bug in ditlab, not in the user's input.
#define DITLAB_ASSERT(cond, ...) TORCH_INTERNAL_ASSERT(cond, __VA_ARGS__)
