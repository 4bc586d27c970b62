// AdamW, f32 or f64 (param, grad, m, v of one dtype), matching the CPU reference operation for
// operation with the same host-side constants:
//   g = grad_scale * grad;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps) + lr * wd * p
//
// adamw_kernel: one parameter per launch (Backend::adamw_step).
// adamw_multi_kernel: the optimizer's whole step in a few launches (Backend::adamw_step_multi).
//   Every tensor is cut into chunks of kChunk elements; a launch carries, by value in its kernel
//   parameters (under the 4 KB limit), the pointers of up to kMaxTensors tensors and where each
//   one's chunks start. A grid of 4 blocks per SM strides over the chunks, each updated with 128-bit
//   loads. A parameter's bf16 compute copy, if any, is written in the same pass.
#include <cmath>

#include "cuda/common.cuh"

namespace pt::cuda {
namespace {

template <class T>
struct AdamConsts {
  T b1, b2, gs, step_size, inv_sqrt_bc2, decay, eps;
};

// One element's update; `decay` = lr * weight_decay.
template <class T>
__device__ __forceinline__ void adamw_element(int64_t i, T* p, const T* g, T* m, T* v, const AdamConsts<T>& k,
                                              T decay) {
  const T gi = g[i] * k.gs;
  const T mi = k.b1 * m[i] + (T(1) - k.b1) * gi;
  const T vi = k.b2 * v[i] + (T(1) - k.b2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  const T denom = sqrt(vi) * k.inv_sqrt_bc2 + k.eps;
  const T pi = p[i];
  p[i] = pi - (k.step_size * mi / denom + decay * pi);
}

template <class T>
__global__ void adamw_kernel(int64_t n, T* p, const T* g, T* m, T* v, AdamConsts<T> k) {
  PT_GRID_STRIDE(i, n) { adamw_element(i, p, g, m, v, k, k.decay); }
}

constexpr int kMaxTensors = 48;
constexpr int64_t kChunk = 64 * 1024;  // elements per block task
constexpr int kMultiThreads = 512;

// The tensors of one launch. Chunks are numbered across the tensors: tensor t owns chunk ids
// [chunk_start[t], chunk_start[t + 1]). `copy[t]` (or null) receives the updated parameter in bf16
// (the compute copy the next forward reads instead of casting the master).
template <class T>
struct AdamwBatch {
  T* p[kMaxTensors];
  const T* g[kMaxTensors];
  T* m[kMaxTensors];
  T* v[kMaxTensors];
  bf16_t* copy[kMaxTensors];
  int64_t n[kMaxTensors];
  T decay[kMaxTensors];  // lr * weight_decay of each tensor
  int32_t chunk_start[kMaxTensors + 1];
  int32_t tensors;
};
static_assert(sizeof(AdamwBatch<double>) + sizeof(AdamConsts<double>) < 4000, "kernel parameters over 4 KB");

// Blocks stride over the launch's chunks; each chunk is updated with 128-bit loads (VEC: every
// pointer 16-byte aligned, chunks start at multiples of kChunk) and a scalar tail.
template <class T, bool VEC>
__global__ void __launch_bounds__(kMultiThreads) adamw_multi_kernel(AdamwBatch<T> batch, AdamConsts<T> k) {
  constexpr int P = VEC ? Pack<T>::size : 1;
  const int32_t total = batch.chunk_start[batch.tensors];
  for (int32_t c = blockIdx.x; c < total; c += gridDim.x) {
    int t = 0;
    while (batch.chunk_start[t + 1] <= c) ++t;
    const int64_t begin = static_cast<int64_t>(c - batch.chunk_start[t]) * kChunk;
    const int64_t end = min(begin + kChunk, batch.n[t]);
    T* p = batch.p[t];
    const T* g = batch.g[t];
    T* m = batch.m[t];
    T* v = batch.v[t];
    bf16_t* copy = batch.copy[t];
    const T decay = batch.decay[t];
    const int64_t vec_end = begin + (end - begin) / P * P;
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * P; i < vec_end; i += static_cast<int64_t>(blockDim.x) * P) {
      if constexpr (VEC) {
        Pack<T> pp = *reinterpret_cast<const Pack<T>*>(p + i), gp = *reinterpret_cast<const Pack<T>*>(g + i);
        Pack<T> mp = *reinterpret_cast<const Pack<T>*>(m + i), vp = *reinterpret_cast<const Pack<T>*>(v + i);
#pragma unroll
        for (int j = 0; j < P; ++j) adamw_element(j, pp.v, gp.v, mp.v, vp.v, k, decay);
        *reinterpret_cast<Pack<T>*>(p + i) = pp;
        *reinterpret_cast<Pack<T>*>(m + i) = mp;
        *reinterpret_cast<Pack<T>*>(v + i) = vp;
        if (copy) {
#pragma unroll
          for (int j = 0; j < P; ++j) copy[i + j] = cvt<bf16_t>(pp.v[j]);
        }
      } else {
        adamw_element(i, p, g, m, v, k, decay);
        if (copy) copy[i] = cvt<bf16_t>(p[i]);
      }
    }
    for (int64_t i = vec_end + threadIdx.x; i < end; i += blockDim.x) {
      adamw_element(i, p, g, m, v, k, decay);
      if (copy) copy[i] = cvt<bf16_t>(p[i]);
    }
  }
}

}  // namespace

void CudaBackend::adamw_step_multi(const std::vector<AdamwTensors>& group, double grad_scale, double lr,
                                   double beta1, double beta2, double eps, int64_t step) {
  if (group.empty()) return;
  const DType dtype = group.front().param.dtype();
  for (const AdamwTensors& e : group)
    for (const Tensor* t : {&e.param, &e.grad, &e.m, &e.v})
      if (t->dtype() != dtype || t->numel() != e.param.numel() || !t->is_contiguous() ||
          t->device() != e.param.device())
        throw std::invalid_argument("adamw_step_multi: param " + e.param.describe() + ", grad/moment " +
                                    t->describe() + " (all must be contiguous, of one dtype, size and device)");
  for (const AdamwTensors& e : group)
    if (e.compute_copy.defined() && (e.compute_copy.dtype() != DType::bf16 || e.compute_copy.numel() != e.param.numel() ||
                                     !e.compute_copy.is_contiguous() || e.compute_copy.device() != e.param.device()))
      throw std::invalid_argument("adamw_step_multi: compute copy " + e.compute_copy.describe() + " of param " +
                                  e.param.describe() + " must be a contiguous bf16 tensor of its size and device");
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  bool vec = true;
  for (const AdamwTensors& e : group)
    for (const Tensor* t : {&e.param, &e.grad, &e.m, &e.v}) vec = vec && aligned16(t->raw_data());
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const AdamConsts<T> k{T(beta1), T(beta2), T(grad_scale), T(lr / bc1), T(1.0 / std::sqrt(bc2)), T(0), T(eps)};
    AdamwBatch<T> batch{};
    int tensors = 0;
    int32_t chunks_in_batch = 0;
    auto flush = [&] {
      if (tensors > 0 && chunks_in_batch > 0) {
        batch.tensors = tensors;
        batch.chunk_start[tensors] = chunks_in_batch;
        const unsigned grid = static_cast<unsigned>(std::min<int64_t>(chunks_in_batch, int64_t{sm_count_} * 4));
        if (vec) adamw_multi_kernel<T, true><<<grid, kMultiThreads, 0, stream_>>>(batch, k);
        else adamw_multi_kernel<T, false><<<grid, kMultiThreads, 0, stream_>>>(batch, k);
        CUDA_CHECK_LAUNCH();
      }
      tensors = 0;
      chunks_in_batch = 0;
    };
    for (const AdamwTensors& e : group) {
      const int64_t n = e.param.numel();
      if (n == 0) continue;
      const int64_t chunks = (n + kChunk - 1) / kChunk;
      if (chunks > (int64_t{1} << 30)) throw std::invalid_argument("adamw_step_multi: " + e.param.describe() + " is too large");
      if (tensors == kMaxTensors || chunks_in_batch + chunks > (int64_t{1} << 30)) flush();
      batch.p[tensors] = ptr<T>(e.param);
      batch.g[tensors] = ptr<T>(e.grad);
      batch.m[tensors] = ptr<T>(e.m);
      batch.v[tensors] = ptr<T>(e.v);
      batch.copy[tensors] = ptr_or_null<bf16_t>(e.compute_copy);
      batch.n[tensors] = n;
      batch.decay[tensors] = T(lr * e.weight_decay);
      batch.chunk_start[tensors] = chunks_in_batch;
      chunks_in_batch += static_cast<int32_t>(chunks);
      ++tensors;
    }
    flush();
  };
  switch (dtype) {
    case DType::f32: run(float{}); break;
    case DType::f64: run(double{}); break;
    default:
      throw std::invalid_argument(std::string("adamw_step_multi: dtype ") + dtype_name(dtype) +
                                  " is not supported (parameters and moments are f32 or f64)");
  }
}

void CudaBackend::adamw_step(const Tensor& param, const Tensor& grad, double grad_scale, const Tensor& m,
                             const Tensor& v, double lr, double beta1, double beta2, double eps, double weight_decay,
                             int64_t step) {
  for (const Tensor* t : {&grad, &m, &v})
    if (t->dtype() != param.dtype() || t->numel() != param.numel() || !t->is_contiguous())
      throw std::invalid_argument("adamw_step: param " + param.describe() + ", grad/moment " + t->describe() +
                                  " (all must be contiguous, of one dtype and size)");
  const int64_t n = param.numel();
  if (n == 0) return;
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    const AdamConsts<T> k{T(beta1), T(beta2), T(grad_scale), T(lr / bc1), T(1.0 / std::sqrt(bc2)),
                          T(lr * weight_decay), T(eps)};
    adamw_kernel<T><<<grid_for(n), kThreads, 0, stream_>>>(n, ptr<T>(param), ptr<T>(grad), ptr<T>(m), ptr<T>(v), k);
    CUDA_CHECK_LAUNCH();
  };
  switch (param.dtype()) {
    case DType::f32: launch(float{}); break;
    case DType::f64: launch(double{}); break;
    default:
      throw std::invalid_argument(std::string("adamw_step: dtype ") + dtype_name(param.dtype()) +
                                  " is not supported (parameters and moments are f32 or f64)");
  }
}

}  // namespace pt::cuda
