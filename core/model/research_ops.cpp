#include "core/model/research_ops.h"

#include <cmath>
#include <limits>
#include <stdexcept>

#include "core/engine/autograd.h"
#include "core/engine/ops.h"

namespace pt::research {

UnaryOp dictionary_op(ActivationFn fn) {
  switch (fn) {
    case ActivationFn::relu: return UnaryOp::relu;
    case ActivationFn::gelu: return UnaryOp::gelu_erf;
    case ActivationFn::gelu_tanh: return UnaryOp::gelu_tanh;
    case ActivationFn::silu: return UnaryOp::silu;
    case ActivationFn::relu2: return UnaryOp::relu2;
    case ActivationFn::tanh: return UnaryOp::tanh;
    case ActivationFn::identity: return UnaryOp::identity;
  }
  throw std::invalid_argument("unknown activation dictionary entry " + std::to_string(static_cast<int>(fn)));
}

Tensor magnitude_direction(const Tensor& m, const Tensor& v) {
  if (v.ndim() != 1) throw std::invalid_argument("magnitude_direction: direction must be a vector, got " + shape_str(v.shape()));
  const Tensor norm = ops::unary(UnaryOp::sqrt, ops::sum(ops::unary(UnaryOp::square, v)));
  return ops::scale(ops::div(ops::mul(v, m), norm), std::sqrt(static_cast<double>(v.size(0))));
}

Tensor scaled_weight(const Tensor& w, const std::vector<int64_t>& rows, const std::vector<Tensor>& in_scales,
                     const std::vector<Tensor>& out_scales) {
  if (w.ndim() != 2) throw std::invalid_argument("scaled_weight: weight must be 2-d, got " + shape_str(w.shape()));
  const int64_t R = w.size(0), in = w.size(1);
  const size_t nb = rows.size();
  if (in_scales.size() != nb || out_scales.size() != nb)
    throw std::invalid_argument("scaled_weight: one input and one output scale slot per branch");
  int64_t total = 0;
  for (int64_t r : rows) total += r;
  if (total != R)
    throw std::invalid_argument("scaled_weight: branch rows sum to " + std::to_string(total) + " but the weight has " +
                                std::to_string(R));
  bool any_in = false, any_out = false;
  for (size_t b = 0; b < nb; ++b) any_in |= in_scales[b].defined(), any_out |= out_scales[b].defined();

  Tensor result = w;
  if (any_in) {
    if (nb == 1) {
      result = ops::mul(w, in_scales[0]);  // [R, in] * [in]
    } else {
      // Split the rows through the flattened weight (split/concat act on the last dim).
      std::vector<int64_t> flat_sizes;
      for (int64_t r : rows) flat_sizes.push_back(r * in);
      std::vector<Tensor> blocks = ops::split(ops::reshape(w, {1, R * in}), flat_sizes);
      for (size_t b = 0; b < nb; ++b) {
        if (!in_scales[b].defined()) continue;
        blocks[b] = ops::reshape(ops::mul(ops::reshape(blocks[b], {rows[b], in}), in_scales[b]), {1, rows[b] * in});
      }
      result = ops::reshape(ops::concat(blocks), {R, in});
    }
  }
  if (any_out) {
    std::vector<Tensor> parts;
    for (size_t b = 0; b < nb; ++b)
      parts.push_back(out_scales[b].defined() ? out_scales[b] : Tensor::full({rows[b]}, 1.0, w.dtype(), w.device()));
    const Tensor column = ops::reshape(nb == 1 ? parts[0] : ops::concat(parts), {R, 1});
    result = ops::mul(result, column);
  }
  return result;
}

Tensor learnable_activation(const Tensor& h, const std::vector<UnaryOp>& dictionary, const Tensor& coef) {
  const int64_t K = static_cast<int64_t>(dictionary.size());
  if (coef.ndim() < 1 || coef.ndim() > 2 || coef.size(0) != K || (coef.ndim() == 2 && coef.size(1) != h.size(-1)))
    throw std::invalid_argument("learnable_activation: coefficients " + shape_str(coef.shape()) + " do not fit " +
                                std::to_string(K) + " entries and h " + shape_str(h.shape()));
  return ops::activation_mixture(h, dictionary, coef, coef.ndim() == 2 ? MixtureCoef::per_channel : MixtureCoef::shared);
}

Tensor moa_gate(const Tensor& logits, bool sigmoid_gate) { return sigmoid_gate ? ops::sigmoid(logits) : ops::softmax(logits); }

Tensor mixture_of_activations(const Tensor& h, const std::vector<UnaryOp>& dictionary, const Tensor& alpha) {
  const int64_t K = static_cast<int64_t>(dictionary.size());
  if (alpha.size(-1) != K || alpha.ndim() != h.ndim())
    throw std::invalid_argument("mixture_of_activations: alpha " + shape_str(alpha.shape()) + " does not fit " +
                                std::to_string(K) + " entries and h " + shape_str(h.shape()));
  return ops::activation_mixture(h, dictionary, alpha, MixtureCoef::per_row);
}

Tensor apply_head_gate(const Tensor& y, const Tensor& logits) {
  if (y.ndim() != 4 || logits.ndim() != 3 || logits.size(0) != y.size(0) || logits.size(1) != y.size(1))
    throw std::invalid_argument("apply_head_gate: y " + shape_str(y.shape()) + " and logits " + shape_str(logits.shape()) +
                                " do not fit (expected [B, T, H, D] and [B, T, H * g])");
  const int64_t H = y.size(2), D = y.size(3), G = logits.size(2);
  if (G != H && G != H * D)
    throw std::invalid_argument("apply_head_gate: " + std::to_string(G) + " gate logits per token fit neither " +
                                std::to_string(H) + " heads nor " + std::to_string(H * D) + " head elements");
  const Tensor gate = ops::sigmoid(ops::reshape(logits, {y.size(0), y.size(1), H, G / H}));
  return ops::mul(y, gate);
}

double attention_sink_share(const Tensor& q, const Tensor& k, int64_t max_sequences) {
  NoGradGuard no_grad;
  if (q.ndim() != 4 || k.ndim() != 4) throw std::invalid_argument("attention_sink_share: expected [B, T, H, D] tensors");
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  if (T < 2) return std::numeric_limits<double>::quiet_NaN();
  const int64_t nb = std::min(B, std::max<int64_t>(1, max_sequences));
  std::vector<float> mask_values(size_t(T * T), 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = t + 1; j < T; ++j) mask_values[size_t(t * T + j)] = -1e30f;
  const Tensor mask = Tensor::from_vector(mask_values, {T, T}, Device::cpu()).to(q.dtype()).to(q.device());
  const Tensor qd = q.detach(), kd = k.detach();
  Tensor total;
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / (Hq / Hkv);
      const Tensor qh = qd.narrow_view(0, b, 1).narrow_view(2, h, 1).contiguous().view({T, D});
      const Tensor kh = kd.narrow_view(0, b, 1).narrow_view(2, hk, 1).contiguous().view({T, D});
      const Tensor p = ops::softmax(ops::add(ops::scale(ops::linear(qh, kh), 1.0 / std::sqrt(double(D))), mask));
      const Tensor mass = ops::sum(p.narrow_view(1, 0, 1).contiguous());  // includes query 0's mass of 1
      total = total.defined() ? ops::add(total, mass) : mass;
    }
  }
  return (total.item() - double(nb * Hq)) / double(nb * Hq * (T - 1));
}

}  // namespace pt::research
