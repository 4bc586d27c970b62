// CPU causal attention (reference). For each (batch, query head, query position t):
//   s_j = scale * q_t . k_j  (j <= t),  lse = log sum_j exp(s_j),  out_t = sum_j exp(s_j - lse) v_j
// Backward recomputes the probabilities from lse (as flash attention does):
//   dp_j = dout_t . v_j,  D = dout_t . out_t,  ds_j = p_j (dp_j - D)
//   dq_t += scale * ds_j k_j,  dk_j += scale * ds_j q_t,  dv_j += p_j dout_t
#include <cmath>
#include <vector>

#include "core/cpu/cpu_backend.h"

namespace pt::cpu {

void CpuBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                   const Tensor& out, const Tensor& lse) {
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  const int64_t group = Hq / Hkv;
  dispatch_floating(q.dtype(), "attention", [&](auto tag) {
    using F = decltype(tag);
    const F* qp = q.data<F>();
    const F* kp = k.data<F>();
    const F* vp = v.data<F>();
    F* op = out.data<F>();
    F* lp = lse.data<F>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t hk = h / group;
        std::vector<F> scores(static_cast<size_t>(T));
        for (int64_t t = 0; t < T; ++t) {
          const F* qr = qp + ((b * T + t) * Hq + h) * D;
          F mx = -INFINITY;
          for (int64_t j = 0; j <= t; ++j) {
            const F* kr = kp + ((b * T + j) * Hkv + hk) * D;
            F s = 0;
            for (int64_t d = 0; d < D; ++d) s += qr[d] * kr[d];
            s *= F(scale);
            scores[size_t(j)] = s;
            mx = std::max(mx, s);
          }
          F sum = 0;
          for (int64_t j = 0; j <= t; ++j) sum += (scores[size_t(j)] = std::exp(scores[size_t(j)] - mx));
          F* orow = op + ((b * T + t) * Hq + h) * D;
          std::fill(orow, orow + D, F(0));
          for (int64_t j = 0; j <= t; ++j) {
            const F p = scores[size_t(j)] / sum;
            const F* vr = vp + ((b * T + j) * Hkv + hk) * D;
            for (int64_t d = 0; d < D; ++d) orow[d] += p * vr[d];
          }
          lp[(b * Hq + h) * T + t] = mx + std::log(sum);
        }
      }
  });
}

void CpuBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                    const Tensor& lse, const Tensor& dout, double scale, const Tensor& dq,
                                    const Tensor& dk, const Tensor& dv) {
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  const int64_t group = Hq / Hkv;
  dispatch_floating(q.dtype(), "attention_backward", [&](auto tag) {
    using F = decltype(tag);
    const F* qp = q.data<F>();
    const F* kp = k.data<F>();
    const F* vp = v.data<F>();
    const F* op = out.data<F>();
    const F* lp = lse.data<F>();
    const F* gp = dout.data<F>();
    F* dqp = dq.data<F>();
    F* dkp = dk.data<F>();
    F* dvp = dv.data<F>();
    std::fill(dqp, dqp + dq.numel(), F(0));
    std::fill(dkp, dkp + dk.numel(), F(0));
    std::fill(dvp, dvp + dv.numel(), F(0));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t hk = 0; hk < Hkv; ++hk)
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
          for (int64_t t = 0; t < T; ++t) {
            const F* qr = qp + ((b * T + t) * Hq + h) * D;
            const F* orow = op + ((b * T + t) * Hq + h) * D;
            const F* gr = gp + ((b * T + t) * Hq + h) * D;
            F* dqr = dqp + ((b * T + t) * Hq + h) * D;
            const F l = lp[(b * Hq + h) * T + t];
            F delta = 0;
            for (int64_t d = 0; d < D; ++d) delta += gr[d] * orow[d];
            for (int64_t j = 0; j <= t; ++j) {
              const F* kr = kp + ((b * T + j) * Hkv + hk) * D;
              const F* vr = vp + ((b * T + j) * Hkv + hk) * D;
              F s = 0, dp = 0;
              for (int64_t d = 0; d < D; ++d) {
                s += qr[d] * kr[d];
                dp += gr[d] * vr[d];
              }
              const F p = std::exp(s * F(scale) - l);
              const F ds = p * (dp - delta) * F(scale);
              F* dkr = dkp + ((b * T + j) * Hkv + hk) * D;
              F* dvr = dvp + ((b * T + j) * Hkv + hk) * D;
              for (int64_t d = 0; d < D; ++d) {
                dqr[d] += ds * kr[d];
                dkr[d] += ds * qr[d];
                dvr[d] += p * gr[d];
              }
            }
          }
  });
}

}  // namespace pt::cpu
