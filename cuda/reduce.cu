// Reductions: sum_to (reduce broadcast dims, fp64 accumulation like the CPU reference) and
// sum_squares (global grad norm, fp64, returned to the host).
//
// sum_to has two kernels:
//  * column path: x dense and the reduced dims all lead the kept ones ([R, C] -> [1, C], e.g. a
//    bias gradient): the deterministic two-stage column reduction of common.cuh.
//  * row path: x dense and the reduced dims all trail the kept ones ([R, C] -> [R, 1] with short
//    rows, e.g. a head-wise gate's gradient [B, T, H, D] -> [B, T, H, 1]): one warp per output.
//  * general path (otherwise): one block per output element, threads stride over the reduced elements
//    (offsets through two StridedMetas: kept dims and reduced dims), block tree sum.
// sum_squares: multi-tensor launches of block partials, then one block adds them in order (deterministic).
#include "cuda/common.cuh"

namespace pt::cuda {
namespace {

constexpr int kReduceBlocks = 1024;  // matches the scratch size in backend.cpp

template <class T>
struct LoadDouble {
  const T* x;
  int64_t cols;
  __device__ double operator()(int64_t r, int64_t c) const { return cvt<double>(x[r * cols + c]); }
};

// out[o] = sum of row o of a dense x [n_out, n_red], one warp per row (fp64, fixed order).
template <class T>
__global__ void sum_rows_warp_kernel(int64_t n_out, int64_t n_red, const T* x, T* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * warps + warp; o < n_out;
       o += static_cast<int64_t>(gridDim.x) * warps) {
    const T* row = x + o * n_red;
    double acc = 0;
    for (int64_t r = lane; r < n_red; r += 32) acc += cvt<double>(row[r]);
    acc = warp_sum(acc);
    if (lane == 0) out[o] = cvt<T>(acc);
  }
}

// out[o] = sum over the reduced index r of x[kept_off(o) + red_off(r)]
template <class T>
__global__ void sum_to_kernel(StridedMeta<1> kept, StridedMeta<1> reduced, int64_t n_out, int64_t n_red, const T* x,
                              T* out) {
  PT_ROW_LOOP(o, n_out) {
    int64_t base[1];
    strided_offsets(kept, o, base);
    double acc = 0;
    for (int64_t r = threadIdx.x; r < n_red; r += blockDim.x) {
      int64_t off[1];
      strided_offsets(reduced, r, off);
      acc += cvt<double>(x[base[0] + off[0]]);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[o] = cvt<T>(acc);
  }
}

// sum_squares over many tensors of one dtype per launch: chunk ids run across the tensors (tensor
// t owns [chunk_start[t], chunk_start[t + 1])); a fixed grid strides over the chunks, 128-bit loads
// when VEC; partial[block] = the block's sum of x^2 in fp64 (deterministic for given shapes).
constexpr int kSquaresTensors = 96;
constexpr int64_t kSquaresChunk = 16 * 1024;
template <class T>
struct SquaresBatch {
  const T* x[kSquaresTensors];
  int64_t n[kSquaresTensors];
  int32_t chunk_start[kSquaresTensors + 1];
  int32_t tensors;
};
static_assert(sizeof(SquaresBatch<double>) < 4000, "kernel parameters over 4 KB");

template <class T, bool VEC>
__global__ void sum_squares_multi_kernel(SquaresBatch<T> batch, double* partial) {
  constexpr int P = VEC ? Pack<T>::size : 1;
  double acc = 0;
  const int32_t total = batch.chunk_start[batch.tensors];
  for (int32_t c = blockIdx.x; c < total; c += gridDim.x) {
    int t = 0;
    while (batch.chunk_start[t + 1] <= c) ++t;
    const int64_t begin = static_cast<int64_t>(c - batch.chunk_start[t]) * kSquaresChunk;
    const int64_t end = min(begin + kSquaresChunk, batch.n[t]);
    const T* x = batch.x[t];
    const int64_t vec_end = begin + (end - begin) / P * P;
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * P; i < vec_end; i += static_cast<int64_t>(blockDim.x) * P) {
      if constexpr (VEC) {
        const Pack<T> q = *reinterpret_cast<const Pack<T>*>(x + i);
#pragma unroll
        for (int j = 0; j < P; ++j) {
          const double v = cvt<double>(q.v[j]);
          acc += v * v;
        }
      } else {
        const double v = cvt<double>(x[i]);
        acc += v * v;
      }
    }
    for (int64_t i = vec_end + threadIdx.x; i < end; i += blockDim.x) {
      const double v = cvt<double>(x[i]);
      acc += v * v;
    }
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(int count, const double* partial, double* result) {
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) *result = acc;
}

}  // namespace

void CudaBackend::sum_to(const Tensor& x, const Tensor& out) {
  if (out.ndim() != x.ndim())
    throw std::invalid_argument("sum_to: " + shape_str(x.shape()) + " to " + shape_str(out.shape()));
  if (!out.is_contiguous()) throw std::invalid_argument("sum_to: output must be contiguous");
  const size_t nd = x.shape().size();
  Shape kept_shape, kept_strides, red_shape, red_strides;
  bool leading = true, seen_kept = false;    // reduced dims all before kept ones?
  bool trailing = true, seen_reduced = false;  // reduced dims all after kept ones?
  for (size_t d = 0; d < nd; ++d) {
    const int64_t xs = x.shape()[d], os = out.shape()[d];
    if (os == xs) {
      if (xs != 1) seen_kept = true;
      if (xs != 1 && seen_reduced) trailing = false;
      kept_shape.push_back(xs);
      kept_strides.push_back(x.strides()[d]);
    } else if (os == 1) {
      if (seen_kept) leading = false;
      seen_reduced = true;
      red_shape.push_back(xs);
      red_strides.push_back(x.strides()[d]);
    } else {
      throw std::invalid_argument("sum_to: " + shape_str(x.shape()) + " to " + shape_str(out.shape()));
    }
  }
  const int64_t n_out = out.numel(), n_red = shape_numel(red_shape);
  if (n_out == 0) return;
  dispatch_float(x.dtype(), "sum_to", [&](auto t) {
    using T = decltype(t);
    if (x.numel() == 0) {
      fill(out, 0.0);
    } else if (x.is_contiguous() && leading && n_out > 1) {
      column_reduce<double, T>(stream_, n_red, n_out, LoadDouble<T>{ptr<T>(x), n_out}, ptr<T>(out), false);
    } else if (x.is_contiguous() && trailing && n_red <= 4096) {
      constexpr int warps = 8;
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n_out + warps - 1) / warps, int64_t{1} << 20));
      sum_rows_warp_kernel<T><<<blocks, 32 * warps, 0, stream_>>>(n_out, n_red, ptr<T>(x), ptr<T>(out));
      CUDA_CHECK_LAUNCH();
    } else {
      const auto kept = make_meta<1>(kept_shape, {&kept_strides}, "sum_to");
      const auto reduced = make_meta<1>(red_shape, {&red_strides}, "sum_to");
      const int threads = n_red >= 1024 ? 1024 : row_threads(n_red);
      sum_to_kernel<T><<<row_grid(n_out), threads, 0, stream_>>>(kept, reduced, n_out, n_red, ptr<T>(x), ptr<T>(out));
      CUDA_CHECK_LAUNCH();
    }
  });
}

double CudaBackend::sum_squares(const std::vector<Tensor>& xs) {
  // Runs of up to kSquaresTensors tensors of one dtype: one multi-tensor launch of block partials
  // into the scratch, then one block adds them into totals[launch]; finally one block adds the
  // totals in order. Stream order makes reusing the scratch safe; one sync at the end.
  if (xs.empty()) return 0.0;
  std::vector<Tensor> dense;
  for (const Tensor& x : xs) dense.push_back(x.contiguous());
  Tensor totals = Tensor::empty({static_cast<int64_t>(dense.size())}, DType::f64, dense[0].device());
  int launches = 0;
  size_t i = 0;
  while (i < dense.size()) {
    const DType dtype = dense[i].dtype();
    dispatch_float(dtype, "sum_squares", [&](auto tag) {
      using T = decltype(tag);
      SquaresBatch<T> batch{};
      int32_t chunks = 0;
      bool vec = true;
      int tensors = 0;
      for (; i < dense.size() && tensors < kSquaresTensors && dense[i].dtype() == dtype; ++i) {
        const int64_t n = dense[i].numel();
        const int64_t c = (n + kSquaresChunk - 1) / kSquaresChunk;
        if (chunks + c > (int64_t{1} << 30)) break;
        if (n == 0) continue;
        batch.x[tensors] = ptr<T>(dense[i]);
        batch.n[tensors] = n;
        batch.chunk_start[tensors] = chunks;
        vec = vec && aligned16(dense[i].raw_data());
        chunks += static_cast<int32_t>(c);
        ++tensors;
      }
      if (tensors == 0 && i < dense.size() && dense[i].dtype() == dtype)
        throw std::invalid_argument("sum_squares: " + dense[i].describe() + " is too large");
      batch.tensors = tensors;
      batch.chunk_start[tensors] = chunks;
      const int blocks = static_cast<int>(std::clamp<int64_t>(chunks, 1, kReduceBlocks));
      if (chunks == 0) {
        CUDA_CHECK(cudaMemsetAsync(reduce_scratch_, 0, sizeof(double), stream_));
      } else if (vec) {
        sum_squares_multi_kernel<T, true><<<blocks, kThreads, 0, stream_>>>(batch, reduce_scratch_);
      } else {
        sum_squares_multi_kernel<T, false><<<blocks, kThreads, 0, stream_>>>(batch, reduce_scratch_);
      }
      CUDA_CHECK_LAUNCH();
      sum_partials_kernel<<<1, 1024, 0, stream_>>>(blocks, reduce_scratch_, ptr<double>(totals) + launches);
      CUDA_CHECK_LAUNCH();
      ++launches;
    });
  }
  sum_partials_kernel<<<1, 1024, 0, stream_>>>(launches, ptr<double>(totals), reduce_scratch_ + kReduceBlocks);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cudaMemcpyAsync(reduce_host_, reduce_scratch_ + kReduceBlocks, sizeof(double), cudaMemcpyDeviceToHost,
                             stream_));
  sync_and_check();
  return *reduce_host_;
}

}  // namespace pt::cuda
