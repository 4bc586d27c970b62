// CPU elementwise kernels: copies/casts over arbitrary strides, unary/binary maps with
// broadcasting, reductions, and the AdamW update.
#include <array>
#include <cmath>
#include <cstring>

#include "core/engine/activation_math.h"
#include "core/engine/cpu/cpu_backend.h"

namespace pt::cpu {
namespace {

// Visits every element of `shape` in row-major order, in runs along the last dim:
// fn(offsets, count, inner_strides) where offsets[i] is operand i's element offset of the run.
template <size_t N, class Fn>
void strided_runs(const Shape& shape, const std::array<Shape, N>& strides, Fn&& fn) {
  const size_t nd = shape.size();
  std::array<int64_t, N> offsets{};
  std::array<int64_t, N> inner{};
  if (shape_numel(shape) == 0) return;
  if (nd == 0) {
    fn(offsets, int64_t{1}, inner);
    return;
  }
  for (size_t i = 0; i < N; ++i) inner[i] = strides[i][nd - 1];
  const int64_t run = shape[nd - 1];
  const int64_t runs = shape_numel(shape) / run;
  std::vector<int64_t> index(nd - 1, 0);
  for (int64_t r = 0; r < runs; ++r) {
    fn(offsets, run, inner);
    for (size_t d = nd - 1; d-- > 0;) {
      ++index[d];
      for (size_t i = 0; i < N; ++i) offsets[i] += strides[i][d];
      if (index[d] < shape[d]) break;
      for (size_t i = 0; i < N; ++i) offsets[i] -= strides[i][d] * shape[d];
      index[d] = 0;
    }
  }
}

template <class To, class From>
inline To convert(From v) {
  if constexpr (std::is_same_v<From, bf16>) {
    return convert<To>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, bf16>) {
    return bf16(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

template <class F>
void dispatch_any(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::bf16: f(bf16{}); return;
    case DType::i32: f(int32_t{}); return;
    case DType::i64: f(int64_t{}); return;
  }
}

void check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape())
    throw std::invalid_argument(std::string(op) + ": shapes " + shape_str(a.shape()) + " and " +
                                shape_str(b.shape()) + " differ");
}

}  // namespace

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  check_same_shape("copy", src, dst);
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    if (src.raw_data() != dst.raw_data()) std::memcpy(dst.raw_data(), src.raw_data(), src.nbytes());
    return;
  }
  dispatch_any(src.dtype(), [&](auto s) {
    using S = decltype(s);
    dispatch_any(dst.dtype(), [&](auto d) {
      using D = decltype(d);
      const S* sp = src.data<S>();
      D* dp = dst.data<D>();
      strided_runs<2>(src.shape(), {src.strides(), dst.strides()}, [&](auto off, int64_t n, auto inner) {
        for (int64_t i = 0; i < n; ++i) dp[off[1] + i * inner[1]] = convert<D>(sp[off[0] + i * inner[0]]);
      });
    });
  });
}

void CpuBackend::fill(const Tensor& dst, double value) {
  dispatch_any(dst.dtype(), [&](auto d) {
    using D = decltype(d);
    const D v = convert<D>(value);
    D* dp = dst.data<D>();
    strided_runs<1>(dst.shape(), {dst.strides()}, [&](auto off, int64_t n, auto inner) {
      for (int64_t i = 0; i < n; ++i) dp[off[0] + i * inner[0]] = v;
    });
  });
}

void CpuBackend::copy_from_host(const void* src, const Tensor& dst) {
  if (!dst.is_contiguous()) throw std::invalid_argument("copy_from_host into a non-contiguous tensor");
  if (dst.nbytes()) std::memcpy(dst.raw_data(), src, dst.nbytes());
}

void CpuBackend::copy_to_host(const Tensor& src, void* dst) {
  if (!src.is_contiguous()) throw std::invalid_argument("copy_to_host from a non-contiguous tensor");
  if (src.nbytes()) std::memcpy(dst, src.raw_data(), src.nbytes());
}

void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& y) {
  check_same_shape(unary_op_name(op), x, y);
  dispatch_floating(x.dtype(), unary_op_name(op), [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    strided_runs<2>(x.shape(), {x.strides(), y.strides()}, [&](auto off, int64_t n, auto inner) {
      for (int64_t i = 0; i < n; ++i) yp[off[1] + i * inner[1]] = act::forward(op, xp[off[0] + i * inner[0]]);
    });
  });
}

void CpuBackend::unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx) {
  dispatch_floating(x.dtype(), unary_op_name(op), [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data<T>();
    const T* yp = y.data<T>();
    const T* dyp = dy.data<T>();
    T* dxp = dx.data<T>();
    const int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i) dxp[i] = dyp[i] * act::derivative(op, xp[i], yp[i]);
  });
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_floating(out.dtype(), "binary", [&](auto t) {
    using T = decltype(t);
    const T* ap = a.data<T>();
    const T* bp = b.data<T>();
    T* op_ = out.data<T>();
    strided_runs<3>(out.shape(), {a.strides(), b.strides(), out.strides()}, [&](auto off, int64_t n, auto inner) {
      const T* x = ap + off[0];
      const T* y = bp + off[1];
      T* z = op_ + off[2];
      const int64_t sx = inner[0], sy = inner[1], sz = inner[2];
      switch (op) {
        case BinaryOp::add: for (int64_t i = 0; i < n; ++i) z[i * sz] = x[i * sx] + y[i * sy]; break;
        case BinaryOp::sub: for (int64_t i = 0; i < n; ++i) z[i * sz] = x[i * sx] - y[i * sy]; break;
        case BinaryOp::mul: for (int64_t i = 0; i < n; ++i) z[i * sz] = x[i * sx] * y[i * sy]; break;
        case BinaryOp::div: for (int64_t i = 0; i < n; ++i) z[i * sz] = x[i * sx] / y[i * sy]; break;
      }
    });
  });
}

void CpuBackend::axpby(double alpha, const Tensor& x, double beta, const Tensor& y) {
  check_same_shape("axpby", x, y);
  dispatch_floating(y.dtype(), "axpby", [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    const T a = static_cast<T>(alpha), b = static_cast<T>(beta);
    const int64_t n = y.numel();
    if (beta == 1.0 && alpha == 1.0) {
      for (int64_t i = 0; i < n; ++i) yp[i] += xp[i];
    } else {
      for (int64_t i = 0; i < n; ++i) yp[i] = a * xp[i] + b * yp[i];
    }
  });
}

void CpuBackend::affine(const Tensor& x, double scale, double shift, const Tensor& out) {
  check_same_shape("affine", x, out);
  dispatch_floating(x.dtype(), "affine", [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data<T>();
    T* yp = out.data<T>();
    const T s = static_cast<T>(scale), c = static_cast<T>(shift);
    for (int64_t i = 0, n = x.numel(); i < n; ++i) yp[i] = xp[i] * s + c;
  });
}

void CpuBackend::sum_to(const Tensor& x, const Tensor& out) {
  if (out.ndim() != x.ndim())
    throw std::invalid_argument("sum_to: " + shape_str(x.shape()) + " to " + shape_str(out.shape()));
  // Accumulate in a double buffer so the sum is exact to the output dtype's precision.
  std::vector<double> acc(static_cast<size_t>(out.numel()), 0.0);
  Shape out_strides = contiguous_strides(out.shape());
  for (size_t d = 0; d < out_strides.size(); ++d)
    if (out.shape()[d] == 1 && x.shape()[d] != 1) out_strides[d] = 0;
  dispatch_floating(x.dtype(), "sum_to", [&](auto t) {
    using T = decltype(t);
    const T* xp = x.data<T>();
    strided_runs<2>(x.shape(), {x.strides(), out_strides}, [&](auto off, int64_t n, auto inner) {
      for (int64_t i = 0; i < n; ++i) acc[static_cast<size_t>(off[1] + i * inner[1])] += xp[off[0] + i * inner[0]];
    });
    T* op_ = out.data<T>();
    for (size_t i = 0; i < acc.size(); ++i) op_[i] = static_cast<T>(acc[i]);
  });
}

double CpuBackend::sum_squares(const std::vector<Tensor>& xs) {
  double total = 0.0;
  for (const Tensor& x : xs)
    dispatch_floating(x.dtype(), "sum_squares", [&](auto t) {
      using T = decltype(t);
      const T* xp = x.data<T>();
      for (int64_t i = 0, n = x.numel(); i < n; ++i) total += static_cast<double>(xp[i]) * xp[i];
    });
  return total;
}

void CpuBackend::adamw_step(const Tensor& param, const Tensor& grad, double grad_scale, const Tensor& m,
                            const Tensor& v, double lr, double beta1, double beta2, double eps, double weight_decay,
                            int64_t step) {
  dispatch_floating(param.dtype(), "adamw_step", [&](auto t) {
    using T = decltype(t);
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* mp = m.data<T>();
    T* vp = v.data<T>();
    const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
    const T b1 = T(beta1), b2 = T(beta2), gs = T(grad_scale);
    const T step_size = T(lr / bc1), inv_sqrt_bc2 = T(1.0 / std::sqrt(bc2)), decay = T(lr * weight_decay);
    const T e = T(eps);
    for (int64_t i = 0, n = param.numel(); i < n; ++i) {
      const T gi = g[i] * gs;
      mp[i] = b1 * mp[i] + (T(1) - b1) * gi;
      vp[i] = b2 * vp[i] + (T(1) - b2) * gi * gi;
      const T denom = std::sqrt(vp[i]) * inv_sqrt_bc2 + e;
      p[i] -= step_size * mp[i] / denom + decay * p[i];
    }
  });
}

}  // namespace pt::cpu
