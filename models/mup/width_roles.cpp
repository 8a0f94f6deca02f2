#include "models/mup/width_roles.h"

#include "src/common/error.h"

namespace ditlab {

const char* to_string(WidthRole role) {
  switch (role) {
    case WidthRole::kInput: return "input";
    case WidthRole::kHidden: return "hidden";
    case WidthRole::kOutput: return "output";
    case WidthRole::kVector: return "vector";
  }
  return "?";
}

WidthRoles::WidthRoles() : table_(std::make_shared<std::map<std::string, WidthDeclaration>>()) {}

WidthRoles WidthRoles::scope(const std::string& child) const {
  WidthRoles scoped = *this;
  scoped.prefix_ = prefix_ + child + ".";
  return scoped;
}

void WidthRoles::param(const std::string& name, WidthRole role, InitLaw init) {
  const std::string full = prefix_ + name;
  DITLAB_ASSERT(table_->emplace(full, WidthDeclaration{role, init, 0}).second,
                "the µP role of " + full + " is declared twice");
}

void WidthRoles::output_rows(const std::string& name, int64_t rows) {
  auto it = table_->find(prefix_ + name);
  DITLAB_ASSERT(it != table_->end() && it->second.role == WidthRole::kHidden,
                "output rows need a declared hidden weight: " + prefix_ + name);
  it->second.output_rows = rows;
}

void WidthRoles::layer(const std::string& name, WidthRole role, InitLaw init, bool bias,
                       InitLaw bias_init) {
  param(name + ".weight", role, init);
  if (bias) param(name + ".bias", WidthRole::kVector, bias_init);
}

}  // namespace ditlab
