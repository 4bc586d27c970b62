// CPU neural-network kernels: GEMM (OpenBLAS), embedding, RMSNorm, LayerNorm, RoPE, softmax,
// gated linear units and the fused cross-entropy.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "core/engine/activation_math.h"
#include "core/engine/cpu/cpu_backend.h"

namespace pt::cpu {

template <class T>
void blas_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
  }
}
template void blas_gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                               int64_t, float, float*, int64_t);
template void blas_gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                                int64_t, double, double*, int64_t);

void CpuBackend::gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const Tensor& a,
                      const Tensor& b, double beta, const Tensor& c, int64_t batch, int64_t stride_a,
                      int64_t stride_b, int64_t stride_c) {
  if (m == 0 || n == 0) return;
  dispatch_floating(c.dtype(), "gemm", [&](auto t) {
    using T = decltype(t);
    // Leading dimensions at least 1: with k == 0 BLAS rejects lda/ldb = 0 (and would leave C as it
    // was) instead of computing C = beta * C.
    const int64_t lda = std::max<int64_t>(1, trans_a ? m : k), ldb = std::max<int64_t>(1, trans_b ? k : n);
    for (int64_t i = 0; i < batch; ++i)
      blas_gemm<T>(trans_a, trans_b, m, n, k, T(alpha), a.data<T>() + i * stride_a, lda, b.data<T>() + i * stride_b,
                   ldb, T(beta), c.data<T>() + i * stride_c, n);
  });
}

void CpuBackend::embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out) {
  const int64_t n = ids.numel(), vocab = table.size(0), dim = table.size(1);
  dispatch_floating(table.dtype(), "embedding", [&](auto t) {
    using T = decltype(t);
    const T* tp = table.data<T>();
    T* op = out.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = read_id(ids, i);
      if (id < 0 || id >= vocab)
        throw std::out_of_range("embedding: token id " + std::to_string(id) + " at position " + std::to_string(i) +
                                " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
      std::copy(tp + id * dim, tp + (id + 1) * dim, op + i * dim);
    }
  });
}

void CpuBackend::embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable) {
  const int64_t n = ids.numel(), dim = dtable.size(1);
  dispatch_floating(dtable.dtype(), "embedding_backward", [&](auto t) {
    using T = decltype(t);
    const T* gp = dout.data<T>();
    T* dp = dtable.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      T* row = dp + read_id(ids, i) * dim;
      const T* g = gp + i * dim;
      for (int64_t j = 0; j < dim; ++j) row[j] += g[j];
    }
  });
}

void CpuBackend::rms_norm_forward(const Tensor& x, const Tensor& weight, double eps, const Tensor& y,
                                  const Tensor& rstd) {
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  dispatch_floating(x.dtype(), "rms_norm", [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data<T>();
    const T* w = weight.defined() ? weight.data<T>() : nullptr;
    T* yp = y.data<T>();
    T* rp = rstd.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * dim;
      T* yr = yp + r * dim;
      T ss = 0;
      for (int64_t j = 0; j < dim; ++j) ss += xr[j] * xr[j];
      const T inv = T(1) / std::sqrt(ss / T(dim) + T(eps));
      rp[r] = inv;
      for (int64_t j = 0; j < dim; ++j) yr[j] = xr[j] * inv * (w ? w[j] : T(1));
    }
  });
}

void CpuBackend::rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                                   const Tensor& dx, const Tensor& dweight) {
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  dispatch_floating(x.dtype(), "rms_norm_backward", [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data<T>();
    const T* w = weight.defined() ? weight.data<T>() : nullptr;
    const T* rp = rstd.data<T>();
    const T* gp = dy.data<T>();
    T* dxp = dx.data<T>();
    // x_hat = x * rstd; dx = rstd * (g*w - x_hat * mean(g*w*x_hat))
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * dim;
      const T* gr = gp + r * dim;
      const T inv = rp[r];
      T dot = 0;
      for (int64_t j = 0; j < dim; ++j) dot += gr[j] * (w ? w[j] : T(1)) * xr[j] * inv;
      const T mean_dot = dot / T(dim);
      T* dr = dxp + r * dim;
      for (int64_t j = 0; j < dim; ++j) dr[j] = inv * (gr[j] * (w ? w[j] : T(1)) - xr[j] * inv * mean_dot);
    }
    if (dweight.defined()) {
      T* dw = dweight.data<T>();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < dim; ++j) dw[j] += gp[r * dim + j] * xp[r * dim + j] * rp[r];
    }
  });
}

void CpuBackend::layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                                    const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  dispatch_floating(x.dtype(), "layer_norm", [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data<T>();
    const T* w = weight.defined() ? weight.data<T>() : nullptr;
    const T* b = bias.defined() ? bias.data<T>() : nullptr;
    T* yp = y.data<T>();
    T* mp = mean.data<T>();
    T* rp = rstd.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * dim;
      T mu = 0;
      for (int64_t j = 0; j < dim; ++j) mu += xr[j];
      mu /= T(dim);
      T var = 0;
      for (int64_t j = 0; j < dim; ++j) var += (xr[j] - mu) * (xr[j] - mu);
      const T inv = T(1) / std::sqrt(var / T(dim) + T(eps));
      mp[r] = mu;
      rp[r] = inv;
      T* yr = yp + r * dim;
      for (int64_t j = 0; j < dim; ++j) yr[j] = (xr[j] - mu) * inv * (w ? w[j] : T(1)) + (b ? b[j] : T(0));
    }
  });
}

void CpuBackend::layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                     const Tensor& dy, const Tensor& dx, const Tensor& dweight,
                                     const Tensor& dbias) {
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  dispatch_floating(x.dtype(), "layer_norm_backward", [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data<T>();
    const T* w = weight.defined() ? weight.data<T>() : nullptr;
    const T* mp = mean.data<T>();
    const T* rp = rstd.data<T>();
    const T* gp = dy.data<T>();
    T* dxp = dx.data<T>();
    // dx = rstd * (gw - mean(gw) - x_hat * mean(gw * x_hat)), gw = g * w
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * dim;
      const T* gr = gp + r * dim;
      T sum_gw = 0, sum_gw_xhat = 0;
      for (int64_t j = 0; j < dim; ++j) {
        const T gw = gr[j] * (w ? w[j] : T(1));
        sum_gw += gw;
        sum_gw_xhat += gw * (xr[j] - mp[r]) * rp[r];
      }
      const T mean_gw = sum_gw / T(dim), mean_gw_xhat = sum_gw_xhat / T(dim);
      T* dr = dxp + r * dim;
      for (int64_t j = 0; j < dim; ++j) {
        const T xhat = (xr[j] - mp[r]) * rp[r];
        dr[j] = rp[r] * (gr[j] * (w ? w[j] : T(1)) - mean_gw - xhat * mean_gw_xhat);
      }
    }
    T* dw = dweight.defined() ? dweight.data<T>() : nullptr;
    T* db = dbias.defined() ? dbias.data<T>() : nullptr;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < dim; ++j) {
        if (dw) dw[j] += gp[r * dim + j] * (xp[r * dim + j] - mp[r]) * rp[r];
        if (db) db[j] += gp[r * dim + j];
      }
  });
}

void CpuBackend::rope(const Tensor& x, double theta, bool inverse, const Tensor& y) {
  const int64_t batch = x.size(0), seq = x.size(1), heads = x.size(2), dim = x.size(3), half = dim / 2;
  dispatch_floating(x.dtype(), "rope", [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    std::vector<T> cos_table(static_cast<size_t>(seq * half)), sin_table(static_cast<size_t>(seq * half));
    for (int64_t p = 0; p < seq; ++p)
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(p) * std::pow(theta, -2.0 * static_cast<double>(i) / double(dim));
        cos_table[size_t(p * half + i)] = T(std::cos(angle));
        sin_table[size_t(p * half + i)] = T(std::sin(angle)) * (inverse ? T(-1) : T(1));
      }
    for (int64_t bt = 0; bt < batch * seq; ++bt) {
      const int64_t p = bt % seq;
      for (int64_t h = 0; h < heads; ++h) {
        const T* xr = xp + (bt * heads + h) * dim;
        T* yr = yp + (bt * heads + h) * dim;
        for (int64_t i = 0; i < half; ++i) {
          const T c = cos_table[size_t(p * half + i)], s = sin_table[size_t(p * half + i)];
          const T a = xr[i], b = xr[i + half];
          yr[i] = a * c - b * s;
          yr[i + half] = a * s + b * c;
        }
      }
    }
  });
}

void CpuBackend::softmax_forward(const Tensor& x, const Tensor& y) {
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  dispatch_floating(x.dtype(), "softmax", [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * cols;
      T* yr = yp + r * cols;
      T mx = xr[0];
      for (int64_t j = 1; j < cols; ++j) mx = std::max(mx, xr[j]);
      T sum = 0;
      for (int64_t j = 0; j < cols; ++j) sum += (yr[j] = std::exp(xr[j] - mx));
      for (int64_t j = 0; j < cols; ++j) yr[j] /= sum;
    }
  });
}

void CpuBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  const int64_t cols = y.size(-1), rows = y.numel() / cols;
  dispatch_floating(y.dtype(), "softmax_backward", [&](auto t) {
    using T = decltype(t);
    const T* yp = y.data<T>();
    const T* gp = dy.data<T>();
    T* dp = dx.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      T dot = 0;
      for (int64_t j = 0; j < cols; ++j) dot += yp[r * cols + j] * gp[r * cols + j];
      for (int64_t j = 0; j < cols; ++j) dp[r * cols + j] = yp[r * cols + j] * (gp[r * cols + j] - dot);
    }
  });
}

void CpuBackend::glu_forward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& out) {
  const UnaryOp op = act::glu_activation(kind);
  dispatch_floating(gate.dtype(), "glu", [&](auto t) {
    using T = decltype(t);
    const T* g = gate.data<T>();
    const T* u = up.data<T>();
    T* o = out.data<T>();
    for (int64_t i = 0, n = gate.numel(); i < n; ++i) o[i] = act::forward(op, g[i]) * u[i];
  });
}

void CpuBackend::glu_backward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& dout,
                              const Tensor& dgate, const Tensor& dup) {
  const UnaryOp op = act::glu_activation(kind);
  dispatch_floating(gate.dtype(), "glu_backward", [&](auto t) {
    using T = decltype(t);
    const T* g = gate.data<T>();
    const T* u = up.data<T>();
    const T* d = dout.data<T>();
    T* dg = dgate.data<T>();
    T* du = dup.data<T>();
    for (int64_t i = 0, n = gate.numel(); i < n; ++i) {
      T a, da;
      act::value_and_derivative(op, g[i], a, da);
      du[i] = d[i] * a;
      dg[i] = d[i] * u[i] * da;
    }
  });
}

namespace {
// Index of coefficient c(n, k, f) in its tensor.
inline int64_t coef_index(MixtureCoef layout, int64_t n, int64_t k, int64_t f, int64_t K, int64_t F) {
  switch (layout) {
    case MixtureCoef::per_row: return n * K + k;
    case MixtureCoef::shared: return k;
    case MixtureCoef::per_channel: return k * F + f;
  }
  return 0;
}
}  // namespace

void CpuBackend::activation_mixture_forward(const ActivationDictionary& dictionary, MixtureCoef layout,
                                            const Tensor& h, const Tensor& coef, const Tensor& out) {
  const int64_t F = h.size(-1), N = h.numel() / F, K = dictionary.size;
  dispatch_floating(h.dtype(), "activation_mixture", [&](auto t) {
    using T = decltype(t);
    const T* hp = h.data<T>();
    const T* cp = coef.data<T>();
    T* op = out.data<T>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t f = 0; f < F; ++f) {
        const T x = hp[n * F + f];
        T acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += cp[coef_index(layout, n, k, f, K, F)] * act::forward(dictionary.ops[k], x);
        op[n * F + f] = acc;
      }
  });
}

void CpuBackend::activation_mixture_backward(const ActivationDictionary& dictionary, MixtureCoef layout,
                                             const Tensor& h, const Tensor& coef, const Tensor& dout,
                                             const Tensor& dh, const Tensor& dcoef) {
  const int64_t F = h.size(-1), N = h.numel() / F, K = dictionary.size;
  dispatch_floating(h.dtype(), "activation_mixture_backward", [&](auto t) {
    using T = decltype(t);
    const T* hp = h.data<T>();
    const T* cp = coef.data<T>();
    const T* gp = dout.data<T>();
    T* dhp = dh.data<T>();
    std::vector<double> dc(static_cast<size_t>(dcoef.numel()), 0.0);  // summed in a fixed order
    for (int64_t n = 0; n < N; ++n)
      for (int64_t f = 0; f < F; ++f) {
        const T x = hp[n * F + f], g = gp[n * F + f];
        T dx = 0;
        for (int64_t k = 0; k < K; ++k) {
          T y, dy;
          act::value_and_derivative(dictionary.ops[k], x, y, dy);
          const int64_t ci = coef_index(layout, n, k, f, K, F);
          dx += cp[ci] * dy;
          dc[size_t(ci)] += static_cast<double>(g * y);
        }
        dhp[n * F + f] = g * dx;
      }
    T* dcp = dcoef.data<T>();
    for (size_t i = 0; i < dc.size(); ++i) dcp[i] = static_cast<T>(dc[i]);
  });
}

void CpuBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                       const Tensor& lse) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t target = read_id(targets, r);
    if (target != -1 && (target < 0 || target >= vocab))
      throw std::out_of_range("cross_entropy: target " + std::to_string(target) + " at row " + std::to_string(r) +
                              " is outside [0, " + std::to_string(vocab) + ")");
  }
  dispatch_floating(logits.dtype(), "cross_entropy", [&](auto t) {
    using T = decltype(t);
    const T* lp = logits.data<T>();
    T* loss = losses.data<T>();
    T* lsep = lse.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = lp + r * vocab;
      T mx = row[0];
      for (int64_t j = 1; j < vocab; ++j) mx = std::max(mx, row[j]);
      T sum = 0;
      for (int64_t j = 0; j < vocab; ++j) sum += std::exp(row[j] - mx);
      const T l = mx + std::log(sum);
      lsep[r] = l;
      const int64_t target = read_id(targets, r);
      loss[r] = target == -1 ? T(0) : l - row[target];
    }
  });
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                        const Tensor& dloss, double scale, const Tensor& dlogits) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  dispatch_floating(logits.dtype(), "cross_entropy_backward", [&](auto t) {
    using T = decltype(t);
    const T* lp = logits.data<T>();
    const T* lsep = lse.data<T>();
    T* dp = dlogits.data<T>();
    const T g = static_cast<T>(dloss.item() * scale);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t target = read_id(targets, r);
      T* drow = dp + r * vocab;
      if (target == -1) {
        std::fill(drow, drow + vocab, T(0));
        continue;
      }
      const T* row = lp + r * vocab;
      for (int64_t j = 0; j < vocab; ++j) drow[j] = g * std::exp(row[j] - lsep[r]);
      drow[target] -= g;
    }
  });
}

}  // namespace pt::cpu
