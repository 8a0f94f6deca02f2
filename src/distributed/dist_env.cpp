#include "src/distributed/dist_env.h"

#include <cstdlib>

#include "src/common/error.h"

namespace ditlab {
namespace {

// `fallback` < 0: the variable is required. Set but empty is an error either way: a launcher
// that sets a variable gives it a value.
int parse_int(const GetEnv& getenv, const char* name, int fallback) {
  const char* value = getenv(name);
  if (value == nullptr && fallback >= 0) return fallback;
  if (value == nullptr || *value == '\0') {
    throw ConfigError(std::string("environment variable ") + name + (value == nullptr ? " is not set" : " is empty") +
                      "; expected a non-negative integer");
  }
  char* end = nullptr;
  long parsed = std::strtol(value, &end, 10);
  if (*end != '\0' || parsed < 0 || parsed > 1 << 24) {
    throw ConfigError(std::string("environment variable ") + name + "='" + value +
                      "' is not a non-negative integer");
  }
  return static_cast<int>(parsed);
}

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  // The first entry ends at a comma outside brackets.
  size_t depth = 0, end = 0;
  for (; end < nodelist.size(); ++end) {
    if (nodelist[end] == '[') ++depth;
    if (nodelist[end] == ']') --depth;
    if (nodelist[end] == ',' && depth == 0) break;
  }
  std::string first = nodelist.substr(0, end);
  auto open = first.find('[');
  if (open == std::string::npos) return first;
  // "prefix[a-b,c]suffix": the first number of the range, with its zero padding.
  std::string range = first.substr(open + 1, first.find(']') - open - 1);
  std::string number = range.substr(0, range.find_first_of("-,"));
  return first.substr(0, open) + number + first.substr(first.find(']') + 1);
}

DistEnv detect_dist_env(const GetEnv& getenv) {
  DistEnv env;
  auto has = [&](const char* name) { return getenv(name) != nullptr; };
  // Half of torchrun's contract is a broken launch, not a single process.
  if (has("RANK") != has("WORLD_SIZE")) {
    throw ConfigError(std::string(has("RANK") ? "RANK" : "WORLD_SIZE") + " is set but " +
                      (has("RANK") ? "WORLD_SIZE" : "RANK") + " is not; a launcher (torchrun, "
                      "scripts/launch.sh) sets both, a single process neither");
  }
  if (has("RANK") && has("WORLD_SIZE")) {
    env.launcher = "torchrun";
    env.rank = parse_int(getenv, "RANK", -1);
    env.world_size = parse_int(getenv, "WORLD_SIZE", -1);
    env.local_rank = parse_int(getenv, "LOCAL_RANK", env.rank);
    env.local_world_size = parse_int(getenv, "LOCAL_WORLD_SIZE", env.world_size);
  } else if (has("SLURM_PROCID") && has("SLURM_NTASKS")) {
    env.launcher = "slurm";
    env.rank = parse_int(getenv, "SLURM_PROCID", -1);
    env.world_size = parse_int(getenv, "SLURM_NTASKS", -1);
    env.local_rank = parse_int(getenv, "SLURM_LOCALID", 0);
    // "4" or "4(x2)": tasks on this node.
    const char* per_node = getenv("SLURM_NTASKS_PER_NODE");
    env.local_world_size = per_node ? std::atoi(per_node) : env.world_size;
    const char* nodes = getenv("SLURM_JOB_NODELIST") ? getenv("SLURM_JOB_NODELIST") : getenv("SLURM_NODELIST");
    if (nodes) env.master_addr = first_slurm_host(nodes);
    // A port per job, so that two jobs sharing a node do not collide.
    const char* job = getenv("SLURM_JOB_ID");
    if (job) env.master_port = 20000 + std::atoi(job) % 20000;
  } else if (has("OMPI_COMM_WORLD_RANK") && has("OMPI_COMM_WORLD_SIZE")) {
    env.launcher = "openmpi";
    env.rank = parse_int(getenv, "OMPI_COMM_WORLD_RANK", -1);
    env.world_size = parse_int(getenv, "OMPI_COMM_WORLD_SIZE", -1);
    env.local_rank = parse_int(getenv, "OMPI_COMM_WORLD_LOCAL_RANK", 0);
    env.local_world_size = parse_int(getenv, "OMPI_COMM_WORLD_LOCAL_SIZE", env.world_size);
  }
  if (const char* addr = getenv("MASTER_ADDR")) {
    if (*addr == '\0') throw ConfigError("environment variable MASTER_ADDR is empty; expected a host name or address");
    env.master_addr = addr;
  }
  env.master_port = parse_int(getenv, "MASTER_PORT", env.master_port);
  if (env.world_size < 1 || env.rank >= env.world_size) {
    throw ConfigError("distributed environment (" + env.launcher + "): rank " +
                      std::to_string(env.rank) + " is not below world size " +
                      std::to_string(env.world_size));
  }
  if (env.master_port < 1 || env.master_port > 65535) {
    throw ConfigError("MASTER_PORT " + std::to_string(env.master_port) + " is not a TCP port");
  }
  return env;
}

DistEnv detect_dist_env() {
  return detect_dist_env([](const char* name) { return std::getenv(name); });
}

}  // namespace ditlab
