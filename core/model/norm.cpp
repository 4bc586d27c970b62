#include "core/model/norm.h"

#include "core/engine/ops.h"

namespace pt {

bool Norm::block_norm_scaled(const ModelSpec& spec) {
  return spec.norm.scale != NormScale::none && spec.norm.scale_placement != ScalePlacement::output &&
         !spec.norm.branch_scales;
}

Norm::Norm(const ModelSpec& spec, ParamTable& table, const std::string& prefix, bool with_scale)
    : type_(spec.norm.type), eps_(spec.norm.eps) {
  if (with_scale) scale_ = ScaleVector(spec, table, prefix + ".weight", spec.d_model, ScaleRole::input);
  if (type_ == NormType::layernorm && spec.bias)
    bias_ = table.add({prefix + ".bias", {spec.d_model}, ParamKind::bias, 0.0, 0.0});
}

Tensor Norm::forward(const ForwardContext& ctx, const Tensor& x) const {
  const Tensor weight = scale_.value(ctx);
  switch (type_) {
    case NormType::layernorm: return ops::layer_norm(x, weight, ctx.use(bias_), eps_);
    case NormType::rmsnorm: return ops::rms_norm(x, weight, eps_);
  }
  throw std::logic_error("Norm: unknown type");
}

std::pair<Tensor, Tensor> Norm::add_forward(const ForwardContext& ctx, const Tensor& x, const Tensor& residual) const {
  if (type_ == NormType::layernorm) {
    const Tensor sum = ops::add(x, residual);
    return {sum, forward(ctx, sum)};
  }
  const std::vector<Tensor> out = ops::add_rms_norm(x, residual, scale_.value(ctx), eps_);
  return {out[0], out[1]};
}

std::pair<Tensor, Tensor> Norm::fork(const ForwardContext& ctx, const Tensor& x) const {
  if (type_ == NormType::layernorm) return {x, forward(ctx, x)};
  const std::vector<Tensor> out = ops::rms_norm_fork(x, scale_.value(ctx), eps_);
  return {out[0], out[1]};
}

HeadNorm::HeadNorm(const ModelSpec& spec, ParamTable& table, const std::string& prefix, int64_t head_dim)
    : type_(spec.norm.type), eps_(spec.norm.eps), scale_(spec, table, prefix + ".weight", head_dim, ScaleRole::output) {}

Tensor HeadNorm::forward(const ForwardContext& ctx, const Tensor& x) const {
  const Tensor weight = scale_.value(ctx);
  switch (type_) {
    case NormType::layernorm: return ops::layer_norm(x, weight, Tensor(), eps_);
    case NormType::rmsnorm: return ops::rms_norm(x, weight, eps_);
  }
  throw std::logic_error("HeadNorm: unknown type");
}

}  // namespace pt
