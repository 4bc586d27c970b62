// GEMM: row-major c[b] = alpha * op(a[b]) @ op(b[b]) + beta * c[b] through cuBLASLt.
//
// Row-major/column-major mapping: a row-major [m, n] matrix is the column-major [n, m] matrix of
// the same memory, so C = op(A) op(B) is computed as the column-major product
//   C^T (n x m) = op(B)^T (n x k) . op(A)^T (k x m)
// i.e. cuBLAS "A" is our b (transposed iff trans_b), cuBLAS "B" is our a (transposed iff trans_a),
// leading dims are the stored row lengths, and batches are strided layouts.
//
// Types: bf16 inputs/outputs with fp32 accumulation (CUBLAS_COMPUTE_32F, fp32 alpha/beta);
// bf16 inputs with an f32 output (a weight gradient accumulated straight into its f32 master's
// gradient, see ops::linear); f32 with CUBLAS_COMPUTE_32F (CUBLAS_COMPUTE_32F_FAST_TF32 only when PRETRAIN_ALLOW_TF32=1;
// off by default for parity with the CPU); f64 with CUBLAS_COMPUTE_64F.
// One 64 MiB workspace, allocated at start-up. Descriptors and the heuristic's algorithm are
// cached per problem (shape, transposes, strides, dtype, pointer alignment). When cuBLASLt has no
// algorithm (or PRETRAIN_GEMM=cublas, or k == 0) the call falls back to cublasGemmStridedBatchedEx.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

#include "cuda/backend.h"
#include "cuda/check.h"

namespace pt::cuda {

struct CudaBackend::LtPlan {
  bool ok = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLAS operand order (ours: b, a, c)
  cublasLtMatmulAlgo_t algo{};
};

namespace {

struct GemmTypes {
  cudaDataType_t data;
  cudaDataType_t scale;
  cublasComputeType_t compute;
  size_t elem;
};

GemmTypes gemm_types(DType dtype, bool allow_tf32) {
  switch (dtype) {
    case DType::f32:
      return {CUDA_R_32F, CUDA_R_32F, allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, 4};
    case DType::bf16: return {CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, 2};
    case DType::f64: return {CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F, 8};
    default:
      throw std::invalid_argument(std::string("gemm: dtype ") + dtype_name(dtype) +
                                  " is not supported by the CUDA backend (use f32, bf16 or f64)");
  }
}

// Largest power of two (<= 256) dividing the address and, for batched calls, the batch stride in bytes.
uint32_t alignment(const void* p, int64_t stride_bytes, int64_t batch) {
  uint64_t bits = reinterpret_cast<uintptr_t>(p) | 256u;
  if (batch > 1 && stride_bytes != 0) bits |= static_cast<uint64_t>(stride_bytes);
  return static_cast<uint32_t>(bits & (~bits + 1));
}

void set_batch(cublasLtMatrixLayout_t layout, int64_t batch, int64_t stride) {
  const int32_t count = static_cast<int32_t>(batch);
  CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
  CUBLAS_CHECK(
      cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
}

}  // namespace

bool CudaBackend::gemm_lt(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const Tensor& a,
                          const Tensor& b, double beta, const Tensor& c, int64_t batch, int64_t stride_a,
                          int64_t stride_b, int64_t stride_c, const Tensor* d) {
  const GemmTypes ty = gemm_types(a.dtype(), allow_tf32_);
  const cudaDataType_t c_type = gemm_types(c.dtype(), allow_tf32_).data;  // f32 for bf16 inputs, or ty.data
  const int64_t es = static_cast<int64_t>(ty.elem);
  const uint32_t al_a = alignment(a.raw_data(), stride_a * es, batch);
  const uint32_t al_b = alignment(b.raw_data(), stride_b * es, batch);
  const uint32_t al_c = std::min(
      alignment(c.raw_data(), stride_c * static_cast<int64_t>(dtype_size(c.dtype())), batch),
      d ? alignment(d->raw_data(), stride_c * static_cast<int64_t>(dtype_size(c.dtype())), batch) : 256u);
  char key[256];
  std::snprintf(key, sizeof key, "%d>%d|%d%d|%lld,%lld,%lld|%lld:%lld,%lld,%lld|%u,%u,%u|%d", int(a.dtype()),
                int(c.dtype()), trans_a,
                trans_b, (long long)m, (long long)n, (long long)k, (long long)batch, (long long)stride_a,
                (long long)stride_b, (long long)stride_c, al_a, al_b, al_c, int(allow_tf32_));
  LtPlan* plan = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = lt_plans_.find(key);
    if (it != lt_plans_.end()) {
      plan = it->second;
    } else {
      plan = new LtPlan();  // cached for the process lifetime
      lt_plans_.emplace(key, plan);
      const cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS A = our b
      const cublasOperation_t op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS B = our a
      CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, ty.compute, ty.scale));
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
      // Stored (column-major) shapes: rows x cols with ld = rows.
      const uint64_t a_rows = trans_b ? k : n, a_cols = trans_b ? n : k;
      const uint64_t b_rows = trans_a ? m : k, b_cols = trans_a ? k : m;
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, ty.data, a_rows, a_cols, static_cast<int64_t>(a_rows)));
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, ty.data, b_rows, b_cols, static_cast<int64_t>(b_rows)));
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->c, c_type, static_cast<uint64_t>(n), static_cast<uint64_t>(m), n));
      if (batch > 1) {
        set_batch(plan->a, batch, stride_b);
        set_batch(plan->b, batch, stride_a);
        set_batch(plan->c, batch, stride_c);
      }
      cublasLtMatmulPreference_t pref = nullptr;
      CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
      const uint64_t ws = workspace_bytes_;
      CUBLAS_CHECK(
          cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_b,
                                                        sizeof al_b));
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_a,
                                                        sizeof al_a));
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c,
                                                        sizeof al_c));
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c,
                                                        sizeof al_c));
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(cublaslt_, plan->desc, plan->a, plan->b, plan->c,
                                                               plan->c, pref, 1, &result, &found);
      CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
      if (st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
        plan->algo = result.algo;
        plan->ok = true;
      } else if (st != CUBLAS_STATUS_NOT_SUPPORTED) {
        CUBLAS_CHECK(st);
      }
    }
  }
  if (!plan->ok) return false;
  const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
  const void* alpha_p = ty.scale == CUDA_R_64F ? static_cast<const void*>(&alpha) : &alpha_f;
  const void* beta_p = ty.scale == CUDA_R_64F ? static_cast<const void*>(&beta) : &beta_f;
  const cublasStatus_t st = cublasLtMatmul(cublaslt_, plan->desc, alpha_p, b.raw_data(), plan->a, a.raw_data(),
                                           plan->b, beta_p, c.raw_data(), plan->c, d ? d->raw_data() : c.raw_data(),
                                           plan->c, &plan->algo,
                                           workspace_, workspace_bytes_, stream_);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {  // the heuristic's pick rejected at run time: use cuBLAS from now on
    std::lock_guard<std::mutex> lock(mutex_);
    plan->ok = false;
    return false;
  }
  CUBLAS_CHECK(st);
  return true;
}

void CudaBackend::gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const Tensor& a,
                       const Tensor& b, double beta, const Tensor& c, int64_t batch, int64_t stride_a, int64_t stride_b,
                       int64_t stride_c) {
  if (m == 0 || n == 0 || batch == 0) return;
  const bool mixed = a.dtype() == DType::bf16 && b.dtype() == DType::bf16 && c.dtype() == DType::f32;
  if (!mixed && (a.dtype() != c.dtype() || b.dtype() != c.dtype()))
    throw std::invalid_argument("gemm: a " + a.describe() + ", b " + b.describe() + ", c " + c.describe() +
                                " must share one dtype (or be bf16, bf16 -> f32)");
  const GemmTypes ty = gemm_types(a.dtype(), allow_tf32_);
  const cudaDataType_t c_type = gemm_types(c.dtype(), allow_tf32_).data;
  if (k > 0 && !force_cublas_ &&
      gemm_lt(trans_a, trans_b, m, n, k, alpha, a, b, beta, c, batch, stride_a, stride_b, stride_c))
    return;
  // Fallback: classic cuBLAS (also handles k == 0: c = beta * c).
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (m > kMax || n > kMax || k > kMax || batch > kMax)
    throw std::invalid_argument("gemm: dimensions exceed the 32-bit cuBLAS fallback");
  const cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  // cuBLAS requires ld >= max(1, rows): with k == 0 the natural ld of a non-transposed a (or a
  // transposed b) is 0, which cuBLAS rejects with CUBLAS_STATUS_INVALID_VALUE.
  const int lda = static_cast<int>(std::max<int64_t>(1, trans_b ? k : n));
  const int ldb = static_cast<int>(std::max<int64_t>(1, trans_a ? m : k)), ldc = static_cast<int>(n);
  const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
  const void* alpha_p = ty.scale == CUDA_R_64F ? static_cast<const void*>(&alpha) : &alpha_f;
  const void* beta_p = ty.scale == CUDA_R_64F ? static_cast<const void*>(&beta) : &beta_f;
  CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_, op_a, op_b, static_cast<int>(n), static_cast<int>(m),
                                          static_cast<int>(k), alpha_p, b.raw_data(), ty.data, lda, stride_b,
                                          a.raw_data(), ty.data, ldb, stride_a, beta_p, c.raw_data(), c_type, ldc,
                                          stride_c, static_cast<int>(batch), ty.compute, CUBLAS_GEMM_DEFAULT));
}

void CudaBackend::gemm_add(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Tensor& a,
                           const Tensor& b, const Tensor& c, const Tensor& d) {
  if (c.dtype() != d.dtype() || c.numel() != m * n || d.numel() != m * n || !c.is_contiguous() || !d.is_contiguous())
    throw std::invalid_argument("gemm_add: c " + c.describe() + " and d " + d.describe() + " must be contiguous [" +
                                std::to_string(m) + ", " + std::to_string(n) + "] of one dtype");
  if (m == 0 || n == 0) return;
  if (a.numel() < m * k || b.numel() < k * n)
    throw std::invalid_argument("gemm_add: a " + a.describe() + " or b " + b.describe() + " is smaller than the [" +
                                std::to_string(m) + ", " + std::to_string(k) + "] x [" + std::to_string(k) + ", " +
                                std::to_string(n) + "] product");
  if (a.dtype() != c.dtype() || b.dtype() != c.dtype())
    throw std::invalid_argument("gemm_add: a " + a.describe() + ", b " + b.describe() + ", c " + c.describe() +
                                " must share one dtype");
  if (k > 0 && !force_cublas_ && gemm_lt(trans_a, trans_b, m, n, k, 1.0, a, b, 1.0, c, 1, 0, 0, 0, &d)) return;
  Backend::gemm_add(trans_a, trans_b, m, n, k, a, b, c, d);  // copy, then the cuBLAS path
}

}  // namespace pt::cuda
