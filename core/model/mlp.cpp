#include "core/model/mlp.h"

#include <cmath>
#include <stdexcept>

#include "core/engine/ops.h"
#include "core/model/research_ops.h"

namespace pt {
namespace {

std::vector<UnaryOp> dictionary_ops(const std::vector<ActivationFn>& dictionary) {
  std::vector<UnaryOp> ops;
  for (ActivationFn fn : dictionary) ops.push_back(research::dictionary_op(fn));
  return ops;
}

int64_t index_of(const std::vector<ActivationFn>& dictionary, ActivationFn entry) {
  for (size_t i = 0; i < dictionary.size(); ++i)
    if (dictionary[i] == entry) return static_cast<int64_t>(i);
  throw std::invalid_argument("\"" + std::string(to_string(entry)) + "\" is not in the activation dictionary");
}

GluKind glu_kind(Activation activation) {
  switch (activation) {
    case Activation::swiglu: return GluKind::swiglu;
    case Activation::geglu: return GluKind::geglu;
    case Activation::reglu: return GluKind::reglu;
    default: throw std::logic_error("glu_kind of an activation that is not a GLU");
  }
}

// The unary op of a plain activation (relu, gelu, gelu_tanh, silu, relu2); identity for the others.
UnaryOp plain_op(Activation activation) {
  switch (activation) {
    case Activation::relu: return UnaryOp::relu;
    case Activation::gelu: return UnaryOp::gelu_erf;
    case Activation::gelu_tanh: return UnaryOp::gelu_tanh;
    case Activation::silu: return UnaryOp::silu;
    case Activation::relu2: return UnaryOp::relu2;
    case Activation::swiglu:
    case Activation::geglu:
    case Activation::reglu:
    case Activation::la:
    case Activation::moa: return UnaryOp::identity;
  }
  return UnaryOp::identity;
}

}  // namespace

DenseFeedForward::DenseFeedForward(const ModelSpec& spec, ParamTable& table, const std::string& prefix,
                                   double out_init_std)
    : activation_(spec.activation), gated_(spec.gated_activation()), plain_(plain_op(spec.activation)) {
  const int64_t F = spec.ffn_hidden, d = spec.d_model;
  std::vector<Branch> branches;
  if (gated_) branches = {{"gate", F}, {"up", F}};
  else branches = {{"up", F}};
  up_branches_.declare_inputs(spec, table, prefix, branches);
  up_.declare(spec, table, prefix + ".up", gated_ ? 2 * F : F, d, spec.init_std);
  up_branches_.declare_outputs(spec, table, prefix);
  if (activation_ == Activation::la) {
    dictionary_ = dictionary_ops(spec.la.dictionary);
    const int64_t K = static_cast<int64_t>(dictionary_.size());
    std::vector<double> onehot(size_t(K), 0.0);
    onehot[size_t(index_of(spec.la.dictionary, spec.la.base))] = 1.0;
    const Shape shape = spec.la.granularity == LaGranularity::channel ? Shape{K, F} : Shape{K};
    la_coef_ = table.add({prefix + ".act.coef", shape, ParamKind::coefficient, 0.0, 0.0, ScaleRole::none, onehot});
  }
  if (activation_ == Activation::moa) {
    dictionary_ = dictionary_ops(spec.moa.dictionary);
    const int64_t K = static_cast<int64_t>(dictionary_.size());
    moa_sigmoid_ = spec.moa.gate == MoaGate::sigmoid;
    moa_exact_ = spec.moa.init == MoaInit::exact;
    moa_base_ = research::dictionary_op(spec.moa.base);
    router_branches_.declare_inputs(spec, table, prefix, {{"router", K}});
    router_weight_ = table.add({prefix + ".router.weight", {K, d}, ParamKind::matrix, 0.0, 0.0});
    std::vector<double> logits(size_t(K), 0.0);
    if (spec.moa.init == MoaInit::bias) {
      const double L = spec.moa.init_logit;
      for (double& v : logits) v = moa_sigmoid_ ? -L : 0.0;
      logits[size_t(index_of(spec.moa.dictionary, spec.moa.base))] = L;
    }
    router_bias_ = table.add({prefix + ".router.bias", {K}, ParamKind::bias, 0.0, 0.0, ScaleRole::none, logits});
    router_branches_.declare_outputs(spec, table, prefix);
    if (moa_exact_) moa_blend_ = table.add({prefix + ".moa.blend", {1}, ParamKind::coefficient, 0.0, 0.0});
  }
  down_.declare(spec, table, prefix + ".down", d, F, out_init_std);
}

Tensor DenseFeedForward::activate(const ForwardContext& ctx, const Tensor& x, const Tensor& h) const {
  switch (activation_) {
    case Activation::la: return research::learnable_activation(h, dictionary_, ctx.use(la_coef_));
    case Activation::moa: {
      const int64_t K = static_cast<int64_t>(dictionary_.size());
      const Tensor logits = router_branches_.project(ctx, x, ctx.use(router_weight_), ctx.use(router_bias_))[0];
      const Tensor alpha = research::moa_gate(logits, moa_sigmoid_);
      Tensor mixed = research::mixture_of_activations(h, dictionary_, alpha);
      if (moa_exact_) {  // phi_base + s * (mixture - phi_base), s starts at 0
        const Tensor phi_base = moa_base_ == UnaryOp::identity ? h : ops::unary(moa_base_, h);
        mixed = ops::add(phi_base, ops::mul(ops::sub(mixed, phi_base), ctx.use(moa_blend_)));
      }
      if (ctx.diagnostics) {
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
        ctx.diagnostics->moa_alpha_mean.push_back(mean);
        ctx.diagnostics->moa_gate_entropy.push_back(entropy);
      }
      return mixed;
    }
    default: return ops::unary(plain_, h);
  }
}

FeedForwardOutput DenseFeedForward::forward(const ForwardContext& ctx, const Tensor& x, const Tensor& residual) const {
  // Gated: {gate, up}, produced as two separate tensors (no split copy).
  const std::vector<Tensor> gate_up = up_branches_.project(ctx, x, ctx.use(up_.weight), ctx.use(up_.bias));
  Tensor h = gate_up[0];
  const Tensor up = gated_ ? gate_up.at(1) : Tensor();
  if (activation_ == Activation::la || activation_ == Activation::moa) {
    h = activate(ctx, x, h);
    if (gated_) h = ops::mul(h, up);
  } else if (gated_) {
    h = ops::glu(glu_kind(activation_), h, up);
  } else {
    h = activate(ctx, x, h);
  }
  const Tensor w = ctx.use(down_.weight), b = ctx.use(down_.bias);
  return {residual.defined() ? ops::linear_residual(h, w, b, residual) : ops::linear(h, w, b), {}};
}

void DenseFeedForward::parameter_diagnostics(const ParamStore& params, Diagnostics& out) const {
  if (!la_coef_) return;
  const size_t K = dictionary_.size();
  const std::vector<double> c = params.value(la_coef_).to_vector<double>();
  const size_t per = c.size() / K;
  std::vector<double> mean(K, 0.0);
  for (size_t i = 0; i < c.size(); ++i) mean[i / per] += c[i] / double(per);
  out.la_coef.push_back(mean);
}

}  // namespace pt
