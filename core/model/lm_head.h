// The language-model head: logits = h W^T with W the token embedding (tied) or its own matrix, and
// an output-side scale on the vocabulary rows when the spec places scales on outputs.
#pragma once

#include "core/model/module.h"

namespace pt {

class LMHead {
 public:
  // `embedding`: the token table, used as the head when the spec ties them.
  LMHead(const ModelSpec& spec, ParamTable& table, ParamRef embedding);
  // The effective head weight [vocab, d] as the forward uses it.
  Tensor weight(const ForwardContext& ctx) const;

 private:
  int64_t vocab_;
  ParamRef weight_;
  ScaleVector out_scale_;
};

}  // namespace pt
