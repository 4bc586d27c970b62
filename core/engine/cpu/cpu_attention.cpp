// CPU causal attention (reference), one (batch, query head) at a time with GEMMs on strided
// head slices (query head h reads kv head h / (Hq / Hkv)):
//   S = scale * Q K^T,  P = softmax(S masked to j <= t),  lse_t = log sum_j exp(S_tj),  O = P V
// Backward recomputes P from lse (as flash attention does):
//   dP = dO V^T,  delta_t = dO_t . O_t,  dS = P * (dP - delta) * scale
//   dQ = dS K,  dK += dS^T Q,  dV += P^T dO
// The masked upper triangle is computed and discarded: at the sequence lengths the CPU path
// trains, full GEMMs beat triangular loops.
#include <cmath>
#include <vector>

#include "core/engine/cpu/cpu_backend.h"

namespace pt::cpu {

void CpuBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                   const Tensor& out, const Tensor& lse) {
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  const int64_t group = Hq / Hkv;
  dispatch_floating(q.dtype(), "attention", [&](auto tag) {
    using F = decltype(tag);
    std::vector<F> probs(static_cast<size_t>(T * T));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t hk = h / group;
        const F* qh = q.data<F>() + (b * T * Hq + h) * D;
        const F* kh = k.data<F>() + (b * T * Hkv + hk) * D;
        const F* vh = v.data<F>() + (b * T * Hkv + hk) * D;
        F* oh = out.data<F>() + (b * T * Hq + h) * D;
        F* lh = lse.data<F>() + (b * Hq + h) * T;
        blas_gemm<F>(false, true, T, T, D, F(scale), qh, Hq * D, kh, Hkv * D, F(0), probs.data(), T);
        for (int64_t t = 0; t < T; ++t) {
          F* row = probs.data() + t * T;
          F mx = row[0];
          for (int64_t j = 1; j <= t; ++j) mx = std::max(mx, row[j]);
          F sum = 0;
          for (int64_t j = 0; j <= t; ++j) sum += (row[j] = std::exp(row[j] - mx));
          const F inv = F(1) / sum;
          for (int64_t j = 0; j <= t; ++j) row[j] *= inv;
          for (int64_t j = t + 1; j < T; ++j) row[j] = F(0);
          lh[t] = mx + std::log(sum);
        }
        blas_gemm<F>(false, false, T, D, T, F(1), probs.data(), T, vh, Hkv * D, F(0), oh, Hq * D);
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
    std::fill(dk.data<F>(), dk.data<F>() + dk.numel(), F(0));
    std::fill(dv.data<F>(), dv.data<F>() + dv.numel(), F(0));
    std::vector<F> probs(static_cast<size_t>(T * T)), dprobs(static_cast<size_t>(T * T));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t hk = h / group;
        const int64_t q_off = (b * T * Hq + h) * D, kv_off = (b * T * Hkv + hk) * D;
        const F* qh = q.data<F>() + q_off;
        const F* kh = k.data<F>() + kv_off;
        const F* vh = v.data<F>() + kv_off;
        const F* oh = out.data<F>() + q_off;
        const F* gh = dout.data<F>() + q_off;
        const F* lh = lse.data<F>() + (b * Hq + h) * T;
        blas_gemm<F>(false, true, T, T, D, F(scale), qh, Hq * D, kh, Hkv * D, F(0), probs.data(), T);
        blas_gemm<F>(false, true, T, T, D, F(1), gh, Hq * D, vh, Hkv * D, F(0), dprobs.data(), T);
        for (int64_t t = 0; t < T; ++t) {
          F* p = probs.data() + t * T;
          F* dp = dprobs.data() + t * T;
          F delta = 0;
          for (int64_t d = 0; d < D; ++d) delta += gh[t * Hq * D + d] * oh[t * Hq * D + d];
          for (int64_t j = 0; j <= t; ++j) {
            p[j] = std::exp(p[j] - lh[t]);
            dp[j] = p[j] * (dp[j] - delta) * F(scale);
          }
          for (int64_t j = t + 1; j < T; ++j) p[j] = dp[j] = F(0);
        }
        blas_gemm<F>(false, false, T, D, T, F(1), dprobs.data(), T, kh, Hkv * D, F(0), dq.data<F>() + q_off, Hq * D);
        blas_gemm<F>(true, false, T, D, T, F(1), dprobs.data(), T, qh, Hq * D, F(1), dk.data<F>() + kv_off, Hkv * D);
        blas_gemm<F>(true, false, T, D, T, F(1), probs.data(), T, gh, Hq * D, F(1), dv.data<F>() + kv_off, Hkv * D);
      }
  });
}

}  // namespace pt::cpu
