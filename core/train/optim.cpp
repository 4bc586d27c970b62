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

AdamW::AdamW(ParamStore& params, const OptimSpec& spec) : params_(params), spec_(spec) {
  m_flat_ = Tensor::zeros(params_.values().shape(), params_.dtype(), params_.device());
  v_flat_ = Tensor::zeros(params_.values().shape(), params_.dtype(), params_.device());
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamInfo& info = params_.info(i);
    if (!info.trainable) {
      m_.emplace_back();
      v_.emplace_back();
      continue;
    }
    const int64_t n = shape_numel(info.shape);
    m_.push_back(m_flat_.narrow_view(0, params_.offset(i), n).view(info.shape));
    v_.push_back(v_flat_.narrow_view(0, params_.offset(i), n).view(info.shape));
  }
}

OptimizerStepStats AdamW::step(double lr, double grad_scale) {
  NoGradGuard no_grad;
  OptimizerStepStats stats;
  std::vector<Tensor> grads;
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_.info(i).trainable && params_.grad(i).defined()) grads.push_back(params_.grad(i));
  const double sum_squares = grads.empty() ? 0.0 : backend_for(grads[0].device()).sum_squares(grads);
  stats.grad_norm = std::sqrt(sum_squares) * grad_scale;
  // A NaN/inf gradient would pass the clipping test (NaN > clip is false) and poison every parameter
  // and both moments; a checkpoint written afterwards would carry the damage. Refuse before touching anything.
  if (!std::isfinite(stats.grad_norm))
    throw std::runtime_error("AdamW: the gradient norm is " + std::to_string(stats.grad_norm) + " at optimizer step " +
                             std::to_string(step_ + 1) + "; parameters and moments were left unchanged");
  if (spec_.grad_clip > 0.0 && stats.grad_norm > spec_.grad_clip) stats.clip_factor = spec_.grad_clip / (stats.grad_norm + 1e-6);
  ++step_;
  // One multi-tensor update over the store (all on one device).
  std::vector<Backend::AdamwTensors> group;
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamInfo& info = params_.info(i);
    if (!info.trainable || !params_.grad(i).defined()) continue;
    const double wd = applies_weight_decay(info, spec_) ? spec_.weight_decay : 0.0;
    group.push_back({params_.value(i), params_.grad(i), m_[i], v_[i], wd, params_.compute_copy(i)});
  }
  if (!group.empty())
    backend_for(params_.device()).adamw_step_multi(group, grad_scale * stats.clip_factor, lr, spec_.beta1, spec_.beta2,
                                                   spec_.eps, step_);
  return stats;
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_.info(i).trainable) continue;
    out.emplace_back("optim/m/" + params_.info(i).name, m_[i]);
    out.emplace_back("optim/v/" + params_.info(i).name, v_[i]);
  }
  return out;
}

void AdamW::load_state(const std::string& name, const Tensor& tensor) {
  const bool first = name.starts_with("optim/m/"), second = name.starts_with("optim/v/");
  const ParamRef p = first || second ? params_.find(name.substr(8)) : ParamRef{};
  if (!p || !params_.info(p).trainable) throw std::out_of_range("AdamW has no state tensor \"" + name + "\"");
  const Tensor& target = (first ? m_ : v_)[static_cast<size_t>(p.index)];
  if (tensor.shape() != target.shape())
    throw std::invalid_argument("AdamW state \"" + name + "\" is " + shape_str(target.shape()) + ", not " +
                                shape_str(tensor.shape()));
  NoGradGuard no_grad;
  Tensor(target).copy_from(tensor);
}

}  // namespace pt
