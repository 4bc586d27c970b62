#include "core/model/attention.h"

#include "core/engine/ops.h"
#include "core/model/research_ops.h"

namespace pt {

int64_t Attention::gate_rows(const ModelSpec& s) {
  switch (s.attn_gate.position) {
    case GatePosition::none: return 0;
    case GatePosition::g1:
    case GatePosition::g2:
    case GatePosition::g5: break;
  }
  const int64_t heads = s.attn_gate.position == GatePosition::g2 ? s.kv_heads() : s.n_heads;
  return s.attn_gate.granularity == GateGranularity::headwise ? heads : heads * s.head_dim();
}

Attention::Attention(const ModelSpec& spec, ParamTable& table, const std::string& prefix, double out_init_std)
    : d_model_(spec.d_model),
      n_heads_(spec.n_heads),
      kv_heads_(spec.kv_heads()),
      head_dim_(spec.head_dim()),
      gate_rows_(gate_rows(spec)),
      gate_position_(spec.attn_gate.position),
      position_(spec.position),
      rope_theta_(spec.rope_theta),
      qk_norm_(spec.norm.qk_norm) {
  const int64_t hd = head_dim_, qkv_rows = (n_heads_ + 2 * kv_heads_) * hd;
  std::vector<Branch> branches{{"q", n_heads_ * hd}, {"k", kv_heads_ * hd}, {"v", kv_heads_ * hd}};
  if (gate_rows_ > 0) branches.push_back({"gate", gate_rows_});
  branches_.declare_inputs(spec, table, prefix, branches);
  if (qk_norm_) {
    q_norm_ = HeadNorm(spec, table, prefix + ".q_norm", hd);
    k_norm_ = HeadNorm(spec, table, prefix + ".k_norm", hd);
  }
  qkv_weight_ = table.add({prefix + ".qkv.weight", {qkv_rows + gate_rows_, d_model_}, ParamKind::matrix, spec.init_std, 0.0});
  if (spec.bias) qkv_bias_ = table.add({prefix + ".qkv.bias", {qkv_rows}, ParamKind::bias, 0.0, 0.0});
  if (gate_rows_ > 0 && spec.attn_gate.bias)
    gate_bias_ = table.add({prefix + ".gate.bias", {gate_rows_}, ParamKind::bias, 0.0, 0.0});
  branches_.declare_outputs(spec, table, prefix);
  out_.declare(spec, table, prefix + ".out", d_model_, n_heads_ * hd, out_init_std);
}

Tensor Attention::forward(const ForwardContext& ctx, const Tensor& x) const {
  const int64_t B = x.size(0), T = x.size(1), hd = head_dim_, hq = n_heads_, hkv = kv_heads_;
  const int64_t qkv_rows = (hq + 2 * hkv) * hd;
  Tensor bias = ctx.use(qkv_bias_);
  if (gate_rows_ > 0) {
    const Tensor gate_bias = ctx.use(gate_bias_);
    if (bias.defined() || gate_bias.defined())
      bias = ops::concat({bias.defined() ? bias : Tensor::zeros({qkv_rows}, x.dtype(), x.device()),
                          gate_bias.defined() ? gate_bias : Tensor::zeros({gate_rows_}, x.dtype(), x.device())});
  }
  // q, k, v (and the gate logits) as separate contiguous tensors.
  const std::vector<Tensor> parts = branches_.project(ctx, x, ctx.use(qkv_weight_), bias);
  Tensor q = ops::reshape(parts[0], {B, T, hq, hd});
  Tensor k = ops::reshape(parts[1], {B, T, hkv, hd});
  Tensor v = ops::reshape(parts[2], {B, T, hkv, hd});
  const Tensor gate_logits = gate_rows_ > 0 ? parts[3] : Tensor();
  if (qk_norm_) {
    q = q_norm_.forward(ctx, q);
    k = k_norm_.forward(ctx, k);
  }
  if (position_ == PositionEncoding::rope) {
    q = ops::rope(q, rope_theta_);
    k = ops::rope(k, rope_theta_);
  }
  if (gate_position_ == GatePosition::g2) v = research::apply_head_gate(v, gate_logits);
  Tensor y = ops::causal_attention(q, k, v);
  if (gate_position_ == GatePosition::g1) y = research::apply_head_gate(y, gate_logits);
  Tensor out = ops::linear(ops::reshape(y, {B, T, hq * hd}), ctx.use(out_.weight), ctx.use(out_.bias));
  if (gate_position_ == GatePosition::g5)
    out = ops::reshape(research::apply_head_gate(ops::reshape(out, {B, T, hq, hd}), gate_logits), {B, T, d_model_});
  if (ctx.diagnostics) {
    ctx.diagnostics->attn_sink_share.push_back(research::attention_sink_share(q, k));
    if (gate_rows_ > 0) ctx.diagnostics->attn_gate_mean.push_back(ops::mean(ops::sigmoid(gate_logits)).item());
  }
  return out;
}

}  // namespace pt
