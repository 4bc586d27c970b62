// Device-side helpers shared by the kernel files: dtype dispatch, conversions, strided indexing,
// warp/block reductions and launch-size helpers. Included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "core/engine/tensor.h"
#include "cuda/backend.h"
#include "cuda/check.h"

namespace pt::cuda {

using bf16_t = __nv_bfloat16;

// ---------------------------------------------------------------- dtypes
// Accumulation type: fp32 for fp32 and bf16 storage, fp64 for fp64.
template <class T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <class T> using acc_t = typename AccType<T>::type;

template <class T> constexpr DType dtype_tag() {
  if constexpr (std::is_same_v<T, float>) return DType::f32;
  else if constexpr (std::is_same_v<T, double>) return DType::f64;
  else if constexpr (std::is_same_v<T, bf16_t>) return DType::bf16;
  else if constexpr (std::is_same_v<T, int32_t>) return DType::i32;
  else return DType::i64;
}

// Value conversion with the CPU backend's rules (bf16 <-> others go through float, round to nearest even).
template <class D, class S>
__device__ __forceinline__ D cvt(S v) {
  if constexpr (std::is_same_v<S, D>) {
    return v;
  } else if constexpr (std::is_same_v<S, bf16_t>) {
    return cvt<D>(__bfloat162float(v));
  } else if constexpr (std::is_same_v<D, bf16_t>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else {
    return static_cast<D>(v);
  }
}

// Calls f(T{}) with T = float, double or __nv_bfloat16 for the dtype.
template <class F>
void dispatch_float(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::bf16: f(bf16_t{}); return;
    default:
      throw std::invalid_argument(std::string(op) + ": dtype " + dtype_name(dtype) +
                                  " is not supported by the CUDA backend (use f32, bf16 or f64)");
  }
}

// Any dtype, floating or integer (copies and fills).
template <class F>
void dispatch_any(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::bf16: f(bf16_t{}); return;
    case DType::i32: f(int32_t{}); return;
    case DType::i64: f(int64_t{}); return;
  }
}

// Statistics tensors (norm mean/rstd, attention and cross-entropy lse, per-row losses) are either
// the data dtype or f32 (ops.cpp allocates f32 ones for bf16 data). Calls f(S{}) accordingly.
template <class T, class F>
void dispatch_stat(const Tensor& t, const char* op, F&& f) {
  if (t.dtype() == dtype_tag<T>()) {
    f(T{});
  } else if (t.dtype() == DType::f32) {
    f(float{});
  } else {
    throw std::invalid_argument(std::string(op) + ": statistics tensor " + t.describe() + " must be f32 or " +
                                dtype_name(dtype_tag<T>()));
  }
}

template <class T> T* ptr(const Tensor& t) { return static_cast<T*>(t.raw_data()); }
template <class T> T* ptr_or_null(const Tensor& t) { return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr; }

// Reads id i of an i32/i64 id array.
__device__ __forceinline__ int64_t read_id(const void* ids, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(ids)[i] : static_cast<int64_t>(static_cast<const int32_t*>(ids)[i]);
}

// Records the first data error a kernel finds (see DeviceError in backend.h).
__device__ __forceinline__ void report_error(DeviceError* err, int code, long long value, long long position,
                                             long long limit) {
  if (atomicCAS(&err->code, 0, code) == 0) {
    err->value = value;
    err->position = position;
    err->limit = limit;
  }
}

// ---------------------------------------------------------------- launch sizes
constexpr int kThreads = 256;
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));  // grid-stride beyond
}
// One block per row, up to kThreads threads (a multiple of 32 no larger than needed).
inline int row_threads(int64_t cols, int max_threads = kThreads) {
  int t = 32;
  while (t < max_threads && t < cols) t *= 2;
  return t;
}
inline unsigned row_grid(int64_t rows) { return static_cast<unsigned>(std::min<int64_t>(rows, int64_t{1} << 20)); }

#define PT_GRID_STRIDE(i, n)                                                                      \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);          \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
#define PT_ROW_LOOP(r, rows) for (int64_t r = blockIdx.x; r < (rows); r += gridDim.x)

// ---------------------------------------------------------------- strided indexing
// Shape and per-operand strides (in elements) of up to kMaxDims dims, passed by value to kernels.
constexpr int kMaxDims = 8;
template <int N>
struct StridedMeta {
  int nd = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};
  bool contiguous = true;  // every operand dense row-major (offset == linear index)
};

// Element offsets of operand k for linear index i (row-major over meta.shape).
template <int N>
__device__ __forceinline__ void strided_offsets(const StridedMeta<N>& m, int64_t i, int64_t (&off)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) off[k] = 0;
  for (int d = m.nd - 1; d >= 0; --d) {
    const int64_t size = m.shape[d];
    const int64_t idx = i % size;
    i /= size;
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] += idx * m.strides[k][d];
  }
}

// Builds the meta for one shape and N stride vectors, dropping size-1 dims and merging dims that
// are contiguous in every operand (so up to 8 "real" dims of any rank are supported).
template <int N>
StridedMeta<N> make_meta(const Shape& shape, const std::array<const Shape*, N>& strides, const char* op) {
  StridedMeta<N> m;
  std::vector<int64_t> sh;
  std::vector<std::array<int64_t, N>> st;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    std::array<int64_t, N> s;
    for (int k = 0; k < N; ++k) s[k] = (*strides[k])[d];
    if (!sh.empty()) {
      bool mergeable = true;
      for (int k = 0; k < N; ++k) mergeable = mergeable && st.back()[k] == s[k] * shape[d];
      if (mergeable) {
        sh.back() *= shape[d];
        st.back() = s;
        continue;
      }
    }
    sh.push_back(shape[d]);
    st.push_back(s);
  }
  if (sh.size() > static_cast<size_t>(kMaxDims))
    throw std::invalid_argument(std::string(op) + ": strided view of shape " + shape_str(shape) + " has more than " +
                                std::to_string(kMaxDims) + " non-mergeable dims");
  m.nd = static_cast<int>(sh.size());
  for (int d = 0; d < m.nd; ++d) {
    m.shape[d] = sh[size_t(d)];
    for (int k = 0; k < N; ++k) m.strides[k][d] = st[size_t(d)][size_t(k)];
  }
  m.contiguous = m.nd == 0 || (m.nd == 1 && [&] {
                   for (int k = 0; k < N; ++k)
                     if (m.strides[k][0] != 1) return false;
                   return true;
                 }());
  return m;
}

// ---------------------------------------------------------------- reductions
template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32 (<= 1024).
// Deterministic: fixed shuffle tree, fixed warp order.
template <class A>
__device__ A block_sum(A v) {
  __shared__ A shared[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // the previous call's readers are done with `shared`
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A total = lane < warps ? shared[lane] : A(0);
  return warp_sum(total);
}
template <class A>
__device__ A block_max(A v) {
  __shared__ A shared[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A total = lane < warps ? shared[lane] : A(-INFINITY);
  return warp_max(total);
}

// ---------------------------------------------------------------- vectorised access
// 16-byte packs of T for 128-bit loads/stores on contiguous data.
template <class T>
struct alignas(16) Pack {
  static constexpr int size = 16 / sizeof(T);
  T v[size];
};
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---------------------------------------------------------------- column reductions
// Deterministic sums over the rows of a [rows, cols] problem: out[c] (+)= sum_r f(r, c).
// Stage 1: blocks of 32 columns x 8 row lanes, gridDim.y row chunks, partial sums to scratch
// [chunks, cols] in A (fixed per-thread order, fixed shared-memory tree over the 8 row lanes).
// Stage 2: one thread per column adds the chunks in order. Used for norm weight/bias grads and
// sum_to over leading dims. No atomics, so results are bit-identical run to run.
template <class A, class F>
__global__ void column_partial_kernel(int64_t rows, int64_t cols, int64_t rows_per_chunk, F f, A* partial) {
  __shared__ A tile[8][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  A acc = 0;
  if (c < cols)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) acc += f(r, c);
  tile[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    A total = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) total += tile[k][threadIdx.x];
    partial[static_cast<int64_t>(blockIdx.y) * cols + c] = total;
  }
}

template <class A, class T>
__global__ void column_final_kernel(int64_t chunks, int64_t cols, const A* partial, bool accumulate, T* out) {
  PT_GRID_STRIDE(c, cols) {
    A total = accumulate ? cvt<A>(out[c]) : A(0);
    for (int64_t k = 0; k < chunks; ++k) total += partial[k * cols + c];
    out[c] = cvt<T>(total);
  }
}

template <class A, class T, class F>
void column_reduce(cudaStream_t stream, int64_t rows, int64_t cols, F f, T* out, bool accumulate) {
  if (cols == 0) return;
  const int64_t chunks = std::clamp<int64_t>((rows + 255) / 256, 1, 256);
  const int64_t rows_per_chunk = std::max<int64_t>(1, (rows + chunks - 1) / chunks);
  Tensor partial = Tensor::empty({chunks, cols}, std::is_same_v<A, double> ? DType::f64 : DType::f32, Device::cuda());
  const dim3 grid(static_cast<unsigned>((cols + 31) / 32), static_cast<unsigned>(chunks));
  column_partial_kernel<A, F><<<grid, dim3(32, 8), 0, stream>>>(rows, cols, rows_per_chunk, f, ptr<A>(partial));
  CUDA_CHECK_LAUNCH();
  column_final_kernel<A, T><<<grid_for(cols), kThreads, 0, stream>>>(chunks, cols, ptr<A>(partial), accumulate, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace pt::cuda
