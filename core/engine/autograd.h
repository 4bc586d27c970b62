// Reverse-mode automatic differentiation.
//
// Every differentiable op that sees an input requiring grad records a Node on its outputs.
// A Node knows its inputs (edges to their producing Nodes, or to leaf tensors whose .grad it
// accumulates into) and computes input gradients from output gradients. Nodes save what their
// backward needs as detached tensors, so no reference cycle goes through an output tensor.
// `backward()` runs Nodes in reverse topological order, summing gradients that fan in.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/engine/tensor.h"

namespace pt {

struct Edge {
  std::shared_ptr<Node> fn;          // producer of the input (non-leaf), or
  std::shared_ptr<TensorImpl> leaf;  // leaf tensor that requires grad (gets .grad accumulated)
  int output_nr = 0;                 // which output of `fn`
  bool valid() const { return fn || leaf; }
};

struct Node {
  virtual ~Node() = default;
  virtual const char* name() const = 0;
  // Gradients w.r.t. each input (same order as `inputs`), given gradients w.r.t. each output.
  // Undefined grad_outputs (no gradient flowed) are passed as undefined Tensors; a Node may
  // return an undefined Tensor for inputs that get no gradient.
  virtual std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) = 0;
  // Frees what backward needed (saved activations). run_backward calls it once a Node has run, so
  // activations are released during the backward pass instead of when the loss goes out of scope;
  // a second backward through the same graph is then an error.
  virtual void release() {}

  std::vector<Edge> inputs;
  int num_outputs = 1;
  std::vector<Shape> output_shapes;  // to materialise zero grads for outputs that got none
  std::vector<DType> output_dtypes;
  Device output_device;
};

// Gradient recording is on by default; NoGradGuard turns it off in a scope (eval, optimizer).
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Sets gradient recording on or off in a scope (e.g. on inside a recompute segment's backward).
class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled);
  ~GradModeGuard();
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool previous_;
};

// True when grad is enabled and any of the tensors requires grad.
bool any_requires_grad(std::initializer_list<const Tensor*> tensors);
bool any_requires_grad(const std::vector<Tensor>& tensors);

// Wire `node` into the graph: edges to `inputs` and grad_fn on `outputs`. No-op when grad
// recording is off, or when no input requires grad unless `always` (a node whose backward reaches
// parameters captured inside it, such as a recompute segment).
void record(const std::shared_ptr<Node>& node, const std::vector<Tensor>& inputs,
            const std::vector<Tensor>& outputs, bool always = false);

// ---- gradient homes: the one way an op writes a parameter's gradient itself.
//
// A leaf may have a fixed gradient home (Tensor::set_grad_home; the parameter store gives every
// trainable parameter one, a view into its flat gradient buffer). Gradients that reach such a leaf
// through the graph are copied into the home (the first) or added to it in place (later ones). An op
// that computes a weight's gradient with a GEMM can instead write it there directly, with no
// temporary and no copy: it asks grad_sink() in its backward for the weight it captured as a
// GradSinkSource in its forward, writes the target, and commits. Two cases:
//  - the weight is the leaf itself: a sink only while the home holds no gradient yet (the op writes
//    with beta = 0: the same values as a fresh GEMM); otherwise it returns its gradient as usual and
//    autograd adds it, so results equal the unfused path bit for bit;
//  - the weight is a compute copy of the leaf (ops::cast_cached: bf16 copy of an f32 master) and the
//    device can write f32 from bf16 operands (CUDA): the sink is the f32 home, written fresh
//    (beta = 0) or accumulated into (beta = 1, `accumulate`), so bf16 weight gradients are summed in
//    fp32 over micro-batches without a bf16 gradient, a cast or an add.
// The op then returns an undefined gradient for that weight (nothing flows through the graph).
struct GradSinkSource {
  std::shared_ptr<TensorImpl> leaf;  // the parameter (null: no sink possible)
  bool through_compute_copy = false; // the op saw a cast_cached copy of `leaf`, not `leaf` itself
};
// What an op records in its forward for `weight` (a leaf with a home, or a cast_cached copy of one).
GradSinkSource grad_sink_source(const Tensor& weight);

struct GradSink {
  Tensor target;            // the home (the leaf's shape and dtype)
  bool accumulate = false;  // false: overwrite (beta = 0); true: add (beta = 1)
  TensorImpl* leaf = nullptr;
  explicit operator bool() const { return leaf != nullptr; }
  void commit() const;      // after the writes succeeded: the home now holds the leaf's gradient
};
// The sink for a recorded source, given the dtype the op computes in (`compute_dtype`) and the
// device's ability to write f32 results from bf16 operands; empty when the op must return the gradient.
GradSink grad_sink(const GradSinkSource& source, DType compute_dtype, bool device_writes_f32_from_bf16);

// Run backward from `roots` with seeds `grad_roots` (same order; undefined = ones for scalars).
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots);

}  // namespace pt
