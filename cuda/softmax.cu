// Softmax over the last dim of x [N, C]: one block per row.
//   forward:  y = exp(x - max) / sum(exp(x - max))          (block max, block sum)
//   backward: dx = y * (dy - sum(y * dy))                    (block sum)
#include "cuda/common.cuh"

namespace pt::cuda {
namespace {

template <class T>
__global__ void softmax_forward_kernel(int64_t rows, int64_t cols, const T* x, T* y) {
  using A = acc_t<T>;
  PT_ROW_LOOP(r, rows) {
    const T* xr = x + r * cols;
    A mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) mx = max(mx, cvt<A>(xr[j]));
    mx = block_max(mx);
    A sum = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) sum += exp(cvt<A>(xr[j]) - mx);
    sum = block_sum(sum);
    T* yr = y + r * cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = cvt<T>(exp(cvt<A>(xr[j]) - mx) / sum);
  }
}

template <class T>
__global__ void softmax_backward_kernel(int64_t rows, int64_t cols, const T* y, const T* dy, T* dx) {
  using A = acc_t<T>;
  PT_ROW_LOOP(r, rows) {
    const T* yr = y + r * cols;
    const T* gr = dy + r * cols;
    A dot = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dot += cvt<A>(yr[j]) * cvt<A>(gr[j]);
    dot = block_sum(dot);
    T* dr = dx + r * cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dr[j] = cvt<T>(cvt<A>(yr[j]) * (cvt<A>(gr[j]) - dot));
  }
}

}  // namespace

void CudaBackend::softmax_forward(const Tensor& x, const Tensor& y) {
  const int64_t cols = x.size(-1), rows = cols ? x.numel() / cols : 0;
  if (rows == 0) return;
  dispatch_float(x.dtype(), "softmax", [&](auto t) {
    using T = decltype(t);
    softmax_forward_kernel<T><<<row_grid(rows), row_threads(cols, 1024), 0, stream_>>>(rows, cols, ptr<T>(x), ptr<T>(y));
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  const int64_t cols = y.size(-1), rows = cols ? y.numel() / cols : 0;
  if (rows == 0) return;
  dispatch_float(y.dtype(), "softmax_backward", [&](auto t) {
    using T = decltype(t);
    softmax_backward_kernel<T><<<row_grid(rows), row_threads(cols, 1024), 0, stream_>>>(rows, cols, ptr<T>(y),
                                                                                         ptr<T>(dy), ptr<T>(dx));
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace pt::cuda
