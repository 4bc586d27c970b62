// Ops that trade memory or precision: activation recomputation and differentiable dtype casts.
#pragma once

#include <functional>
#include <vector>

#include "core/tensor.h"

namespace pt::ops {

using SegmentFn = std::function<Tensor(const std::vector<Tensor>&)>;

// Activation recomputation ("gradient checkpointing") of one segment, e.g. a transformer block.
// Forward runs `fn(inputs)` without recording a graph, so none of its intermediates are kept; the
// result gets a single Node. Its backward re-runs `fn` with recording on detached copies of the
// inputs and back-propagates through that fresh graph: parameters used inside `fn` receive their
// gradients there (as leaves), and the inputs' gradients are returned. `fn` must be deterministic
// (the CPU kernels are; the same inputs give the same activations).
Tensor recompute(const SegmentFn& fn, const std::vector<Tensor>& inputs);

// Mean cross-entropy of the LM head `head` [V, d] applied to hidden states h [N, d] against
// targets [N] (-1 = ignored), computed `chunk_rows` rows at a time as recompute segments: the
// logits of one chunk exist at a time, in forward and in backward. chunk_rows <= 0 or >= N is the
// plain unchunked loss. `num_valid` = count of non-ignored targets when the caller knows it (saves
// reading the targets back from the device), else -1.
Tensor chunked_lm_loss(const Tensor& h, const Tensor& head, const Tensor& targets, int64_t chunk_rows,
                       int64_t num_valid = -1);

// x converted to `dtype` (floating); the gradient is converted back to x's dtype. Used for
// mixed precision: bf16 working copies of f32 master weights.
Tensor cast(const Tensor& x, DType dtype);

}  // namespace pt::ops
