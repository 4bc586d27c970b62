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

// Run backward from `roots` with seeds `grad_roots` (same order; undefined = ones for scalars).
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots);

}  // namespace pt
