// Token embedding (and learned absolute positions): h = E[tokens] (+ P[0..T-1]).
//
// Rows are gathered from the master table and only those rows are cast to the compute dtype (the same
// values as casting the whole table first): no [vocab, d] cast per forward, and the table's gradient
// accumulates in the master dtype.
#pragma once

#include <optional>

#include "core/model/module.h"

namespace pt {

class Embedding {
 public:
  Embedding(const ModelSpec& spec, ParamTable& table);
  // tokens [B, T] (i32) -> [B, T, d] in `compute_dtype` (unset: the table's dtype).
  Tensor forward(const ForwardContext& ctx, const Tensor& tokens, std::optional<DType> compute_dtype) const;
  ParamRef table() const { return token_; }  // the tied LM head reads it

 private:
  int64_t seq_len_;
  ParamRef token_, position_;
  mutable Tensor positions_;  // i32 [T] = 0..T-1 on the table's device (learned positions), uploaded once
};

}  // namespace pt
