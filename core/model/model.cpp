#include "core/model/model.h"

#include <cmath>
#include <optional>
#include <stdexcept>

#include "core/engine/autograd.h"
#include "core/engine/memory_ops.h"
#include "core/engine/ops.h"
#include "core/model/research_ops.h"

namespace pt {

namespace {

using Branches = std::vector<std::pair<std::string, int64_t>>;

// ---- the layout shared by parameter_table() and the forward pass

// Rows of the attention-gate logits in the fused QKV(+gate) projection.
int64_t gate_rows(const ModelSpec& s) {
  const GatePosition pos = s.attn_gate.position;
  if (pos == GatePosition::none) return 0;
  const int64_t heads = pos == GatePosition::g2 ? s.kv_heads() : s.n_heads;
  return s.attn_gate.granularity == GateGranularity::headwise ? heads : heads * s.head_dim();
}

Branches attn_branches(const ModelSpec& s) {
  const int64_t hd = s.head_dim();
  Branches b{{"q", s.n_heads * hd}, {"k", s.kv_heads() * hd}, {"v", s.kv_heads() * hd}};
  if (gate_rows(s) > 0) b.push_back({"gate", gate_rows(s)});
  return b;
}

Branches mlp_branches(const ModelSpec& s) {
  if (s.gated_activation()) return {{"gate", s.ffn_hidden}, {"up", s.ffn_hidden}};
  return {{"up", s.ffn_hidden}};
}

int64_t dictionary_size(const ModelSpec& s) {
  if (s.activation == Activation::la) return static_cast<int64_t>(s.la.dictionary.size());
  if (s.activation == Activation::moa) return static_cast<int64_t>(s.moa.dictionary.size());
  return 0;
}

// One scale vector on the norm itself (the classic gamma).
bool shared_scale(const ModelSpec& s) {
  return s.norm.scale != NormScale::none && s.norm.scale_placement != ScalePlacement::output && !s.norm.branch_scales;
}
// One input-side scale vector per branch of each projection the norm feeds.
bool branch_input_scales(const ModelSpec& s) {
  return s.norm.scale != NormScale::none && s.norm.scale_placement != ScalePlacement::output && s.norm.branch_scales;
}
// An output-side scale vector on the rows of a branch (none on q and k under QK-norm: that norm follows).
bool output_scale(const ModelSpec& s, const std::string& branch) {
  if (s.norm.scale == NormScale::none || s.norm.scale_placement == ScalePlacement::input) return false;
  return !(s.norm.qk_norm && (branch == "q" || branch == "k"));
}

// A scale vector of `n` entries: vector/zero_centered: one tensor; magnitude_direction: m [1] and v [n].
void add_scale(std::vector<ParamInfo>& table, const ModelSpec& spec, const std::string& name, int64_t n, ScaleRole role) {
  if (spec.norm.scale == NormScale::none) return;
  if (spec.norm.reparam == ScaleReparam::magnitude_direction) {
    table.push_back({name + "_magnitude", {1}, ParamKind::norm_scale, 0.0, 1.0, role, {}});
    table.push_back({name + "_direction", {n}, ParamKind::scale_direction, 0.0, 1.0, role, {}});
    return;
  }
  table.push_back({name, {n}, ParamKind::norm_scale, 0.0, spec.norm.scale == NormScale::zero_centered ? 0.0 : 1.0, role, {}});
}

void add_norm(std::vector<ParamInfo>& table, const ModelSpec& spec, const std::string& prefix) {
  const int64_t d = spec.d_model;
  if (shared_scale(spec)) add_scale(table, spec, prefix + ".weight", d, ScaleRole::input);
  if (spec.norm.type == NormType::layernorm && spec.bias) table.push_back({prefix + ".bias", {d}, ParamKind::bias, 0.0, 0.0});
}

void add_branch_input_scales(std::vector<ParamInfo>& table, const ModelSpec& spec, const std::string& prefix,
                             const Branches& branches) {
  if (!branch_input_scales(spec)) return;
  for (const auto& [name, rows] : branches) add_scale(table, spec, prefix + "." + name + ".in_scale", spec.d_model, ScaleRole::input);
}

void add_branch_output_scales(std::vector<ParamInfo>& table, const ModelSpec& spec, const std::string& prefix,
                              const Branches& branches) {
  for (const auto& [name, rows] : branches)
    if (output_scale(spec, name)) add_scale(table, spec, prefix + "." + name + ".out_scale", rows, ScaleRole::output);
}

void add_linear(std::vector<ParamInfo>& table, const ModelSpec& spec, const std::string& prefix, int64_t out,
                int64_t in, double std) {
  table.push_back({prefix + ".weight", {out, in}, ParamKind::matrix, std, 0.0});
  if (spec.bias) table.push_back({prefix + ".bias", {out}, ParamKind::bias, 0.0, 0.0});
}

int64_t index_of(const std::vector<ActivationFn>& dictionary, ActivationFn entry) {
  for (size_t i = 0; i < dictionary.size(); ++i)
    if (dictionary[i] == entry) return static_cast<int64_t>(i);
  throw std::invalid_argument("\"" + std::string(to_string(entry)) + "\" is not in the activation dictionary");
}

std::vector<UnaryOp> dictionary_ops(const std::vector<ActivationFn>& dictionary) {
  std::vector<UnaryOp> ops;
  for (ActivationFn fn : dictionary) ops.push_back(research::dictionary_op(fn));
  return ops;
}

// The GLU of a gated activation; nullopt for the others.
std::optional<GluKind> glu_kind(Activation activation) {
  switch (activation) {
    case Activation::swiglu: return GluKind::swiglu;
    case Activation::geglu: return GluKind::geglu;
    case Activation::reglu: return GluKind::reglu;
    case Activation::relu:
    case Activation::gelu:
    case Activation::gelu_tanh:
    case Activation::silu:
    case Activation::relu2:
    case Activation::la:
    case Activation::moa: return std::nullopt;
  }
  return std::nullopt;
}

// The dictionary function of a plain (ungated, parameter-free) activation; nullopt for the others.
std::optional<ActivationFn> plain_activation_fn(Activation activation) {
  switch (activation) {
    case Activation::relu: return ActivationFn::relu;
    case Activation::gelu: return ActivationFn::gelu;
    case Activation::gelu_tanh: return ActivationFn::gelu_tanh;
    case Activation::silu: return ActivationFn::silu;
    case Activation::relu2: return ActivationFn::relu2;
    case Activation::swiglu:
    case Activation::geglu:
    case Activation::reglu:
    case Activation::la:
    case Activation::moa: return std::nullopt;
  }
  return std::nullopt;
}

}  // namespace

std::vector<ParamInfo> parameter_table(const ModelSpec& spec) {
  const int64_t d = spec.d_model, hd = spec.head_dim(), hq = spec.n_heads, hkv = spec.kv_heads();
  const double std = spec.init_std;
  const double out_std = spec.scaled_residual_init ? std / std::sqrt(2.0 * static_cast<double>(spec.n_layers)) : std;
  const int64_t G = gate_rows(spec), K = dictionary_size(spec);
  std::vector<ParamInfo> table;
  table.push_back({"embed.weight", {spec.vocab_size, d}, ParamKind::embedding, std, 0.0});
  if (spec.position == PositionEncoding::learned) table.push_back({"pos_embed.weight", {spec.seq_len, d}, ParamKind::embedding, std, 0.0});
  for (int64_t l = 0; l < spec.n_layers; ++l) {
    const std::string p = "blocks." + std::to_string(l);
    // attention: norm, branch scales, QK-norm scales, the fused QKV(+gate) projection, output projection
    add_norm(table, spec, p + ".attn_norm");
    const Branches ab = attn_branches(spec);
    add_branch_input_scales(table, spec, p + ".attn", ab);
    if (spec.norm.qk_norm) {
      add_scale(table, spec, p + ".attn.q_norm.weight", hd, ScaleRole::output);
      add_scale(table, spec, p + ".attn.k_norm.weight", hd, ScaleRole::output);
    }
    table.push_back({p + ".attn.qkv.weight", {(hq + 2 * hkv) * hd + G, d}, ParamKind::matrix, std, 0.0});
    if (spec.bias) table.push_back({p + ".attn.qkv.bias", {(hq + 2 * hkv) * hd}, ParamKind::bias, 0.0, 0.0});
    if (G > 0 && spec.attn_gate.bias) table.push_back({p + ".attn.gate.bias", {G}, ParamKind::bias, 0.0, 0.0});
    add_branch_output_scales(table, spec, p + ".attn", ab);
    add_linear(table, spec, p + ".attn.out", d, hq * hd, out_std);
    // feed-forward: norm, branch scales, the fused up projection, activation parameters, down projection
    add_norm(table, spec, p + ".mlp_norm");
    const Branches mb = mlp_branches(spec);
    add_branch_input_scales(table, spec, p + ".mlp", mb);
    const int64_t up_rows = spec.gated_activation() ? 2 * spec.ffn_hidden : spec.ffn_hidden;
    add_linear(table, spec, p + ".mlp.up", up_rows, d, std);
    add_branch_output_scales(table, spec, p + ".mlp", mb);
    if (spec.activation == Activation::la) {
      std::vector<double> onehot(size_t(K), 0.0);
      onehot[size_t(index_of(spec.la.dictionary, spec.la.base))] = 1.0;
      const Shape shape = spec.la.granularity == LaGranularity::channel ? Shape{K, spec.ffn_hidden} : Shape{K};
      table.push_back({p + ".mlp.act.coef", shape, ParamKind::coefficient, 0.0, 0.0, ScaleRole::none, onehot});
    }
    if (spec.activation == Activation::moa) {
      const Branches rb{{"router", K}};
      add_branch_input_scales(table, spec, p + ".mlp", rb);
      table.push_back({p + ".mlp.router.weight", {K, d}, ParamKind::matrix, 0.0, 0.0});
      std::vector<double> logits(size_t(K), 0.0);
      if (spec.moa.init == MoaInit::bias) {
        const double L = spec.moa.init_logit;
        for (double& v : logits) v = spec.moa.gate == MoaGate::sigmoid ? -L : 0.0;
        logits[size_t(index_of(spec.moa.dictionary, spec.moa.base))] = L;
      }
      table.push_back({p + ".mlp.router.bias", {K}, ParamKind::bias, 0.0, 0.0, ScaleRole::none, logits});
      add_branch_output_scales(table, spec, p + ".mlp", rb);
      if (spec.moa.init == MoaInit::exact) table.push_back({p + ".mlp.moa.blend", {1}, ParamKind::coefficient, 0.0, 0.0});
    }
    add_linear(table, spec, p + ".mlp.down", d, spec.ffn_hidden, out_std);
  }
  // final norm: one branch (the LM head), so its input-side scale is always the norm's own
  if (spec.norm.scale != NormScale::none && spec.norm.scale_placement != ScalePlacement::output)
    add_scale(table, spec, "final_norm.weight", d, ScaleRole::input);
  if (spec.norm.type == NormType::layernorm && spec.bias) table.push_back({"final_norm.bias", {d}, ParamKind::bias, 0.0, 0.0});
  if (!spec.tied_embeddings) table.push_back({"lm_head.weight", {spec.vocab_size, d}, ParamKind::matrix, std, 0.0});
  if (output_scale(spec, "lm_head")) add_scale(table, spec, "lm_head.out_scale", spec.vocab_size, ScaleRole::output);
  return table;
}

int64_t count_parameters(const ModelSpec& spec) {
  int64_t n = 0;
  for (const ParamInfo& p : parameter_table(spec)) n += shape_numel(p.shape);
  return n;
}

struct Transformer::Diagnostics {
  std::vector<double> sink, gate_mean, entropy;
  std::vector<std::vector<double>> alpha_mean;
};

Transformer::Transformer(const ModelSpec& spec, Rng& rng, DType dtype, Device device)
    : spec_(spec), store_(parameter_table(spec), rng, dtype, device) {}

const Tensor& Transformer::param(const std::string& name) const { return store_.value(store_.at(name)); }

Tensor Transformer::maybe_param(const std::string& name) const {
  const ParamRef p = store_.find(name);
  return p ? store_.compute_value(p) : Tensor();
}

Tensor Transformer::scale_value(const std::string& name) const {
  if (spec_.norm.reparam == ScaleReparam::magnitude_direction) {
    const Tensor m = maybe_param(name + "_magnitude");
    return m.defined() ? research::magnitude_direction(m, use(name + "_direction")) : Tensor();
  }
  const Tensor g = maybe_param(name);
  if (g.defined() && spec_.norm.scale == NormScale::zero_centered) return ops::add_scalar(g, 1.0);
  return g;
}

Tensor Transformer::norm(const Tensor& x, const std::string& prefix) const {
  const Tensor weight = scale_value(prefix + ".weight");
  if (spec_.norm.type == NormType::layernorm) return ops::layer_norm(x, weight, maybe_param(prefix + ".bias"), spec_.norm.eps);
  return ops::rms_norm(x, weight, spec_.norm.eps);
}

std::pair<Tensor, Tensor> Transformer::add_norm(const Tensor& x, const Tensor& residual,
                                               const std::string& prefix) const {
  if (spec_.norm.type == NormType::layernorm) {
    const Tensor sum = ops::add(x, residual);
    return {sum, norm(sum, prefix)};
  }
  const std::vector<Tensor> out = ops::add_rms_norm(x, residual, scale_value(prefix + ".weight"), spec_.norm.eps);
  return {out[0], out[1]};
}

std::pair<Tensor, Tensor> Transformer::norm_fork(const Tensor& x, const std::string& prefix) const {
  if (spec_.norm.type == NormType::layernorm) return {x, norm(x, prefix)};
  const std::vector<Tensor> out = ops::rms_norm_fork(x, scale_value(prefix + ".weight"), spec_.norm.eps);
  return {out[0], out[1]};
}

std::vector<Tensor> Transformer::project(const Tensor& x, const std::string& linear_prefix,
                                        const std::string& branch_prefix,
                                        const std::vector<std::pair<std::string, int64_t>>& branches,
                                        const Tensor& bias) const {
  const Tensor w = use(linear_prefix + ".weight");
  std::vector<int64_t> rows;
  std::vector<Tensor> in_scales, out_scales;
  for (const auto& [name, n] : branches) {
    rows.push_back(n);
    in_scales.push_back(scale_value(branch_prefix + "." + name + ".in_scale"));
    out_scales.push_back(scale_value(branch_prefix + "." + name + ".out_scale"));
  }
  const Tensor w_eff = research::scaled_weight(w, rows, in_scales, out_scales);
  if (rows.size() == 1) return {ops::linear(x, w_eff, bias)};
  // One GEMM per branch, each output its own contiguous tensor: no split copies of the fused output.
  return ops::linear_split(x, w_eff, bias, rows);
}

Tensor Transformer::attention(const Tensor& x, const std::string& prefix) const {
  const int64_t B = x.size(0), T = x.size(1), hd = spec_.head_dim(), hq = spec_.n_heads, hkv = spec_.kv_heads();
  const int64_t G = gate_rows(spec_), qkv_rows = (hq + 2 * hkv) * hd;
  Tensor bias = maybe_param(prefix + ".qkv.bias");
  if (G > 0) {
    const Tensor gate_bias = maybe_param(prefix + ".gate.bias");
    if (bias.defined() || gate_bias.defined())
      bias = ops::concat({bias.defined() ? bias : Tensor::zeros({qkv_rows}, x.dtype(), x.device()),
                          gate_bias.defined() ? gate_bias : Tensor::zeros({G}, x.dtype(), x.device())});
  }
  // q, k, v (and the gate logits) as separate contiguous tensors, in attn_branches order.
  const std::vector<Tensor> parts = project(x, prefix + ".qkv", prefix, attn_branches(spec_), bias);
  Tensor q = ops::reshape(parts[0], {B, T, hq, hd});
  Tensor k = ops::reshape(parts[1], {B, T, hkv, hd});
  Tensor v = ops::reshape(parts[2], {B, T, hkv, hd});
  const Tensor gate_logits = G > 0 ? parts[3] : Tensor();
  const GatePosition position = spec_.attn_gate.position;
  if (spec_.norm.qk_norm) {
    q = norm_over_last(q, prefix + ".q_norm");
    k = norm_over_last(k, prefix + ".k_norm");
  }
  if (spec_.position == PositionEncoding::rope) {
    q = ops::rope(q, spec_.rope_theta);
    k = ops::rope(k, spec_.rope_theta);
  }
  if (position == GatePosition::g2) v = research::apply_head_gate(v, gate_logits);
  Tensor y = ops::causal_attention(q, k, v);
  if (position == GatePosition::g1) y = research::apply_head_gate(y, gate_logits);
  Tensor out = ops::linear(ops::reshape(y, {B, T, hq * hd}), use(prefix + ".out.weight"), maybe_param(prefix + ".out.bias"));
  if (position == GatePosition::g5)
    out = ops::reshape(research::apply_head_gate(ops::reshape(out, {B, T, hq, hd}), gate_logits), {B, T, spec_.d_model});
  if (diag_) {
    diag_->sink.push_back(research::attention_sink_share(q, k));
    if (G > 0) diag_->gate_mean.push_back(ops::mean(ops::sigmoid(gate_logits)).item());
  }
  return out;
}

Tensor Transformer::norm_over_last(const Tensor& x, const std::string& prefix) const {
  const Tensor weight = scale_value(prefix + ".weight");
  if (spec_.norm.type == NormType::layernorm) return ops::layer_norm(x, weight, Tensor(), spec_.norm.eps);
  return ops::rms_norm(x, weight, spec_.norm.eps);
}

Tensor Transformer::mlp(const Tensor& x, const std::string& prefix, const Tensor& residual) const {
  const bool gated = spec_.gated_activation();
  // Gated: mlp_branches is {gate, up}, produced as two separate tensors (no split copy).
  const std::vector<Tensor> gate_up = project(x, prefix + ".up", prefix, mlp_branches(spec_), maybe_param(prefix + ".up.bias"));
  Tensor h = gate_up[0];
  Tensor up = gated ? gate_up.at(1) : Tensor();
  const Activation act = spec_.activation;
  if (act == Activation::la) {
    h = research::learnable_activation(h, dictionary_ops(spec_.la.dictionary), use(prefix + ".act.coef"));
    if (gated) h = ops::mul(h, up);
  } else if (act == Activation::moa) {
    const int64_t K = dictionary_size(spec_);
    const Tensor logits = project(x, prefix + ".router", prefix, {{"router", K}}, use(prefix + ".router.bias"))[0];
    const Tensor alpha = research::moa_gate(logits, spec_.moa.gate == MoaGate::sigmoid);
    const std::vector<UnaryOp> dictionary = dictionary_ops(spec_.moa.dictionary);
    Tensor mixed = research::mixture_of_activations(h, dictionary, alpha);
    if (spec_.moa.init == MoaInit::exact) {  // phi_base + s * (mixture - phi_base), s starts at 0
      const UnaryOp base = research::dictionary_op(spec_.moa.base);
      const Tensor phi_base = base == UnaryOp::identity ? h : ops::unary(base, h);
      mixed = ops::add(phi_base, ops::mul(ops::sub(mixed, phi_base), use(prefix + ".moa.blend")));
    }
    h = gated ? ops::mul(mixed, up) : mixed;
    if (diag_) {
      const std::vector<double> a = alpha.to_vector<double>();
      const size_t rows = a.size() / size_t(K);
      std::vector<double> mean(size_t(K), 0.0);
      double entropy = 0.0;
      for (size_t r = 0; r < rows; ++r) {
        double total = 0.0;
        for (int64_t k = 0; k < K; ++k) total += a[r * size_t(K) + size_t(k)];
        for (int64_t k = 0; k < K; ++k) {
          const double v = a[r * size_t(K) + size_t(k)];
          mean[size_t(k)] += v / double(rows);
          const double pk = v / total;  // softmax: total = 1; sigmoid: the normalised gates
          if (pk > 0.0) entropy -= pk * std::log(pk) / double(rows);
        }
      }
      diag_->alpha_mean.push_back(mean);
      diag_->entropy.push_back(entropy);
    }
  } else if (gated) {
    h = ops::glu(glu_kind(act).value(), h, up);
  } else {
    h = ops::unary(research::dictionary_op(plain_activation_fn(act).value()), h);
  }
  if (residual.defined()) return ops::linear_residual(h, use(prefix + ".down.weight"), maybe_param(prefix + ".down.bias"), residual);
  return ops::linear(h, use(prefix + ".down.weight"), maybe_param(prefix + ".down.bias"));
}

nlohmann::json Transformer::diagnostics(const Tensor& tokens) const {
  NoGradGuard no_grad;
  Diagnostics d;
  struct Reset {
    Diagnostics*& slot;
    ~Reset() { slot = nullptr; }
  } reset{diag_};
  diag_ = &d;
  forward(tokens);
  diag_ = nullptr;
  nlohmann::json j = nlohmann::json::object();
  j["attn_sink_share"] = d.sink;
  if (!d.gate_mean.empty()) j["attn_gate_mean"] = d.gate_mean;
  if (!d.alpha_mean.empty()) {
    j["moa_alpha_mean"] = d.alpha_mean;
    j["moa_gate_entropy"] = d.entropy;
  }
  if (spec_.activation == Activation::la) {
    std::vector<std::vector<double>> coefs;
    const int64_t K = dictionary_size(spec_);
    for (int64_t l = 0; l < spec_.n_layers; ++l) {
      const std::vector<double> c = param("blocks." + std::to_string(l) + ".mlp.act.coef").to_vector<double>();
      const size_t per = c.size() / size_t(K);
      std::vector<double> mean(size_t(K), 0.0);
      for (size_t i = 0; i < c.size(); ++i) mean[i / per] += c[i] / double(per);
      coefs.push_back(mean);
    }
    j["la_coef"] = coefs;
  }
  return j;
}

Tensor Transformer::hidden(const Tensor& tokens) const {
  if (tokens.ndim() != 2)
    throw std::invalid_argument("Transformer: tokens must be [batch, seq], got " + shape_str(tokens.shape()));
  const int64_t T = tokens.size(1);
  if (T > spec_.seq_len && spec_.position == PositionEncoding::learned)
    throw std::invalid_argument("Transformer: sequence of " + std::to_string(T) + " tokens exceeds model.seq_len " +
                                std::to_string(spec_.seq_len));
  // Embeddings gather rows of the master table and cast only those rows to the compute dtype
  // (the same values as casting the whole table first): no [vocab, d] cast per forward, and the
  // table's gradient is accumulated in the master dtype instead of a compute-dtype copy of the table.
  const auto to_compute = [this](const Tensor& t) {
    return execution_.compute_dtype ? ops::cast(t, *execution_.compute_dtype) : t;
  };
  Tensor h = to_compute(ops::embedding(tokens, param("embed.weight")));
  if (spec_.position == PositionEncoding::learned) {
    const Tensor& table = param("pos_embed.weight");
    // Positions 0..T-1 are uploaded once and kept: a host-to-device copy synchronises the device.
    if (!positions_.defined() || positions_.numel() != T || positions_.device() != table.device()) {
      std::vector<int32_t> positions(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) positions[size_t(t)] = static_cast<int32_t>(t);
      positions_ = Tensor::from_vector(positions, {T}, table.device());
    }
    h = ops::add(h, to_compute(ops::embedding(positions_, table)));
  }
  for (int64_t l = 0; l < spec_.n_layers; ++l) {
    const std::string p = "blocks." + std::to_string(l);
    // Pre-norm block: x = h + attn(norm(h)); out = x + mlp(norm(x)). No separate residual adds:
    // the first is fused with the norm that reads it, the second done by the down projection's
    // GEMM; in the backward, h's two gradients are summed inside attn_norm's kernel (norm_fork).
    auto block = [this, p](const std::vector<Tensor>& in) {
      const auto [h, h_normed] = norm_fork(in[0], p + ".attn_norm");
      const auto [x, x_normed] = add_norm(h, attention(h_normed, p + ".attn"), p + ".mlp_norm");
      return mlp(x_normed, p + ".mlp", x);
    };
    h = execution_.recompute_blocks ? ops::recompute(block, {h}) : block({h});
  }
  return norm(h, "final_norm");
}

Tensor Transformer::head_weight() const {
  const Tensor w = use(spec_.tied_embeddings ? "embed.weight" : "lm_head.weight");
  const Tensor out_scale = scale_value("lm_head.out_scale");
  if (!out_scale.defined()) return w;
  return research::scaled_weight(w, {spec_.vocab_size}, {Tensor()}, {out_scale});
}

Tensor Transformer::forward(const Tensor& tokens) const {
  const Tensor h = hidden(tokens);
  return ops::reshape(ops::linear(h, head_weight()), {h.size(0) * h.size(1), spec_.vocab_size});
}

Tensor Transformer::loss(const Tensor& tokens, const Tensor& targets, int64_t num_valid) const {
  const Tensor h = hidden(tokens);
  const int64_t rows = h.size(0) * h.size(1);
  const Tensor flat_targets = targets.contiguous().view({targets.numel()});
  return ops::chunked_lm_loss(ops::reshape(h, {rows, spec_.d_model}), head_weight(), flat_targets,
                              execution_.loss_chunk_rows, num_valid);
}

ExecutionOptions execution_options(const TrainingSpec& training) {
  ExecutionOptions options;
  if (training.precision == Precision::bf16) options.compute_dtype = DType::bf16;
  options.recompute_blocks = training.recompute == Recompute::full;
  options.loss_chunk_rows = training.loss_chunk_rows;
  return options;
}

void Transformer::set_execution(const ExecutionOptions& options) {
  if (options.compute_dtype && !is_floating(*options.compute_dtype))
    throw std::invalid_argument(std::string("compute dtype must be floating, got ") + dtype_name(*options.compute_dtype));
  execution_ = options;
  store_.set_compute_dtype(options.compute_dtype);  // forgets copies made for the previous compute dtype
}

Tensor Transformer::use(const std::string& name) const {
  const Tensor p = maybe_param(name);
  if (!p.defined()) throw std::out_of_range("model has no parameter \"" + name + "\"");
  return p;
}

}  // namespace pt
