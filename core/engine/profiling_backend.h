// ProfilingBackend: a Backend decorator that times every kernel call of another backend, for
// `pretrain bench --profile`. It forwards every kernel of backend_kernels.def. GEMMs and attention
// calls are keyed by their shapes, a few others by an operator or dtype (profile_key in
// profiling_backend.cpp), everything else by the kernel's name. Two ways of timing, chosen by the
// inner backend:
//  - device timestamps (CUDA): a marker is recorded in the queue before and after each call and
//    the device time between them is read later (flush), so calls are neither synchronised nor
//    charged their launch overhead: the totals are the step's device time, op by op, as long as
//    the device has queued work. When it waits for the host, a call's start marker runs as soon
//    as it is queued, so the wait until its kernels arrive is charged to that call (a profile
//    total close to the timed step says the device never waited).
//  - otherwise (CPU): each call is bracketed by synchronize() and host clock reads.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/engine/backend.h"

namespace pt {

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(Backend& inner) : inner_(inner), device_timestamps_(inner.has_timestamps()) {
    if (device_timestamps_) inner_.reset_timestamps();
  }

  struct Entry {
    std::string key;
    int64_t calls = 0;
    double seconds = 0.0;
  };
  // Entries sorted by total time, largest first (reading device timestamps synchronises).
  std::vector<Entry> entries() const;
  double total_seconds() const;
  void reset();
  // Whether calls are timed by device timestamps (true) or synchronised host clocks (false).
  bool uses_device_timestamps() const { return device_timestamps_; }

  std::string name() const override { return inner_.name() + "+profile"; }
  void synchronize() override { inner_.synchronize(); }

  // Every kernel of backend_kernels.def, required and composed, forwarded to the inner backend:
  // a composed kernel runs the inner backend's own implementation (fused or default) and is
  // charged under its own key, never as the sub-calls of Backend's default.
#define PT_REQUIRED_KERNEL(ret, name, params, args) ret name params override;
#define PT_COMPOSED_KERNEL(ret, name, params, args) ret name params override;
#include "core/engine/backend_kernels.def"

 private:
  // Synchronises, runs fn, synchronises, and charges the elapsed time to key.
  template <class Fn>
  auto timed(const std::string& key, Fn&& fn) -> decltype(fn());

  // Reads the device time of the pending calls into totals_ (synchronises).
  void flush() const;

  Backend& inner_;
  bool device_timestamps_;
  struct Total {
    int64_t calls = 0;
    double seconds = 0.0;
  };
  mutable std::map<std::string, Total> totals_;
  struct Pending {
    std::string key;
    int64_t start, end;  // timestamps around the call
  };
  mutable std::vector<Pending> pending_;
  int depth_ = 0;  // timed calls in progress (nested ones happen)
};

}  // namespace pt
