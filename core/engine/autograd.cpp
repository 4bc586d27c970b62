#include "core/engine/autograd.h"

#include <stdexcept>
#include <unordered_map>

#include "core/engine/backend.h"
#include "core/engine/memory_ops.h"

namespace pt {
namespace {
thread_local bool grad_mode = true;

// grad = grad + incoming. The first arrival is stored as is; later ones allocate a fresh sum
// rather than adding in place, because a backward may hand one tensor to several inputs
// (e.g. both operands of an add), so a stored gradient can be aliased. The sum is one pass
// (read both, write one) straight into the new tensor: no clone of `grad` first (that was two
// extra passes over every fanned-in gradient, e.g. each residual-stream fan-in).
void accumulate(Tensor& grad, const Tensor& incoming) {
  if (!grad.defined()) {
    grad = incoming.contiguous();
    return;
  }
  const Tensor addend = incoming.dtype() == grad.dtype() ? incoming : incoming.to(grad.dtype());
  Tensor sum = Tensor::empty(grad.shape(), grad.dtype(), grad.device());
  backend_for(sum.device()).binary(BinaryOp::add, grad, addend, sum);  // inputs may be strided
  grad = sum;
}
// A gradient reaching leaf `leaf`: into its home when it has one (copy the first, add later ones in
// place: the home is the leaf's own, never aliased), else as accumulate() does.
void accumulate_leaf(TensorImpl* leaf, const Tensor& incoming) {
  if (!leaf->grad_home.defined()) {
    accumulate(leaf->grad, incoming);
    return;
  }
  Tensor& home = leaf->grad_home;
  Backend& be = backend_for(home.device());
  if (!leaf->grad.defined()) {
    be.copy(incoming, home);  // casts when the dtypes differ
    leaf->grad = home;
    return;
  }
  const Tensor addend = incoming.dtype() == home.dtype() ? incoming : incoming.to(home.dtype());
  be.binary(BinaryOp::add, home, addend, home);  // home + incoming, the order accumulate() adds in
}
}  // namespace

GradSinkSource grad_sink_source(const Tensor& weight) {
  GradSinkSource source;
  if (!weight.defined()) return source;
  if (!weight.grad_fn()) {
    if (weight.requires_grad() && weight.grad_home().defined()) source.leaf = weight.impl_ptr();
    return source;
  }
  if (const std::shared_ptr<TensorImpl> master = ops::compute_copy_master(weight.grad_fn());
      master && master->grad_home.defined()) {
    source.leaf = master;
    source.through_compute_copy = true;
  }
  return source;
}

GradSink grad_sink(const GradSinkSource& source, DType compute_dtype, bool device_writes_f32_from_bf16) {
  GradSink sink;
  TensorImpl* leaf = source.leaf.get();
  if (!leaf || !leaf->grad_home.defined()) return sink;
  if (source.through_compute_copy) {
    if (compute_dtype != DType::bf16 || leaf->dtype != DType::f32 || !device_writes_f32_from_bf16) return sink;
    sink.accumulate = leaf->grad.defined();
  } else {
    if (leaf->grad.defined() || compute_dtype != leaf->dtype) return sink;  // autograd adds later arrivals
  }
  sink.target = leaf->grad_home;
  sink.leaf = leaf;
  return sink;
}

void GradSink::commit() const {
  if (leaf) leaf->grad = target;
}

bool grad_enabled() { return grad_mode; }
NoGradGuard::NoGradGuard() : previous_(grad_mode) { grad_mode = false; }
NoGradGuard::~NoGradGuard() { grad_mode = previous_; }
GradModeGuard::GradModeGuard(bool enabled) : previous_(grad_mode) { grad_mode = enabled; }
GradModeGuard::~GradModeGuard() { grad_mode = previous_; }

bool any_requires_grad(std::initializer_list<const Tensor*> tensors) {
  if (!grad_mode) return false;
  for (const Tensor* t : tensors)
    if (t && t->defined() && (t->requires_grad() || t->grad_fn())) return true;
  return false;
}

bool any_requires_grad(const std::vector<Tensor>& tensors) {
  if (!grad_mode) return false;
  for (const Tensor& t : tensors)
    if (t.defined() && (t.requires_grad() || t.grad_fn())) return true;
  return false;
}

void record(const std::shared_ptr<Node>& node, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
            bool always) {
  if (!grad_mode || (!always && !any_requires_grad(inputs))) return;
  node->inputs.clear();
  for (const Tensor& in : inputs) {
    Edge e;
    if (in.defined()) {
      if (in.grad_fn()) {
        e.fn = in.grad_fn();
        e.output_nr = in.output_nr();
      } else if (in.requires_grad()) {
        e.leaf = in.impl_ptr();
      }
    }
    node->inputs.push_back(std::move(e));
  }
  node->num_outputs = static_cast<int>(outputs.size());
  node->output_shapes.clear();
  node->output_dtypes.clear();
  for (size_t i = 0; i < outputs.size(); ++i) {
    Tensor out = outputs[i];
    node->output_shapes.push_back(out.shape());
    node->output_dtypes.push_back(out.dtype());
    node->output_device = out.device();
    out.set_grad_fn(node, static_cast<int>(i));
    out.impl()->requires_grad = true;
  }
}

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots) {
  if (roots.size() != grad_roots.size()) throw std::invalid_argument("run_backward: roots and seeds differ in count");
  NoGradGuard no_grad;  // backward computations are not themselves recorded

  // Count, for every node reachable from the roots, how many edges lead into it.
  std::unordered_map<Node*, int> dependencies;
  std::vector<Node*> stack;
  for (const Tensor& r : roots)
    if (r.grad_fn() && !dependencies.count(r.grad_fn().get())) {
      dependencies[r.grad_fn().get()] = 0;
      stack.push_back(r.grad_fn().get());
    }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->inputs) {
      if (!e.fn) continue;
      auto [it, inserted] = dependencies.try_emplace(e.fn.get(), 0);
      ++it->second;
      if (inserted) stack.push_back(e.fn.get());
    }
  }

  std::unordered_map<Node*, std::vector<Tensor>> pending;  // summed output grads per node
  std::vector<Node*> ready;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& root = roots[i];
    Tensor seed = grad_roots[i];
    if (!seed.defined()) {
      if (root.numel() != 1)
        throw std::invalid_argument("backward() of a non-scalar tensor " + root.describe() + " needs a gradient");
      seed = Tensor::full(root.shape(), 1.0, root.dtype(), root.device());
    } else if (seed.shape() != root.shape()) {
      throw std::invalid_argument("backward(): gradient " + seed.describe() + " does not match " + root.describe());
    }
    if (!root.grad_fn()) {
      if (!root.requires_grad()) throw std::invalid_argument("backward() of a tensor that does not require grad");
      accumulate_leaf(root.impl(), seed);
      continue;
    }
    auto& slots = pending[root.grad_fn().get()];
    slots.resize(static_cast<size_t>(root.grad_fn()->num_outputs));
    accumulate(slots[static_cast<size_t>(root.output_nr())], seed);
  }
  for (auto& [node, count] : dependencies)
    if (count == 0) ready.push_back(node);

  while (!ready.empty()) {
    Node* node = ready.back();
    ready.pop_back();
    std::vector<Tensor> grad_outputs = std::move(pending[node]);
    pending.erase(node);
    grad_outputs.resize(static_cast<size_t>(node->num_outputs));
    bool any = false;
    for (const Tensor& g : grad_outputs) any = any || g.defined();
    std::vector<Tensor> grad_inputs;
    if (any) {
      grad_inputs = node->backward(grad_outputs);
      node->release();
      if (grad_inputs.size() != node->inputs.size())
        throw std::logic_error(std::string(node->name()) + " backward returned the wrong number of gradients");
    }
    for (size_t i = 0; i < node->inputs.size(); ++i) {
      const Edge& e = node->inputs[i];
      const Tensor* g = any && grad_inputs[i].defined() ? &grad_inputs[i] : nullptr;
      if (e.leaf && g) {
        if (g->shape() != e.leaf->shape)
          throw std::logic_error(std::string(node->name()) + " produced a gradient " + g->describe() +
                                 " for an input of shape " + shape_str(e.leaf->shape));
        accumulate_leaf(e.leaf.get(), *g);
      } else if (e.fn) {
        if (g && g->shape() != e.fn->output_shapes.at(static_cast<size_t>(e.output_nr)))
          throw std::logic_error(std::string(node->name()) + " produced a gradient " + g->describe() + " for output " +
                                 std::to_string(e.output_nr) + " of " + e.fn->name() + ", of shape " +
                                 shape_str(e.fn->output_shapes.at(static_cast<size_t>(e.output_nr))));
        if (g) {
          auto& slots = pending[e.fn.get()];
          slots.resize(static_cast<size_t>(e.fn->num_outputs));
          accumulate(slots[static_cast<size_t>(e.output_nr)], *g);
        }
        if (--dependencies[e.fn.get()] == 0) ready.push_back(e.fn.get());
      }
    }
  }
}

}  // namespace pt
