// Backend: the kernels of one device type, registered in one place.
//
// core/engine/ops.cpp implements each differentiable op (shape checks, autograd) on top of these
// kernels and dispatches on the tensors' device tag. The CPU backend (core/engine/cpu/) is the
// reference implementation; the CUDA backend (cuda/) registers itself at start-up when linked.
// Unless stated, tensors passed to kernels are contiguous, on this backend's device, and of
// one floating dtype; outputs are preallocated by the caller.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "core/engine/tensor.h"

namespace pt {

enum class UnaryOp { identity, neg, relu, gelu_erf, gelu_tanh, silu, relu2, sigmoid, tanh, exp, log, sqrt, square };
enum class BinaryOp { add, sub, mul, div };
enum class GluKind { swiglu, geglu, reglu };  // act(gate) * up with act = silu, gelu_tanh, relu

const char* unary_op_name(UnaryOp op);

// The functions phi_k of a learnable / mixed activation (LA, MoA), passed by value to kernels.
struct ActivationDictionary {
  static constexpr int kMaxSize = 8;
  int size = 0;
  UnaryOp ops[kMaxSize] = {};
};

// How mixture coefficients c(n, k, f) are laid out for h [N, F] and a dictionary of K entries.
enum class MixtureCoef {
  per_row,      // coef [N, K]: one weight per token and entry (MoA's alpha)
  shared,       // coef [K]: one weight per entry (LA per layer)
  per_channel,  // coef [K, F]: one weight per entry and channel (LA per channel)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual void synchronize() {}

  // ---- device timestamps (ProfilingBackend): a backend whose work runs asynchronously records a
  // marker in its queue and reports, after synchronize(), the device time between two markers, so
  // a profile charges each call its device time without synchronising around it. Markers are
  // numbered from 0 after each reset_timestamps().
  virtual bool has_timestamps() const { return false; }
  virtual int64_t record_timestamp() { throw std::logic_error(name() + " backend has no device timestamps"); }
  virtual double seconds_between(int64_t /*from*/, int64_t /*to*/) {
    throw std::logic_error(name() + " backend has no device timestamps");
  }
  virtual void reset_timestamps() {}

  // ---- memory
  // dst[i] = src[i] for tensors of one shape; either may be strided (views); dtypes may differ (cast).
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;
  virtual void fill(const Tensor& dst, double value) = 0;
  // Host <-> device transfers of contiguous tensors (CPU backend: memcpy).
  virtual void copy_from_host(const void* src, const Tensor& dst) = 0;
  virtual void copy_to_host(const Tensor& src, void* dst) = 0;

  // ---- GEMM (row-major): c[b] = alpha * op(a[b]) @ op(b[b]) + beta * c[b] for b < batch,
  // op(a) is [m, k] (a stored [k, m] when trans_a), op(b) is [k, n]. Batches are `stride_*` elements apart.
  // a, b and c share one dtype, except that a backend with bf16 (CUDA) also takes bf16 a and b with
  // an f32 c (fp32 accumulation kept in fp32: weight gradients summed into f32 master gradients).
  virtual void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const Tensor& a,
                    const Tensor& b, double beta, const Tensor& c, int64_t batch = 1, int64_t stride_a = 0,
                    int64_t stride_b = 0, int64_t stride_c = 0) = 0;
  // d = op(a) @ op(b) + c for [m, n] row-major c and d (distinct, contiguous, c's dtype): a GEMM whose
  // epilogue adds another tensor (the residual stream) without first copying it into the output.
  // Default: copy c into d, then gemm with beta = 1.
  virtual void gemm_add(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Tensor& a, const Tensor& b,
                        const Tensor& c, const Tensor& d);

  // ---- elementwise (inputs may be strided/broadcast views with zero strides; outputs contiguous)
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& y) = 0;
  // dx = dy * f'(x); y = f(x) is given too (some derivatives are cheaper from it).
  virtual void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx) = 0;
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // y = alpha * x + beta * y (same shape, both contiguous)
  virtual void axpby(double alpha, const Tensor& x, double beta, const Tensor& y) = 0;
  // out = x * scalar + shift
  virtual void affine(const Tensor& x, double scale, double shift, const Tensor& out) = 0;
  // out (x's rank, size 1 on reduced dims) = sum of x over the dims where out has size 1.
  virtual void sum_to(const Tensor& x, const Tensor& out) = 0;
  // Sum of squares of all elements of all the tensors, as a host double: the global grad norm with a
  // single device-to-host synchronisation per optimizer step.
  virtual double sum_squares(const std::vector<Tensor>& xs) = 0;

  // ---- fused NN kernels
  // ids [N] (i32 or i64), table [V, D] -> out [N, D]; throws on an id outside [0, V).
  virtual void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out) = 0;
  // dtable[ids[i]] += dout[i]
  virtual void embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable) = 0;

  // y = x * rstd * weight, rstd = 1/sqrt(mean(x^2) + eps) per row of x [N, D]; weight [D] or undefined.
  virtual void rms_norm_forward(const Tensor& x, const Tensor& weight, double eps, const Tensor& y,
                                const Tensor& rstd) = 0;
  // dweight (may be undefined) is accumulated into: dweight += sum_rows(dy * x * rstd).
  virtual void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                                 const Tensor& dx, const Tensor& dweight) = 0;
  // The residual add fused with the RMSNorm that follows it (pre-norm blocks): sum = x + residual,
  // rounded to the dtype, then rms_norm_forward of sum into y and rstd (exactly an add followed by
  // rms_norm). x, residual, sum, y [N, D]. The default composes binary add + rms_norm_forward.
  virtual void add_rms_norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps,
                                    const Tensor& sum, const Tensor& y, const Tensor& rstd);
  // rms_norm_backward of x (the sum) plus the gradient that reached the sum directly:
  // dx = dresidual + rms_norm dx. The default composes rms_norm_backward + binary add.
  virtual void rms_norm_backward_add(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                                     const Tensor& dresidual, const Tensor& dx, const Tensor& dweight);
  // y = (x - mean) * rstd * weight + bias; weight/bias [D] or undefined.
  virtual void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                                  const Tensor& y, const Tensor& mean, const Tensor& rstd) = 0;
  virtual void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& dy, const Tensor& dx, const Tensor& dweight,
                                   const Tensor& dbias) = 0;

  // Rotary embedding on x [B, T, H, D] (half-split pairs (i, i + D/2), position = t),
  // angle = t * theta^(-2i/D). inverse = true applies the transpose rotation (the backward).
  virtual void rope(const Tensor& x, double theta, bool inverse, const Tensor& y) = 0;

  // Causal scaled-dot-product attention. q [B, T, Hq, D], k/v [B, T, Hkv, D] with Hq % Hkv == 0
  // (grouped-query: query head h reads kv head h / (Hq / Hkv)). out [B, T, Hq, D];
  // lse [B, Hq, T] (f32 or the compute dtype) keeps the log-sum-exp of each row for the backward.
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                 const Tensor& out, const Tensor& lse) = 0;
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                  const Tensor& lse, const Tensor& dout, double scale, const Tensor& dq,
                                  const Tensor& dk, const Tensor& dv) = 0;

  // Softmax over the last dim of x [N, C].
  virtual void softmax_forward(const Tensor& x, const Tensor& y) = 0;
  virtual void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) = 0;

  // out = act(gate) * up, all [N, H].
  virtual void glu_forward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& out) = 0;
  virtual void glu_backward(GluKind kind, const Tensor& gate, const Tensor& up, const Tensor& dout,
                            const Tensor& dgate, const Tensor& dup) = 0;

  // Mixture of activations: out[n, f] = sum_k c(n, k, f) * phi_k(h[n, f]), h and out [N, F].
  virtual void activation_mixture_forward(const ActivationDictionary& dictionary, MixtureCoef layout, const Tensor& h,
                                          const Tensor& coef, const Tensor& out) = 0;
  // dh = dout * sum_k c * phi_k'(h) (overwritten); dcoef (coef's shape, overwritten) = sum of
  // dout * phi_k(h) over the positions that share each coefficient. phi_k is recomputed, not saved.
  virtual void activation_mixture_backward(const ActivationDictionary& dictionary, MixtureCoef layout,
                                           const Tensor& h, const Tensor& coef, const Tensor& dout, const Tensor& dh,
                                           const Tensor& dcoef) = 0;

  // Fused log-softmax + negative log-likelihood. logits [N, V], targets [N] (i32/i64; -1 = ignore).
  // losses [N] per-row loss (0 for ignored rows), lse [N] the rows' log-sum-exp.
  virtual void cross_entropy_forward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                     const Tensor& lse) = 0;
  // dlogits = grad_scale * (softmax(logits) - onehot(target)) with grad_scale = dloss[0] * scale;
  // ignored rows get zeros. dloss is a 1-element tensor on the device.
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                      const Tensor& dloss, double scale, const Tensor& dlogits) = 0;
  // Both in one pass over the logits, for training: the forward's outputs and the backward's
  // dlogits for dloss = 1 (dlogits = scale * (softmax - onehot)); the loss's real gradient is
  // applied later with scale_by_scalar. Default: the two calls above.
  virtual void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, const Tensor& losses,
                                              const Tensor& lse, double scale, const Tensor& dlogits);
  // x *= factor[0] in place, for a 1-element device tensor `factor`; nothing is written when the
  // factor is exactly 1 (the usual loss seed), so no pass over x is made then on a GPU.
  virtual void scale_by_scalar(const Tensor& x, const Tensor& factor);

  // AdamW on one parameter (all f32 or f64, same shape): decoupled weight decay, g = grad_scale * grad
  // (grad_scale carries gradient clipping, so gradients are never modified in place).
  //   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
  //   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + lr * wd * p
  virtual void adamw_step(const Tensor& param, const Tensor& grad, double grad_scale, const Tensor& m,
                          const Tensor& v, double lr, double beta1, double beta2, double eps, double weight_decay,
                          int64_t step) = 0;

  // The same update on many parameters at once (each with its own weight decay): the optimizer's
  // whole step. The default loops over adamw_step; the CUDA backend packs the tensors into a few
  // multi-tensor launches. Results are identical to per-parameter adamw_step calls.
  struct AdamwTensors {
    Tensor param, grad, m, v;
    double weight_decay = 0.0;
    Tensor compute_copy;  // optional: receives the updated param cast to its dtype (bf16 compute copy)
  };
  virtual void adamw_step_multi(const std::vector<AdamwTensors>& group, double grad_scale, double lr, double beta1,
                                double beta2, double eps, int64_t step);
};

// The backend of a device type. Throws std::runtime_error naming the device if none is available
// (e.g. "cuda" in a CPU-only build or on a machine without a GPU).
Backend& backend_for(Device device);
void register_backend(DeviceType type, Backend* backend);
bool backend_available(DeviceType type);
// Installs `backend` for `type` in place of the registered one (nullptr restores the original):
// for wrappers such as ProfilingBackend (`pretrain bench --profile`). Not thread-safe against
// concurrent backend_for calls.
void override_backend(DeviceType type, Backend* backend);

}  // namespace pt
