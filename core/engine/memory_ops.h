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
using MultiSegmentFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

// Activation recomputation ("gradient checkpointing") of one segment, e.g. a transformer block.
// Forward runs `fn(inputs)` without recording a graph, so none of its intermediates are kept; the
// outputs get a single Node. Its backward re-runs `fn` with recording on detached copies of the
// inputs and back-propagates through that fresh graph from every output that received a gradient:
// parameters used inside `fn` receive their gradients there (as leaves), and the inputs' gradients
// are returned. `fn` must be deterministic (the same inputs give the same values), and anything it
// does besides computing (counting, logging) must check recompute_replaying(), which is true while
// the backward re-runs it, so that side effects happen once per forward.
std::vector<Tensor> recompute(const MultiSegmentFn& fn, const std::vector<Tensor>& inputs);
// The single-output form (a block's hidden state).
Tensor recompute(const SegmentFn& fn, const std::vector<Tensor>& inputs);
// True while a recompute segment's backward re-runs its forward (on this thread).
bool recompute_replaying();

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
// ParamStore). The gradient goes back like cast()'s; ops that can (linear, linear_split) instead
// write their weight gradient straight into the master's gradient home in the master's dtype
// (grad_sink in core/engine/autograd.h).
Tensor cast_cached(const Tensor& master, const Tensor& copy);

// The master leaf behind a cast_cached output, given that output's grad_fn; null for anything else.
std::shared_ptr<TensorImpl> compute_copy_master(const std::shared_ptr<Node>& grad_fn);

}  // namespace pt::ops
