#include "core/memory_ops.h"

#include <stdexcept>
#include <string>

#include "core/autograd.h"

namespace pt::ops {
namespace {

struct RecomputeNode final : Node {
  RecomputeNode(SegmentFn f, std::vector<Tensor> saved) : fn(std::move(f)), saved_inputs(std::move(saved)) {}
  const char* name() const override { return "recompute"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) override {
    std::vector<Tensor> inputs;
    for (const Tensor& t : saved_inputs) {
      Tensor leaf = t.detach();
      if (leaf.defined() && is_floating(leaf.dtype())) leaf.set_requires_grad(true);
      inputs.push_back(leaf);
    }
    Tensor output;
    {
      GradModeGuard recording(true);
      output = fn(inputs);
    }
    if (output.grad_fn()) run_backward({output}, {grad_outputs[0]});
    std::vector<Tensor> grads;
    for (const Tensor& in : inputs) grads.push_back(in.defined() ? in.grad() : Tensor());
    return grads;
  }
  SegmentFn fn;
  std::vector<Tensor> saved_inputs;
};

}  // namespace

Tensor recompute(const SegmentFn& fn, const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return fn(inputs);
  Tensor output;
  {
    NoGradGuard no_grad;
    output = fn(inputs);
  }
  std::vector<Tensor> saved;
  for (const Tensor& t : inputs) saved.push_back(t.detach());
  // Parameters captured inside fn need this Node even when no input requires grad.
  record(std::make_shared<RecomputeNode>(fn, std::move(saved)), inputs, {output}, /*always=*/true);
  return output;
}

Tensor cast(const Tensor& x, DType dtype) {
  if (!x.defined()) throw std::invalid_argument("cast: x is undefined");
  if (!is_floating(x.dtype()) || !is_floating(dtype))
    throw std::invalid_argument(std::string("cast: only between floating dtypes, got ") + x.describe() + " to " +
                                dtype_name(dtype));
  if (x.dtype() == dtype) return x;
  Tensor out = x.to(dtype);
  const DType from = x.dtype();
  if (any_requires_grad({&x})) {
    struct CastNode final : Node {
      DType from;
      const char* name() const override { return "cast"; }
      std::vector<Tensor> backward(const std::vector<Tensor>& g) override { return {g[0].to(from)}; }
    };
    auto node = std::make_shared<CastNode>();
    node->from = from;
    record(node, {x}, {out});
  }
  return out;
}

}  // namespace pt::ops
