// Mixture of activations (LA / MoA), fused: out[n, f] = sum_k c(n, k, f) * phi_k(h[n, f]).
// Only h and the coefficients are read; phi_k and phi_k' are recomputed in the backward, so no
// per-entry activation is ever stored (the composed version kept K of them).
//   forward:          one thread per element, K dictionary entries in registers.
//   backward dh:      one thread per element: dh = dout * sum_k c * phi_k'(h).
//   backward dcoef:   sums of dout * phi_k(h) in fp64, like the CPU reference (which rounds each
//                     product to the data dtype, then adds in double); deterministic, no atomics.
//                     per_row:     one block per row, K block sums over the row's F elements;
//                     shared:      fixed grid of block partials [blocks, K], then one block per entry
//                                  adds its partials in order;
//                     per_channel: dcoef [K, F] is a column reduction over the N rows of the
//                                  virtual [N, K*F] matrix of products (column k*F + f reads
//                                  h[n, f]): the two-stage column_reduce of common.cuh.
// Math in fp32 for f32/bf16 (fp64 for f64) with the formulas of core/engine/activation_math.h.
#include "core/engine/activation_math.h"
#include "cuda/common.cuh"

namespace pt::cuda {
namespace {

constexpr int kMaxK = ActivationDictionary::kMaxSize;
constexpr int kPartialBlocks = 512;

__device__ __forceinline__ int64_t coef_at(MixtureCoef layout, int64_t n, int k, int64_t f, int K, int64_t F) {
  switch (layout) {
    case MixtureCoef::per_row: return n * K + k;
    case MixtureCoef::shared: return k;
    case MixtureCoef::per_channel: return k * F + f;
  }
  return 0;
}

template <class T>
__global__ void mixture_forward_kernel(ActivationDictionary dict, MixtureCoef layout, int64_t N, int64_t F,
                                       const T* h, const T* coef, T* out) {
  using A = acc_t<T>;
  PT_GRID_STRIDE(i, N * F) {
    const int64_t n = i / F, f = i % F;
    const A x = cvt<A>(h[i]);
    A acc = 0;
#pragma unroll
    for (int k = 0; k < kMaxK; ++k)  // unrolled: constant indices keep dict.ops out of local memory
      if (k < dict.size) acc += cvt<A>(coef[coef_at(layout, n, k, f, dict.size, F)]) * act::forward<A>(dict.ops[k], x);
    out[i] = cvt<T>(acc);
  }
}

template <class T>
__global__ void mixture_dh_kernel(ActivationDictionary dict, MixtureCoef layout, int64_t N, int64_t F, const T* h,
                                  const T* coef, const T* dout, T* dh) {
  using A = acc_t<T>;
  PT_GRID_STRIDE(i, N * F) {
    const int64_t n = i / F, f = i % F;
    const A x = cvt<A>(h[i]);
    A d = 0;
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      if (k >= dict.size) break;
      A y, dy;
      act::value_and_derivative<A>(dict.ops[k], x, y, dy);
      d += cvt<A>(coef[coef_at(layout, n, k, f, dict.size, F)]) * dy;
    }
    dh[i] = cvt<T>(cvt<A>(dout[i]) * d);
  }
}

// dcoef[n, k] = sum_f dout[n, f] * phi_k(h[n, f])
template <class T>
__global__ void mixture_dcoef_rows_kernel(ActivationDictionary dict, int64_t N, int64_t F, const T* h, const T* dout,
                                          T* dcoef) {
  using A = acc_t<T>;
  PT_ROW_LOOP(n, N) {
    double acc[kMaxK] = {};
    for (int64_t f = threadIdx.x; f < F; f += blockDim.x) {
      const A x = cvt<A>(h[n * F + f]), g = cvt<A>(dout[n * F + f]);
#pragma unroll
      for (int k = 0; k < kMaxK; ++k)
        if (k < dict.size) acc[k] += static_cast<double>(g * act::forward<A>(dict.ops[k], x));
    }
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      if (k >= dict.size) break;  // dict.size is uniform across the block
      const double total = block_sum(acc[k]);
      if (threadIdx.x == 0) dcoef[n * dict.size + k] = cvt<T>(total);
    }
  }
}

// partial[b, k] = sum over block b's grid-stride elements of dout * phi_k(h)  (fp64)
template <class T>
__global__ void mixture_dcoef_partial_kernel(ActivationDictionary dict, int64_t count, const T* h, const T* dout,
                                             double* partial) {
  using A = acc_t<T>;
  double acc[kMaxK] = {};
  PT_GRID_STRIDE(i, count) {
    const A x = cvt<A>(h[i]), g = cvt<A>(dout[i]);
#pragma unroll
    for (int k = 0; k < kMaxK; ++k)
      if (k < dict.size) acc[k] += static_cast<double>(g * act::forward<A>(dict.ops[k], x));
  }
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    if (k >= dict.size) break;
    const double total = block_sum(acc[k]);
    if (threadIdx.x == 0) partial[blockIdx.x * dict.size + k] = total;
  }
}

// dcoef[k] = sum_b partial[b, k]; one block per entry k.
template <class T>
__global__ void mixture_dcoef_final_kernel(int K, int blocks, const double* partial, T* dcoef) {
  const int k = blockIdx.x;
  double acc = 0;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) acc += partial[b * K + k];
  acc = block_sum(acc);
  if (threadIdx.x == 0) dcoef[k] = cvt<T>(acc);
}

// Product dout[n, f] * phi_k(h[n, f]) at (row n, column c = k * F + f) of the per_channel reduction.
template <class T>
struct ChannelProduct {
  ActivationDictionary dict;
  const T* h;
  const T* dout;
  int64_t F;
  __device__ double operator()(int64_t n, int64_t c) const {
    using A = acc_t<T>;
    const int64_t k = c / F, f = c - k * F;
    UnaryOp op = dict.ops[0];
#pragma unroll
    for (int e = 1; e < kMaxK; ++e)  // select with constant indices (no local-memory copy of dict)
      if (e == k) op = dict.ops[e];
    const A x = cvt<A>(h[n * F + f]), g = cvt<A>(dout[n * F + f]);
    return static_cast<double>(g * act::forward<A>(op, x));
  }
};

}  // namespace

void CudaBackend::activation_mixture_forward(const ActivationDictionary& dictionary, MixtureCoef layout,
                                             const Tensor& h, const Tensor& coef, const Tensor& out) {
  const int64_t F = h.size(-1), N = F ? h.numel() / F : 0;
  if (N * F == 0) return;
  dispatch_float(h.dtype(), "activation_mixture", [&](auto t) {
    using T = decltype(t);
    mixture_forward_kernel<T><<<grid_for(N * F), kThreads, 0, stream_>>>(dictionary, layout, N, F, ptr<T>(h),
                                                                         ptr<T>(coef), ptr<T>(out));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::activation_mixture_backward(const ActivationDictionary& dictionary, MixtureCoef layout,
                                              const Tensor& h, const Tensor& coef, const Tensor& dout,
                                              const Tensor& dh, const Tensor& dcoef) {
  const int64_t F = h.size(-1), N = F ? h.numel() / F : 0;
  if (N * F == 0) {
    fill(dcoef, 0.0);
    return;
  }
  dispatch_float(h.dtype(), "activation_mixture_backward", [&](auto t) {
    using T = decltype(t);
    mixture_dh_kernel<T><<<grid_for(N * F), kThreads, 0, stream_>>>(dictionary, layout, N, F, ptr<T>(h), ptr<T>(coef),
                                                                     ptr<T>(dout), ptr<T>(dh));
    CUDA_CHECK_LAUNCH();
    switch (layout) {
      case MixtureCoef::per_row:
        mixture_dcoef_rows_kernel<T><<<row_grid(N), row_threads(F), 0, stream_>>>(dictionary, N, F, ptr<T>(h),
                                                                                   ptr<T>(dout), ptr<T>(dcoef));
        CUDA_CHECK_LAUNCH();
        break;
      case MixtureCoef::shared: {
        const int blocks = static_cast<int>(std::min<int64_t>(kPartialBlocks, grid_for(N * F)));
        Tensor partial = Tensor::empty({int64_t(blocks) * dictionary.size}, DType::f64, h.device());
        mixture_dcoef_partial_kernel<T><<<blocks, kThreads, 0, stream_>>>(dictionary, N * F, ptr<T>(h), ptr<T>(dout),
                                                                          ptr<double>(partial));
        CUDA_CHECK_LAUNCH();
        mixture_dcoef_final_kernel<T><<<dictionary.size, kThreads, 0, stream_>>>(dictionary.size, blocks,
                                                                                 ptr<double>(partial), ptr<T>(dcoef));
        CUDA_CHECK_LAUNCH();
        break;
      }
      case MixtureCoef::per_channel:
        column_reduce<double, T>(stream_, N, int64_t(dictionary.size) * F,
                                 ChannelProduct<T>{dictionary, ptr<T>(h), ptr<T>(dout), F}, ptr<T>(dcoef), false);
        break;
    }
  });
}

}  // namespace pt::cuda
