// Rotary position embedding on x [B, T, H, D], half-split pairs (i, i + D/2), position t:
//   angle(t, i) = t * theta^(-2i/D);  y_i = a c - b s;  y_{i+D/2} = a s + b c   (a = x_i, b = x_{i+D/2})
// inverse (the backward) negates s. The cos/sin table [T, D/2] is computed on the device in fp64
// (as the CPU does) and rounded to the compute type (fp32 for f32/bf16, fp64 for f64), then cached
// per (T, D, theta). The apply kernel has one thread per P consecutive pairs of a row (b, t, h):
// one 128-bit load each of x[i..i+P) and x[i+D/2..i+D/2+P) (P = 16 / sizeof(T)) when D/2 is a
// multiple of P and x, y are 16-byte aligned, else P = 1; 32-bit index arithmetic when it fits.
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

template <class T, int P, class I>
__global__ void rope_kernel(I items, I seq, I heads, I half, const acc_t<T>* cos_table, const acc_t<T>* sin_table,
                            bool inverse, const T* x, T* y) {
  using A = acc_t<T>;
  const I chunks = half / P;  // items = rows * chunks
  for (I idx = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; idx < items;
       idx += static_cast<I>(blockDim.x) * gridDim.x) {
    const I row = idx / chunks;  // (b * seq + t) * heads + h
    const I i0 = (idx - row * chunks) * P;
    const I p = (row / heads) % seq;
    const T* xr = x + static_cast<int64_t>(row) * 2 * half + i0;
    T* yr = y + static_cast<int64_t>(row) * 2 * half + i0;
    const A* cr = cos_table + static_cast<int64_t>(p) * half + i0;
    const A* sr = sin_table + static_cast<int64_t>(p) * half + i0;
    T a[P], b[P], ya[P], yb[P];
    if constexpr (P > 1) {
      const Pack<T> pa = *reinterpret_cast<const Pack<T>*>(xr), pb = *reinterpret_cast<const Pack<T>*>(xr + half);
#pragma unroll
      for (int k = 0; k < P; ++k) a[k] = pa.v[k], b[k] = pb.v[k];
    } else {
      a[0] = xr[0];
      b[0] = xr[half];
    }
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const A c = cr[k], sn = inverse ? -sr[k] : sr[k];
      const A av = cvt<A>(a[k]), bv = cvt<A>(b[k]);
      ya[k] = cvt<T>(av * c - bv * sn);
      yb[k] = cvt<T>(av * sn + bv * c);
    }
    if constexpr (P > 1) {
      Pack<T> qa, qb;
#pragma unroll
      for (int k = 0; k < P; ++k) qa.v[k] = ya[k], qb.v[k] = yb[k];
      *reinterpret_cast<Pack<T>*>(yr) = qa;
      *reinterpret_cast<Pack<T>*>(yr + half) = qb;
    } else {
      yr[0] = ya[0];
      yr[half] = yb[0];
    }
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
    constexpr int P = Pack<T>::size;
    const bool vec = half % P == 0 && aligned16(x.raw_data()) && aligned16(y.raw_data());
    const int64_t items = vec ? pairs / P : pairs;
    auto launch = [&](auto index, auto pack) {
      using I = decltype(index);
      constexpr int V = decltype(pack)::value;
      rope_kernel<T, V, I><<<grid_for(items), kThreads, 0, stream_>>>(
          static_cast<I>(items), static_cast<I>(seq), static_cast<I>(heads), static_cast<I>(half), base,
          base + seq * half, inverse, ptr<T>(x), ptr<T>(y));
    };
    const bool small = pairs < (int64_t{1} << 31);
    if (vec && small) launch(uint32_t{}, std::integral_constant<int, P>{});
    else if (vec) launch(int64_t{}, std::integral_constant<int, P>{});
    else if (small) launch(uint32_t{}, std::integral_constant<int, 1>{});
    else launch(int64_t{}, std::integral_constant<int, 1>{});
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace pt::cuda
