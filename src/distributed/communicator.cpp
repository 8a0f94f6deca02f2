#include "src/distributed/communicator.h"

#include <ATen/ATen.h>

#include <atomic>
#include <exception>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "src/common/error.h"

#if defined(DITLAB_WITH_GLOO) || defined(DITLAB_WITH_NCCL)
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef DITLAB_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef DITLAB_WITH_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL  // c10d's header compiles to nothing without it
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace ditlab {

#if defined(DITLAB_WITH_GLOO) || defined(DITLAB_WITH_NCCL)
struct Communicator::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  // Every rank bumps its counter in the store once a second from its own connection, so that a
  // rank whose collective failed can tell which peers stopped (see silent_ranks()).
  c10::intrusive_ptr<c10d::Store> heartbeat_store;
  std::mutex heartbeat_mutex;
  std::condition_variable heartbeat_wakeup;
  bool heartbeat_stop = false;
  std::thread heartbeat;

  static std::string heartbeat_key(int rank) { return "ditlab/heartbeat/" + std::to_string(rank); }

  void start_heartbeat(int rank) {
    heartbeat = std::thread([this, rank] {
      std::unique_lock<std::mutex> lock(heartbeat_mutex);
      while (!heartbeat_stop) {
        try {
          heartbeat_store->add(heartbeat_key(rank), 1);
        } catch (const std::exception&) {
          return;  // the store is gone; a collective will fail and report it
        }
        heartbeat_wakeup.wait_for(lock, std::chrono::seconds(1));
      }
    });
  }

  ~Impl() {
#ifdef DITLAB_WITH_NCCL
    if (nccl) nccl->shutdown();  // LibTorch 2.x warns about a group destroyed without it
#endif
    if (!heartbeat.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(heartbeat_mutex);
      heartbeat_stop = true;
    }
    heartbeat_wakeup.notify_all();
    heartbeat.join();
  }

  // After a failed collective: which peers' heartbeats stopped over a few seconds.
  std::string silent_ranks(const DistEnv& env) {
    if (!heartbeat_store) return "";
    auto read = [&] {
      std::vector<int64_t> beats;
      std::lock_guard<std::mutex> lock(heartbeat_mutex);
      for (int r = 0; r < env.world_size; ++r) beats.push_back(heartbeat_store->add(heartbeat_key(r), 0));
      return beats;
    };
    try {
      const auto before = read();
      std::this_thread::sleep_for(std::chrono::milliseconds(2500));
      const auto after = read();
      std::string silent;
      for (int r = 0; r < env.world_size; ++r) {
        if (r != env.rank && before[r] == after[r]) silent += (silent.empty() ? "" : ", ") + std::to_string(r);
      }
      if (silent.empty()) return "every rank is still alive (one of them failed; its log says why)";
      return (silent.find(',') == std::string::npos ? "rank " : "ranks ") + silent +
             " stopped answering (no heartbeat for 2.5 s)";
    } catch (const std::exception&) {
      return "rank 0 stopped answering (its rendezvous store at " + env.master_addr + ":" +
             std::to_string(env.master_port) + " is gone)";
    }
  }
#ifdef DITLAB_WITH_GLOO
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#endif
#ifdef DITLAB_WITH_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif
  // Calls `f` with whichever process group this job uses. (Their common base class differs
  // between LibTorch versions; the collectives' signatures do not.)
  template <class F>
  c10::intrusive_ptr<c10d::Work> with_group(F&& f) {
#ifdef DITLAB_WITH_GLOO
    if (gloo) return f(*gloo);
#endif
#ifdef DITLAB_WITH_NCCL
    if (nccl) return f(*nccl);
#endif
    throw Error("internal: collective called without a process group");
  }
};
#else
struct Communicator::Impl {};
#endif

std::vector<std::string> Communicator::available_backends() {
  std::vector<std::string> out;
#ifdef DITLAB_WITH_GLOO
  out.push_back("gloo");
#endif
#ifdef DITLAB_WITH_NCCL
  out.push_back("nccl");
#endif
  return out;
}

namespace {
std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out.empty() ? "none" : out;
}

}  // namespace

void Communicator::fail(const std::string& what, const std::exception& e) const {
  std::string diagnosis;
#if defined(DITLAB_WITH_GLOO) || defined(DITLAB_WITH_NCCL)
  diagnosis = impl_->silent_ranks(env_);
#endif
  throw Error("rank " + std::to_string(env_.rank) + ": " + what + " failed" +
              (diagnosis.empty() ? "" : ": " + diagnosis) + " (a peer that exits, crashes or " +
              "does not answer within train.dist_timeout_s = " +
              std::to_string(timeout_.count() / 1000) + " s fails the job): " + e.what());
}

Communicator::Communicator(const DistEnv& env, const std::string& backend,
                           std::chrono::milliseconds timeout, bool device_is_cuda)
    : env_(env),
      backend_(backend == "auto" ? (device_is_cuda ? "nccl" : "gloo") : backend),
      timeout_(timeout),
      impl_(std::make_unique<Impl>()) {
  if (!distributed()) return;
  const std::string where = env_.master_addr + ":" + std::to_string(env_.master_port);
  const auto available = available_backends();
  if (std::find(available.begin(), available.end(), backend_) == available.end()) {
    throw ConfigError("train.dist_backend '" + backend_ + "' is not available in this build " +
                      "(available: " + join(available) + "); " + std::to_string(env_.world_size) +
                      " ranks requested at " + where);
  }
  if ((backend_ == "nccl") != device_is_cuda) {
    throw ConfigError("train.dist_backend '" + backend_ + "' does not fit train.device (" +
                      (device_is_cuda ? "cuda" : "cpu") + "): nccl is for cuda, gloo for cpu");
  }
#if defined(DITLAB_WITH_GLOO) || defined(DITLAB_WITH_NCCL)
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(env_.master_port);
    options.isServer = env_.rank == 0;
    options.numWorkers = static_cast<std::size_t>(env_.world_size);
    options.waitWorkers = true;
    options.timeout = timeout_;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, options);
#ifdef DITLAB_WITH_GLOO
    if (backend_ == "gloo") {
      auto group_options = c10d::ProcessGroupGloo::Options::create(timeout_);
      group_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      impl_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env_.rank,
                                                                env_.world_size, group_options);
    }
#endif
#ifdef DITLAB_WITH_NCCL
    if (backend_ == "nccl") {
      auto group_options = c10d::ProcessGroupNCCL::Options::create();
      group_options->timeout = timeout_;
      impl_->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, env_.rank,
                                                                env_.world_size, group_options);
    }
#endif
    c10d::TCPStoreOptions client = options;
    client.isServer = false;
    client.waitWorkers = false;
    client.numWorkers = c10::nullopt;
    impl_->heartbeat_store = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, client);
    impl_->start_heartbeat(env_.rank);
  } catch (const std::exception& e) {
    // The batch script of an sbatch job carries the job's SLURM_NTASKS and SLURM_PROCID=0, so a
    // `dit train` started there without srun waits for ranks that never come.
    const std::string hint = env_.launcher == "slurm"
                                 ? " (under Slurm, start every rank with srun: a process started in "
                                   "the batch script itself sees the job's SLURM_NTASKS)"
                                 : "";
    throw Error("rank " + std::to_string(env_.rank) + " of " + std::to_string(env_.world_size) +
                " could not join the job at " + where + " (" + env_.launcher + ", " + backend_ +
                "): " + e.what() + hint);
  }
#endif
}

Communicator::~Communicator() = default;

std::chrono::milliseconds Communicator::wait_timeout() const {
#if defined(DITLAB_WITH_GLOO) || defined(DITLAB_WITH_NCCL)
  if (backend_ == "nccl") return std::chrono::milliseconds(0);  // c10d's kNoTimeout
#endif
  return timeout_;
}

PendingCollective Communicator::all_reduce_sum_async(at::Tensor tensor) {
  if (!distributed()) return {};
#if defined(DITLAB_WITH_GLOO) || defined(DITLAB_WITH_NCCL)
  try {
    auto work = impl_->with_group([&](auto& group) {
      std::vector<at::Tensor> one = {tensor};
      return group.allreduce(one);
    });
    return PendingCollective([work, this] {
      try {
        work->wait(wait_timeout());
      } catch (const std::exception& e) {
        fail("all-reduce", e);
      }
    });
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("all-reduce", e);
  }
#else
  return {};
#endif
}

bool Communicator::can_sum(at::ScalarType dtype) {
  if (!distributed()) return true;
  auto options = at::TensorOptions().dtype(dtype);
  if (backend_ == "nccl") options = options.device(at::Device(at::kCUDA, env_.local_rank));
  at::Tensor probe = at::ones({1}, options);
  try {
    all_reduce_sum(probe);
  } catch (const Error&) {
    return false;  // the same build fails the same way on every rank
  }
  return probe.item<double>() == env_.world_size;
}

void Communicator::all_reduce_sum(at::Tensor& tensor) { all_reduce_sum_async(tensor).wait(); }

void Communicator::broadcast(const std::vector<at::Tensor>& tensors, int root) {
  if (!distributed() || tensors.empty()) return;
#if defined(DITLAB_WITH_GLOO) || defined(DITLAB_WITH_NCCL)
  std::vector<at::Tensor> flat_pieces;
  for (const auto& t : tensors) flat_pieces.push_back(t.detach().reshape({-1}).to(at::kFloat));
  std::vector<at::Tensor> flat = {at::cat(flat_pieces)};
  try {
    c10d::BroadcastOptions options;
    options.rootRank = root;
    impl_->with_group([&](auto& group) { return group.broadcast(flat, options); })->wait(wait_timeout());
  } catch (const std::exception& e) {
    fail("broadcast", e);
  }
  int64_t offset = 0;
  for (const auto& t : tensors) {
    t.detach().copy_(flat[0].narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
#endif
}

void Communicator::barrier() {
  if (!distributed()) return;
#if defined(DITLAB_WITH_GLOO) || defined(DITLAB_WITH_NCCL)
  // A one-element all-reduce on the backend's device: NCCL's own barrier has to guess the GPU.
  auto options = at::TensorOptions().dtype(at::kFloat);
  if (backend_ == "nccl") options = options.device(at::Device(at::kCUDA, env_.local_rank));
  at::Tensor token = at::ones({1}, options);
  all_reduce_sum(token);
  if (token.item<float>() != static_cast<float>(env_.world_size)) {  // waits for the device too
    throw Error("rank " + std::to_string(env_.rank) + ": barrier saw " +
                std::to_string(token.item<float>()) + " ranks, expected " +
                std::to_string(env_.world_size));
  }
#endif
}

namespace {
// Runs `section` where `runs`, then tells every rank how many ranks failed: a failed rank
// rethrows its own error, the others throw one saying who failed.
void run_and_agree(Communicator& communicator, const c10::Device& device, bool runs,
                   const std::function<void()>& section, const std::function<std::string(int)>& others_error) {
  std::exception_ptr error;
  if (runs) {
    try {
      section();
    } catch (...) {
      error = std::current_exception();
    }
  }
  at::Tensor failed = at::full({1}, error ? 1.0f : 0.0f, at::TensorOptions().device(device));
  communicator.all_reduce_sum(failed);
  if (error) std::rethrow_exception(error);
  const int failures = static_cast<int>(failed.item<float>());
  if (failures > 0) throw Error(others_error(failures));
}
}  // namespace

void run_on_main_rank(Communicator& communicator, const c10::Device& device, const std::string& what,
                      const std::function<void()>& section) {
  run_and_agree(communicator, device, communicator.is_main(), section,
                [&](int) { return "rank 0 failed while " + what + "; its log says why"; });
}

void run_on_every_rank(Communicator& communicator, const c10::Device& device, const std::string& what,
                       const std::function<void()>& section) {
  run_and_agree(communicator, device, true, section, [&](int failures) {
    return std::to_string(failures) + (failures == 1 ? " other rank" : " other ranks") + " failed while " +
           what + "; " + (failures == 1 ? "its log says" : "their logs say") + " why";
  });
}

}  // namespace ditlab
