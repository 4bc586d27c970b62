// RMSNorm and LayerNorm, forward and backward, over rows of x [N, D].
//
// Forward: one block per row; a block sum gives the row statistic(s) (fp32, fp64 for f64),
// thread 0 stores rstd (and mean), then the block writes the normalised row. The RMSNorm
// kernels (the hot ones in llama-style models) use 128-bit packs when D is a multiple of the
// pack width and every pointer is 16-byte aligned.
//   rms:   rstd = 1 / sqrt(mean(x^2) + eps);            y = x * rstd * w
//   layer: mu = mean(x); rstd = 1 / sqrt(var + eps);     y = (x - mu) * rstd * w + b
// Backward dx: one block per row, two block sums, then
//   rms:   dx = rstd * (g w - x_hat * mean(g w x_hat))
//   layer: dx = rstd * (g w - mean(g w) - x_hat * mean(g w x_hat))
// Weight/bias grads are accumulated (+=) with the deterministic column reduction of common.cuh
// (no atomics): dw += sum_rows(g * x_hat), db += sum_rows(g). The packed rms backward computes the
// weight gradient's per-block column sums in its own pass (rms_norm_backward_fused_kernel).
// mean/rstd tensors are the data dtype or f32 (dispatch_stat).
// Fused residual (add_rms_norm_forward / rms_norm_backward_add): the rms kernels take an optional
// residual branch r and write sum = x + r (rounded to the dtype, the value the statistics and the
// output are computed from, exactly as an add followed by rms_norm); the backward takes an optional
// dres and writes dx = dres + the rms_norm dx. One pass over the rows instead of two each way.
#include <initializer_list>

#include "cuda/common.cuh"

namespace pt::cuda {
namespace {

// P consecutive elements of a row, P = 16 / sizeof(T) (one 128-bit load/store) when VEC, else 1.
// The rms kernels below loop over packs jp in [0, dim / P); VEC needs dim % P == 0 and every
// pointer 16-byte aligned (checked on the host by rms_vec).
template <class T, bool VEC>
struct RowPack {
  static constexpr int P = VEC ? Pack<T>::size : 1;
  T v[P];
  __device__ __forceinline__ void load(const T* p, int64_t jp) {
    if constexpr (VEC) {
      const Pack<T> q = reinterpret_cast<const Pack<T>*>(p)[jp];
#pragma unroll
      for (int k = 0; k < P; ++k) v[k] = q.v[k];
    } else {
      v[0] = p[jp];
    }
  }
  __device__ __forceinline__ void store(T* p, int64_t jp) const {
    if constexpr (VEC) {
      Pack<T> q;
#pragma unroll
      for (int k = 0; k < P; ++k) q.v[k] = v[k];
      reinterpret_cast<Pack<T>*>(p)[jp] = q;
    } else {
      p[jp] = v[0];
    }
  }
};

// res == nullptr: plain rms_norm of x. Otherwise the normalised row is sum = x + res, written to
// sum_out; the second loop re-reads the packs this thread wrote itself (no other thread touches them).
template <class T, class S, bool VEC>
__global__ void rms_norm_forward_kernel(int64_t rows, int64_t dim, const T* x, const T* res, T* sum_out, const T* w,
                                        double eps, T* y, S* rstd) {
  using A = acc_t<T>;
  using RP = RowPack<T, VEC>;
  constexpr int P = RP::P;
  const int64_t packs = dim / P;
  PT_ROW_LOOP(r, rows) {
    const T* xr = x + r * dim;
    A ss = 0;
    for (int64_t j = threadIdx.x; j < packs; j += blockDim.x) {
      RP xp;
      xp.load(xr, j);
      if (res) {
        RP rp;
        rp.load(res + r * dim, j);
#pragma unroll
        for (int k = 0; k < P; ++k) xp.v[k] = cvt<T>(cvt<A>(xp.v[k]) + cvt<A>(rp.v[k]));
        xp.store(sum_out + r * dim, j);
      }
#pragma unroll
      for (int k = 0; k < P; ++k) {
        const A v = cvt<A>(xp.v[k]);
        ss += v * v;
      }
    }
    ss = block_sum(ss);
    const A inv = A(1) / sqrt(ss / A(dim) + A(eps));
    if (threadIdx.x == 0) rstd[r] = cvt<S>(inv);
    if (res) xr = sum_out + r * dim;
    T* yr = y + r * dim;
    for (int64_t j = threadIdx.x; j < packs; j += blockDim.x) {
      RP xp, wp, yp;
      xp.load(xr, j);
      if (w) wp.load(w, j);
#pragma unroll
      for (int k = 0; k < P; ++k) yp.v[k] = cvt<T>(cvt<A>(xp.v[k]) * inv * (w ? cvt<A>(wp.v[k]) : A(1)));
      yp.store(yr, j);
    }
  }
}

// dres == nullptr: plain rms_norm backward; otherwise dx = dres + (the rms_norm dx).
template <class T, class S, bool VEC>
__global__ void rms_norm_backward_kernel(int64_t rows, int64_t dim, const T* x, const T* w, const S* rstd,
                                         const T* dy, const T* dres, T* dx) {
  using A = acc_t<T>;
  using RP = RowPack<T, VEC>;
  constexpr int P = RP::P;
  const int64_t packs = dim / P;
  PT_ROW_LOOP(r, rows) {
    const T* xr = x + r * dim;
    const T* gr = dy + r * dim;
    const A inv = cvt<A>(rstd[r]);
    A dot = 0;
    for (int64_t j = threadIdx.x; j < packs; j += blockDim.x) {
      RP xp, gp, wp;
      xp.load(xr, j);
      gp.load(gr, j);
      if (w) wp.load(w, j);
#pragma unroll
      for (int k = 0; k < P; ++k) dot += cvt<A>(gp.v[k]) * (w ? cvt<A>(wp.v[k]) : A(1)) * cvt<A>(xp.v[k]) * inv;
    }
    dot = block_sum(dot);
    const A mean_dot = dot / A(dim);
    T* dr = dx + r * dim;
    for (int64_t j = threadIdx.x; j < packs; j += blockDim.x) {
      RP xp, gp, wp, dp, rp;
      xp.load(xr, j);
      gp.load(gr, j);
      if (w) wp.load(w, j);
      if (dres) rp.load(dres + r * dim, j);
#pragma unroll
      for (int k = 0; k < P; ++k)
        dp.v[k] = cvt<T>(inv * (cvt<A>(gp.v[k]) * (w ? cvt<A>(wp.v[k]) : A(1)) - cvt<A>(xp.v[k]) * inv * mean_dot) +
                         (dres ? cvt<A>(rp.v[k]) : A(0)));
      dp.store(dr, j);
    }
  }
}

// The rms backward with the weight gradient in the same pass (128-bit packs, dweight wanted): a
// grid of a few blocks per SM strides over the rows; each thread owns up to PPT packs of columns,
// keeps its rows' x and dy packs in registers between the dot product and dx (one read of each),
// holds w in registers for all rows, and sums dy * x_hat for its columns over its block's rows.
// partial[block, dim] (fp32, fp64 for f64) is then reduced over the blocks (column_reduce):
// no second pass over x and dy for dweight.
template <class T, class S, int PPT>
__global__ void rms_norm_backward_fused_kernel(int64_t rows, int64_t dim, const T* x, const T* w, const S* rstd,
                                               const T* dy, const T* dres, T* dx, acc_t<T>* partial) {
  using A = acc_t<T>;
  using RP = RowPack<T, true>;
  constexpr int P = RP::P;
  const int64_t packs = dim / P;
  RP wp[PPT];
  A dw[PPT][P];
#pragma unroll
  for (int q = 0; q < PPT; ++q) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(q) * blockDim.x;
#pragma unroll
    for (int k = 0; k < P; ++k) {
      dw[q][k] = A(0);
      wp[q].v[k] = cvt<T>(A(1));
    }
    if (w && j < packs) wp[q].load(w, j);
  }
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const A inv = cvt<A>(rstd[r]);
    RP xp[PPT], gp[PPT];
    A dot = 0;
#pragma unroll
    for (int q = 0; q < PPT; ++q) {
      const int64_t j = threadIdx.x + static_cast<int64_t>(q) * blockDim.x;
      if (j < packs) {
        xp[q].load(x + r * dim, j);
        gp[q].load(dy + r * dim, j);
#pragma unroll
        for (int k = 0; k < P; ++k) dot += cvt<A>(gp[q].v[k]) * cvt<A>(wp[q].v[k]) * cvt<A>(xp[q].v[k]) * inv;
      }
    }
    dot = block_sum(dot);
    const A mean_dot = dot / A(dim);
#pragma unroll
    for (int q = 0; q < PPT; ++q) {
      const int64_t j = threadIdx.x + static_cast<int64_t>(q) * blockDim.x;
      if (j < packs) {
        RP rp, dp;
        if (dres) rp.load(dres + r * dim, j);
#pragma unroll
        for (int k = 0; k < P; ++k) {
          const A g = cvt<A>(gp[q].v[k]), xv = cvt<A>(xp[q].v[k]);
          dp.v[k] = cvt<T>(inv * (g * cvt<A>(wp[q].v[k]) - xv * inv * mean_dot) + (dres ? cvt<A>(rp.v[k]) : A(0)));
          dw[q][k] += g * xv * inv;
        }
        dp.store(dx + r * dim, j);
      }
    }
  }
#pragma unroll
  for (int q = 0; q < PPT; ++q) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(q) * blockDim.x;
    if (j < packs)
#pragma unroll
      for (int k = 0; k < P; ++k) partial[static_cast<int64_t>(blockIdx.x) * dim + j * P + k] = dw[q][k];
  }
}

// f(r, c) = partial[r, c] (the fused kernel's per-block column sums).
template <class A>
struct LoadPartial {
  const A* partial;
  int64_t dim;
  __device__ A operator()(int64_t r, int64_t c) const { return partial[r * dim + c]; }
};

template <class T, class S>
__global__ void layer_norm_forward_kernel(int64_t rows, int64_t dim, const T* x, const T* w, const T* b, double eps,
                                          T* y, S* mean, S* rstd) {
  using A = acc_t<T>;
  PT_ROW_LOOP(r, rows) {
    const T* xr = x + r * dim;
    A sum = 0;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) sum += cvt<A>(xr[j]);
    const A mu = block_sum(sum) / A(dim);
    A var = 0;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      const A d = cvt<A>(xr[j]) - mu;
      var += d * d;
    }
    var = block_sum(var);
    const A inv = A(1) / sqrt(var / A(dim) + A(eps));
    if (threadIdx.x == 0) {
      mean[r] = cvt<S>(mu);
      rstd[r] = cvt<S>(inv);
    }
    T* yr = y + r * dim;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x)
      yr[j] = cvt<T>((cvt<A>(xr[j]) - mu) * inv * (w ? cvt<A>(w[j]) : A(1)) + (b ? cvt<A>(b[j]) : A(0)));
  }
}

template <class T, class S>
__global__ void layer_norm_backward_kernel(int64_t rows, int64_t dim, const T* x, const T* w, const S* mean,
                                           const S* rstd, const T* dy, T* dx) {
  using A = acc_t<T>;
  PT_ROW_LOOP(r, rows) {
    const T* xr = x + r * dim;
    const T* gr = dy + r * dim;
    const A mu = cvt<A>(mean[r]), inv = cvt<A>(rstd[r]);
    A sum_gw = 0, sum_gw_xhat = 0;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      const A gw = cvt<A>(gr[j]) * (w ? cvt<A>(w[j]) : A(1));
      sum_gw += gw;
      sum_gw_xhat += gw * (cvt<A>(xr[j]) - mu) * inv;
    }
    const A mean_gw = block_sum(sum_gw) / A(dim);
    const A mean_gw_xhat = block_sum(sum_gw_xhat) / A(dim);
    T* dr = dx + r * dim;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      const A xhat = (cvt<A>(xr[j]) - mu) * inv;
      dr[j] = cvt<T>(inv * (cvt<A>(gr[j]) * (w ? cvt<A>(w[j]) : A(1)) - mean_gw - xhat * mean_gw_xhat));
    }
  }
}

// f(r, c) = g[r, c] * (x[r, c] - mean[r]) * rstd[r]   (mean == nullptr: RMSNorm)
template <class T, class S>
struct GradXhat {
  const T* g;
  const T* x;
  const S* mean;
  const S* rstd;
  int64_t dim;
  __device__ acc_t<T> operator()(int64_t r, int64_t c) const {
    using A = acc_t<T>;
    const A xc = mean ? cvt<A>(x[r * dim + c]) - cvt<A>(mean[r]) : cvt<A>(x[r * dim + c]);
    return cvt<A>(g[r * dim + c]) * xc * cvt<A>(rstd[r]);
  }
};
template <class T>
struct GradSum {
  const T* g;
  int64_t dim;
  __device__ acc_t<T> operator()(int64_t r, int64_t c) const { return cvt<acc_t<T>>(g[r * dim + c]); }
};

}  // namespace

namespace {
// Whether the rms kernels can use 128-bit packs: rows a whole number of packs, every pointer aligned.
template <class T>
bool rms_vec(int64_t dim, std::initializer_list<const Tensor*> tensors) {
  if (dim % Pack<T>::size != 0) return false;
  for (const Tensor* t : tensors)
    if (t->defined() && !aligned16(t->raw_data())) return false;
  return true;
}
}  // namespace

namespace {
// sum = x + res when res is defined (add_rms_norm_forward), else plain rms_norm of x.
void launch_rms_forward(cudaStream_t stream, const Tensor& x, const Tensor& res, const Tensor& sum,
                        const Tensor& weight, double eps, const Tensor& y, const Tensor& rstd, const char* op) {
  const int64_t dim = x.size(-1), rows = dim ? x.numel() / dim : 0;
  if (rows == 0) return;
  dispatch_float(x.dtype(), op, [&](auto t) {
    using T = decltype(t);
    dispatch_stat<T>(rstd, op, [&](auto s) {
      using S = decltype(s);
      if (rms_vec<T>(dim, {&x, &res, &sum, &weight, &y})) {
        rms_norm_forward_kernel<T, S, true><<<row_grid(rows), row_threads(dim / Pack<T>::size), 0, stream>>>(
            rows, dim, ptr<T>(x), ptr_or_null<T>(res), ptr_or_null<T>(sum), ptr_or_null<T>(weight), eps, ptr<T>(y),
            ptr<S>(rstd));
      } else {
        rms_norm_forward_kernel<T, S, false><<<row_grid(rows), row_threads(dim), 0, stream>>>(
            rows, dim, ptr<T>(x), ptr_or_null<T>(res), ptr_or_null<T>(sum), ptr_or_null<T>(weight), eps, ptr<T>(y),
            ptr<S>(rstd));
      }
      CUDA_CHECK_LAUNCH();
    });
  });
}

// dx = (dres if defined) + rms_norm dx; dweight += sum_rows(dy * x_hat) when defined.
void launch_rms_backward(cudaStream_t stream, int sm_count, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                         const Tensor& dy, const Tensor& dres, const Tensor& dx, const Tensor& dweight,
                         const char* op) {
  const int64_t dim = x.size(-1), rows = dim ? x.numel() / dim : 0;
  if (rows == 0) return;
  dispatch_float(x.dtype(), op, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    dispatch_stat<T>(rstd, op, [&](auto s) {
      using S = decltype(s);
      const bool vec = rms_vec<T>(dim, {&x, &weight, &dy, &dres, &dx});
      const int64_t packs = dim / Pack<T>::size;
      const int threads = row_threads(packs);
      const int64_t per_thread = (packs + threads - 1) / threads;
      if (vec && dweight.defined() && per_thread <= 4) {
        // Enough blocks to fill the device (2048 threads per SM), but at most one per row.
        const int64_t blocks = std::min<int64_t>(rows, int64_t{sm_count} * (2048 / threads));
        Tensor partial = Tensor::empty({blocks, dim}, std::is_same_v<A, double> ? DType::f64 : DType::f32, x.device());
        auto launch = [&](auto ppt) {
          rms_norm_backward_fused_kernel<T, S, decltype(ppt)::value><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
              rows, dim, ptr<T>(x), ptr_or_null<T>(weight), ptr<S>(rstd), ptr<T>(dy), ptr_or_null<T>(dres), ptr<T>(dx),
              ptr<A>(partial));
        };
        if (per_thread == 1) launch(std::integral_constant<int, 1>{});
        else if (per_thread == 2) launch(std::integral_constant<int, 2>{});
        else launch(std::integral_constant<int, 4>{});
        CUDA_CHECK_LAUNCH();
        column_reduce<A, T>(stream, blocks, dim, LoadPartial<A>{ptr<A>(partial), dim}, ptr<T>(dweight), true);
        return;
      }
      if (vec) {
        rms_norm_backward_kernel<T, S, true><<<row_grid(rows), row_threads(dim / Pack<T>::size), 0, stream>>>(
            rows, dim, ptr<T>(x), ptr_or_null<T>(weight), ptr<S>(rstd), ptr<T>(dy), ptr_or_null<T>(dres), ptr<T>(dx));
      } else {
        rms_norm_backward_kernel<T, S, false><<<row_grid(rows), row_threads(dim), 0, stream>>>(
            rows, dim, ptr<T>(x), ptr_or_null<T>(weight), ptr<S>(rstd), ptr<T>(dy), ptr_or_null<T>(dres), ptr<T>(dx));
      }
      CUDA_CHECK_LAUNCH();
      if (dweight.defined())
        column_reduce<A, T>(stream, rows, dim, GradXhat<T, S>{ptr<T>(dy), ptr<T>(x), nullptr, ptr<S>(rstd), dim},
                            ptr<T>(dweight), true);
    });
  });
}
}  // namespace

void CudaBackend::rms_norm_forward(const Tensor& x, const Tensor& weight, double eps, const Tensor& y,
                                   const Tensor& rstd) {
  launch_rms_forward(stream_, x, Tensor(), Tensor(), weight, eps, y, rstd, "rms_norm");
}

void CudaBackend::add_rms_norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps,
                                       const Tensor& sum, const Tensor& y, const Tensor& rstd) {
  launch_rms_forward(stream_, x, residual, sum, weight, eps, y, rstd, "add_rms_norm");
}

void CudaBackend::rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                                    const Tensor& dx, const Tensor& dweight) {
  launch_rms_backward(stream_, sm_count_, x, weight, rstd, dy, Tensor(), dx, dweight, "rms_norm_backward");
}

void CudaBackend::rms_norm_backward_add(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                                        const Tensor& dresidual, const Tensor& dx, const Tensor& dweight) {
  launch_rms_backward(stream_, sm_count_, x, weight, rstd, dy, dresidual, dx, dweight, "rms_norm_backward_add");
}

void CudaBackend::layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                                     const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  const int64_t dim = x.size(-1), rows = dim ? x.numel() / dim : 0;
  if (rows == 0) return;
  if (mean.dtype() != rstd.dtype()) throw std::invalid_argument("layer_norm: mean and rstd dtypes differ");
  dispatch_float(x.dtype(), "layer_norm", [&](auto t) {
    using T = decltype(t);
    dispatch_stat<T>(rstd, "layer_norm", [&](auto s) {
      using S = decltype(s);
      layer_norm_forward_kernel<T, S><<<row_grid(rows), row_threads(dim), 0, stream_>>>(
          rows, dim, ptr<T>(x), ptr_or_null<T>(weight), ptr_or_null<T>(bias), eps, ptr<T>(y), ptr<S>(mean),
          ptr<S>(rstd));
      CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                      const Tensor& dy, const Tensor& dx, const Tensor& dweight,
                                      const Tensor& dbias) {
  const int64_t dim = x.size(-1), rows = dim ? x.numel() / dim : 0;
  if (rows == 0) return;
  if (mean.dtype() != rstd.dtype()) throw std::invalid_argument("layer_norm_backward: mean and rstd dtypes differ");
  dispatch_float(x.dtype(), "layer_norm_backward", [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    dispatch_stat<T>(rstd, "layer_norm_backward", [&](auto s) {
      using S = decltype(s);
      layer_norm_backward_kernel<T, S><<<row_grid(rows), row_threads(dim), 0, stream_>>>(
          rows, dim, ptr<T>(x), ptr_or_null<T>(weight), ptr<S>(mean), ptr<S>(rstd), ptr<T>(dy), ptr<T>(dx));
      CUDA_CHECK_LAUNCH();
      if (dweight.defined())
        column_reduce<A, T>(stream_, rows, dim,
                            GradXhat<T, S>{ptr<T>(dy), ptr<T>(x), ptr<S>(mean), ptr<S>(rstd), dim}, ptr<T>(dweight),
                            true);
      if (dbias.defined()) column_reduce<A, T>(stream_, rows, dim, GradSum<T>{ptr<T>(dy), dim}, ptr<T>(dbias), true);
    });
  });
}

}  // namespace pt::cuda
