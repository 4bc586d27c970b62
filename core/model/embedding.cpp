#include "core/model/embedding.h"

#include "core/engine/memory_ops.h"
#include "core/engine/ops.h"

namespace pt {

Embedding::Embedding(const ModelSpec& spec, ParamTable& table) : seq_len_(spec.seq_len) {
  token_ = table.add({"embed.weight", {spec.vocab_size, spec.d_model}, ParamKind::embedding, spec.init_std, 0.0});
  if (spec.position == PositionEncoding::learned)
    position_ = table.add({"pos_embed.weight", {spec.seq_len, spec.d_model}, ParamKind::embedding, spec.init_std, 0.0});
}

Tensor Embedding::forward(const ForwardContext& ctx, const Tensor& tokens, std::optional<DType> compute_dtype) const {
  const int64_t T = tokens.size(1);
  if (position_ && T > seq_len_)
    throw std::invalid_argument("Transformer: sequence of " + std::to_string(T) + " tokens exceeds model.seq_len " +
                                std::to_string(seq_len_));
  const auto to_compute = [&](const Tensor& t) { return compute_dtype ? ops::cast(t, *compute_dtype) : t; };
  Tensor h = to_compute(ops::embedding(tokens, ctx.params.value(token_)));
  if (position_) {
    const Tensor& table = ctx.params.value(position_);
    // Positions 0..T-1 are uploaded once and kept: a host-to-device copy synchronises the device.
    if (!positions_.defined() || positions_.numel() != T || positions_.device() != table.device()) {
      std::vector<int32_t> positions(static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) positions[size_t(t)] = static_cast<int32_t>(t);
      positions_ = Tensor::from_vector(positions, {T}, table.device());
    }
    h = ops::add(h, to_compute(ops::embedding(positions_, table)));
  }
  return h;
}

}  // namespace pt
