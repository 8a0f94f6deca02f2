#include <catch2/catch.hpp>

#include <map>

#include "src/common/error.h"
#include "src/distributed/dist_env.h"

using namespace ditlab;

namespace {
DistEnv detect(const std::map<std::string, std::string>& vars) {
  return detect_dist_env([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}
}  // namespace

TEST_CASE("no launcher variables: one process", "[distributed]") {
  auto env = detect({});
  CHECK(env.launcher == "single");
  CHECK(env.rank == 0);
  CHECK(env.world_size == 1);
}

TEST_CASE("the torchrun contract", "[distributed]") {
  auto env = detect({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                     {"MASTER_ADDR", "node7"}, {"MASTER_PORT", "1234"}});
  CHECK(env.launcher == "torchrun");
  CHECK(env.rank == 3);
  CHECK(env.world_size == 8);
  CHECK(env.local_rank == 1);
  CHECK(env.local_world_size == 2);
  CHECK(env.master_addr == "node7");
  CHECK(env.master_port == 1234);
}

TEST_CASE("Slurm: ranks from SLURM_*, the master from the node list", "[distributed]") {
  auto env = detect({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "1"},
                     {"SLURM_NTASKS_PER_NODE", "4"}, {"SLURM_JOB_NODELIST", "gpu[007-010,012],login1"},
                     {"SLURM_JOB_ID", "123456"}});
  CHECK(env.launcher == "slurm");
  CHECK(env.rank == 5);
  CHECK(env.world_size == 16);
  CHECK(env.local_rank == 1);
  CHECK(env.local_world_size == 4);
  CHECK(env.master_addr == "gpu007");
  CHECK(env.master_port == 20000 + 123456 % 20000);
  CHECK(first_slurm_host("node1,node2") == "node1");
  CHECK(first_slurm_host("a[1-3]b,c") == "a1b");
  CHECK(first_slurm_host("single") == "single");
  // MASTER_ADDR / MASTER_PORT win, as with torchrun.
  auto explicit_master = detect({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "n[1-2]"},
                                 {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29600"}});
  CHECK(explicit_master.master_addr == "10.0.0.1");
  CHECK(explicit_master.master_port == 29600);
}

TEST_CASE("Open MPI", "[distributed]") {
  auto env = detect({{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                     {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "1"}});
  CHECK(env.launcher == "openmpi");
  CHECK(env.rank == 2);
  CHECK(env.world_size == 4);
}

TEST_CASE("malformed launcher variables name the variable", "[distributed]") {
  CHECK_THROWS_WITH(detect({{"RANK", "x"}, {"WORLD_SIZE", "2"}}), Catch::Contains("RANK='x'"));
  CHECK_THROWS_WITH(detect({{"RANK", "2"}, {"WORLD_SIZE", "2"}}), Catch::Contains("not below world size"));
  CHECK_THROWS_WITH(detect({{"MASTER_PORT", "70000"}}), Catch::Contains("MASTER_PORT"));
  // Set but empty is not "rank 0"; half of torchrun's pair is not "one process".
  CHECK_THROWS_WITH(detect({{"RANK", ""}, {"WORLD_SIZE", "2"}}), Catch::Contains("RANK is empty"));
  CHECK_THROWS_WITH(detect({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", ""}}), Catch::Contains("SLURM_NTASKS is empty"));
  CHECK_THROWS_WITH(detect({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", ""}}), Catch::Contains("LOCAL_RANK is empty"));
  CHECK_THROWS_WITH(detect({{"MASTER_ADDR", ""}}), Catch::Contains("MASTER_ADDR is empty"));
  CHECK_THROWS_WITH(detect({{"RANK", "1"}}), Catch::Contains("RANK is set but WORLD_SIZE is not"));
  CHECK_THROWS_WITH(detect({{"WORLD_SIZE", "4"}}), Catch::Contains("WORLD_SIZE is set but RANK is not"));
}
