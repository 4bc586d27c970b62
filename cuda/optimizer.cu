// AdamW, f32 or f64 (param, grad, m, v of one dtype), matching the CPU reference operation for
// operation with the same host-side constants:
//   g = grad_scale * grad;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps) + lr * wd * p
//
// adamw_kernel: one parameter per launch (Backend::adamw_step).
// adamw_multi_kernel: the optimizer's whole step in a few launches (Backend::adamw_step_multi).
//   Every tensor is cut into chunks of kChunk elements; a launch carries, by value in its kernel
//   parameters (under the 4 KB limit), the pointers of up to kMaxTensors tensors and a table that
//   maps each of its up to kMaxBlocks blocks to (tensor, chunk). A block updates its chunk with a
//   block-stride loop. Tensors larger than one launch's blocks continue in the next launch.
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

constexpr int kMaxTensors = 32;
constexpr int kMaxBlocks = 320;
constexpr int64_t kChunk = 64 * 1024;
constexpr int kMultiThreads = 512;

template <class T>
struct AdamwBatch {
  T* p[kMaxTensors];
  const T* g[kMaxTensors];
  T* m[kMaxTensors];
  T* v[kMaxTensors];
  int64_t n[kMaxTensors];
  T decay[kMaxTensors];  // lr * weight_decay of each tensor
  uint8_t tensor_of_block[kMaxBlocks];
  int32_t chunk_of_block[kMaxBlocks];
};
static_assert(sizeof(AdamwBatch<double>) + sizeof(AdamConsts<double>) < 4000, "kernel parameters over 4 KB");

template <class T>
__global__ void __launch_bounds__(kMultiThreads) adamw_multi_kernel(AdamwBatch<T> batch, AdamConsts<T> k) {
  const int t = batch.tensor_of_block[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(batch.chunk_of_block[blockIdx.x]) * kChunk;
  const int64_t end = min(begin + kChunk, batch.n[t]);
  T* p = batch.p[t];
  const T* g = batch.g[t];
  T* m = batch.m[t];
  T* v = batch.v[t];
  const T decay = batch.decay[t];
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) adamw_element(i, p, g, m, v, k, decay);
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
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const AdamConsts<T> k{T(beta1), T(beta2), T(grad_scale), T(lr / bc1), T(1.0 / std::sqrt(bc2)), T(0), T(eps)};
    AdamwBatch<T> batch{};
    int tensors = 0, blocks = 0;
    auto flush = [&] {
      if (blocks > 0) {
        adamw_multi_kernel<T><<<blocks, kMultiThreads, 0, stream_>>>(batch, k);
        CUDA_CHECK_LAUNCH();
      }
      tensors = blocks = 0;
    };
    for (const AdamwTensors& e : group) {
      const int64_t n = e.param.numel();
      if (n == 0) continue;
      const int64_t chunks = (n + kChunk - 1) / kChunk;
      for (int64_t c = 0; c < chunks; ++c) {
        // A new slot for this tensor at its first chunk, or when a flush emptied the batch mid-tensor.
        if (c == 0 || tensors == 0) {
          if (tensors == kMaxTensors) flush();
          batch.p[tensors] = ptr<T>(e.param);
          batch.g[tensors] = ptr<T>(e.grad);
          batch.m[tensors] = ptr<T>(e.m);
          batch.v[tensors] = ptr<T>(e.v);
          batch.n[tensors] = n;
          batch.decay[tensors] = T(lr * e.weight_decay);
          ++tensors;
        }
        batch.tensor_of_block[blocks] = static_cast<uint8_t>(tensors - 1);
        batch.chunk_of_block[blocks] = static_cast<int32_t>(c);
        if (++blocks == kMaxBlocks) flush();
      }
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
