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
std::string dt(const Tensor& t) { return dtype_name(t.dtype()); }
}  // namespace

void ProfilingBackend::copy(const Tensor& src, const Tensor& dst) {
  timed(src.dtype() == dst.dtype() ? "copy" : "copy(cast " + dt(src) + "->" + dt(dst) + ")",
        [&] { inner_.copy(src, dst); });
}
void ProfilingBackend::fill(const Tensor& dst, double value) {
  timed("fill", [&] { inner_.fill(dst, value); });
}
void ProfilingBackend::copy_from_host(const void* src, const Tensor& dst) {
  timed("copy_from_host", [&] { inner_.copy_from_host(src, dst); });
}
void ProfilingBackend::copy_to_host(const Tensor& src, void* dst) {
  timed("copy_to_host", [&] { inner_.copy_to_host(src, dst); });
}
void ProfilingBackend::gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                            const Tensor& a, const Tensor& b, double beta, const Tensor& c, int64_t batch,
                            int64_t stride_a, int64_t stride_b, int64_t stride_c) {
  const std::string key = "gemm " + dt(a) + " " + (trans_a ? "T" : "N") + (trans_b ? "T" : "N") + " m" +
                          std::to_string(m) + " n" + std::to_string(n) + " k" + std::to_string(k) +
                          (batch > 1 ? " batch" + std::to_string(batch) : "") + (beta != 0.0 ? " +c" : "");
  timed(key, [&] { inner_.gemm(trans_a, trans_b, m, n, k, alpha, a, b, beta, c, batch, stride_a, stride_b, stride_c); });
}
void ProfilingBackend::gemm_add(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Tensor& a,
                                const Tensor& b, const Tensor& c, const Tensor& d) {
  const std::string key = "gemm " + dt(a) + " " + (trans_a ? "T" : "N") + (trans_b ? "T" : "N") + " m" +
                          std::to_string(m) + " n" + std::to_string(n) + " k" + std::to_string(k) + " +residual";
  timed(key, [&] { inner_.gemm_add(trans_a, trans_b, m, n, k, a, b, c, d); });
}
void ProfilingBackend::unary(UnaryOp op, const Tensor& x, const Tensor& y) {
  timed(std::string("unary ") + unary_op_name(op), [&] { inner_.unary(op, x, y); });
}
void ProfilingBackend::unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy,
                                      const Tensor& dx) {
  timed(std::string("unary_backward ") + unary_op_name(op), [&] { inner_.unary_backward(op, x, y, dy, dx); });
}
void ProfilingBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  static const char* names[] = {"add", "sub", "mul", "div"};
  const bool broadcast = a.shape() != out.shape() || b.shape() != out.shape();
  timed(std::string("binary ") + names[static_cast<int>(op)] + (broadcast ? " (broadcast)" : ""),
        [&] { inner_.binary(op, a, b, out); });
}
void ProfilingBackend::axpby(double alpha, const Tensor& x, double beta, const Tensor& y) {
  timed("axpby", [&] { inner_.axpby(alpha, x, beta, y); });
}
void ProfilingBackend::affine(const Tensor& x, double scale, double shift, const Tensor& out) {
  timed("affine", [&] { inner_.affine(x, scale, shift, out); });
}
void ProfilingBackend::sum_to(const Tensor& x, const Tensor& out) {
  timed("sum_to", [&] { inner_.sum_to(x, out); });
}
double ProfilingBackend::sum_squares(const std::vector<Tensor>& xs) {
  return timed("sum_squares", [&] { return inner_.sum_squares(xs); });
}
void ProfilingBackend::embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out) {
  timed("embedding_forward", [&] { inner_.embedding_forward(ids, table, out); });
}
void ProfilingBackend::embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable) {
  timed("embedding_backward", [&] { inner_.embedding_backward(ids, dout, dtable); });
}
void ProfilingBackend::rms_norm_forward(const Tensor& x, const Tensor& weight, double eps, const Tensor& y,
                                        const Tensor& rstd) {
  timed("rms_norm_forward", [&] { inner_.rms_norm_forward(x, weight, eps, y, rstd); });
}
void ProfilingBackend::rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                                         const Tensor& dx, const Tensor& dweight) {
  timed("rms_norm_backward", [&] { inner_.rms_norm_backward(x, weight, rstd, dy, dx, dweight); });
}
void ProfilingBackend::add_rms_norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight,
                                            double eps, const Tensor& sum, const Tensor& y, const Tensor& rstd) {
  timed("add_rms_norm_forward", [&] { inner_.add_rms_norm_forward(x, residual, weight, eps, sum, y, rstd); });
}
void ProfilingBackend::rms_norm_backward_add(const Tensor& x, const Tensor& weight, const Tensor& rstd,
                                             const Tensor& dy, const Tensor& dresidual, const Tensor& dx,
                                             const Tensor& dweight) {
  timed("rms_norm_backward_add", [&] { inner_.rms_norm_backward_add(x, weight, rstd, dy, dresidual, dx, dweight); });
}
void ProfilingBackend::layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                                          const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  timed("layer_norm_forward", [&] { inner_.layer_norm_forward(x, weight, bias, eps, y, mean, rstd); });
}
void ProfilingBackend::layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean,
                                           const Tensor& rstd, const Tensor& dy, const Tensor& dx,
                                           const Tensor& dweight, const Tensor& dbias) {
  timed("layer_norm_backward", [&] { inner_.layer_norm_backward(x, weight, mean, rstd, dy, dx, dweight, dbias); });
}
void ProfilingBackend::rope(const Tensor& x, double theta, bool inverse, const Tensor& y) {
  timed(inverse ? "rope (inverse)" : "rope", [&] { inner_.rope(x, theta, inverse, y); });
}
void ProfilingBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                         const Tensor& out, const Tensor& lse) {
  timed("attention_forward " + dt(q) + " q" + shape_str(q.shape()) + " kv" + shape_str(k.shape()),
        [&] { inner_.attention_forward(q, k, v, scale, out, lse); });
}
void ProfilingBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                          const Tensor& lse, const Tensor& dout, double scale, const Tensor& dq,
                                          const Tensor& dk, const Tensor& dv) {
  timed("attention_backward " + dt(q) + " q" + shape_str(q.shape()) + " kv" + shape_str(k.shape()),
        [&] { inner_.attention_backward(q, k, v, out, lse, dout, scale, dq, dk, dv); });
}
void ProfilingBackend::softmax_forward(const Tensor& x, const Tensor& y) {
  timed("softmax_forward", [&] { inner_.softmax_forward(x, y); });
}
void ProfilingBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  timed("softmax_backward", [&] { inner_.softmax_backward(y, dy, dx); });
}
void ProfilingBackend::glu_forward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& out) {
  timed("glu_forward", [&] { inner_.glu_forward(kind, gate, up, out); });
}
void ProfilingBackend::glu_backward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& dout,
                                    const Tensor& dgate, const Tensor& dup) {
  timed("glu_backward", [&] { inner_.glu_backward(kind, gate, up, dout, dgate, dup); });
}
void ProfilingBackend::activation_mixture_forward(const ActivationDictionary& dictionary, MixtureCoef layout,
                                                  const Tensor& h, const Tensor& coef, const Tensor& out) {
  timed("activation_mixture_forward", [&] { inner_.activation_mixture_forward(dictionary, layout, h, coef, out); });
}
void ProfilingBackend::activation_mixture_backward(const ActivationDictionary& dictionary, MixtureCoef layout,
                                                   const Tensor& h, const Tensor& coef, const Tensor& dout,
                                                   const Tensor& dh, const Tensor& dcoef) {
  timed("activation_mixture_backward",
        [&] { inner_.activation_mixture_backward(dictionary, layout, h, coef, dout, dh, dcoef); });
}
void ProfilingBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                             const Tensor& lse) {
  timed("cross_entropy_forward " + dt(logits), [&] { inner_.cross_entropy_forward(logits, targets, losses, lse); });
}
void ProfilingBackend::cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets,
                                                      const Tensor& losses, const Tensor& lse, double scale,
                                                      const Tensor& dlogits) {
  timed("cross_entropy_forward_backward " + dt(logits),
        [&] { inner_.cross_entropy_forward_backward(logits, targets, losses, lse, scale, dlogits); });
}
void ProfilingBackend::scale_by_scalar(const Tensor& x, const Tensor& factor) {
  timed("scale_by_scalar", [&] { inner_.scale_by_scalar(x, factor); });
}
void ProfilingBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                              const Tensor& dloss, double scale, const Tensor& dlogits) {
  timed("cross_entropy_backward " + dt(logits),
        [&] { inner_.cross_entropy_backward(logits, targets, lse, dloss, scale, dlogits); });
}
void ProfilingBackend::adamw_step(const Tensor& param, const Tensor& grad, double grad_scale, const Tensor& m,
                                  const Tensor& v, double lr, double beta1, double beta2, double eps,
                                  double weight_decay, int64_t step) {
  timed("adamw_step", [&] { inner_.adamw_step(param, grad, grad_scale, m, v, lr, beta1, beta2, eps, weight_decay, step); });
}
void ProfilingBackend::adamw_step_multi(const std::vector<AdamwTensors>& group, double grad_scale, double lr,
                                        double beta1, double beta2, double eps, int64_t step) {
  timed("adamw_step_multi", [&] { inner_.adamw_step_multi(group, grad_scale, lr, beta1, beta2, eps, step); });
}

}  // namespace pt
