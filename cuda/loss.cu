// Fused cross-entropy over logits [N, V] (f32, bf16 or f64), targets [N] (i32/i64, -1 = ignore).
//
// forward: one block per row. Each thread keeps an online (max, sum-of-exp) pair over its strided
//   share of the row, read straight from the logits (128-bit packs when rows are 16-byte aligned;
//   bf16 values are widened in registers, never copied to an fp32 buffer); the block merges the
//   pairs: lse = max + log(sum). loss = lse - logit[target] (0 for ignored rows). losses and lse are
//   f32 for bf16 logits (as ops.cpp allocates them) or the logits' dtype.
//   A target outside [0, V) is recorded in the device error word (reported at the next sync).
// forward_backward (training): both in one kernel, g = scale (dloss = 1); the row is re-read from
//   L2 for dlogits. scale_by_scalar applies the real dloss afterwards, skipping the pass when it is 1.
// backward: one block per row, dlogits = g * (exp(logit - lse) - onehot(target)), g = dloss[0] * scale
//   computed in fp64 then rounded (as the CPU does); ignored rows are zeroed. 128-bit loads and
//   stores when V * sizeof(T) is a multiple of 16 and both rows are 16-byte aligned.
#include "cuda/common.cuh"

namespace pt::cuda {
namespace {

// A NaN logit makes the thread's pair (NaN, NaN), so the row's lse (and loss) come out NaN as on
// the CPU: max() ignores NaN, and a pair left at m = -inf would be dropped when the block merges.
template <class A>
__device__ __forceinline__ void online_add(A& m, A& s, A x) {
  if (x != x) {
    m = s = x;
  } else if (x > m) {
    s = s * exp(m - x) + A(1);  // exp(-inf) = 0 on the first element
    m = x;
  } else if (x != A(-INFINITY)) {  // x = m = -inf would add exp(nan): a -inf logit contributes 0
    s += exp(x - m);
  }
}

// The row's log-sum-exp, returned to every thread of the block. Each thread keeps an online
// (max, sum-of-exp) pair over its strided share; with packs, one rescale per pack (its max first).
template <class T>
__device__ acc_t<T> row_logsumexp(const T* row, int64_t vocab, bool vec) {
  using A = acc_t<T>;
  A m = -INFINITY, s = 0;
  if (vec) {
    constexpr int P = Pack<T>::size;
    const Pack<T>* packs = reinterpret_cast<const Pack<T>*>(row);
    for (int64_t j = threadIdx.x; j < vocab / P; j += blockDim.x) {
      const Pack<T> p = packs[j];
      A x[P];
      A pm = -INFINITY;
#pragma unroll
      for (int k = 0; k < P; ++k) {
        x[k] = cvt<A>(p.v[k]);
        pm = max(pm, x[k]);
      }
      bool nan = false;
#pragma unroll
      for (int k = 0; k < P; ++k) nan = nan || x[k] != x[k];
      if (nan) {  // see online_add
        m = s = A(NAN);
        continue;
      }
      if (pm == A(-INFINITY)) continue;  // every value -inf: adds 0
      if (pm > m) {
        s = m == A(-INFINITY) ? A(0) : s * exp(m - pm);
        m = pm;
      }
#pragma unroll
      for (int k = 0; k < P; ++k) s += exp(x[k] - m);
    }
  } else {
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) online_add(m, s, cvt<A>(row[j]));
  }
  const A mx = block_max(m);
  const A sum = block_sum(m == A(-INFINITY) ? A(0) : s * exp(m - mx));
  return mx + log(sum);
}

// Thread 0 of the block stores the row's lse and loss (reporting an invalid target).
template <class T, class S>
__device__ void store_row_loss(int64_t r, int64_t vocab, const T* row, acc_t<T> l, const void* targets, bool targets64,
                               S* losses, S* lse, DeviceError* err) {
  using A = acc_t<T>;
  if (threadIdx.x != 0) return;
  lse[r] = cvt<S>(l);
  const int64_t target = read_id(targets, targets64, r);
  A loss = 0;
  if (target != -1) {
    if (target < 0 || target >= vocab) report_error(err, kBadTarget, target, r, vocab);
    else loss = l - cvt<A>(row[target]);
  }
  losses[r] = cvt<S>(loss);
}

template <class T, class S>
__global__ void cross_entropy_forward_kernel(int64_t rows, int64_t vocab, const T* logits, const void* targets,
                                             bool targets64, bool vec, S* losses, S* lse, DeviceError* err) {
  PT_ROW_LOOP(r, rows) {
    const T* row = logits + r * vocab;
    store_row_loss(r, vocab, row, row_logsumexp(row, vocab, vec), targets, targets64, losses, lse, err);
  }
}

// dlogits row = g * (exp(logit - l) - onehot(target)); zeros for an ignored (or invalid) target.
template <class T>
__device__ void store_row_grad(const T* row, int64_t vocab, int64_t target, acc_t<T> l, acc_t<T> g, bool vec,
                               T* drow) {
  using A = acc_t<T>;
  constexpr int P = Pack<T>::size;
  if (target < 0 || target >= vocab) {  // -1 (ignored); invalid targets were reported by the forward
    if (vec) {
      Pack<T> zero;
#pragma unroll
      for (int k = 0; k < P; ++k) zero.v[k] = cvt<T>(A(0));
      for (int64_t j = threadIdx.x; j < vocab / P; j += blockDim.x) reinterpret_cast<Pack<T>*>(drow)[j] = zero;
    } else {
      for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) drow[j] = cvt<T>(A(0));
    }
    return;
  }
  if (vec) {  // vocab % P == 0, both rows 16-byte aligned
    for (int64_t j = threadIdx.x; j < vocab / P; j += blockDim.x) {
      const Pack<T> x = reinterpret_cast<const Pack<T>*>(row)[j];
      Pack<T> d;
#pragma unroll
      for (int k = 0; k < P; ++k) {
        A v = g * exp(cvt<A>(x.v[k]) - l);
        if (j * P + k == target) v -= g;
        d.v[k] = cvt<T>(v);
      }
      reinterpret_cast<Pack<T>*>(drow)[j] = d;
    }
  } else {
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      A d = g * exp(cvt<A>(row[j]) - l);
      if (j == target) d -= g;
      drow[j] = cvt<T>(d);
    }
  }
}

// Forward and backward in one pass: the row is read for its lse, then (from L2, the block's row
// having just been read) again for dlogits with g = scale.
template <class T, class S>
__global__ void cross_entropy_forward_backward_kernel(int64_t rows, int64_t vocab, const T* logits, const void* targets,
                                                      bool targets64, bool vec, double scale, S* losses, S* lse,
                                                      T* dlogits, DeviceError* err) {
  using A = acc_t<T>;
  const A g = static_cast<A>(scale);
  PT_ROW_LOOP(r, rows) {
    const T* row = logits + r * vocab;
    const A l = row_logsumexp(row, vocab, vec);
    store_row_loss(r, vocab, row, l, targets, targets64, losses, lse, err);
    store_row_grad(row, vocab, read_id(targets, targets64, r), l, g, vec, dlogits + r * vocab);
  }
}

// x *= factor[0] unless the factor is exactly 1 (then every block returns at once).
template <class T, class F>
__global__ void scale_by_scalar_kernel(int64_t n, const F* factor, T* x) {
  using A = acc_t<T>;
  const A f = cvt<A>(factor[0]);
  if (f == A(1)) return;
  PT_GRID_STRIDE(i, n) { x[i] = cvt<T>(cvt<A>(x[i]) * f); }
}

template <class T, class S>
__global__ void cross_entropy_backward_kernel(int64_t rows, int64_t vocab, const T* logits, const void* targets,
                                              bool targets64, const S* lse, const S* dloss, double scale, bool vec,
                                              T* dlogits) {
  using A = acc_t<T>;
  const A g = static_cast<A>(cvt<double>(dloss[0]) * scale);
  PT_ROW_LOOP(r, rows) {
    store_row_grad(logits + r * vocab, vocab, read_id(targets, targets64, r), cvt<A>(lse[r]), g, vec,
                   dlogits + r * vocab);
  }
}

void check_targets(const char* op, const Tensor& targets, int64_t rows) {
  if (targets.dtype() != DType::i32 && targets.dtype() != DType::i64)
    throw std::invalid_argument(std::string(op) + ": targets must be i32 or i64, got " + targets.describe());
  if (targets.numel() != rows)
    throw std::invalid_argument(std::string(op) + ": " + std::to_string(targets.numel()) + " targets for " +
                                std::to_string(rows) + " rows");
}

}  // namespace

void CudaBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                        const Tensor& lse) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  check_targets("cross_entropy", targets, rows);
  if (rows == 0) return;
  if (losses.dtype() != lse.dtype()) throw std::invalid_argument("cross_entropy: losses and lse dtypes differ");
  dispatch_float(logits.dtype(), "cross_entropy", [&](auto t) {
    using T = decltype(t);
    dispatch_stat<T>(lse, "cross_entropy", [&](auto s) {
      using S = decltype(s);
      const bool vec = (vocab * int64_t(sizeof(T))) % 16 == 0 && aligned16(logits.raw_data());
      cross_entropy_forward_kernel<T, S><<<row_grid(rows), row_threads(vec ? vocab / Pack<T>::size : vocab, 1024), 0,
                                           stream_>>>(
          rows, vocab, ptr<T>(logits), targets.raw_data(), targets.dtype() == DType::i64, vec, ptr<S>(losses),
          ptr<S>(lse), device_error_);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                         const Tensor& dloss, double scale, const Tensor& dlogits) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  check_targets("cross_entropy_backward", targets, rows);
  if (rows == 0) return;
  if (dloss.numel() != 1 || dloss.dtype() != lse.dtype())
    throw std::invalid_argument("cross_entropy_backward: dloss " + dloss.describe() + " must be one element of " +
                                dtype_name(lse.dtype()));
  dispatch_float(logits.dtype(), "cross_entropy_backward", [&](auto t) {
    using T = decltype(t);
    dispatch_stat<T>(lse, "cross_entropy_backward", [&](auto s) {
      using S = decltype(s);
      const bool vec = (vocab * int64_t(sizeof(T))) % 16 == 0 && aligned16(logits.raw_data()) &&
                       aligned16(dlogits.raw_data());
      cross_entropy_backward_kernel<T, S><<<row_grid(rows), row_threads(vec ? vocab / Pack<T>::size : vocab, 1024), 0,
                                            stream_>>>(rows, vocab, ptr<T>(logits), targets.raw_data(),
                                                       targets.dtype() == DType::i64, ptr<S>(lse), ptr<S>(dloss),
                                                       scale, vec, ptr<T>(dlogits));
      CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                                 const Tensor& lse, double scale, const Tensor& dlogits) {
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  check_targets("cross_entropy", targets, rows);
  if (rows == 0) return;
  if (losses.dtype() != lse.dtype()) throw std::invalid_argument("cross_entropy: losses and lse dtypes differ");
  // dlogits may not alias the logits: thread 0 reads the target's logit while other warps write.
  if (dlogits.raw_data() == logits.raw_data())
    throw std::invalid_argument("cross_entropy: dlogits must not be the logits' own storage");
  if (dlogits.shape() != logits.shape() || dlogits.dtype() != logits.dtype() || !dlogits.is_contiguous())
    throw std::invalid_argument("cross_entropy: dlogits " + dlogits.describe() + " does not match logits " +
                                logits.describe());
  dispatch_float(logits.dtype(), "cross_entropy", [&](auto t) {
    using T = decltype(t);
    dispatch_stat<T>(lse, "cross_entropy", [&](auto s) {
      using S = decltype(s);
      const bool vec = (vocab * int64_t(sizeof(T))) % 16 == 0 && aligned16(logits.raw_data()) &&
                       aligned16(dlogits.raw_data());
      cross_entropy_forward_backward_kernel<T, S>
          <<<row_grid(rows), row_threads(vec ? vocab / Pack<T>::size : vocab, 1024), 0, stream_>>>(
              rows, vocab, ptr<T>(logits), targets.raw_data(), targets.dtype() == DType::i64, vec, scale,
              ptr<S>(losses), ptr<S>(lse), ptr<T>(dlogits), device_error_);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::scale_by_scalar(const Tensor& x, const Tensor& factor) {
  if (factor.numel() != 1) throw std::invalid_argument("scale_by_scalar: factor " + factor.describe() + " is not one element");
  if (!x.is_contiguous()) throw std::invalid_argument("scale_by_scalar: x " + x.describe() + " is not contiguous");
  if (factor.device() != x.device())
    throw std::invalid_argument("scale_by_scalar: factor " + factor.describe() + " is not on x's device");
  if (x.numel() == 0) return;
  dispatch_float(x.dtype(), "scale_by_scalar", [&](auto t) {
    using T = decltype(t);
    dispatch_float(factor.dtype(), "scale_by_scalar", [&](auto f) {
      using F = decltype(f);
      // A small grid-striding grid: with factor 1 every block returns at once, so the launch costs
      // microseconds (a grid of one thread per element would take ~0.5 ms just to retire its blocks).
      const unsigned grid = std::min<unsigned>(grid_for(x.numel()), static_cast<unsigned>(sm_count_) * 4);
      scale_by_scalar_kernel<T, F><<<grid, kThreads, 0, stream_>>>(x.numel(), ptr<F>(factor), ptr<T>(x));
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace pt::cuda
