// ProfilingBackend: a Backend decorator that times every kernel call of another backend, for
// `pretrain bench --profile`. GEMMs and attention calls are keyed by their shapes, everything else
// by the kernel's name. Two ways of timing, chosen by the inner backend:
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

  void copy(const Tensor& src, const Tensor& dst) override;
  void fill(const Tensor& dst, double value) override;
  void copy_from_host(const void* src, const Tensor& dst) override;
  void copy_to_host(const Tensor& src, void* dst) override;
  void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const Tensor& a,
            const Tensor& b, double beta, const Tensor& c, int64_t batch, int64_t stride_a, int64_t stride_b,
            int64_t stride_c) override;
  void gemm_add(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Tensor& a, const Tensor& b,
                const Tensor& c, const Tensor& d) override;
  void unary(UnaryOp op, const Tensor& x, const Tensor& y) override;
  void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void axpby(double alpha, const Tensor& x, double beta, const Tensor& y) override;
  void affine(const Tensor& x, double scale, double shift, const Tensor& out) override;
  void sum_to(const Tensor& x, const Tensor& out) override;
  double sum_squares(const std::vector<Tensor>& xs) override;
  void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out) override;
  void embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable) override;
  void rms_norm_forward(const Tensor& x, const Tensor& weight, double eps, const Tensor& y,
                        const Tensor& rstd) override;
  void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                         const Tensor& dx, const Tensor& dweight) override;
  void add_rms_norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps,
                            const Tensor& sum, const Tensor& y, const Tensor& rstd) override;
  void rms_norm_backward_add(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                             const Tensor& dresidual, const Tensor& dx, const Tensor& dweight) override;
  void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& y,
                          const Tensor& mean, const Tensor& rstd) override;
  void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                           const Tensor& dy, const Tensor& dx, const Tensor& dweight, const Tensor& dbias) override;
  void rope(const Tensor& x, double theta, bool inverse, const Tensor& y) override;
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, const Tensor& out,
                         const Tensor& lse) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                          const Tensor& dout, double scale, const Tensor& dq, const Tensor& dk,
                          const Tensor& dv) override;
  void softmax_forward(const Tensor& x, const Tensor& y) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) override;
  void glu_forward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& out) override;
  void glu_backward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& dout, const Tensor& dgate,
                    const Tensor& dup) override;
  void activation_mixture_forward(const ActivationDictionary& dictionary, MixtureCoef layout, const Tensor& h,
                                  const Tensor& coef, const Tensor& out) override;
  void activation_mixture_backward(const ActivationDictionary& dictionary, MixtureCoef layout, const Tensor& h,
                                   const Tensor& coef, const Tensor& dout, const Tensor& dh,
                                   const Tensor& dcoef) override;
  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                             const Tensor& lse) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& dloss,
                              double scale, const Tensor& dlogits) override;
  void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                      const Tensor& lse, double scale, const Tensor& dlogits) override;
  void scale_by_scalar(const Tensor& x, const Tensor& factor) override;
  void adamw_step(const Tensor& param, const Tensor& grad, double grad_scale, const Tensor& m, const Tensor& v,
                  double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) override;
  void adamw_step_multi(const std::vector<AdamwTensors>& group, double grad_scale, double lr, double beta1,
                        double beta2, double eps, int64_t step) override;

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
