// Causal self-attention with its gates (docs/options.md, "Attention gating"):
//
//   q, k, v (, gate logits) = x W_qkv^T (one fused projection, branch scales around it)
//   q, k = QK-norm(q, k) (optional), rope(q, k) (position rope)
//   v = v * sigmoid(gate)          G2: after the value projection
//   y = SDPA(q, k, v)              causal, grouped-query
//   y = y * sigmoid(gate)          G1: after SDPA
//   out = y W_o^T (+ b_o)
//   out = out * sigmoid(gate)      G5: after the output projection
//
// Gates are headwise (one logit per head) or elementwise (one per channel), computed from the normed
// block input through extra rows of the QKV projection, with an optional learned bias.
#pragma once

#include <string>

#include "core/model/module.h"
#include "core/model/norm.h"

namespace pt {

class Attention {
 public:
  Attention(const ModelSpec& spec, ParamTable& table, const std::string& prefix, double out_init_std);
  // x [B, T, d] (normed) -> [B, T, d]; records attention diagnostics when ctx asks for them.
  Tensor forward(const ForwardContext& ctx, const Tensor& x) const;

  // Rows of gate logits in the fused projection (0 without a gate).
  static int64_t gate_rows(const ModelSpec& spec);

 private:
  int64_t d_model_, n_heads_, kv_heads_, head_dim_, gate_rows_;
  GatePosition gate_position_;
  PositionEncoding position_;
  double rope_theta_;
  bool qk_norm_;
  BranchScales branches_;
  HeadNorm q_norm_, k_norm_;
  ParamRef qkv_weight_, qkv_bias_, gate_bias_;
  LinearParams out_;
};

}  // namespace pt
