// Composite differentiable helpers behind the research options (docs/options.md): scale vectors,
// learnable and mixed activations, attention gates.
//
// Everything here is a composition of the differentiable ops of core/engine/ops.h (LA and MoA use the fused
// ops::activation_mixture), so gradients come from those ops' backward passes and every backend that
// implements core/engine/backend.h runs these options. The exact formula of each helper is in docs/options.md.
#pragma once

#include <string>
#include <vector>

#include "core/engine/backend.h"
#include "core/engine/tensor.h"
#include "core/spec/choices.h"

namespace pt::research {

// The unary op behind a dictionary entry (gelu is the exact erf GELU).
UnaryOp dictionary_op(ActivationFn fn);

// Magnitude-direction scale: g = m * v / ||v||_2 * sqrt(n), m [1] (or []), v [n]. g = 1 when m = 1, v = 1.
Tensor magnitude_direction(const Tensor& m, const Tensor& v);

// The effective weight of a fused projection whose rows are split into branches:
//   W_eff[branch b] = diag(out_scales[b]) * W[branch b] * diag(in_scales[b])
// W [sum(rows), in]; rows[b] = rows of branch b; in_scales[b] [in] or undefined (no input-side scale);
// out_scales[b] [rows[b]] or undefined (no output-side scale). Weight-sized work only: the caller feeds
// W_eff to one linear(), so no extra pass over activations. Returns W itself when no scale is defined.
Tensor scaled_weight(const Tensor& w, const std::vector<int64_t>& rows, const std::vector<Tensor>& in_scales,
                     const std::vector<Tensor>& out_scales);

// Learnable activation: sum_k coef_k * phi_k(h). h [..., F]; coef [K] (one coefficient per entry) or
// [K, F] (per channel).
Tensor learnable_activation(const Tensor& h, const std::vector<UnaryOp>& dictionary, const Tensor& coef);

// Gate of a mixture of activations: softmax over the last dim, or an elementwise sigmoid.
Tensor moa_gate(const Tensor& logits, bool sigmoid_gate);

// Mixture of activations: act_t(h) = sum_k alpha[t, k] * phi_k(h[t]). h [..., F], alpha [..., K].
Tensor mixture_of_activations(const Tensor& h, const std::vector<UnaryOp>& dictionary, const Tensor& alpha);

// Head-specific sigmoid gate: y * sigmoid(logits) with y [B, T, H, D] and logits [B, T, H * g],
// g = 1 (headwise: one gate per head, broadcast over D) or g = D (elementwise).
Tensor apply_head_gate(const Tensor& y, const Tensor& logits);

// Attention-sink share (diagnostic, no autograd): the causal softmax(q k^T / sqrt(D)) attention mass
// on key 0, averaged over queries 1..T-1, query heads and the first `max_sequences` sequences.
// q [B, T, Hq, D], k [B, T, Hkv, D] (query head h reads key head h / (Hq / Hkv)). NaN when T < 2.
double attention_sink_share(const Tensor& q, const Tensor& k, int64_t max_sequences = 2);

}  // namespace pt::research
