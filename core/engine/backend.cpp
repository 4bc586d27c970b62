// The backend registry (backend_for, register_backend, override_backend) and the default
// compositions of the composed kernels of backend_kernels.def.
#include "core/engine/backend.h"

#include <stdexcept>
#include <string>

namespace pt {

Backend& cpu_backend();  // core/engine/cpu/cpu_backend.cpp

namespace {
Backend* cuda_backend = nullptr;
Backend* cuda_override = nullptr;
Backend* cpu_override = nullptr;
}  // namespace

void override_backend(DeviceType type, Backend* backend) {
  (type == DeviceType::cpu ? cpu_override : cuda_override) = backend;
}

const char* unary_op_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::identity: return "identity";
    case UnaryOp::neg: return "neg";
    case UnaryOp::relu: return "relu";
    case UnaryOp::gelu_erf: return "gelu";
    case UnaryOp::gelu_tanh: return "gelu_tanh";
    case UnaryOp::silu: return "silu";
    case UnaryOp::relu2: return "relu2";
    case UnaryOp::sigmoid: return "sigmoid";
    case UnaryOp::tanh: return "tanh";
    case UnaryOp::exp: return "exp";
    case UnaryOp::log: return "log";
    case UnaryOp::sqrt: return "sqrt";
    case UnaryOp::square: return "square";
  }
  return "?";
}

void Backend::adamw_step_multi(const std::vector<AdamwTensors>& group, double grad_scale, double lr, double beta1,
                               double beta2, double eps, int64_t step) {
  for (const AdamwTensors& t : group) {
    adamw_step(t.param, t.grad, grad_scale, t.m, t.v, lr, beta1, beta2, eps, t.weight_decay, step);
    if (t.compute_copy.defined()) copy(t.param, t.compute_copy);
  }
}

void Backend::gemm_add(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Tensor& a,
                       const Tensor& b, const Tensor& c, const Tensor& d) {
  copy(c, d);
  gemm(trans_a, trans_b, m, n, k, 1.0, a, b, 1.0, d);
}

void Backend::cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                             const Tensor& lse, double scale, const Tensor& dlogits) {
  cross_entropy_forward(logits, targets, losses, lse);
  Tensor one = Tensor::empty({1}, lse.dtype(), lse.device());
  fill(one, 1.0);
  cross_entropy_backward(logits, targets, lse, one, scale, dlogits);
}

void Backend::scale_by_scalar(const Tensor& x, const Tensor& factor) {
  if (factor.numel() != 1) throw std::invalid_argument("scale_by_scalar: factor " + factor.describe() + " is not one element");
  double f = 0.0;
  if (factor.dtype() == DType::f64) {
    copy_to_host(factor, &f);
  } else {
    Tensor f64 = Tensor::empty(factor.shape(), DType::f64, factor.device());
    copy(factor, f64);
    copy_to_host(f64, &f);
  }
  if (f != 1.0) affine(x, f, 0.0, x);
}

void Backend::add_rms_norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps,
                                   const Tensor& sum, const Tensor& y, const Tensor& rstd) {
  binary(BinaryOp::add, x, residual, sum);
  rms_norm_forward(sum, weight, eps, y, rstd);
}

void Backend::rms_norm_backward_add(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                                    const Tensor& dresidual, const Tensor& dx, const Tensor& dweight) {
  rms_norm_backward(x, weight, rstd, dy, dx, dweight);
  binary(BinaryOp::add, dx, dresidual, dx);
}

void register_backend(DeviceType type, Backend* backend) {
  if (type != DeviceType::cuda)
    throw std::invalid_argument(std::string("register_backend: device type ") +
                                (type == DeviceType::cpu ? "cpu" : std::to_string(static_cast<int>(type))) +
                                " takes no registered backend (the CPU backend is built in; override_backend "
                                "wraps it)");
  cuda_backend = backend;
}

bool backend_available(DeviceType type) { return type == DeviceType::cpu || cuda_backend != nullptr; }

Backend& backend_for(Device device) {
  if (device.is_cpu()) return cpu_override ? *cpu_override : cpu_backend();
  if (cuda_override) return *cuda_override;
  if (!cuda_backend)
    throw std::runtime_error("device " + device.str() +
                             " is not available: this build has no CUDA backend or no GPU was found");
  return *cuda_backend;
}

}  // namespace pt
