// Which device a rank trains on (no GPU needed: the rule is given the number of visible GPUs),
// and the process-wide compute settings.
#include <catch2/catch.hpp>

#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include "src/common/compat.h"
#include "src/common/error.h"
#include "trainers/experiment.h"

using namespace ditlab;

namespace {
DistEnv rank(int global, int local, int world) {
  DistEnv env;
  env.launcher = "torchrun";
  env.rank = global;
  env.local_rank = local;
  env.world_size = world;
  return env;
}
}  // namespace

TEST_CASE("each rank takes the GPU of its local rank, or its only GPU", "[experiment]") {
  const c10::Device cuda("cuda");
  CHECK(rank_device(cuda, rank(5, 1, 8), 4) == c10::Device("cuda:1"));
  CHECK(rank_device(cuda, rank(0, 0, 1), 8) == c10::Device("cuda:0"));
  // srun --gpus-per-task=1: local rank 3, one visible GPU, its own.
  CHECK(rank_device(cuda, rank(3, 3, 4), 1) == c10::Device("cuda:0"));
  // More ranks on a node than GPUs it sees.
  CHECK_THROWS_AS(rank_device(cuda, rank(2, 2, 4), 2), ConfigError);
  CHECK_THROWS_WITH(rank_device(cuda, rank(2, 2, 4), 2), Catch::Contains("local rank 2") && Catch::Contains("sees 2 GPUs"));
  // An explicit GPU: fine for one process, all ranks on one GPU otherwise.
  CHECK(rank_device(c10::Device("cuda:3"), rank(0, 0, 1), 8) == c10::Device("cuda:3"));
  CHECK_THROWS_WITH(rank_device(c10::Device("cuda:3"), rank(1, 1, 2), 8),
                    Catch::Contains("train.device cuda:3 puts all 2 ranks on one GPU"));
  // CPUs are CPUs.
  CHECK(rank_device(c10::Device("cpu"), rank(1, 1, 2), 0) == c10::Device("cpu"));
}

TEST_CASE("the compute settings set LibTorch's threads and its CUDA TF32 switches", "[experiment]") {
  const int threads_before = at::get_num_threads();
  TrainConfig train;
  CHECK(train.tf32);  // on by default, as DiT's train.py and sample.py
  train.threads = 1;
  train.tf32 = false;
  apply_compute_settings(train);
  CHECK(at::get_num_threads() == 1);
  CHECK_FALSE(compat::cuda_tf32());
  CHECK(at::globalContext().float32MatmulPrecision() == at::Float32MatmulPrecision::HIGHEST);
  CHECK_FALSE(at::globalContext().allowTF32CuDNN());
  train.threads = 0;  // keeps the current count
  train.tf32 = true;
  apply_compute_settings(train);
  CHECK(at::get_num_threads() == 1);
  CHECK(compat::cuda_tf32());
  CHECK(at::globalContext().allowTF32CuDNN());
  at::set_num_threads(threads_before);
}
