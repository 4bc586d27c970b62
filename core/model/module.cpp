#include "core/model/module.h"

#include "core/engine/memory_ops.h"
#include "core/engine/ops.h"
#include "core/model/research_ops.h"

namespace pt {

ParamRef ParamTable::add(ParamInfo info) {
  entries_.push_back(std::move(info));
  return ParamRef{static_cast<int32_t>(entries_.size() - 1)};
}

bool ForwardContext::replaying() const { return ops::recompute_replaying(); }

ScaleVector::ScaleVector(const ModelSpec& spec, ParamTable& table, const std::string& name, int64_t n, ScaleRole role)
    : scale_(spec.norm.scale) {
  switch (spec.norm.scale) {
    case NormScale::none: return;
    case NormScale::vector:
    case NormScale::zero_centered: break;
  }
  if (spec.norm.reparam == ScaleReparam::magnitude_direction) {
    magnitude_ = table.add({name + "_magnitude", {1}, ParamKind::norm_scale, 0.0, 1.0, role, {}});
    direction_ = table.add({name + "_direction", {n}, ParamKind::scale_direction, 0.0, 1.0, role, {}});
    return;
  }
  const double init = spec.norm.scale == NormScale::zero_centered ? 0.0 : 1.0;
  weight_ = table.add({name, {n}, ParamKind::norm_scale, 0.0, init, role, {}});
}

Tensor ScaleVector::value(const ForwardContext& ctx) const {
  if (magnitude_) return research::magnitude_direction(ctx.use(magnitude_), ctx.use(direction_));
  if (!weight_) return Tensor();
  const Tensor g = ctx.use(weight_);
  return scale_ == NormScale::zero_centered ? ops::add_scalar(g, 1.0) : g;
}

bool has_output_scale(const ModelSpec& spec, const std::string& branch) {
  if (spec.norm.scale == NormScale::none || spec.norm.scale_placement == ScalePlacement::input) return false;
  return !(spec.norm.qk_norm && (branch == "q" || branch == "k"));
}

void BranchScales::declare_inputs(const ModelSpec& spec, ParamTable& table, const std::string& prefix,
                                  std::vector<Branch> branches) {
  branches_ = std::move(branches);
  const bool inputs = spec.norm.scale != NormScale::none && spec.norm.scale_placement != ScalePlacement::output &&
                      spec.norm.branch_scales;
  for (const Branch& b : branches_)
    in_.push_back(inputs ? ScaleVector(spec, table, prefix + "." + b.name + ".in_scale", spec.d_model, ScaleRole::input)
                         : ScaleVector());
}

void BranchScales::declare_outputs(const ModelSpec& spec, ParamTable& table, const std::string& prefix) {
  for (const Branch& b : branches_)
    out_.push_back(has_output_scale(spec, b.name)
                       ? ScaleVector(spec, table, prefix + "." + b.name + ".out_scale", b.rows, ScaleRole::output)
                       : ScaleVector());
}

std::vector<Tensor> BranchScales::project(const ForwardContext& ctx, const Tensor& x, const Tensor& weight,
                                          const Tensor& bias) const {
  std::vector<int64_t> rows;
  std::vector<Tensor> in_scales, out_scales;
  for (size_t b = 0; b < branches_.size(); ++b) {
    rows.push_back(branches_[b].rows);
    in_scales.push_back(in_[b].value(ctx));
    out_scales.push_back(out_.empty() ? Tensor() : out_[b].value(ctx));
  }
  const Tensor w_eff = research::scaled_weight(weight, rows, in_scales, out_scales);
  if (rows.size() == 1) return {ops::linear(x, w_eff, bias)};
  // One GEMM per branch, each output its own contiguous tensor: no split copies of the fused output.
  return ops::linear_split(x, w_eff, bias, rows);
}

void LinearParams::declare(const ModelSpec& spec, ParamTable& table, const std::string& prefix, int64_t out, int64_t in,
                           double init_std) {
  weight = table.add({prefix + ".weight", {out, in}, ParamKind::matrix, init_std, 0.0});
  if (spec.bias) bias = table.add({prefix + ".bias", {out}, ParamKind::bias, 0.0, 0.0});
}

}  // namespace pt
