// Rotary position embedding on x [B, T, H, D], half-split pairs (i, i + D/2), position t:
//   angle(t, i) = t * theta^(-2i/D);  y_i = a c - b s;  y_{i+D/2} = a s + b c   (a = x_i, b = x_{i+D/2})
// inverse (the backward) negates s. The cos/sin table [T, D/2] is computed on the device in fp64
// (as the CPU does) and rounded to the compute type (fp32 for f32/bf16, fp64 for f64), then cached
// per (T, D, theta). The apply kernel has one thread per (b, t, h, i) pair.
#include "cuda/common.cuh"

namespace pt::cuda {
namespace {

template <class C>
__global__ void rope_table_kernel(int64_t seq, int64_t half, int64_t dim, double theta, C* cos_table, C* sin_table) {
  PT_GRID_STRIDE(idx, seq * half) {
    const int64_t p = idx / half, i = idx % half;
    const double angle = static_cast<double>(p) * pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(dim));
    double s, c;
    sincos(angle, &s, &c);
    cos_table[idx] = static_cast<C>(c);
    sin_table[idx] = static_cast<C>(s);
  }
}

template <class T>
__global__ void rope_kernel(int64_t pairs, int64_t seq, int64_t heads, int64_t half, const acc_t<T>* cos_table,
                            const acc_t<T>* sin_table, bool inverse, const T* x, T* y) {
  using A = acc_t<T>;
  PT_GRID_STRIDE(idx, pairs) {
    const int64_t i = idx % half;
    const int64_t row = idx / half;  // (b * seq + t) * heads + h
    const int64_t p = (row / heads) % seq;
    const A c = cos_table[p * half + i];
    const A s = sin_table[p * half + i] * (inverse ? A(-1) : A(1));
    const T* xr = x + row * 2 * half;
    T* yr = y + row * 2 * half;
    const A a = cvt<A>(xr[i]), b = cvt<A>(xr[i + half]);
    yr[i] = cvt<T>(a * c - b * s);
    yr[i + half] = cvt<T>(a * s + b * c);
  }
}

}  // namespace

const Tensor& CudaBackend::rope_table(int64_t seq, int64_t dim, double theta, DType dtype) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto key = std::make_tuple(seq, dim, theta, dtype);
  auto it = rope_tables_.find(key);
  if (it != rope_tables_.end()) return it->second;
  const int64_t half = dim / 2;
  Tensor table = Tensor::empty({2, seq, half}, dtype, Device::cuda());
  auto build = [&](auto tag) {
    using C = decltype(tag);
    C* base = ptr<C>(table);
    rope_table_kernel<C><<<grid_for(seq * half), kThreads, 0, stream_>>>(seq, half, dim, theta, base, base + seq * half);
    CUDA_CHECK_LAUNCH();
  };
  if (dtype == DType::f64) build(double{});
  else build(float{});
  return rope_tables_.emplace(key, std::move(table)).first->second;
}

void CudaBackend::rope(const Tensor& x, double theta, bool inverse, const Tensor& y) {
  if (x.ndim() != 4 || x.size(3) % 2 != 0)
    throw std::invalid_argument("rope: x must be [B, T, H, D] with D even, got " + shape_str(x.shape()));
  const int64_t batch = x.size(0), seq = x.size(1), heads = x.size(2), dim = x.size(3), half = dim / 2;
  const int64_t pairs = batch * seq * heads * half;
  if (pairs == 0) return;
  dispatch_float(x.dtype(), "rope", [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const Tensor& table = rope_table(seq, dim, theta, std::is_same_v<A, double> ? DType::f64 : DType::f32);
    const A* base = ptr<A>(table);
    rope_kernel<T><<<grid_for(pairs), kThreads, 0, stream_>>>(pairs, seq, heads, half, base, base + seq * half, inverse,
                                                              ptr<T>(x), ptr<T>(y));
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace pt::cuda
