#include "core/train/optim.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "core/engine/autograd.h"
#include "core/engine/backend.h"

namespace pt {

double learning_rate(const OptimSpec& optim, const ScheduleSpec& schedule, int64_t step, int64_t total_steps) {
  const double peak = optim.lr, floor = optim.lr * schedule.min_lr_ratio;
  if (step < schedule.warmup_steps) return peak * static_cast<double>(step + 1) / static_cast<double>(schedule.warmup_steps);
  const double decay_steps = static_cast<double>(std::max<int64_t>(1, total_steps - schedule.warmup_steps));
  const double progress = std::min(1.0, static_cast<double>(step - schedule.warmup_steps) / decay_steps);
  switch (schedule.type) {
    case ScheduleType::constant: return peak;
    case ScheduleType::cosine: return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * progress));
    case ScheduleType::linear: return peak - (peak - floor) * progress;
    case ScheduleType::wsd: {
      // warm-up, stable, then a linear decay over the last decay_fraction of all steps.
      const double decay_start = static_cast<double>(total_steps) * (1.0 - schedule.decay_fraction);
      if (static_cast<double>(step) < decay_start) return peak;
      const double span = std::max(1.0, static_cast<double>(total_steps) - decay_start);
      return peak - (peak - floor) * std::min(1.0, (static_cast<double>(step) - decay_start + 1.0) / span);
    }
  }
  throw std::invalid_argument("learning_rate: invalid schedule type " + std::to_string(static_cast<int>(schedule.type)));
}

bool applies_weight_decay(ParamKind kind, const WeightDecayRules& rules) {
  switch (kind) {
    case ParamKind::matrix: return true;
    case ParamKind::embedding: return rules.embeddings;
    case ParamKind::norm_scale: return rules.norm_scales;
    case ParamKind::bias: return rules.biases;
    case ParamKind::scale_direction: return false;
    case ParamKind::coefficient: return false;
  }
  return true;
}

bool applies_weight_decay(const ParamInfo& param, const OptimSpec& optim) {
  switch (param.kind) {
    case ParamKind::norm_scale:
      if (optim.decay.norm_scales) return true;
      if (param.role == ScaleRole::input) return optim.weight_decay_scales.input;
      if (param.role == ScaleRole::output) return optim.weight_decay_scales.output;
      return false;
    case ParamKind::scale_direction: return optim.weight_decay_scales.direction;
    default: return applies_weight_decay(param.kind, optim.decay);
  }
}

AdamW::AdamW(std::vector<Parameter>& params, const OptimSpec& spec) : params_(params), spec_(spec) {
  for (const Parameter& p : params_) {
    m_.push_back(Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device()));
    v_.push_back(Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device()));
  }
}

OptimizerStepStats AdamW::step(double lr, double grad_scale) {
  NoGradGuard no_grad;
  OptimizerStepStats stats;
  std::vector<Tensor> grads;
  for (const Parameter& p : params_)
    if (p.value.grad().defined()) grads.push_back(p.value.grad());
  const double sum_squares = grads.empty() ? 0.0 : backend_for(grads[0].device()).sum_squares(grads);
  stats.grad_norm = std::sqrt(sum_squares) * grad_scale;
  // A NaN/inf gradient would pass the clipping test (NaN > clip is false) and poison every parameter
  // and both moments; a checkpoint written afterwards would carry the damage. Refuse before touching anything.
  if (!std::isfinite(stats.grad_norm))
    throw std::runtime_error("AdamW: the gradient norm is " + std::to_string(stats.grad_norm) + " at optimizer step " +
                             std::to_string(step_ + 1) + "; parameters and moments were left unchanged");
  if (spec_.grad_clip > 0.0 && stats.grad_norm > spec_.grad_clip) stats.clip_factor = spec_.grad_clip / (stats.grad_norm + 1e-6);
  ++step_;
  // One multi-tensor update per device (parameters all live on one device today).
  std::vector<Backend::AdamwTensors> group;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Parameter& p = params_[i];
    if (!p.value.grad().defined()) continue;
    if (!group.empty() && group.front().param.device() != p.value.device())
      throw std::runtime_error("AdamW: parameters on several devices (" + group.front().param.device().str() +
                               ", " + p.value.device().str() + " for " + p.info.name + ")");
    const double wd = applies_weight_decay(p.info, spec_) ? spec_.weight_decay : 0.0;
    group.push_back({p.value, p.value.grad(), m_[i], v_[i], wd, p.compute_copy ? p.compute_copy->tensor : Tensor()});
  }
  if (!group.empty())
    backend_for(group.front().param.device())
        .adamw_step_multi(group, grad_scale * stats.clip_factor, lr, spec_.beta1, spec_.beta2, spec_.eps, step_);
  return stats;
}

}  // namespace pt
