// Facts fixed when the build was configured. They live in one generated source
// (src/common/build_info.cpp.in) rather than in compile definitions, so that a new revision
// recompiles one file instead of every file that shares the precompiled header.
#pragma once

namespace ditlab {

// The short git revision of the sources at configure time, or "unknown" outside git.
const char* build_git_revision();

}  // namespace ditlab
