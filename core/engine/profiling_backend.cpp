// ProfilingBackend: timing (timed, flush), the profile key of each kernel call, and the forwards
// of every kernel to the inner backend.
#include "core/engine/profiling_backend.h"

#include <algorithm>
#include <type_traits>

namespace pt {

// Calls that pile up unread before flush() reads them (each holds two device timestamps).
constexpr size_t kMaxPendingCalls = 16384;

template <class Fn>
auto ProfilingBackend::timed(const std::string& key, Fn&& fn) -> decltype(fn()) {
  if (device_timestamps_) {
    // Not inside another timed call (a backend op that calls back through the profiler): a flush
    // resets the timestamps, which would orphan the outer call's start marker.
    if (depth_ == 0 && pending_.size() >= kMaxPendingCalls) flush();
    struct Depth {
      int& depth;
      explicit Depth(int& d) : depth(d) { ++depth; }
      ~Depth() { --depth; }
    } depth{depth_};
    struct Mark {  // records the closing timestamp even when fn throws
      ProfilingBackend* self;
      const std::string& key;
      int64_t start;
      ~Mark() {
        try {
          self->pending_.push_back({key, start, self->inner_.record_timestamp()});
        } catch (...) {  // a failing device: the call's own error is the one to report
        }
      }
    };
    Mark mark{this, key, inner_.record_timestamp()};
    return fn();
  }
  inner_.synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  struct Charge {  // charges the time even when fn throws
    ProfilingBackend* self;
    const std::string& key;
    std::chrono::steady_clock::time_point t0;
    ~Charge() {
      Total& t = self->totals_[key];
      ++t.calls;
      t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
  };
  if constexpr (std::is_void_v<decltype(fn())>) {
    Charge charge{this, key, t0};
    fn();
    inner_.synchronize();
  } else {
    Charge charge{this, key, t0};
    auto result = fn();
    inner_.synchronize();
    return result;
  }
}

void ProfilingBackend::flush() const {
  if (pending_.empty()) return;
  std::vector<Pending> pending;
  pending.swap(pending_);  // read once even if reading throws half-way
  inner_.synchronize();
  std::map<std::string, Total> read;
  for (const Pending& p : pending) {
    Total& t = read[p.key];
    ++t.calls;
    t.seconds += inner_.seconds_between(p.start, p.end);
  }
  inner_.reset_timestamps();
  for (const auto& [key, t] : read) {
    totals_[key].calls += t.calls;
    totals_[key].seconds += t.seconds;
  }
}

void ProfilingBackend::reset() {
  flush();
  totals_.clear();
}

std::vector<ProfilingBackend::Entry> ProfilingBackend::entries() const {
  flush();
  std::vector<Entry> out;
  for (const auto& [key, t] : totals_) out.push_back({key, t.calls, t.seconds});
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.seconds > b.seconds; });
  return out;
}

double ProfilingBackend::total_seconds() const {
  flush();
  double s = 0.0;
  for (const auto& [key, t] : totals_) s += t.seconds;
  return s;
}

namespace {

// ---- the profile key of each kernel call: profile_key(tag, the call's arguments...). The tag is
// an empty struct per kernel of backend_kernels.def (profile_tag::gemm, ...); the default key is
// the kernel's name, and the overloads below key some kernels by shape, operator or dtype. An
// overload must take exactly the kernel's parameter types, or the default is chosen instead.
namespace profile_tag {
#define PT_REQUIRED_KERNEL(ret, name, params, args) \
  struct name {                                     \
    static constexpr const char* kName = #name;     \
  };
#define PT_COMPOSED_KERNEL(ret, name, params, args) PT_REQUIRED_KERNEL(ret, name, params, args)
#include "core/engine/backend_kernels.def"
}  // namespace profile_tag

template <class Tag, class... Args>
std::string profile_key(Tag, const Args&...) {
  return Tag::kName;
}

std::string dt(const Tensor& t) { return dtype_name(t.dtype()); }

std::string gemm_key(const Tensor& a, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k) {
  return "gemm " + dt(a) + " " + (trans_a ? "T" : "N") + (trans_b ? "T" : "N") + " m" + std::to_string(m) + " n" +
         std::to_string(n) + " k" + std::to_string(k);
}

std::string profile_key(profile_tag::copy, const Tensor& src, const Tensor& dst) {
  return src.dtype() == dst.dtype() ? "copy" : "copy(cast " + dt(src) + "->" + dt(dst) + ")";
}
std::string profile_key(profile_tag::gemm, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                        double /*alpha*/, const Tensor& a, const Tensor& /*b*/, double beta, const Tensor& /*c*/,
                        int64_t batch, int64_t /*stride_a*/, int64_t /*stride_b*/, int64_t /*stride_c*/) {
  return gemm_key(a, trans_a, trans_b, m, n, k) + (batch > 1 ? " batch" + std::to_string(batch) : "") +
         (beta != 0.0 ? " +c" : "");
}
std::string profile_key(profile_tag::gemm_add, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                        const Tensor& a, const Tensor& /*b*/, const Tensor& /*c*/, const Tensor& /*d*/) {
  return gemm_key(a, trans_a, trans_b, m, n, k) + " +residual";
}
std::string profile_key(profile_tag::unary, UnaryOp op, const Tensor&, const Tensor&) {
  return std::string("unary ") + unary_op_name(op);
}
std::string profile_key(profile_tag::unary_backward, UnaryOp op, const Tensor&, const Tensor&, const Tensor&,
                        const Tensor&) {
  return std::string("unary_backward ") + unary_op_name(op);
}
std::string profile_key(profile_tag::binary, BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  static const char* names[] = {"add", "sub", "mul", "div"};
  const bool broadcast = a.shape() != out.shape() || b.shape() != out.shape();
  return std::string("binary ") + names[static_cast<int>(op)] + (broadcast ? " (broadcast)" : "");
}
std::string profile_key(profile_tag::rope, const Tensor&, double /*theta*/, bool inverse, const Tensor&) {
  return inverse ? "rope (inverse)" : "rope";
}
std::string attention_key(const char* name, const Tensor& q, const Tensor& k) {
  return std::string(name) + " " + dt(q) + " q" + shape_str(q.shape()) + " kv" + shape_str(k.shape());
}
std::string profile_key(profile_tag::attention_forward, const Tensor& q, const Tensor& k, const Tensor&, double,
                        const Tensor&, const Tensor&) {
  return attention_key("attention_forward", q, k);
}
std::string profile_key(profile_tag::attention_backward, const Tensor& q, const Tensor& k, const Tensor&,
                        const Tensor&, const Tensor&, const Tensor&, double, const Tensor&, const Tensor&,
                        const Tensor&) {
  return attention_key("attention_backward", q, k);
}
std::string profile_key(profile_tag::cross_entropy_forward, const Tensor& logits, const Tensor&, const Tensor&,
                        const Tensor&) {
  return "cross_entropy_forward " + dt(logits);
}
std::string profile_key(profile_tag::cross_entropy_backward, const Tensor& logits, const Tensor&, const Tensor&,
                        const Tensor&, double, const Tensor&) {
  return "cross_entropy_backward " + dt(logits);
}
std::string profile_key(profile_tag::cross_entropy_forward_backward, const Tensor& logits, const Tensor&,
                        const Tensor&, const Tensor&, double, const Tensor&) {
  return "cross_entropy_forward_backward " + dt(logits);
}

}  // namespace

// ---- the forwards: every kernel of backend_kernels.def, timed under its profile key.
#define PT_EXPAND_ARGS(...) __VA_ARGS__
#define PT_REQUIRED_KERNEL(ret, name, params, args)                               \
  ret ProfilingBackend::name params {                                             \
    return timed(profile_key(profile_tag::name{}, PT_EXPAND_ARGS args),           \
                 [&] { return inner_.name args; });                               \
  }
#define PT_COMPOSED_KERNEL(ret, name, params, args) PT_REQUIRED_KERNEL(ret, name, params, args)
#include "core/engine/backend_kernels.def"
#undef PT_EXPAND_ARGS

}  // namespace pt
