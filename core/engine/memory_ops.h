// Ops that trade memory or precision: activation recomputation and differentiable dtype casts.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "core/engine/tensor.h"

namespace pt {
struct Node;
}

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

// cast(master, copy.dtype()) without the cast: `copy` must already hold exactly those values (a
// parameter's compute copy, written by the optimizer in the same pass as the update; see
// Parameter::compute_copy). The gradient goes back like cast()'s; ops that can (linear,
// linear_split) instead accumulate their weight gradient straight into the master's gradient
// in the master's dtype (master_grad_slot).
Tensor cast_cached(const Tensor& master, const Tensor& copy);

// When `weight` is a cast_cached output whose master is a leaf that requires grad: the master's
// gradient slot (undefined until its first gradient) for a GEMM to accumulate into, and the
// master's dtype; else null. Valid during the backward pass that reaches `weight`.
Tensor* master_grad_slot(const std::shared_ptr<Node>& weight_grad_fn);

}  // namespace pt::ops
