// Elementwise kernels: strided/broadcast copy with dtype casts, fill, unary maps and their
// derivatives, broadcasting binary ops, axpby, affine and the gated linear units.
//
// Strided operands (views with any strides, zero strides for broadcast) go through
// StridedMeta: the host merges contiguous dims, the kernel turns a linear index into per-operand
// offsets. Dense operands (unary and binary whose operands merge to one dense dim, axpby, affine,
// glu, the backwards) go through one vectorised map kernel: 128-bit loads/stores when every
// pointer is 16-byte aligned. Math is in fp32 for f32/bf16 (fp64 for f64) with the scalar
// formulas of core/engine/activation_math.h, as on the CPU.
#include "core/engine/activation_math.h"
#include "cuda/common.cuh"

namespace pt::cuda {
namespace {

void check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape())
    throw std::invalid_argument(std::string(op) + ": shapes " + shape_str(a.shape()) + " and " +
                                shape_str(b.shape()) + " differ");
}

// ---------------------------------------------------------------- copy / fill
// dst[off1(i)] = cast(src[off0(i)]) over the shared shape.
template <class S, class D>
__global__ void copy_kernel(StridedMeta<2> meta, int64_t n, const S* src, D* dst) {
  PT_GRID_STRIDE(i, n) {
    if (meta.contiguous) {
      dst[i] = cvt<D>(src[i]);
    } else {
      int64_t off[2];
      strided_offsets(meta, i, off);
      dst[off[1]] = cvt<D>(src[off[0]]);
    }
  }
}

// dst[off(i)] = value (converted like the CPU: double -> D, via float for bf16).
template <class D>
__global__ void fill_kernel(StridedMeta<1> meta, int64_t n, double value, D* dst) {
  const D v = cvt<D>(value);
  PT_GRID_STRIDE(i, n) {
    if (meta.contiguous) {
      dst[i] = v;
    } else {
      int64_t off[1];
      strided_offsets(meta, i, off);
      dst[off[0]] = v;
    }
  }
}

// ---------------------------------------------------------------- unary / binary
// y[off1(i)] = f(x[off0(i)])
template <class T>
__global__ void unary_kernel(StridedMeta<2> meta, int64_t n, UnaryOp op, const T* x, T* y) {
  using A = acc_t<T>;
  PT_GRID_STRIDE(i, n) {
    int64_t off[2] = {i, i};
    if (!meta.contiguous) strided_offsets(meta, i, off);
    y[off[1]] = cvt<T>(act::forward<A>(op, cvt<A>(x[off[0]])));
  }
}

// out[off2(i)] = a[off0(i)] (op) b[off1(i)]; zero strides broadcast.
template <class T>
__global__ void binary_kernel(StridedMeta<3> meta, int64_t n, BinaryOp op, const T* a, const T* b, T* out) {
  using A = acc_t<T>;
  PT_GRID_STRIDE(i, n) {
    int64_t off[3] = {i, i, i};
    if (!meta.contiguous) strided_offsets(meta, i, off);
    const A x = cvt<A>(a[off[0]]), y = cvt<A>(b[off[1]]);
    A z;
    switch (op) {
      case BinaryOp::add: z = x + y; break;
      case BinaryOp::sub: z = x - y; break;
      case BinaryOp::mul: z = x * y; break;
      default: z = x / y; break;
    }
    out[off[2]] = cvt<T>(z);
  }
}

// ---------------------------------------------------------------- contiguous maps
// Dense maps over NI inputs and NO outputs of n elements: (out_0..)[i] = f(in_0[i], ..). 128-bit
// packs when `vec` (every pointer 16-byte aligned; the n % P tail is scalar). f is called on
// T values as `f(const T (&x)[NI], T (&y)[NO])`. Outputs may alias inputs (same index only).
template <class T, int NI, int NO>
struct MapPtrs {
  const T* in[NI];
  T* out[NO];
};

template <class T, int NI, int NO, class F>
__global__ void map_kernel(int64_t n, bool vec, MapPtrs<T, NI, NO> p, F f) {
  constexpr int P = Pack<T>::size;
  const int64_t nvec = vec ? n / P : 0;
  PT_GRID_STRIDE(i, nvec) {
    Pack<T> pin[NI], pout[NO];
#pragma unroll
    for (int k = 0; k < NI; ++k) pin[k] = reinterpret_cast<const Pack<T>*>(p.in[k])[i];
#pragma unroll
    for (int j = 0; j < P; ++j) {
      T x[NI], y[NO];
#pragma unroll
      for (int k = 0; k < NI; ++k) x[k] = pin[k].v[j];
      f(x, y);
#pragma unroll
      for (int k = 0; k < NO; ++k) pout[k].v[j] = y[k];
    }
#pragma unroll
    for (int k = 0; k < NO; ++k) reinterpret_cast<Pack<T>*>(p.out[k])[i] = pout[k];
  }
  PT_GRID_STRIDE(i, n - nvec * P) {
    const int64_t e = nvec * P + i;
    T x[NI], y[NO];
#pragma unroll
    for (int k = 0; k < NI; ++k) x[k] = p.in[k][e];
    f(x, y);
#pragma unroll
    for (int k = 0; k < NO; ++k) p.out[k][e] = y[k];
  }
}

template <class T, int NI, int NO, class F>
void launch_map(cudaStream_t stream, int64_t n, MapPtrs<T, NI, NO> p, F f) {
  if (n == 0) return;
  bool vec = true;
  for (int k = 0; k < NI; ++k) vec = vec && aligned16(p.in[k]);
  for (int k = 0; k < NO; ++k) vec = vec && aligned16(p.out[k]);
  map_kernel<T, NI, NO, F><<<grid_for(vec ? n / Pack<T>::size + 1 : n), kThreads, 0, stream>>>(n, vec, p, f);
  CUDA_CHECK_LAUNCH();
}

// Two-input, one-output form: out[i] = f(a[i], b[i]) with f(T, T) -> T.
template <class F>
struct Binary2 {
  F f;
  template <class T>
  __device__ void operator()(const T (&x)[2], T (&y)[1]) const {
    y[0] = f(x[0], x[1]);
  }
};
template <class T, class F>
void launch_map2(cudaStream_t stream, int64_t n, const T* a, const T* b, T* out, F f) {
  launch_map(stream, n, MapPtrs<T, 2, 1>{{a, b}, {out}}, Binary2<F>{f});
}

// y = alpha * x + beta * y
template <class T>
struct AxpbyFn {
  acc_t<T> alpha, beta;
  __device__ T operator()(T x, T y) const { return cvt<T>(alpha * cvt<acc_t<T>>(x) + beta * cvt<acc_t<T>>(y)); }
};
template <class T>
struct AddFn {
  __device__ T operator()(T x, T y) const { return cvt<T>(cvt<acc_t<T>>(y) + cvt<acc_t<T>>(x)); }
};
// out = x * scale + shift
template <class T>
struct AffineFn {
  acc_t<T> scale, shift;
  __device__ T operator()(T x, T) const { return cvt<T>(cvt<acc_t<T>>(x) * scale + shift); }
};
// out = act(gate) * up
template <class T>
struct GluFn {
  UnaryOp op;
  __device__ T operator()(T g, T u) const {
    using A = acc_t<T>;
    return cvt<T>(act::forward<A>(op, cvt<A>(g)) * cvt<A>(u));
  }
};

// out = a (op) b
template <class T>
struct BinaryFn {
  BinaryOp op;
  __device__ T operator()(T a, T b) const {
    using A = acc_t<T>;
    const A x = cvt<A>(a), y = cvt<A>(b);
    switch (op) {
      case BinaryOp::add: return cvt<T>(x + y);
      case BinaryOp::sub: return cvt<T>(x - y);
      case BinaryOp::mul: return cvt<T>(x * y);
      default: return cvt<T>(x / y);
    }
  }
};
// y = f(x) (the second operand is ignored)
template <class T>
struct UnaryFn {
  UnaryOp op;
  __device__ T operator()(T x, T) const { return cvt<T>(act::forward<acc_t<T>>(op, cvt<acc_t<T>>(x))); }
};

// dx = dy * f'(x, y); inputs (x, y, dy), output dx
template <class T>
struct UnaryBackwardFn {
  UnaryOp op;
  __device__ void operator()(const T (&in)[3], T (&out)[1]) const {
    using A = acc_t<T>;
    out[0] = cvt<T>(cvt<A>(in[2]) * act::derivative<A>(op, cvt<A>(in[0]), cvt<A>(in[1])));
  }
};

// a = act(gate); dup = dout * a; dgate = dout * up * act'(gate). inputs (gate, up, dout), outputs (dgate, dup)
template <class T>
struct GluBackwardFn {
  UnaryOp op;
  __device__ void operator()(const T (&in)[3], T (&out)[2]) const {
    using A = acc_t<T>;
    const A g = cvt<A>(in[0]), u = cvt<A>(in[1]), d = cvt<A>(in[2]);
    A a, da;
    act::value_and_derivative<A>(op, g, a, da);
    out[0] = cvt<T>(d * u * da);
    out[1] = cvt<T>(d * a);
  }
};

}  // namespace

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  check_same_shape("copy", src, dst);
  const int64_t n = src.numel();
  if (n == 0) return;
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    if (src.raw_data() != dst.raw_data())
      CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.nbytes(), cudaMemcpyDeviceToDevice, stream_));
    return;
  }
  const auto meta = make_meta<2>(src.shape(), {&src.strides(), &dst.strides()}, "copy");
  dispatch_any(src.dtype(), [&](auto s) {
    using S = decltype(s);
    dispatch_any(dst.dtype(), [&](auto d) {
      using D = decltype(d);
      copy_kernel<S, D><<<grid_for(n), kThreads, 0, stream_>>>(meta, n, ptr<S>(src), ptr<D>(dst));
      CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::fill(const Tensor& dst, double value) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  if (value == 0.0 && !std::signbit(value) && dst.is_contiguous()) {
    CUDA_CHECK(cudaMemsetAsync(dst.raw_data(), 0, dst.nbytes(), stream_));
    return;
  }
  const auto meta = make_meta<1>(dst.shape(), {&dst.strides()}, "fill");
  dispatch_any(dst.dtype(), [&](auto d) {
    using D = decltype(d);
    fill_kernel<D><<<grid_for(n), kThreads, 0, stream_>>>(meta, n, value, ptr<D>(dst));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::unary(UnaryOp op, const Tensor& x, const Tensor& y) {
  check_same_shape(unary_op_name(op), x, y);
  const int64_t n = x.numel();
  if (n == 0) return;
  const auto meta = make_meta<2>(x.shape(), {&x.strides(), &y.strides()}, unary_op_name(op));
  dispatch_float(x.dtype(), unary_op_name(op), [&](auto t) {
    using T = decltype(t);
    if (meta.contiguous) {  // dense: vectorised map
      launch_map2(stream_, n, ptr<T>(x), ptr<T>(x), ptr<T>(y), UnaryFn<T>{op});
      return;
    }
    unary_kernel<T><<<grid_for(n), kThreads, 0, stream_>>>(meta, n, op, ptr<T>(x), ptr<T>(y));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx) {
  const int64_t n = x.numel();
  if (n == 0) return;
  dispatch_float(x.dtype(), unary_op_name(op), [&](auto t) {
    using T = decltype(t);
    launch_map(stream_, n, MapPtrs<T, 3, 1>{{ptr<T>(x), ptr<T>(y), ptr<T>(dy)}, {ptr<T>(dx)}}, UnaryBackwardFn<T>{op});
  });
}

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  if (a.shape() != out.shape() || b.shape() != out.shape())
    throw std::invalid_argument("binary: operands " + shape_str(a.shape()) + " and " + shape_str(b.shape()) +
                                " must be expanded to the output shape " + shape_str(out.shape()));
  const int64_t n = out.numel();
  if (n == 0) return;
  const auto meta = make_meta<3>(out.shape(), {&a.strides(), &b.strides(), &out.strides()}, "binary");
  dispatch_float(out.dtype(), "binary", [&](auto t) {
    using T = decltype(t);
    if (meta.contiguous) {  // dense operands (e.g. residual adds): vectorised map
      launch_map2(stream_, n, ptr<T>(a), ptr<T>(b), ptr<T>(out), BinaryFn<T>{op});
      return;
    }
    binary_kernel<T><<<grid_for(n), kThreads, 0, stream_>>>(meta, n, op, ptr<T>(a), ptr<T>(b), ptr<T>(out));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::axpby(double alpha, const Tensor& x, double beta, const Tensor& y) {
  check_same_shape("axpby", x, y);
  dispatch_float(y.dtype(), "axpby", [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    if (alpha == 1.0 && beta == 1.0)
      launch_map2(stream_, y.numel(), ptr<T>(x), ptr<T>(y), ptr<T>(y), AddFn<T>{});
    else
      launch_map2(stream_, y.numel(), ptr<T>(x), ptr<T>(y), ptr<T>(y), AxpbyFn<T>{A(alpha), A(beta)});
  });
}

void CudaBackend::affine(const Tensor& x, double scale, double shift, const Tensor& out) {
  check_same_shape("affine", x, out);
  dispatch_float(x.dtype(), "affine", [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    launch_map2(stream_, x.numel(), ptr<T>(x), ptr<T>(x), ptr<T>(out), AffineFn<T>{A(scale), A(shift)});
  });
}

void CudaBackend::glu_forward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& out) {
  const UnaryOp op = act::glu_activation(kind);
  dispatch_float(gate.dtype(), "glu", [&](auto t) {
    using T = decltype(t);
    launch_map2(stream_, gate.numel(), ptr<T>(gate), ptr<T>(up), ptr<T>(out), GluFn<T>{op});
  });
}

void CudaBackend::glu_backward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& dout,
                               const Tensor& dgate, const Tensor& dup) {
  const UnaryOp op = act::glu_activation(kind);
  dispatch_float(gate.dtype(), "glu_backward", [&](auto t) {
    using T = decltype(t);
    launch_map(stream_, gate.numel(),
               MapPtrs<T, 3, 2>{{ptr<T>(gate), ptr<T>(up), ptr<T>(dout)}, {ptr<T>(dgate), ptr<T>(dup)}},
               GluBackwardFn<T>{op});
  });
}

}  // namespace pt::cuda
