#include "core/model/lm_head.h"

#include "core/model/research_ops.h"

namespace pt {

LMHead::LMHead(const ModelSpec& spec, ParamTable& table, ParamRef embedding) : vocab_(spec.vocab_size) {
  weight_ = spec.tied_embeddings
                ? embedding
                : table.add({"lm_head.weight", {spec.vocab_size, spec.d_model}, ParamKind::matrix, spec.init_std, 0.0});
  if (has_output_scale(spec, "lm_head"))
    out_scale_ = ScaleVector(spec, table, "lm_head.out_scale", spec.vocab_size, ScaleRole::output);
}

Tensor LMHead::weight(const ForwardContext& ctx) const {
  const Tensor w = ctx.use(weight_);
  const Tensor out_scale = out_scale_.value(ctx);
  if (!out_scale.defined()) return w;
  return research::scaled_weight(w, {vocab_}, {Tensor()}, {out_scale});
}

}  // namespace pt
