// Who this process is in a distributed job, read from the launcher's environment:
//   torchrun:  RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//   Slurm:     SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE, the first host
//              of SLURM_JOB_NODELIST (MASTER_ADDR / MASTER_PORT still win when set)
//   Open MPI:  OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE (+ MASTER_ADDR/PORT)
// and a single process when none of them is set.
#pragma once
#include <functional>
#include <string>

namespace ditlab {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "single";  // torchrun, slurm, openmpi or single
};

using GetEnv = std::function<const char*(const char*)>;

// Throws ConfigError naming the variable when one is malformed or inconsistent.
DistEnv detect_dist_env(const GetEnv& getenv);
DistEnv detect_dist_env();  // from the process environment

// The first host of a Slurm node list: "gpu[003-004,010],cpu1" -> "gpu003".
std::string first_slurm_host(const std::string& nodelist);

}  // namespace ditlab
