// Precompiled header shared by every ditlab target: the heavy, stable headers only.
#pragma once
#include <torch/nn.h>
#include <torch/optim.h>
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>
