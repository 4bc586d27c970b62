// Normalisation with the scale-vector variants (docs/options.md, "Scale vectors"): RMSNorm or
// LayerNorm over the last dim, with the norm's own scale g (a vector, zero-centred, or
// magnitude-direction: ScaleVector) or none (norm.scale none, scale_placement output, or branch
// scales that move g onto each projection the norm feeds), and LayerNorm's bias when the spec has biases.
#pragma once

#include <string>
#include <utility>

#include "core/model/module.h"

namespace pt {

class Norm {
 public:
  Norm() = default;
  // `with_scale`: the norm carries its own scale vector (when the spec gives norms one at all).
  Norm(const ModelSpec& spec, ParamTable& table, const std::string& prefix, bool with_scale);

  // norm(x)
  Tensor forward(const ForwardContext& ctx, const Tensor& x) const;
  // {x + residual, norm(x + residual)}: a pre-norm block's residual add fused with the norm that reads it.
  std::pair<Tensor, Tensor> add_forward(const ForwardContext& ctx, const Tensor& x, const Tensor& residual) const;
  // {x passed through, norm(x)}: x feeds the residual stream and the norm; the backward sums the two
  // gradients inside the norm's kernel (ops::rms_norm_fork).
  std::pair<Tensor, Tensor> fork(const ForwardContext& ctx, const Tensor& x) const;

  // Whether block norms carry their own scale under this spec (not with branch scales or output placement).
  static bool block_norm_scaled(const ModelSpec& spec);

 private:
  NormType type_ = NormType::rmsnorm;
  double eps_ = 1e-5;
  ScaleVector scale_;
  ParamRef bias_;
};

// QK-norm: RMSNorm/LayerNorm (no bias) of queries or keys over head_dim, with an output-role scale.
class HeadNorm {
 public:
  HeadNorm() = default;
  HeadNorm(const ModelSpec& spec, ParamTable& table, const std::string& prefix, int64_t head_dim);
  Tensor forward(const ForwardContext& ctx, const Tensor& x) const;

 private:
  NormType type_ = NormType::rmsnorm;
  double eps_ = 1e-5;
  ScaleVector scale_;
};

}  // namespace pt
