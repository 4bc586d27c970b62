// The CPU reference backend. Kernels compute in the tensor's dtype (f32 or f64; bf16 tensors can
// be stored, copied and cast, but CPU kernels compute in f32/f64 only). GEMMs go to OpenBLAS,
// which may use several threads; the other kernels are single-threaded loops (results are
// bit-identical from run to run).
#pragma once

#include <stdexcept>
#include <string>

#include "core/engine/backend.h"

namespace pt::cpu {

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }

  // The required kernels of backend_kernels.def; the composed ones keep Backend's defaults.
#define PT_REQUIRED_KERNEL(ret, name, params, args) ret name params override;
#include "core/engine/backend_kernels.def"
};

// Calls f(T{}) with T = float or double for the dtype; other dtypes are an error naming `op`.
template <class F>
void dispatch_floating(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    default:
      throw std::invalid_argument(std::string(op) + ": dtype " + dtype_name(dtype) +
                                  " is not supported by the CPU backend (use f32 or f64)");
  }
}

// Row-major C = alpha * op(A) @ op(B) + beta * C through OpenBLAS (float or double), with leading
// dimensions, so callers can address strided sub-matrices (e.g. one head of a [T, H, D] tensor).
template <class T>
void blas_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// Reads id i of an i32/i64 id tensor.
inline int64_t read_id(const Tensor& ids, int64_t i) {
  return ids.dtype() == DType::i32 ? ids.data<int32_t>()[i] : ids.data<int64_t>()[i];
}

}  // namespace pt::cpu
