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

  void copy(const Tensor& src, const Tensor& dst) override;
  void fill(const Tensor& dst, double value) override;
  void copy_from_host(const void* src, const Tensor& dst) override;
  void copy_to_host(const Tensor& src, void* dst) override;

  void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const Tensor& a,
            const Tensor& b, double beta, const Tensor& c, int64_t batch, int64_t stride_a, int64_t stride_b,
            int64_t stride_c) override;

  void unary(UnaryOp op, const Tensor& x, const Tensor& y) override;
  void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void axpby(double alpha, const Tensor& x, double beta, const Tensor& y) override;
  void affine(const Tensor& x, double scale, double shift, const Tensor& out) override;
  void sum_to(const Tensor& x, const Tensor& out) override;
  double sum_squares(const std::vector<Tensor>& xs) override;

  void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out) override;
  void embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable) override;
  void rms_norm_forward(const Tensor& x, const Tensor& weight, double eps, const Tensor& y,
                        const Tensor& rstd) override;
  void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                         const Tensor& dx, const Tensor& dweight) override;
  void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& y,
                          const Tensor& mean, const Tensor& rstd) override;
  void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                           const Tensor& dy, const Tensor& dx, const Tensor& dweight, const Tensor& dbias) override;
  void rope(const Tensor& x, double theta, bool inverse, const Tensor& y) override;
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, const Tensor& out,
                         const Tensor& lse) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                          const Tensor& dout, double scale, const Tensor& dq, const Tensor& dk,
                          const Tensor& dv) override;
  void softmax_forward(const Tensor& x, const Tensor& y) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) override;
  void glu_forward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& out) override;
  void glu_backward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& dout, const Tensor& dgate,
                    const Tensor& dup) override;
  void activation_mixture_forward(const ActivationDictionary& dictionary, MixtureCoef layout, const Tensor& h,
                                  const Tensor& coef, const Tensor& out) override;
  void activation_mixture_backward(const ActivationDictionary& dictionary, MixtureCoef layout, const Tensor& h,
                                   const Tensor& coef, const Tensor& dout, const Tensor& dh,
                                   const Tensor& dcoef) override;
  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                             const Tensor& lse) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& dloss,
                              double scale, const Tensor& dlogits) override;
  void adamw_step(const Tensor& param, const Tensor& grad, double grad_scale, const Tensor& m, const Tensor& v,
                  double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) override;
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
