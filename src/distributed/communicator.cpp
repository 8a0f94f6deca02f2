#include "src/distributed/communicator.h"

#include <ATen/ATen.h>

#include "src/common/error.h"

#ifdef DITLAB_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace ditlab {

#ifdef DITLAB_WITH_GLOO
struct Communicator::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
};
#else
struct Communicator::Impl {};
#endif

Communicator::Communicator(const DistEnv& env, const std::string& backend,
                           std::chrono::milliseconds timeout)
    : env_(env), timeout_(timeout), impl_(std::make_unique<Impl>()) {
  if (env_.world_size == 1) return;
  const std::string where = env_.master_addr + ":" + std::to_string(env_.master_port);
#ifdef DITLAB_WITH_GLOO
  if (backend != "gloo" && backend != "auto") {
    throw ConfigError("train.dist_backend '" + backend + "' is not available in this build (gloo)");
  }
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(env_.master_port);
    options.isServer = env_.rank == 0;
    options.numWorkers = static_cast<std::size_t>(env_.world_size);
    options.waitWorkers = true;
    options.timeout = timeout_;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, options);
    auto group_options = c10d::ProcessGroupGloo::Options::create(timeout_);
    group_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env_.rank,
                                                               env_.world_size, group_options);
  } catch (const std::exception& e) {
    throw Error("rank " + std::to_string(env_.rank) + " of " + std::to_string(env_.world_size) +
                " could not join the job at " + where + " (" + env_.launcher + "): " + e.what());
  }
#else
  throw ConfigError("this build has no distributed backend (Gloo headers were not found); " +
                    std::to_string(env_.world_size) + " ranks requested at " + where);
#endif
}

Communicator::~Communicator() = default;

namespace {
[[noreturn]] void peer_failure(int rank, const std::chrono::milliseconds& timeout,
                               const std::string& what, const std::exception& e) {
  throw Error("rank " + std::to_string(rank) + ": " + what + " failed (a peer rank exited, crashed "
              "or did not answer within train.dist_timeout = " + std::to_string(timeout.count() / 1000) +
              " s): " + e.what());
}
}  // namespace

void Communicator::all_reduce_sum(at::Tensor& tensor) {
  if (env_.world_size == 1) return;
#ifdef DITLAB_WITH_GLOO
  try {
    std::vector<at::Tensor> one = {tensor};
    impl_->group->allreduce(one)->wait(timeout_);
  } catch (const std::exception& e) {
    peer_failure(env_.rank, timeout_, "all-reduce", e);
  }
#endif
}

void Communicator::broadcast(const std::vector<at::Tensor>& tensors, int root) {
  if (env_.world_size == 1 || tensors.empty()) return;
#ifdef DITLAB_WITH_GLOO
  std::vector<at::Tensor> flat_pieces;
  for (const auto& t : tensors) flat_pieces.push_back(t.detach().reshape({-1}).to(at::kFloat));
  std::vector<at::Tensor> flat = {at::cat(flat_pieces)};
  try {
    c10d::BroadcastOptions options;
    options.rootRank = root;
    impl_->group->broadcast(flat, options)->wait(timeout_);
  } catch (const std::exception& e) {
    peer_failure(env_.rank, timeout_, "broadcast", e);
  }
  int64_t offset = 0;
  for (const auto& t : tensors) {
    t.detach().copy_(flat[0].narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
#endif
}

void Communicator::barrier() {
  if (env_.world_size == 1) return;
#ifdef DITLAB_WITH_GLOO
  try {
    impl_->group->barrier()->wait(timeout_);
  } catch (const std::exception& e) {
    peer_failure(env_.rank, timeout_, "barrier", e);
  }
#endif
}

}  // namespace ditlab
