// Causal grouped-query attention, forward and backward, behind a dispatcher.
// q [B, T, Hq, D], k/v [B, T, Hkv, D], query head h reads kv head h / (Hq / Hkv); lse [B, Hq, T]
// (f32 or the data dtype) = the natural log-sum-exp of each row of scale * q k^T over keys j <= t.
// Every implementation stores exactly that lse and every backward consumes it, so a forward of one
// implementation and a backward of another are consistent.
//
// Implementations (AttentionImpl, cuda/register.h; PRETRAIN_ATTENTION = auto|cudnn|tiled|simple):
//   cudnn  : cuDNN's fused flash attention (cuda/cudnn_sdpa.{h,cpp}); bf16 only.
//   tiled  : the FlashAttention-2 style SIMT kernels below; f32 and bf16, head_dim <= 128.
//   simple : warp-per-row kernels; f32, bf16, f64, head_dim <= 256 (the reference on the GPU).
//   auto   : cudnn for bf16 when it supports the problem, else tiled when it can, else simple.
//            Forward and backward pick by the same rule. The first pick per (dtype, head_dim,
//            direction) is logged (and, for bf16, why cuDNN was skipped).
//
// ---- simple (warp per row; O(T^2 D) with no tiling through shared memory beyond one row per warp)
// D <= 256 (each lane keeps D/32 accumulators in registers). Math in fp32 (fp64 for f64).
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
//
// ---- tiled (FlashAttention-2 style, SIMT fp32 FMAs, no tensor cores; the f32 path and the bf16
// fallback). Templated on the padded head dim DP in {32, 64, 128} (D <= DP; dims >= D are zero in
// shared memory and never stored). 256 threads = 16 x 16: tx = thread % 16, ty = thread / 16.
// Tiles of rows x DP are staged in shared memory as fp32 (bf16 widened on load) with a row stride
// of DP + 4 floats (16-byte rows, conflict-free float4 reads); global loads are 16-byte vectors
// when D is a multiple of 16 bytes' worth of elements and the tensors are 16-byte aligned, else
// scalar. All tiles past T are zero-filled and masked.
// Two shared building blocks:
//   dot_tiles : S[i][j] = A[row_i] . B[col_j] with row_i = ty*RM + i (RM rows per thread) and
//               col_j = tx + 16 j (RN columns per thread), float4 along D.
//   accumulate: acc[i][dims] += sum_j P[row_i][j] X[j][dims], the thread owning dims
//               c*16*V + tx*V + [0, V) (V = min(4, DP/16)), P read as float4 along j.
// forward: block = (b, h, query tile of Br = 64 rows), heaviest (last) tiles launched first.
//   Q tile stays in shared memory; loop over key tiles of Bc keys (64 for DP <= 64, 32 for 128)
//   up to the causal limit: K, V tiles to shared memory, S = scale Q K^T in registers (causal mask
//   c <= t), online softmax (row max/sum over the 16 lanes of a row by shuffles), P to shared
//   memory, O = O corr + P V in registers. out = O / l, lse = m + log l.
// backward: delta = rowsum(dout * out) (the simple delta kernel), then two deterministic kernels
//   (no atomics), both recomputing P = exp(scale q.k - lse) and dS = P (dout.v - delta) scale:
//   dk/dv: block = (b, hk, key tile of 64 keys (32 for DP = 128)); K, V tiles stay in shared
//     memory; loops over the group's query heads and over query tiles of 32 from the key tile's
//     start: Q, dout, lse, delta tiles to shared memory, P and dS (keys x queries) to shared
//     memory, dV += P dout, dK += dS Q in registers.
//   dq:    block = (b, h, query tile of 64 queries (32 for DP = 128)); Q, dout, lse, delta stay in
//     shared memory; loops over key tiles of 32 up to the causal limit: dS to shared memory,
//     dQ += dS K in registers.
// Shared memory per block (bytes), f32 staging whatever the dtype:
//   DP = 32: fwd 45056, dkdv 46336, dq 37376;  DP = 64: 69632, 70912, 61952;
//   DP = 128: 76800, 77056, 72448  (above 48 KB the limit is raised with cudaFuncSetAttribute).
// __launch_bounds__(256, 2): two blocks (16 warps) per SM, <= 128 registers per thread.
#include <climits>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/cudnn_sdpa.h"
#include "cuda/register.h"

namespace pt::cuda {

// Host-only logging (cuda/attention_log.cpp): spdlog's fmt headers do not compile under nvcc.
void attention_log(bool warning, const std::string& message);

namespace {

struct AttnDims {
  int64_t B, T, Hq, Hkv, D, group;
  __device__ int64_t q_off(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * Hq + h) * D; }
  __device__ int64_t kv_off(int64_t b, int64_t t, int64_t hk) const { return ((b * T + t) * Hkv + hk) * D; }
};

// ================================================================ simple (warp per row)
namespace simple {

constexpr int kMaxHeadDim = 256;
constexpr int kChunks = kMaxHeadDim / 32;
constexpr int kWarpsPerBlock = 4;

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

unsigned warp_grid(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, 1, int64_t{1} << 20));
}

}  // namespace simple

// ================================================================ tiled (FlashAttention-2 style)
namespace tiled {

constexpr int kThreads = 256;  // 16 x 16
constexpr int kMaxHeadDim = 128;

template <int DP>
struct Cfg {
  static_assert(DP == 32 || DP == 64 || DP == 128, "padded head dim");
  static constexpr int kStride = DP + 4;          // floats per shared-memory row of a [rows, DP] tile
  static constexpr int kDims = DP / 16;           // output dims per thread
  static constexpr int kVec = kDims < 4 ? kDims : 4;
  static constexpr int kChunks = kDims / kVec;    // dims c*16*kVec + tx*kVec + [0, kVec)
  // forward: query rows x key columns
  static constexpr int kFwdRows = 64, kFwdCols = DP <= 64 ? 64 : 32;
  // dk/dv: key rows x query columns
  static constexpr int kKvRows = DP <= 64 ? 64 : 32, kKvCols = 32;
  // dq: query rows x key columns
  static constexpr int kQRows = DP <= 64 ? 64 : 32, kQCols = 32;

  static constexpr int kFwdFloats = kFwdRows * kStride + 2 * kFwdCols * kStride + kFwdRows * (kFwdCols + 4);
  static constexpr int kKvFloats =
      2 * kKvRows * kStride + 2 * kKvCols * kStride + 2 * kKvRows * (kKvCols + 4) + 2 * kKvCols;
  static constexpr int kQFloats = 2 * kQRows * kStride + 2 * kQCols * kStride + kQRows * (kQCols + 4) + 2 * kQRows;

  static_assert(kFwdRows % 16 == 0 && kFwdCols % 16 == 0 && kKvRows % 16 == 0 && kKvCols % 16 == 0 &&
                kQRows % 16 == 0 && kQCols % 16 == 0, "tiles are multiples of the 16 x 16 thread grid");
};

__device__ __forceinline__ float max16(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float sum16(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__host__ __device__ constexpr int64_t round_up4(int64_t x) { return (x + 3) & ~int64_t{3}; }

// Rows [0, R) of a tile whose row r starts at g + r * row_stride (elements) into s [R][DP + 4] as
// fp32: rows >= rows_left and dims >= D are zero. Each thread moves 16-byte units of the source
// (4 f32 or 8 bf16); vec: every unit is one aligned 16-byte load (D a multiple of the unit,
// 16-byte aligned base), else element loads.
template <class T, int R, int DP>
__device__ __forceinline__ void load_tile(float* __restrict__ s, const T* __restrict__ g, int64_t row_stride,
                                          int64_t rows_left, int D, bool vec) {
  constexpr int kUnit = 16 / static_cast<int>(sizeof(T));
  constexpr int kUnits = DP / kUnit;  // per row
  constexpr int kTotal = R * kUnits;
  constexpr int S = Cfg<DP>::kStride;
#pragma unroll
  for (int it = 0; it < (kTotal + kThreads - 1) / kThreads; ++it) {
    const int idx = static_cast<int>(threadIdx.x) + it * kThreads;
    if (kTotal % kThreads == 0 || idx < kTotal) {
      const int r = idx / kUnits, d0 = (idx % kUnits) * kUnit;
      float x[kUnit];
#pragma unroll
      for (int e = 0; e < kUnit; ++e) x[e] = 0.f;
      if (r < rows_left && d0 < D) {
        const T* src = g + r * row_stride + d0;
        if (vec) {
          const Pack<T> p = *reinterpret_cast<const Pack<T>*>(src);
#pragma unroll
          for (int e = 0; e < kUnit; ++e) x[e] = cvt<float>(p.v[e]);
        } else {
#pragma unroll
          for (int e = 0; e < kUnit; ++e)
            if (d0 + e < D) x[e] = cvt<float>(src[e]);
        }
      }
      float4* dst = reinterpret_cast<float4*>(s + r * S + d0);
#pragma unroll
      for (int w = 0; w < kUnit / 4; ++w) dst[w] = make_float4(x[4 * w], x[4 * w + 1], x[4 * w + 2], x[4 * w + 3]);
    }
  }
}

// acc[i][j] += A[ty*RM + i][0:dlim] . B[tx + 16 j][0:dlim]; A and B are [rows][DP + 4] tiles, dlim a
// multiple of 4 (dims past D are zero).
template <int RM, int RN, int DP>
__device__ __forceinline__ void dot_tiles(const float* __restrict__ A, const float* __restrict__ B, int dlim,
                                          float (&acc)[RM][RN]) {
  constexpr int S = Cfg<DP>::kStride;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const float* a = A + ty * RM * S;
  const float* b = B + tx * S;
#pragma unroll 1
  for (int d = 0; d < dlim; d += 4) {
    float4 av[RM], bv[RN];
#pragma unroll
    for (int i = 0; i < RM; ++i) av[i] = *reinterpret_cast<const float4*>(a + i * S + d);
#pragma unroll
    for (int j = 0; j < RN; ++j) bv[j] = *reinterpret_cast<const float4*>(b + j * 16 * S + d);
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) {
        acc[i][j] = fmaf(av[i].x, bv[j].x, acc[i][j]);
        acc[i][j] = fmaf(av[i].y, bv[j].y, acc[i][j]);
        acc[i][j] = fmaf(av[i].z, bv[j].z, acc[i][j]);
        acc[i][j] = fmaf(av[i].w, bv[j].w, acc[i][j]);
      }
  }
}

// acc[i][c*V + e] += sum_{j < jlim} P[ty*RM + i][j] * X[j][c*16*V + tx*V + e]; P has row stride PS
// floats, X is a [rows][DP + 4] tile; jlim a multiple of 4 (P is zero past the valid columns).
template <int RM, int PS, int DP>
__device__ __forceinline__ void accumulate(const float* __restrict__ P, const float* __restrict__ X, int jlim,
                                           float (&acc)[RM][DP / 16]) {
  using C = Cfg<DP>;
  constexpr int S = C::kStride, V = C::kVec, NC = C::kChunks;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const float* p = P + ty * RM * PS;
  const float* x = X + tx * V;
#pragma unroll 2
  for (int j = 0; j < jlim; j += 4) {
    float pv[RM][4];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const float4 t = *reinterpret_cast<const float4*>(p + i * PS + j);
      pv[i][0] = t.x;
      pv[i][1] = t.y;
      pv[i][2] = t.z;
      pv[i][3] = t.w;
    }
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      float xv[NC][V];
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const float* src = x + (j + jj) * S + c * 16 * V;
        if constexpr (V == 4) {
          const float4 t = *reinterpret_cast<const float4*>(src);
          xv[c][0] = t.x;
          xv[c][1] = t.y;
          xv[c][2] = t.z;
          xv[c][3] = t.w;
        } else {
          static_assert(V == 2, "vector width");
          const float2 t = *reinterpret_cast<const float2*>(src);
          xv[c][0] = t.x;
          xv[c][1] = t.y;
        }
      }
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int c = 0; c < NC; ++c)
#pragma unroll
          for (int e = 0; e < V; ++e) acc[i][c * V + e] = fmaf(pv[i][jj], xv[c][e], acc[i][c * V + e]);
    }
  }
}

// g[r * row_stride + d] = acc * mul[i] for the thread's rows r = ty*RM + i < rows_left and dims d < D.
template <class T, int RM, int DP>
__device__ __forceinline__ void store_rows(T* __restrict__ g, int64_t row_stride, int64_t rows_left, int D,
                                           const float (&acc)[RM][DP / 16], const float (&mul)[RM]) {
  using C = Cfg<DP>;
  constexpr int V = C::kVec, NC = C::kChunks;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int r = ty * RM + i;
    if (r >= rows_left) continue;
    T* row = g + r * row_stride;
#pragma unroll
    for (int c = 0; c < NC; ++c)
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const int d = c * 16 * V + tx * V + e;
        if (d < D) row[d] = cvt<T>(acc[i][c * V + e] * mul[i]);
      }
  }
}

template <class T, class L, int DP>
__global__ void __launch_bounds__(kThreads, 2)
    forward_kernel(AttnDims dm, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                   float scale, T* __restrict__ out, L* __restrict__ lse, bool vec) {
  using C = Cfg<DP>;
  constexpr int Br = C::kFwdRows, Bc = C::kFwdCols, RM = Br / 16, RN = Bc / 16, S = C::kStride, PS = Bc + 4;
  constexpr int ND = C::kDims;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* Qs = reinterpret_cast<float*>(smem_raw);
  float* Ks = Qs + Br * S;
  float* Vs = Ks + Bc * S;
  float* Ps = Vs + Bc * S;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t n = dm.T, BH = dm.B * dm.Hq, ntiles = (n + Br - 1) / Br;
  const int64_t bh = blockIdx.x % BH, tile = ntiles - 1 - blockIdx.x / BH;  // heaviest tiles first
  const int64_t b = bh / dm.Hq, h = bh % dm.Hq, hk = h / dm.group, q0 = tile * Br;
  const int D = static_cast<int>(dm.D), dlim = static_cast<int>(round_up4(D));
  const int64_t q_stride = dm.Hq * dm.D, kv_stride = dm.Hkv * dm.D;

  load_tile<T, Br, DP>(Qs, q + dm.q_off(b, q0, h), q_stride, n - q0, D, vec);
  float o[RM][ND], m[RM], l[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int e = 0; e < ND; ++e) o[i][e] = 0.f;
  }
  const int64_t kv_end = min(n, q0 + Br);  // keys j <= t < q0 + Br
  for (int64_t k0 = 0; k0 < kv_end; k0 += Bc) {
    __syncthreads();  // the previous tile's readers of Ks, Vs, Ps are done
    load_tile<T, Bc, DP>(Ks, k + dm.kv_off(b, k0, hk), kv_stride, n - k0, D, vec);
    load_tile<T, Bc, DP>(Vs, v + dm.kv_off(b, k0, hk), kv_stride, n - k0, D, vec);
    __syncthreads();
    float s[RM][RN];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) s[i][j] = 0.f;
    dot_tiles<RM, RN, DP>(Qs, Ks, dlim, s);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const int64_t t = q0 + ty * RM + i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < RN; ++j) {
        const int64_t c = k0 + tx + 16 * j;
        s[i][j] = c <= t ? s[i][j] * scale : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      mx = max16(mx);
      const float m_new = fmaxf(m[i], mx);
      const float base = m_new == -INFINITY ? 0.f : m_new;  // a row with no key yet: p = 0, no NaN
      const float corr = expf(m[i] - base);
      m[i] = m_new;
      float rs = 0.f;
#pragma unroll
      for (int j = 0; j < RN; ++j) {
        const float p = expf(s[i][j] - base);
        Ps[(ty * RM + i) * PS + tx + 16 * j] = p;
        rs += p;
      }
      l[i] = l[i] * corr + rs;  // per-thread partial over its own columns; reduced at the end
#pragma unroll
      for (int e = 0; e < ND; ++e) o[i][e] *= corr;
    }
    __syncthreads();
    accumulate<RM, PS, DP>(Ps, Vs, static_cast<int>(min(int64_t{Bc}, round_up4(kv_end - k0))), o);
  }
  float inv[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const float lt = sum16(l[i]);
    inv[i] = 1.f / lt;
    const int64_t t = q0 + ty * RM + i;
    if (tx == 0 && t < n) lse[(b * dm.Hq + h) * n + t] = cvt<L>(m[i] + logf(lt));
  }
  store_rows<T, RM, DP>(out + dm.q_off(b, q0, h), q_stride, n - q0, D, o, inv);
}

template <class T, class L, int DP>
__global__ void __launch_bounds__(kThreads, 2)
    dkdv_kernel(AttnDims dm, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                const L* __restrict__ lse, const float* __restrict__ delta, const T* __restrict__ dout, float scale,
                T* __restrict__ dk, T* __restrict__ dv, bool vec) {
  using C = Cfg<DP>;
  constexpr int Bk = C::kKvRows, Bq = C::kKvCols, RM = Bk / 16, RN = Bq / 16, S = C::kStride, PS = Bq + 4;
  constexpr int ND = C::kDims;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* Ks = reinterpret_cast<float*>(smem_raw);
  float* Vs = Ks + Bk * S;
  float* Qs = Vs + Bk * S;
  float* Gs = Qs + Bq * S;   // dout
  float* Ps = Gs + Bq * S;   // [Bk][Bq + 4]
  float* Ds = Ps + Bk * PS;  // dS, [Bk][Bq + 4]
  float* ls = Ds + Bk * PS;  // lse of the query tile
  float* dl = ls + Bq;       // delta of the query tile
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t n = dm.T, BH = dm.B * dm.Hkv;
  const int64_t bh = blockIdx.x % BH, tile = blockIdx.x / BH;  // low key tiles (most queries) first
  const int64_t b = bh / dm.Hkv, hk = bh % dm.Hkv, k0 = tile * Bk;
  const int D = static_cast<int>(dm.D), dlim = static_cast<int>(round_up4(D));
  const int64_t q_stride = dm.Hq * dm.D, kv_stride = dm.Hkv * dm.D;

  load_tile<T, Bk, DP>(Ks, k + dm.kv_off(b, k0, hk), kv_stride, n - k0, D, vec);
  load_tile<T, Bk, DP>(Vs, v + dm.kv_off(b, k0, hk), kv_stride, n - k0, D, vec);
  float dka[RM][ND], dva[RM][ND];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int e = 0; e < ND; ++e) dka[i][e] = dva[i][e] = 0.f;

  for (int64_t h = hk * dm.group; h < (hk + 1) * dm.group; ++h) {
    const L* lrow = lse + (b * dm.Hq + h) * n;
    const float* drow = delta + (b * dm.Hq + h) * n;
    for (int64_t q0 = (k0 / Bq) * Bq; q0 < n; q0 += Bq) {
      __syncthreads();  // the previous tile's readers of Qs, Gs, Ps, Ds, ls, dl are done
      load_tile<T, Bq, DP>(Qs, q + dm.q_off(b, q0, h), q_stride, n - q0, D, vec);
      load_tile<T, Bq, DP>(Gs, dout + dm.q_off(b, q0, h), q_stride, n - q0, D, vec);
      if (threadIdx.x < Bq) {
        const int64_t t = q0 + threadIdx.x;
        ls[threadIdx.x] = t < n ? cvt<float>(lrow[t]) : 0.f;
        dl[threadIdx.x] = t < n ? drow[t] : 0.f;
      }
      __syncthreads();
      float s[RM][RN], dp[RM][RN];
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < RN; ++j) s[i][j] = dp[i][j] = 0.f;
      dot_tiles<RM, RN, DP>(Ks, Qs, dlim, s);
      dot_tiles<RM, RN, DP>(Vs, Gs, dlim, dp);
#pragma unroll
      for (int i = 0; i < RM; ++i) {
        const int64_t c = k0 + ty * RM + i;
#pragma unroll
        for (int j = 0; j < RN; ++j) {
          const int jq = tx + 16 * j;
          const int64_t t = q0 + jq;
          const float p = (c <= t && t < n) ? expf(s[i][j] * scale - ls[jq]) : 0.f;
          Ps[(ty * RM + i) * PS + jq] = p;
          Ds[(ty * RM + i) * PS + jq] = p * (dp[i][j] - dl[jq]) * scale;
        }
      }
      __syncthreads();
      const int jlim = static_cast<int>(min(int64_t{Bq}, round_up4(n - q0)));
      accumulate<RM, PS, DP>(Ps, Gs, jlim, dva);
      accumulate<RM, PS, DP>(Ds, Qs, jlim, dka);
    }
  }
  float one[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) one[i] = 1.f;
  store_rows<T, RM, DP>(dk + dm.kv_off(b, k0, hk), kv_stride, n - k0, D, dka, one);
  store_rows<T, RM, DP>(dv + dm.kv_off(b, k0, hk), kv_stride, n - k0, D, dva, one);
}

template <class T, class L, int DP>
__global__ void __launch_bounds__(kThreads, 2)
    dq_kernel(AttnDims dm, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
              const L* __restrict__ lse, const float* __restrict__ delta, const T* __restrict__ dout, float scale,
              T* __restrict__ dq, bool vec) {
  using C = Cfg<DP>;
  constexpr int Bq = C::kQRows, Bk = C::kQCols, RM = Bq / 16, RN = Bk / 16, S = C::kStride, PS = Bk + 4;
  constexpr int ND = C::kDims;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* Qs = reinterpret_cast<float*>(smem_raw);
  float* Gs = Qs + Bq * S;   // dout
  float* Ks = Gs + Bq * S;
  float* Vs = Ks + Bk * S;
  float* Ds = Vs + Bk * S;   // dS, [Bq][Bk + 4]
  float* ls = Ds + Bq * PS;
  float* dl = ls + Bq;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t n = dm.T, BH = dm.B * dm.Hq, ntiles = (n + Bq - 1) / Bq;
  const int64_t bh = blockIdx.x % BH, tile = ntiles - 1 - blockIdx.x / BH;  // heaviest tiles first
  const int64_t b = bh / dm.Hq, h = bh % dm.Hq, hk = h / dm.group, q0 = tile * Bq;
  const int D = static_cast<int>(dm.D), dlim = static_cast<int>(round_up4(D));
  const int64_t q_stride = dm.Hq * dm.D, kv_stride = dm.Hkv * dm.D;

  load_tile<T, Bq, DP>(Qs, q + dm.q_off(b, q0, h), q_stride, n - q0, D, vec);
  load_tile<T, Bq, DP>(Gs, dout + dm.q_off(b, q0, h), q_stride, n - q0, D, vec);
  if (threadIdx.x < Bq) {
    const int64_t t = q0 + threadIdx.x, row = (b * dm.Hq + h) * n + t;
    ls[threadIdx.x] = t < n ? cvt<float>(lse[row]) : 0.f;
    dl[threadIdx.x] = t < n ? delta[row] : 0.f;
  }
  float acc[RM][ND];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int e = 0; e < ND; ++e) acc[i][e] = 0.f;

  const int64_t kv_end = min(n, q0 + Bq);
  for (int64_t k0 = 0; k0 < kv_end; k0 += Bk) {
    __syncthreads();  // the previous tile's readers of Ks, Vs, Ds are done
    load_tile<T, Bk, DP>(Ks, k + dm.kv_off(b, k0, hk), kv_stride, n - k0, D, vec);
    load_tile<T, Bk, DP>(Vs, v + dm.kv_off(b, k0, hk), kv_stride, n - k0, D, vec);
    __syncthreads();
    float s[RM][RN], dp[RM][RN];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) s[i][j] = dp[i][j] = 0.f;
    dot_tiles<RM, RN, DP>(Qs, Ks, dlim, s);
    dot_tiles<RM, RN, DP>(Gs, Vs, dlim, dp);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const int r = ty * RM + i;
      const int64_t t = q0 + r;
#pragma unroll
      for (int j = 0; j < RN; ++j) {
        const int64_t c = k0 + tx + 16 * j;
        const float p = (c <= t && t < n) ? expf(s[i][j] * scale - ls[r]) : 0.f;
        Ds[r * PS + tx + 16 * j] = p * (dp[i][j] - dl[r]) * scale;
      }
    }
    __syncthreads();
    accumulate<RM, PS, DP>(Ds, Ks, static_cast<int>(min(int64_t{Bk}, round_up4(kv_end - k0))), acc);
  }
  float one[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) one[i] = 1.f;
  store_rows<T, RM, DP>(dq + dm.q_off(b, q0, h), q_stride, n - q0, D, acc, one);
}

// Raises a kernel's dynamic shared-memory limit once when it needs more than the default 48 KB.
template <auto Kernel>
void allow_shared_memory(size_t bytes) {
  if (bytes <= 48 * 1024) return;
  static const bool done = [bytes] {
    int device = 0, optin = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (static_cast<size_t>(optin) < bytes)
      throw std::runtime_error("attention: the tiled kernel needs " + std::to_string(bytes) +
                               " bytes of shared memory per block; the device allows " + std::to_string(optin));
    CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    return true;
  }();
  (void)done;
}

unsigned grid_blocks(int64_t tiles, int64_t heads) {
  const int64_t blocks = tiles * heads;
  if (blocks > INT_MAX)
    throw std::invalid_argument("attention: " + std::to_string(blocks) + " thread blocks exceed the grid limit");
  return static_cast<unsigned>(blocks);
}

// f(std::integral_constant<int, DP>) with DP the padded head dim (32, 64 or 128) for D <= 128.
template <class F>
void dispatch_head_dim(int64_t D, F&& f) {
  if (D <= 32) f(std::integral_constant<int, 32>{});
  else if (D <= 64) f(std::integral_constant<int, 64>{});
  else f(std::integral_constant<int, 128>{});
}

// Whether every operand allows 16-byte vector loads for element type T.
template <class T>
bool vector_loads(int64_t D, std::initializer_list<const Tensor*> tensors) {
  if (D % (16 / static_cast<int64_t>(sizeof(T))) != 0) return false;
  for (const Tensor* t : tensors)
    if (!aligned16(t->raw_data())) return false;
  return true;
}

}  // namespace tiled

// ================================================================ dispatch
AttnDims attention_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  if (q.ndim() != 4 || k.ndim() != 4 || k.shape() != v.shape() || q.size(0) != k.size(0) || q.size(1) != k.size(1) ||
      q.size(3) != k.size(3) || k.size(2) == 0 || q.size(2) % k.size(2) != 0)
    throw std::invalid_argument(std::string(op) + ": q " + shape_str(q.shape()) + ", k " + shape_str(k.shape()) +
                                ", v " + shape_str(v.shape()));
  if (k.dtype() != q.dtype() || v.dtype() != q.dtype())
    throw std::invalid_argument(std::string(op) + ": q " + q.describe() + ", k " + k.describe() + ", v " +
                                v.describe() + " must share one dtype");
  AttnDims dm{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), q.size(2) / k.size(2)};
  return dm;
}

// Outputs and gradients must have the shapes the kernels write (they are preallocated by ops.cpp;
// a wrong one would otherwise be an out-of-bounds write, not an error).
void check_attention_tensors(const char* op, const AttnDims& dm, const Tensor& q, const Tensor& k,
                             std::initializer_list<std::pair<const char*, const Tensor*>> like_q,
                             std::initializer_list<std::pair<const char*, const Tensor*>> like_k, const Tensor& lse) {
  auto bad = [&](const char* name, const Tensor& t, const Shape& want) {
    return std::invalid_argument(std::string(op) + ": " + name + " " + t.describe() + " must have shape " +
                                 shape_str(want) + ", contiguous, of q's dtype (q " + q.describe() + ")");
  };
  for (const auto& [name, t] : like_q)
    if (t->shape() != q.shape() || !t->is_contiguous() || t->dtype() != q.dtype()) throw bad(name, *t, q.shape());
  for (const auto& [name, t] : like_k)
    if (t->shape() != k.shape() || !t->is_contiguous() || t->dtype() != q.dtype()) throw bad(name, *t, k.shape());
  if (lse.numel() != dm.B * dm.Hq * dm.T || !lse.is_contiguous())
    throw std::invalid_argument(std::string(op) + ": lse " + lse.describe() + " must hold [" + std::to_string(dm.B) +
                                ", " + std::to_string(dm.Hq) + ", " + std::to_string(dm.T) + "] contiguous values");
  for (const Tensor* t : {&q, &k})
    if (!t->is_contiguous())
      throw std::invalid_argument(std::string(op) + ": q and k/v must be contiguous, got " + t->describe());
}

// ---- the selected implementation (PRETRAIN_ATTENTION, set_attention_impl)
struct ImplSetting {
  std::mutex mutex;
  bool initialised = false;
  AttentionImpl impl = AttentionImpl::automatic;
  std::string error;  // PRETRAIN_ATTENTION held an invalid value (until set_attention_impl)
};

ImplSetting& impl_setting() {
  static ImplSetting setting;
  return setting;
}

void init_from_env(ImplSetting& s) {
  if (s.initialised) return;
  s.initialised = true;
  const char* env = std::getenv("PRETRAIN_ATTENTION");
  if (env == nullptr || *env == '\0') return;
  const std::string value = env;
  if (value == "auto" || value == "automatic") s.impl = AttentionImpl::automatic;
  else if (value == "cudnn") s.impl = AttentionImpl::cudnn;
  else if (value == "tiled") s.impl = AttentionImpl::tiled;
  else if (value == "simple") s.impl = AttentionImpl::simple;
  else
    s.error = "PRETRAIN_ATTENTION=\"" + value + "\" is not an attention implementation (expected auto, cudnn, tiled or simple)";
}

AttentionImpl current_impl() {
  ImplSetting& s = impl_setting();
  std::lock_guard<std::mutex> lock(s.mutex);
  init_from_env(s);
  if (!s.error.empty()) throw std::invalid_argument(s.error);
  return s.impl;
}

// ---- the cuDNN route: one instance, created at first use, bound to the backend's stream.
// Deliberately never destroyed (like the backend itself): it must outlive static tensors, and
// cuDNN teardown after the CUDA runtime has unloaded at exit is not safe.
struct CudnnHolder {
  std::mutex mutex;
  bool tried = false;
  CudnnSdpa* sdpa = nullptr;
  std::string error;
};

CudnnSdpa* cudnn_instance(cudaStream_t stream, std::string& why) {
  static CudnnHolder* holder = new CudnnHolder();
  std::lock_guard<std::mutex> lock(holder->mutex);
  if (!holder->tried) {
    holder->tried = true;
    try {
      holder->sdpa = new CudnnSdpa(stream);
    } catch (const std::exception& e) {
      holder->error = std::string("cuDNN is unavailable: ") + e.what();
    }
  }
  if (holder->sdpa == nullptr) why = holder->error;
  return holder->sdpa;
}

enum class Route { cudnn, tiled, simple };

const char* route_name(Route r) {
  switch (r) {
    case Route::cudnn: return "cudnn";
    case Route::tiled: return "tiled";
    case Route::simple: return "simple";
  }
  return "?";
}

std::string tiled_unsupported(const Tensor& q) {
  if (q.dtype() != DType::f32 && q.dtype() != DType::bf16)
    return std::string("dtype ") + dtype_name(q.dtype()) + " (the tiled kernel runs f32 and bf16)";
  if (q.size(3) > tiled::kMaxHeadDim)
    return "head_dim " + std::to_string(q.size(3)) + " exceeds the tiled kernel's limit of " +
           std::to_string(tiled::kMaxHeadDim);
  return {};
}

std::string simple_unsupported(const Tensor& q) {
  if (q.dtype() != DType::f32 && q.dtype() != DType::bf16 && q.dtype() != DType::f64)
    return std::string("dtype ") + dtype_name(q.dtype()) + " (the simple kernel runs f32, bf16 and f64)";
  if (q.size(3) > simple::kMaxHeadDim)
    return "head_dim " + std::to_string(q.size(3)) + " exceeds the simple kernel's limit of " +
           std::to_string(simple::kMaxHeadDim);
  return {};
}

std::string problem_str(const Tensor& q, const Tensor& k, const Tensor& lse) {
  return "q " + q.describe() + ", k/v " + k.describe() + ", lse " + lse.describe();
}

// Logs, once per (dtype, head_dim, direction), what `automatic` picked and why it skipped cuDNN.
void log_automatic(const Tensor& q, bool backward, Route route, const std::string& cudnn_why) {
  static std::mutex* mutex = new std::mutex();
  static auto* seen = new std::set<std::tuple<int, int64_t, bool>>();
  {
    std::lock_guard<std::mutex> lock(*mutex);
    if (!seen->insert({static_cast<int>(q.dtype()), q.size(3), backward}).second) return;
  }
  const std::string what = std::string("attention ") + (backward ? "backward" : "forward") + " " +
                           dtype_name(q.dtype()) + " head_dim " + std::to_string(q.size(3));
  try {
    if (!cudnn_why.empty())
      attention_log(true, what + ": automatic attention skips cuDNN: " + cudnn_why + "; using the " +
                              route_name(route) + " kernel");
    attention_log(false, what + ": automatic attention implementation is " + route_name(route));
  } catch (...) {
    // logging must never fail an attention call
  }
}

// Which implementation runs this problem (throws std::invalid_argument when the forced one can't).
Route choose_route(const char* op, AttentionImpl impl, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& lse, bool backward, cudaStream_t stream, CudnnSdpa** sdpa) {
  auto refuse = [&](const char* name, const std::string& why) {
    return std::invalid_argument(std::string(op) + ": attention implementation '" + name +
                                 "' (PRETRAIN_ATTENTION or set_attention_impl) cannot run " + problem_str(q, k, lse) +
                                 ": " + why);
  };
  switch (impl) {
    case AttentionImpl::cudnn: {
      std::string why;
      CudnnSdpa* s = cudnn_instance(stream, why);
      if (s != nullptr) why = s->unsupported_reason(q, k, v, lse, backward);
      if (!why.empty()) throw refuse("cudnn", why);
      *sdpa = s;
      return Route::cudnn;
    }
    case AttentionImpl::tiled: {
      const std::string why = tiled_unsupported(q);
      if (!why.empty()) throw refuse("tiled", why);
      return Route::tiled;
    }
    case AttentionImpl::simple: {
      const std::string why = simple_unsupported(q);
      if (!why.empty()) throw refuse("simple", why);
      return Route::simple;
    }
    case AttentionImpl::automatic:
      break;
  }
  std::string cudnn_why;
  Route route;
  if (q.dtype() == DType::bf16) {
    CudnnSdpa* s = cudnn_instance(stream, cudnn_why);
    if (s != nullptr) {
      try {
        cudnn_why = s->unsupported_reason(q, k, v, lse, backward);
      } catch (const std::exception& e) {
        cudnn_why = e.what();
      }
      if (cudnn_why.empty()) {
        *sdpa = s;
        log_automatic(q, backward, Route::cudnn, {});
        return Route::cudnn;
      }
    }
  }
  const std::string tiled_why = tiled_unsupported(q);
  if (tiled_why.empty()) {
    route = Route::tiled;
  } else {
    const std::string simple_why = simple_unsupported(q);
    if (!simple_why.empty())
      throw std::invalid_argument(std::string(op) + ": no CUDA attention implementation runs " +
                                  problem_str(q, k, lse) + ": " + simple_why);
    route = Route::simple;
  }
  log_automatic(q, backward, route, cudnn_why);
  return route;
}

// ---- launches
template <class T, class L>
void simple_forward(cudaStream_t stream, const AttnDims& dm, const Tensor& q, const Tensor& k, const Tensor& v,
                    double scale, const Tensor& out, const Tensor& lse) {
  using A = acc_t<T>;
  const int64_t rows = dm.B * dm.Hq * dm.T;
  const size_t smem = sizeof(A) * simple::kWarpsPerBlock * dm.D;
  simple::attention_forward_kernel<T, L><<<simple::warp_grid(rows), 32 * simple::kWarpsPerBlock, smem, stream>>>(
      dm, ptr<T>(q), ptr<T>(k), ptr<T>(v), scale, ptr<T>(out), ptr<L>(lse));
  CUDA_CHECK_LAUNCH();
}

template <class T, class L>
void simple_backward(cudaStream_t stream, const AttnDims& dm, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& out, const Tensor& lse, const Tensor& dout, double scale, const Tensor& dq,
                     const Tensor& dk, const Tensor& dv) {
  using A = acc_t<T>;
  const int64_t rows = dm.B * dm.Hq * dm.T, kv_rows = dm.B * dm.Hkv * dm.T;
  constexpr int threads = 32 * simple::kWarpsPerBlock;
  Tensor delta = Tensor::empty({rows}, std::is_same_v<A, double> ? DType::f64 : DType::f32, Device::cuda());
  simple::attention_delta_kernel<T, A><<<simple::warp_grid(rows), threads, 0, stream>>>(dm, ptr<T>(out), ptr<T>(dout),
                                                                                        ptr<A>(delta));
  CUDA_CHECK_LAUNCH();
  const size_t smem = sizeof(A) * simple::kWarpsPerBlock * 2 * dm.D;
  simple::attention_dq_kernel<T, L><<<simple::warp_grid(rows), threads, smem, stream>>>(
      dm, ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<L>(lse), ptr<A>(delta), ptr<T>(dout), scale, ptr<T>(dq));
  CUDA_CHECK_LAUNCH();
  simple::attention_dkdv_kernel<T, L><<<simple::warp_grid(kv_rows), threads, smem, stream>>>(
      dm, ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<L>(lse), ptr<A>(delta), ptr<T>(dout), scale, ptr<T>(dk), ptr<T>(dv));
  CUDA_CHECK_LAUNCH();
}

template <class T, class L>
void tiled_forward(cudaStream_t stream, const AttnDims& dm, const Tensor& q, const Tensor& k, const Tensor& v,
                   double scale, const Tensor& out, const Tensor& lse) {
  const bool vec = tiled::vector_loads<T>(dm.D, {&q, &k, &v});
  tiled::dispatch_head_dim(dm.D, [&](auto dp) {
    constexpr int DP = decltype(dp)::value;
    using C = tiled::Cfg<DP>;
    constexpr auto kernel = tiled::forward_kernel<T, L, DP>;
    const size_t smem = sizeof(float) * C::kFwdFloats;
    tiled::allow_shared_memory<kernel>(smem);
    const unsigned blocks = tiled::grid_blocks((dm.T + C::kFwdRows - 1) / C::kFwdRows, dm.B * dm.Hq);
    kernel<<<blocks, tiled::kThreads, smem, stream>>>(dm, ptr<T>(q), ptr<T>(k), ptr<T>(v), static_cast<float>(scale),
                                                      ptr<T>(out), ptr<L>(lse), vec);
    CUDA_CHECK_LAUNCH();
  });
}

template <class T, class L>
void tiled_backward(cudaStream_t stream, const AttnDims& dm, const Tensor& q, const Tensor& k, const Tensor& v,
                    const Tensor& out, const Tensor& lse, const Tensor& dout, double scale, const Tensor& dq,
                    const Tensor& dk, const Tensor& dv) {
  const int64_t rows = dm.B * dm.Hq * dm.T;
  Tensor delta = Tensor::empty({rows}, DType::f32, Device::cuda());
  simple::attention_delta_kernel<T, float><<<simple::warp_grid(rows), 32 * simple::kWarpsPerBlock, 0, stream>>>(
      dm, ptr<T>(out), ptr<T>(dout), ptr<float>(delta));
  CUDA_CHECK_LAUNCH();
  const bool vec = tiled::vector_loads<T>(dm.D, {&q, &k, &v, &dout});
  const float sc = static_cast<float>(scale);
  tiled::dispatch_head_dim(dm.D, [&](auto dp) {
    constexpr int DP = decltype(dp)::value;
    using C = tiled::Cfg<DP>;
    constexpr auto kv_kernel = tiled::dkdv_kernel<T, L, DP>;
    const size_t kv_smem = sizeof(float) * C::kKvFloats;
    tiled::allow_shared_memory<kv_kernel>(kv_smem);
    const unsigned kv_blocks = tiled::grid_blocks((dm.T + C::kKvRows - 1) / C::kKvRows, dm.B * dm.Hkv);
    kv_kernel<<<kv_blocks, tiled::kThreads, kv_smem, stream>>>(dm, ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<L>(lse),
                                                               ptr<float>(delta), ptr<T>(dout), sc, ptr<T>(dk),
                                                               ptr<T>(dv), vec);
    CUDA_CHECK_LAUNCH();
    constexpr auto q_kernel = tiled::dq_kernel<T, L, DP>;
    const size_t q_smem = sizeof(float) * C::kQFloats;
    tiled::allow_shared_memory<q_kernel>(q_smem);
    const unsigned q_blocks = tiled::grid_blocks((dm.T + C::kQRows - 1) / C::kQRows, dm.B * dm.Hq);
    q_kernel<<<q_blocks, tiled::kThreads, q_smem, stream>>>(dm, ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<L>(lse),
                                                            ptr<float>(delta), ptr<T>(dout), sc, ptr<T>(dq), vec);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

// ================================================================ public
void set_attention_impl(AttentionImpl impl) {
  ImplSetting& s = impl_setting();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.initialised = true;  // an explicit choice replaces the environment's, valid or not
  s.impl = impl;
  s.error.clear();
}

AttentionImpl attention_impl() { return current_impl(); }

const char* attention_impl_name(AttentionImpl impl) {
  switch (impl) {
    case AttentionImpl::automatic: return "auto";
    case AttentionImpl::cudnn: return "cudnn";
    case AttentionImpl::tiled: return "tiled";
    case AttentionImpl::simple: return "simple";
  }
  return "?";
}

void CudaBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, const Tensor& out,
                                    const Tensor& lse) {
  const AttentionImpl impl = current_impl();
  const AttnDims dm = attention_dims("attention", q, k, v);
  check_attention_tensors("attention", dm, q, k, {{"out", &out}}, {{"v", &v}}, lse);
  if (dm.B * dm.Hq * dm.T == 0 || dm.D == 0) return;
  CudnnSdpa* sdpa = nullptr;
  const Route route = choose_route("attention", impl, q, k, v, lse, false, stream_, &sdpa);
  if (route == Route::cudnn) {
    sdpa->forward(q, k, v, scale, out, lse);
    return;
  }
  dispatch_float(q.dtype(), "attention", [&](auto t) {
    using T = decltype(t);
    dispatch_stat<T>(lse, "attention", [&](auto s) {
      using L = decltype(s);
      if constexpr (std::is_same_v<T, double>) {
        simple_forward<T, L>(stream_, dm, q, k, v, scale, out, lse);  // the route is simple for f64
      } else {
        if (route == Route::tiled) tiled_forward<T, L>(stream_, dm, q, k, v, scale, out, lse);
        else simple_forward<T, L>(stream_, dm, q, k, v, scale, out, lse);
      }
    });
  });
}

void CudaBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                     const Tensor& lse, const Tensor& dout, double scale, const Tensor& dq,
                                     const Tensor& dk, const Tensor& dv) {
  const AttentionImpl impl = current_impl();
  const AttnDims dm = attention_dims("attention_backward", q, k, v);
  check_attention_tensors("attention_backward", dm, q, k, {{"out", &out}, {"dout", &dout}, {"dq", &dq}},
                          {{"v", &v}, {"dk", &dk}, {"dv", &dv}}, lse);
  if (dm.B * dm.Hq * dm.T == 0 || dm.D == 0) return;
  CudnnSdpa* sdpa = nullptr;
  const Route route = choose_route("attention_backward", impl, q, k, v, lse, true, stream_, &sdpa);
  if (route == Route::cudnn) {
    sdpa->backward(q, k, v, out, lse, dout, scale, dq, dk, dv);
    return;
  }
  dispatch_float(q.dtype(), "attention_backward", [&](auto t) {
    using T = decltype(t);
    dispatch_stat<T>(lse, "attention_backward", [&](auto s) {
      using L = decltype(s);
      if constexpr (std::is_same_v<T, double>) {
        simple_backward<T, L>(stream_, dm, q, k, v, out, lse, dout, scale, dq, dk, dv);
      } else {
        if (route == Route::tiled) tiled_backward<T, L>(stream_, dm, q, k, v, out, lse, dout, scale, dq, dk, dv);
        else simple_backward<T, L>(stream_, dm, q, k, v, out, lse, dout, scale, dq, dk, dv);
      }
    });
  });
}

}  // namespace pt::cuda
