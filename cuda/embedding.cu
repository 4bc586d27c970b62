// Embedding lookup and its deterministic backward.
//
// forward: one block per position copies table[id] into out (128-bit packs when the rows are
//   16-byte aligned). An id outside [0, V) is recorded in the device error word (reported at the
//   next sync, see backend.h) and its row is written as zeros instead of reading out of bounds.
// backward: dtable[id] += dout[i], without atomics:
//   1. keys[i] = id (V for an invalid id), vals[i] = i
//   2. stable radix sort of (key, position) pairs (CUB): equal ids become runs in position order
//   3. one block per run head: for each column, acc = dtable[id]; acc += dout[i] for the run's
//      positions in ascending order; store. This is the CPU reference's order of additions, so
//      f32 results are bit-identical to it and identical from run to run.
#include <cub/device/device_radix_sort.cuh>

#include "cuda/common.cuh"

namespace pt::cuda {
namespace {

template <class T>
__global__ void embedding_forward_kernel(int64_t n, int64_t vocab, int64_t dim, const void* ids, bool ids64,
                                         const T* table, T* out, bool vec, DeviceError* err) {
  PT_ROW_LOOP(i, n) {
    const int64_t id = read_id(ids, ids64, i);
    T* orow = out + i * dim;
    if (id < 0 || id >= vocab) {
      if (threadIdx.x == 0) report_error(err, kBadEmbeddingId, id, i, vocab);
      for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) orow[j] = cvt<T>(0.0f);
      continue;
    }
    const T* trow = table + id * dim;
    if (vec) {
      constexpr int P = Pack<T>::size;
      for (int64_t j = threadIdx.x; j < dim / P; j += blockDim.x)
        reinterpret_cast<Pack<T>*>(orow)[j] = reinterpret_cast<const Pack<T>*>(trow)[j];
    } else {
      for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) orow[j] = trow[j];
    }
  }
}

__global__ void embedding_keys_kernel(int64_t n, int64_t vocab, const void* ids, bool ids64, int32_t* keys,
                                      int32_t* vals) {
  PT_GRID_STRIDE(i, n) {
    const int64_t id = read_id(ids, ids64, i);
    keys[i] = (id < 0 || id >= vocab) ? static_cast<int32_t>(vocab) : static_cast<int32_t>(id);
    vals[i] = static_cast<int32_t>(i);
  }
}

template <class T>
__global__ void embedding_backward_kernel(int64_t n, int64_t vocab, int64_t dim, const int32_t* keys,
                                          const int32_t* positions, const T* dout, T* dtable) {
  using A = acc_t<T>;
  PT_ROW_LOOP(start, n) {
    const int32_t id = keys[start];
    if ((start > 0 && keys[start - 1] == id) || id >= vocab) continue;  // not a run head, or invalid ids
    int64_t end = start + 1;
    while (end < n && keys[end] == id) ++end;
    T* row = dtable + static_cast<int64_t>(id) * dim;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      A acc = cvt<A>(row[j]);
      for (int64_t e = start; e < end; ++e) acc += cvt<A>(dout[static_cast<int64_t>(positions[e]) * dim + j]);
      row[j] = cvt<T>(acc);
    }
  }
}

void check_ids_dtype(const char* op, const Tensor& ids) {
  if (ids.dtype() != DType::i32 && ids.dtype() != DType::i64)
    throw std::invalid_argument(std::string(op) + ": ids must be i32 or i64, got " + ids.describe());
}

}  // namespace

void CudaBackend::embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out) {
  check_ids_dtype("embedding", ids);
  const int64_t n = ids.numel(), vocab = table.size(0), dim = table.size(1);
  if (n == 0 || dim == 0) return;
  dispatch_float(table.dtype(), "embedding", [&](auto t) {
    using T = decltype(t);
    const bool vec = (dim * int64_t(sizeof(T))) % 16 == 0 && aligned16(table.raw_data()) && aligned16(out.raw_data());
    const int64_t work = vec ? dim / Pack<T>::size : dim;
    embedding_forward_kernel<T><<<row_grid(n), row_threads(work), 0, stream_>>>(
        n, vocab, dim, ids.raw_data(), ids.dtype() == DType::i64, ptr<T>(table), ptr<T>(out), vec, device_error_);
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable) {
  check_ids_dtype("embedding_backward", ids);
  const int64_t n = ids.numel(), vocab = dtable.size(0), dim = dtable.size(1);
  if (n == 0 || dim == 0) return;
  if (n > INT32_MAX || vocab >= INT32_MAX)
    throw std::invalid_argument("embedding_backward: " + std::to_string(n) + " ids or a vocabulary of " +
                                std::to_string(vocab) + " exceed the 32-bit sort keys");
  Tensor keys = Tensor::empty({4, n}, DType::i32, Device::cuda());  // keys in/out, positions in/out
  int32_t* keys_in = ptr<int32_t>(keys);
  int32_t* keys_out = keys_in + n;
  int32_t* vals_in = keys_in + 2 * n;
  int32_t* vals_out = keys_in + 3 * n;
  embedding_keys_kernel<<<grid_for(n), kThreads, 0, stream_>>>(n, vocab, ids.raw_data(), ids.dtype() == DType::i64,
                                                                keys_in, vals_in);
  CUDA_CHECK_LAUNCH();
  int end_bit = 1;
  while ((int64_t{1} << end_bit) <= vocab) ++end_bit;  // keys are in [0, vocab]
  size_t temp_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out, vals_in, vals_out,
                                             static_cast<int>(n), 0, end_bit, stream_));
  Tensor temp = Tensor::empty({static_cast<int64_t>(temp_bytes / 8 + 1)}, DType::i64, Device::cuda());
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw_data(), temp_bytes, keys_in, keys_out, vals_in, vals_out,
                                             static_cast<int>(n), 0, end_bit, stream_));
  dispatch_float(dtable.dtype(), "embedding_backward", [&](auto t) {
    using T = decltype(t);
    embedding_backward_kernel<T><<<row_grid(n), row_threads(dim), 0, stream_>>>(n, vocab, dim, keys_out, vals_out,
                                                                                ptr<T>(dout), ptr<T>(dtable));
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace pt::cuda
