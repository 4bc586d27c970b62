// AdamW, one parameter per launch, f32 or f64 (param, grad, m, v of one dtype), matching the CPU
// reference operation for operation with the same host-side constants:
//   g = grad_scale * grad;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps) + lr * wd * p
#include <cmath>

#include "cuda/common.cuh"

namespace pt::cuda {
namespace {

template <class T>
struct AdamConsts {
  T b1, b2, gs, step_size, inv_sqrt_bc2, decay, eps;
};

template <class T>
__global__ void adamw_kernel(int64_t n, T* p, const T* g, T* m, T* v, AdamConsts<T> k) {
  PT_GRID_STRIDE(i, n) {
    const T gi = g[i] * k.gs;
    const T mi = k.b1 * m[i] + (T(1) - k.b1) * gi;
    const T vi = k.b2 * v[i] + (T(1) - k.b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const T denom = sqrt(vi) * k.inv_sqrt_bc2 + k.eps;
    const T pi = p[i];
    p[i] = pi - (k.step_size * mi / denom + k.decay * pi);
  }
}

}  // namespace

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
