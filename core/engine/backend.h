// Backend: the kernels of one device type, registered in one place.
//
// The kernels themselves (signatures and contracts) are listed once in backend_kernels.def; this
// header declares them from there and holds the types they take. core/engine/ops.cpp implements
// each differentiable op (shape checks, autograd) on top of these kernels and dispatches on the
// tensors' device tag. The CPU backend (core/engine/cpu/) is the
// reference implementation; the CUDA backend (cuda/) registers itself at start-up when linked.
// Unless stated, tensors passed to kernels are contiguous, on this backend's device, and of
// one floating dtype; outputs are preallocated by the caller.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "core/engine/tensor.h"

namespace pt {

enum class UnaryOp { identity, neg, relu, gelu_erf, gelu_tanh, silu, relu2, sigmoid, tanh, exp, log, sqrt, square };
enum class BinaryOp { add, sub, mul, div };
enum class GluKind { swiglu, geglu, reglu };  // act(gate) * up with act = silu, gelu_tanh, relu

const char* unary_op_name(UnaryOp op);

// The functions phi_k of a learnable / mixed activation (LA, MoA), passed by value to kernels.
struct ActivationDictionary {
  static constexpr int kMaxSize = 8;
  int size = 0;
  UnaryOp ops[kMaxSize] = {};
};

// How mixture coefficients c(n, k, f) are laid out for h [N, F] and a dictionary of K entries.
enum class MixtureCoef {
  per_row,      // coef [N, K]: one weight per token and entry (MoA's alpha)
  shared,       // coef [K]: one weight per entry (LA per layer)
  per_channel,  // coef [K, F]: one weight per entry and channel (LA per channel)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual void synchronize() {}

  // ---- device timestamps (ProfilingBackend): a backend whose work runs asynchronously records a
  // marker in its queue and reports, after synchronize(), the device time between two markers, so
  // a profile charges each call its device time without synchronising around it. Markers are
  // numbered from 0 after each reset_timestamps().
  virtual bool has_timestamps() const { return false; }
  virtual int64_t record_timestamp() { throw std::logic_error(name() + " backend has no device timestamps"); }
  virtual double seconds_between(int64_t /*from*/, int64_t /*to*/) {
    throw std::logic_error(name() + " backend has no device timestamps");
  }
  virtual void reset_timestamps() {}

  // AdamW's per-parameter tensors for adamw_step_multi (see backend_kernels.def).
  struct AdamwTensors {
    Tensor param, grad, m, v;
    double weight_decay = 0.0;
    Tensor compute_copy;  // optional: receives the updated param cast to its dtype (bf16 compute copy)
  };

  // ---- the kernels, listed and documented in backend_kernels.def: required ones are pure
  // virtual; composed ones have a default composition of other kernels (backend.cpp).
#define PT_KERNEL_DEFAULT(value) = value
#define PT_REQUIRED_KERNEL(ret, name, params, args) virtual ret name params = 0;
#define PT_COMPOSED_KERNEL(ret, name, params, args) virtual ret name params;
#include "core/engine/backend_kernels.def"
};

// The backend of a device type. Throws std::runtime_error naming the device if none is available
// (e.g. "cuda" in a CPU-only build or on a machine without a GPU).
Backend& backend_for(Device device);
// Registers the backend of a non-CPU device type (the CPU backend is built in: registering one for
// DeviceType::cpu throws std::invalid_argument; use override_backend to wrap it).
void register_backend(DeviceType type, Backend* backend);
bool backend_available(DeviceType type);
// Installs `backend` for `type` in place of the registered one (nullptr restores the original):
// for wrappers such as ProfilingBackend (`pretrain bench --profile`). Not thread-safe against
// concurrent backend_for calls.
void override_backend(DeviceType type, Backend* backend);

}  // namespace pt
