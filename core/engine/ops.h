// Differentiable ops: forward + backward for each, registered with autograd, dispatched to the
// tensors' backend by device tag. Shapes, dtypes and devices are checked here, at the boundary,
// with messages naming the op and the offending shapes.
//
// Conventions: floating inputs of one op share dtype and device; "last dim" ops treat the tensor
// as rows of its last dimension; attention tensors are [batch, seq, heads, head_dim].
#pragma once

#include <vector>

#include "core/engine/backend.h"
#include "core/engine/tensor.h"

namespace pt::ops {

// ---- elementwise (numpy broadcasting for the binary ones)
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, double factor);      // x * factor
Tensor add_scalar(const Tensor& x, double value);  // x + value
Tensor unary(UnaryOp op, const Tensor& x);
inline Tensor relu(const Tensor& x) { return unary(UnaryOp::relu, x); }
inline Tensor gelu(const Tensor& x) { return unary(UnaryOp::gelu_erf, x); }
inline Tensor gelu_tanh(const Tensor& x) { return unary(UnaryOp::gelu_tanh, x); }
inline Tensor silu(const Tensor& x) { return unary(UnaryOp::silu, x); }
inline Tensor relu2(const Tensor& x) { return unary(UnaryOp::relu2, x); }
inline Tensor sigmoid(const Tensor& x) { return unary(UnaryOp::sigmoid, x); }

// ---- reductions and shape
Tensor sum(const Tensor& x);                          // all elements -> scalar (shape [])
Tensor mean(const Tensor& x);                         // all elements -> scalar
Tensor sum_to(const Tensor& x, const Shape& shape);   // reduce broadcast dims so the result has `shape`
Tensor reshape(const Tensor& x, const Shape& shape);  // one dim may be -1
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes);  // along the last dim
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);    // a contiguous copy of a slice
Tensor concat(const std::vector<Tensor>& xs);                                 // along the last dim

// ---- layers
// y = x @ weight^T + bias; x [..., in], weight [out, in], bias [out] or undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());
// split(linear(x, weight, bias), sizes) without the fused output: one GEMM per block of weight
// rows writes each part as its own contiguous tensor [..., sizes[i]], so neither the forward's
// split copies nor the backward's concatenation of the parts' gradients exist (fused QKV and
// gate/up projections). sizes sum to weight.size(0); bias [sum(sizes)] or undefined.
// residual + x @ weight^T (+ bias): the residual stream added by the GEMM itself (no separate add
// pass); residual [..., out] gets the output's gradient.
Tensor linear_residual(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual);
std::vector<Tensor> linear_split(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                 const std::vector<int64_t>& sizes);
// ids [...] (i32/i64), table [V, D] -> [..., D]
Tensor embedding(const Tensor& ids, const Tensor& table);
// RMSNorm over the last dim; weight [D] or undefined (no scale).
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);
// {sum, rms_norm(sum, weight, eps)} with sum = x + residual (same shape): the residual add of a
// pre-norm block fused with the norm that reads it. Same values as add() then rms_norm().
std::vector<Tensor> add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps);
// {x, rms_norm(x, weight, eps)}: x passed through (same storage) next to its norm, for a block input
// that feeds both the residual stream and the norm; the backward sums the two gradients inside the
// norm's kernel (no separate add of the residual stream's gradients).
std::vector<Tensor> rms_norm_fork(const Tensor& x, const Tensor& weight, double eps);
// LayerNorm over the last dim; weight/bias [D] or undefined.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
// Rotary position embedding of x [B, T, H, D] (D even), positions 0..T-1.
Tensor rope(const Tensor& x, double theta);
// Causal attention; q [B, T, Hq, D], k/v [B, T, Hkv, D]; scale defaults to 1/sqrt(D).
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale = 0.0);
Tensor softmax(const Tensor& x);  // over the last dim
// act(gate) * up for gated FFNs (swiglu: silu, geglu: gelu_tanh, reglu: relu).
Tensor glu(GluKind kind, const Tensor& gate, const Tensor& up);
// Mixture of activations sum_k c(n, k, f) * phi_k(h[..., f]) in one pass (phi_k recomputed in the
// backward, only h and coef saved). h [..., F]; coef per `layout`: per_row [..., K] (same leading
// dims as h), shared [K], per_channel [K, F]. At most ActivationDictionary::kMaxSize entries.
Tensor activation_mixture(const Tensor& h, const std::vector<UnaryOp>& dictionary, const Tensor& coef,
                          MixtureCoef layout);

// Mean negative log-likelihood of targets under softmax(logits), fused with log-softmax.
// logits [N, V], targets [N] (i32/i64; -1 = ignored). `num_valid` = count of non-ignored
// targets if the caller knows it (avoids reading targets back from the device), else -1.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t num_valid = -1);

}  // namespace pt::ops
