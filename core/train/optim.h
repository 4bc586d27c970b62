// AdamW with per-kind weight-decay rules, global-norm gradient clipping, and LR schedules.
#pragma once

#include <cstdint>
#include <vector>

#include <string>
#include <utility>

#include "core/model/param_store.h"
#include "core/spec/spec.h"

namespace pt {

// Learning rate at optimizer step `step` (0-based) of `total_steps`.
//   warm-up:  lr * (step + 1) / warmup_steps           for step < warmup_steps
//   constant: lr
//   cosine:   min + (lr - min) * (1 + cos(pi * p)) / 2  p = progress after warm-up in [0, 1]
//   linear:   lr - (lr - min) * p
//   wsd:      lr until the last decay_fraction of steps, then linear to min
// with min = min_lr_ratio * lr.
double learning_rate(const OptimSpec& optim, const ScheduleSpec& schedule, int64_t step, int64_t total_steps);

bool applies_weight_decay(ParamKind kind, const WeightDecayRules& rules);

// The full rule AdamW applies (docs/options.md): matrices always decay; embeddings and biases per
// optim.decay; a scale (norm_scale: a vector or the magnitude m) decays when optim.decay.norm_scales
// or optim.weight_decay_scales.<its role> is true; a direction v when weight_decay_scales.direction;
// coefficients (LA, MoA blend) never.
bool applies_weight_decay(const ParamInfo& param, const OptimSpec& optim);

struct OptimizerStepStats {
  double grad_norm = 0.0;    // global L2 norm of the (averaged) gradients, before clipping
  double clip_factor = 1.0;  // multiplier applied to the gradients (1 when not clipped)
};

// AdamW over a ParamStore's trainable parameters. Owns its state: first and second moments in flat
// buffers with the store's layout (one view per parameter), and the step count. Checkpoints see the
// state by name (state_tensors / load_state), never by index.
class AdamW {
 public:
  AdamW(ParamStore& params, const OptimSpec& spec);
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // One update with learning rate `lr`. Gradients are multiplied by `grad_scale` first
  // (e.g. 1 / grad_accum), then clipped to spec.grad_clip by global norm. Parameters without
  // a gradient are left unchanged (their moments too); so are buffers.
  OptimizerStepStats step(double lr, double grad_scale = 1.0);

  int64_t step_count() const { return step_; }
  void set_step_count(int64_t step) { step_ = step; }

  // The optimizer state as named tensors (views, for checkpoints): "optim/m/<param>" and
  // "optim/v/<param>" for every trainable parameter.
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Copies `tensor` into the state tensor called `name` (as listed by state_tensors); throws naming
  // an unknown name or a shape mismatch.
  void load_state(const std::string& name, const Tensor& tensor);

  const Tensor& first_moment(size_t param) const { return m_.at(param); }   // undefined for buffers
  const Tensor& second_moment(size_t param) const { return v_.at(param); }

 private:
  ParamStore& params_;
  OptimSpec spec_;
  Tensor m_flat_, v_flat_;         // the store's trainable layout
  std::vector<Tensor> m_, v_;      // per parameter views (undefined for buffers)
  int64_t step_ = 0;
};

}  // namespace pt
