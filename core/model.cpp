#include "core/model.h"

#include <cmath>
#include <stdexcept>

#include "core/ops.h"

namespace pt {

const char* param_kind_name(ParamKind kind) {
  switch (kind) {
    case ParamKind::matrix: return "matrix";
    case ParamKind::embedding: return "embedding";
    case ParamKind::norm_scale: return "norm_scale";
    case ParamKind::bias: return "bias";
  }
  return "?";
}

namespace {

void add_norm(std::vector<ParamInfo>& table, const ModelSpec& spec, const std::string& prefix) {
  const int64_t d = spec.d_model;
  if (spec.norm.scale != "none")
    table.push_back({prefix + ".weight", {d}, ParamKind::norm_scale, 0.0, spec.norm.scale == "zero_centered" ? 0.0 : 1.0});
  if (spec.norm.type == "layernorm" && spec.bias) table.push_back({prefix + ".bias", {d}, ParamKind::bias, 0.0, 0.0});
}

void add_linear(std::vector<ParamInfo>& table, const ModelSpec& spec, const std::string& prefix, int64_t out,
                int64_t in, double std) {
  table.push_back({prefix + ".weight", {out, in}, ParamKind::matrix, std, 0.0});
  if (spec.bias) table.push_back({prefix + ".bias", {out}, ParamKind::bias, 0.0, 0.0});
}

GluKind glu_kind(const std::string& activation) {
  if (activation == "swiglu") return GluKind::swiglu;
  if (activation == "geglu") return GluKind::geglu;
  return GluKind::reglu;
}

UnaryOp activation_op(const std::string& activation) {
  if (activation == "relu") return UnaryOp::relu;
  if (activation == "gelu") return UnaryOp::gelu_erf;
  if (activation == "gelu_tanh") return UnaryOp::gelu_tanh;
  if (activation == "silu") return UnaryOp::silu;
  if (activation == "relu2") return UnaryOp::relu2;
  throw std::invalid_argument("model.activation: unknown activation \"" + activation + "\"");
}

}  // namespace

std::vector<ParamInfo> parameter_table(const ModelSpec& spec) {
  const int64_t d = spec.d_model, hd = spec.head_dim(), hq = spec.n_heads, hkv = spec.kv_heads();
  const double std = spec.init_std;
  const double out_std = spec.scaled_residual_init ? std / std::sqrt(2.0 * static_cast<double>(spec.n_layers)) : std;
  std::vector<ParamInfo> table;
  table.push_back({"embed.weight", {spec.vocab_size, d}, ParamKind::embedding, std, 0.0});
  if (spec.position == "learned") table.push_back({"pos_embed.weight", {spec.seq_len, d}, ParamKind::embedding, std, 0.0});
  for (int64_t l = 0; l < spec.n_layers; ++l) {
    const std::string p = "blocks." + std::to_string(l);
    add_norm(table, spec, p + ".attn_norm");
    add_linear(table, spec, p + ".attn.qkv", (hq + 2 * hkv) * hd, d, std);
    add_linear(table, spec, p + ".attn.out", d, hq * hd, out_std);
    add_norm(table, spec, p + ".mlp_norm");
    const int64_t up_rows = spec.gated_activation() ? 2 * spec.ffn_hidden : spec.ffn_hidden;
    add_linear(table, spec, p + ".mlp.up", up_rows, d, std);
    add_linear(table, spec, p + ".mlp.down", d, spec.ffn_hidden, out_std);
  }
  add_norm(table, spec, "final_norm");
  if (!spec.tied_embeddings) table.push_back({"lm_head.weight", {spec.vocab_size, d}, ParamKind::matrix, std, 0.0});
  return table;
}

int64_t count_parameters(const ModelSpec& spec) {
  int64_t n = 0;
  for (const ParamInfo& p : parameter_table(spec)) n += shape_numel(p.shape);
  return n;
}

Transformer::Transformer(const ModelSpec& spec, Rng& rng, DType dtype, Device device) : spec_(spec) {
  const std::vector<ParamInfo> table = parameter_table(spec);
  for (size_t i = 0; i < table.size(); ++i) {
    const ParamInfo& info = table[i];
    Rng stream = rng.fork(i);
    Tensor value = info.init_std > 0.0 ? Tensor::randn(info.shape, stream, info.init_std, dtype, device)
                                       : Tensor::full(info.shape, info.init_value, dtype, device);
    value.set_requires_grad(true);
    index_[info.name] = params_.size();
    params_.push_back({info, value});
  }
}

const Tensor& Transformer::param(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw std::out_of_range("model has no parameter \"" + name + "\"");
  return params_[it->second].value;
}

Tensor Transformer::maybe_param(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? Tensor() : params_[it->second].value;
}

int64_t Transformer::num_parameters() const {
  int64_t n = 0;
  for (const Parameter& p : params_) n += p.value.numel();
  return n;
}

void Transformer::zero_grad() {
  for (Parameter& p : params_) p.value.zero_grad();
}

Tensor Transformer::norm(const Tensor& x, const std::string& prefix) const {
  Tensor weight = maybe_param(prefix + ".weight");
  if (weight.defined() && spec_.norm.scale == "zero_centered") weight = ops::add_scalar(weight, 1.0);
  if (spec_.norm.type == "layernorm") return ops::layer_norm(x, weight, maybe_param(prefix + ".bias"), spec_.norm.eps);
  return ops::rms_norm(x, weight, spec_.norm.eps);
}

Tensor Transformer::attention(const Tensor& x, const std::string& prefix) const {
  const int64_t B = x.size(0), T = x.size(1), hd = spec_.head_dim(), hq = spec_.n_heads, hkv = spec_.kv_heads();
  Tensor qkv = ops::linear(x, param(prefix + ".qkv.weight"), maybe_param(prefix + ".qkv.bias"));
  std::vector<Tensor> parts = ops::split(qkv, {hq * hd, hkv * hd, hkv * hd});
  Tensor q = ops::reshape(parts[0], {B, T, hq, hd});
  Tensor k = ops::reshape(parts[1], {B, T, hkv, hd});
  Tensor v = ops::reshape(parts[2], {B, T, hkv, hd});
  if (spec_.position == "rope") {
    q = ops::rope(q, spec_.rope_theta);
    k = ops::rope(k, spec_.rope_theta);
  }
  Tensor y = ops::reshape(ops::causal_attention(q, k, v), {B, T, hq * hd});
  return ops::linear(y, param(prefix + ".out.weight"), maybe_param(prefix + ".out.bias"));
}

Tensor Transformer::mlp(const Tensor& x, const std::string& prefix) const {
  Tensor h = ops::linear(x, param(prefix + ".up.weight"), maybe_param(prefix + ".up.bias"));
  if (spec_.gated_activation()) {
    std::vector<Tensor> gate_up = ops::split(h, {spec_.ffn_hidden, spec_.ffn_hidden});
    h = ops::glu(glu_kind(spec_.activation), gate_up[0], gate_up[1]);
  } else {
    h = ops::unary(activation_op(spec_.activation), h);
  }
  return ops::linear(h, param(prefix + ".down.weight"), maybe_param(prefix + ".down.bias"));
}

Tensor Transformer::forward(const Tensor& tokens) const {
  if (tokens.ndim() != 2)
    throw std::invalid_argument("Transformer::forward: tokens must be [batch, seq], got " + shape_str(tokens.shape()));
  const int64_t B = tokens.size(0), T = tokens.size(1);
  if (T > spec_.seq_len && spec_.position == "learned")
    throw std::invalid_argument("Transformer::forward: sequence of " + std::to_string(T) +
                                " tokens exceeds model.seq_len " + std::to_string(spec_.seq_len));
  Tensor h = ops::embedding(tokens, param("embed.weight"));
  if (spec_.position == "learned") {
    const Tensor& table = param("pos_embed.weight");
    std::vector<int32_t> positions(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) positions[size_t(t)] = static_cast<int32_t>(t);
    h = ops::add(h, ops::embedding(Tensor::from_vector(positions, {T}, table.device()), table));
  }
  for (int64_t l = 0; l < spec_.n_layers; ++l) {
    const std::string p = "blocks." + std::to_string(l);
    h = ops::add(h, attention(norm(h, p + ".attn_norm"), p + ".attn"));
    h = ops::add(h, mlp(norm(h, p + ".mlp_norm"), p + ".mlp"));
  }
  h = norm(h, "final_norm");
  const Tensor& head = spec_.tied_embeddings ? param("embed.weight") : param("lm_head.weight");
  return ops::reshape(ops::linear(h, head), {B * T, spec_.vocab_size});
}

Tensor Transformer::loss(const Tensor& tokens, const Tensor& targets) const {
  const Tensor logits = forward(tokens);
  return ops::cross_entropy(logits, ops::reshape(targets, {targets.numel()}).detach());
}

}  // namespace pt
