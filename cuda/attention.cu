// Causal grouped-query attention, forward and backward: simple warp-per-row kernels (correct,
// not fast; O(T^2 D) with no tiling through shared memory beyond one row per warp).
// q [B, T, Hq, D], k/v [B, T, Hkv, D], query head h reads kv head h / (Hq / Hkv); lse [B, Hq, T].
// D <= 256 (each lane keeps D/32 fp32 accumulators in registers). Math in fp32 (fp64 for f64).
//
// forward: one warp per query row (b, h, t). The q row sits in shared memory; keys are taken 32
//   at a time, one key per lane (the lane computes the full dot product), then an online softmax
//   update (running max m, running sum l) and out += p_j v_j with p_j broadcast by shuffles,
//   lanes owning output dims. out = acc / l, lse = m + log(l).
// backward (flash-attention style, recomputing p from lse; deterministic, no atomics):
//   1. delta[b, h, t] = dout_t . out_t                                  (warp per row)
//   2. dq: warp per query row; one key per lane: s = q.k_j, dp = dout.v_j,
//      p = exp(scale s - lse), ds = p (dp - delta) scale;  dq = sum_j ds_j k_j
//   3. dk/dv: warp per key row (b, hk, j); loops over the group's query heads and over queries
//      t >= j, one query per lane:  dk = sum ds q_t,  dv = sum p dout_t
#include "cuda/common.cuh"

namespace pt::cuda {
namespace {

constexpr int kMaxHeadDim = 256;
constexpr int kChunks = kMaxHeadDim / 32;
constexpr int kWarpsPerBlock = 4;

struct AttnDims {
  int64_t B, T, Hq, Hkv, D, group;
  __device__ int64_t q_off(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * Hq + h) * D; }
  __device__ int64_t kv_off(int64_t b, int64_t t, int64_t hk) const { return ((b * T + t) * Hkv + hk) * D; }
};

// dot(smem_row[0:D], g[0:D]) in A, by one lane
template <class A, class T>
__device__ __forceinline__ A dot_row(const A* s, const T* g, int64_t D) {
  A acc = 0;
  for (int64_t d = 0; d < D; ++d) acc += s[d] * cvt<A>(g[d]);
  return acc;
}

template <class A, class T>
__device__ __forceinline__ void load_row(A* s, const T* g, int64_t D, int lane) {
  for (int64_t d = lane; d < D; d += 32) s[d] = cvt<A>(g[d]);
  __syncwarp();
}

template <class T, class L>
__global__ void attention_forward_kernel(AttnDims dm, const T* q, const T* k, const T* v, double scale, T* out,
                                         L* lse) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  A* qs = reinterpret_cast<A*>(smem_raw) + warp * dm.D;
  const int64_t rows = dm.B * dm.Hq * dm.T;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const int64_t t = row % dm.T, h = (row / dm.T) % dm.Hq, b = row / (dm.T * dm.Hq), hk = h / dm.group;
    __syncwarp();
    load_row(qs, q + dm.q_off(b, t, h), dm.D, lane);
    A acc[kChunks];
#pragma unroll
    for (int c = 0; c < kChunks; ++c) acc[c] = 0;
    A m = -INFINITY, l = 0;
    for (int64_t j0 = 0; j0 <= t; j0 += 32) {
      const int64_t j = j0 + lane;
      A s = -INFINITY;
      if (j <= t) s = dot_row(qs, k + dm.kv_off(b, j, hk), dm.D) * A(scale);
      const A m_new = max(m, warp_max(s));
      const A corr = exp(m - m_new);
      const A p = j <= t ? exp(s - m_new) : A(0);
      l = l * corr + warp_sum(p);
#pragma unroll
      for (int c = 0; c < kChunks; ++c) acc[c] *= corr;
      const int count = static_cast<int>(min(int64_t{32}, t - j0 + 1));
      for (int jj = 0; jj < count; ++jj) {
        const A pj = __shfl_sync(0xffffffffu, p, jj);
        const T* vr = v + dm.kv_off(b, j0 + jj, hk);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          const int64_t d = lane + 32 * c;
          if (d < dm.D) acc[c] += pj * cvt<A>(vr[d]);
        }
      }
      m = m_new;
    }
    T* orow = out + dm.q_off(b, t, h);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < dm.D) orow[d] = cvt<T>(acc[c] / l);
    }
    if (lane == 0) lse[(b * dm.Hq + h) * dm.T + t] = cvt<L>(m + log(l));
  }
}

// delta[(b, h, t)] = dout . out
template <class T, class A>
__global__ void attention_delta_kernel(AttnDims dm, const T* out, const T* dout, A* delta) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t rows = dm.B * dm.Hq * dm.T;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const int64_t t = row % dm.T, h = (row / dm.T) % dm.Hq, b = row / (dm.T * dm.Hq);
    const T* o = out + dm.q_off(b, t, h);
    const T* g = dout + dm.q_off(b, t, h);
    A acc = 0;
    for (int64_t d = lane; d < dm.D; d += 32) acc += cvt<A>(g[d]) * cvt<A>(o[d]);
    acc = warp_sum(acc);
    if (lane == 0) delta[row] = acc;  // row == (b * Hq + h) * T + t
  }
}

template <class T, class L>
__global__ void attention_dq_kernel(AttnDims dm, const T* q, const T* k, const T* v, const L* lse,
                                    const acc_t<T>* delta, const T* dout, double scale, T* dq) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  A* qs = reinterpret_cast<A*>(smem_raw) + warp * 2 * dm.D;
  A* gs = qs + dm.D;
  const int64_t rows = dm.B * dm.Hq * dm.T;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const int64_t t = row % dm.T, h = (row / dm.T) % dm.Hq, b = row / (dm.T * dm.Hq), hk = h / dm.group;
    __syncwarp();
    load_row(qs, q + dm.q_off(b, t, h), dm.D, lane);
    load_row(gs, dout + dm.q_off(b, t, h), dm.D, lane);
    const A l = cvt<A>(lse[row]), dl = delta[row], sc = A(scale);
    A acc[kChunks];
#pragma unroll
    for (int c = 0; c < kChunks; ++c) acc[c] = 0;
    for (int64_t j0 = 0; j0 <= t; j0 += 32) {
      const int64_t j = j0 + lane;
      A ds = 0;
      if (j <= t) {
        const A s = dot_row(qs, k + dm.kv_off(b, j, hk), dm.D);
        const A dp = dot_row(gs, v + dm.kv_off(b, j, hk), dm.D);
        const A p = exp(s * sc - l);
        ds = p * (dp - dl) * sc;
      }
      const int count = static_cast<int>(min(int64_t{32}, t - j0 + 1));
      for (int jj = 0; jj < count; ++jj) {
        const A dsj = __shfl_sync(0xffffffffu, ds, jj);
        const T* kr = k + dm.kv_off(b, j0 + jj, hk);
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          const int64_t d = lane + 32 * c;
          if (d < dm.D) acc[c] += dsj * cvt<A>(kr[d]);
        }
      }
    }
    T* dqr = dq + dm.q_off(b, t, h);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < dm.D) dqr[d] = cvt<T>(acc[c]);
    }
  }
}

template <class T, class L>
__global__ void attention_dkdv_kernel(AttnDims dm, const T* q, const T* k, const T* v, const L* lse,
                                      const acc_t<T>* delta, const T* dout, double scale, T* dk, T* dv) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  A* ks = reinterpret_cast<A*>(smem_raw) + warp * 2 * dm.D;
  A* vs = ks + dm.D;
  const int64_t rows = dm.B * dm.Hkv * dm.T;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const int64_t j = row % dm.T, hk = (row / dm.T) % dm.Hkv, b = row / (dm.T * dm.Hkv);
    __syncwarp();
    load_row(ks, k + dm.kv_off(b, j, hk), dm.D, lane);
    load_row(vs, v + dm.kv_off(b, j, hk), dm.D, lane);
    const A sc = A(scale);
    A dk_acc[kChunks], dv_acc[kChunks];
#pragma unroll
    for (int c = 0; c < kChunks; ++c) dk_acc[c] = dv_acc[c] = 0;
    for (int64_t h = hk * dm.group; h < (hk + 1) * dm.group; ++h) {
      for (int64_t t0 = j; t0 < dm.T; t0 += 32) {
        const int64_t t = t0 + lane;
        A ds = 0, p = 0;
        if (t < dm.T) {
          const int64_t srow = (b * dm.Hq + h) * dm.T + t;
          const A s = dot_row(ks, q + dm.q_off(b, t, h), dm.D);
          const A dp = dot_row(vs, dout + dm.q_off(b, t, h), dm.D);
          p = exp(s * sc - cvt<A>(lse[srow]));
          ds = p * (dp - delta[srow]) * sc;
        }
        const int count = static_cast<int>(min(int64_t{32}, dm.T - t0));
        for (int tt = 0; tt < count; ++tt) {
          const A dst = __shfl_sync(0xffffffffu, ds, tt);
          const A pt = __shfl_sync(0xffffffffu, p, tt);
          const T* qr = q + dm.q_off(b, t0 + tt, h);
          const T* gr = dout + dm.q_off(b, t0 + tt, h);
#pragma unroll
          for (int c = 0; c < kChunks; ++c) {
            const int64_t d = lane + 32 * c;
            if (d < dm.D) {
              dk_acc[c] += dst * cvt<A>(qr[d]);
              dv_acc[c] += pt * cvt<A>(gr[d]);
            }
          }
        }
      }
    }
    T* dkr = dk + dm.kv_off(b, j, hk);
    T* dvr = dv + dm.kv_off(b, j, hk);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < dm.D) {
        dkr[d] = cvt<T>(dk_acc[c]);
        dvr[d] = cvt<T>(dv_acc[c]);
      }
    }
  }
}

AttnDims attention_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  if (q.ndim() != 4 || k.ndim() != 4 || k.shape() != v.shape() || q.size(0) != k.size(0) || q.size(1) != k.size(1) ||
      q.size(3) != k.size(3) || k.size(2) == 0 || q.size(2) % k.size(2) != 0)
    throw std::invalid_argument(std::string(op) + ": q " + shape_str(q.shape()) + ", k " + shape_str(k.shape()) +
                                ", v " + shape_str(v.shape()));
  if (q.size(3) > kMaxHeadDim)
    throw std::invalid_argument(std::string(op) + ": head_dim " + std::to_string(q.size(3)) +
                                " exceeds the CUDA attention kernel's limit of " + std::to_string(kMaxHeadDim));
  AttnDims dm{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), q.size(2) / k.size(2)};
  return dm;
}

unsigned warp_grid(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, 1, int64_t{1} << 20));
}

}  // namespace

void CudaBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, const Tensor& out,
                                    const Tensor& lse) {
  const AttnDims dm = attention_dims("attention", q, k, v);
  const int64_t rows = dm.B * dm.Hq * dm.T;
  if (rows == 0 || dm.D == 0) return;
  dispatch_float(q.dtype(), "attention", [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    dispatch_stat<T>(lse, "attention", [&](auto s) {
      using L = decltype(s);
      const size_t smem = sizeof(A) * kWarpsPerBlock * dm.D;
      attention_forward_kernel<T, L><<<warp_grid(rows), 32 * kWarpsPerBlock, smem, stream_>>>(
          dm, ptr<T>(q), ptr<T>(k), ptr<T>(v), scale, ptr<T>(out), ptr<L>(lse));
      CUDA_CHECK_LAUNCH();
    });
  });
}

void CudaBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                     const Tensor& lse, const Tensor& dout, double scale, const Tensor& dq,
                                     const Tensor& dk, const Tensor& dv) {
  const AttnDims dm = attention_dims("attention_backward", q, k, v);
  const int64_t rows = dm.B * dm.Hq * dm.T, kv_rows = dm.B * dm.Hkv * dm.T;
  if (rows == 0 || dm.D == 0) return;
  dispatch_float(q.dtype(), "attention_backward", [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    dispatch_stat<T>(lse, "attention_backward", [&](auto s) {
      using L = decltype(s);
      Tensor delta = Tensor::empty({rows}, std::is_same_v<A, double> ? DType::f64 : DType::f32, Device::cuda());
      attention_delta_kernel<T, A><<<warp_grid(rows), 32 * kWarpsPerBlock, 0, stream_>>>(dm, ptr<T>(out),
                                                                                        ptr<T>(dout), ptr<A>(delta));
      CUDA_CHECK_LAUNCH();
      const size_t smem = sizeof(A) * kWarpsPerBlock * 2 * dm.D;
      attention_dq_kernel<T, L><<<warp_grid(rows), 32 * kWarpsPerBlock, smem, stream_>>>(
          dm, ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<L>(lse), ptr<A>(delta), ptr<T>(dout), scale, ptr<T>(dq));
      CUDA_CHECK_LAUNCH();
      attention_dkdv_kernel<T, L><<<warp_grid(kv_rows), 32 * kWarpsPerBlock, smem, stream_>>>(
          dm, ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<L>(lse), ptr<A>(delta), ptr<T>(dout), scale, ptr<T>(dk),
          ptr<T>(dv));
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace pt::cuda
