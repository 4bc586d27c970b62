#include "core/engine/memory_ops.h"

#include <stdexcept>
#include <string>

#include "core/engine/autograd.h"
#include "core/engine/ops.h"

namespace pt::ops {
namespace {

thread_local int replay_depth = 0;

struct ReplayScope {
  ReplayScope() { ++replay_depth; }
  ~ReplayScope() { --replay_depth; }
  ReplayScope(const ReplayScope&) = delete;
  ReplayScope& operator=(const ReplayScope&) = delete;
};

struct RecomputeNode final : Node {
  RecomputeNode(MultiSegmentFn f, std::vector<Tensor> saved) : fn(std::move(f)), saved_inputs(std::move(saved)) {}
  const char* name() const override { return "recompute"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) override {
    if (!fn) throw std::logic_error("recompute: backward through a graph a second time");
    std::vector<Tensor> inputs;
    for (const Tensor& t : saved_inputs) {
      Tensor leaf = t.detach();
      if (leaf.defined() && is_floating(leaf.dtype())) leaf.set_requires_grad(true);
      inputs.push_back(leaf);
    }
    std::vector<Tensor> outputs;
    {
      GradModeGuard recording(true);
      ReplayScope replay;
      outputs = fn(inputs);
    }
    if (outputs.size() != grad_outputs.size())
      throw std::logic_error("recompute: the segment returned " + std::to_string(outputs.size()) +
                             " outputs on replay but " + std::to_string(grad_outputs.size()) + " in the forward");
    std::vector<Tensor> roots, seeds;
    for (size_t i = 0; i < outputs.size(); ++i)
      if (grad_outputs[i].defined() && outputs[i].grad_fn()) {
        roots.push_back(outputs[i]);
        seeds.push_back(grad_outputs[i]);
      }
    if (!roots.empty()) run_backward(roots, seeds);
    std::vector<Tensor> grads;
    for (const Tensor& in : inputs) grads.push_back(in.defined() ? in.grad() : Tensor());
    return grads;
  }
  void release() override {
    fn = nullptr;
    saved_inputs.clear();
  }
  MultiSegmentFn fn;
  std::vector<Tensor> saved_inputs;
};

}  // namespace

bool recompute_replaying() { return replay_depth > 0; }

std::vector<Tensor> recompute(const MultiSegmentFn& fn, const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return fn(inputs);
  std::vector<Tensor> outputs;
  {
    NoGradGuard no_grad;
    outputs = fn(inputs);
  }
  std::vector<Tensor> saved;
  for (const Tensor& t : inputs) saved.push_back(t.detach());
  // Parameters captured inside fn need this Node even when no input requires grad.
  record(std::make_shared<RecomputeNode>(fn, std::move(saved)), inputs, outputs, /*always=*/true);
  return outputs;
}

Tensor recompute(const SegmentFn& fn, const std::vector<Tensor>& inputs) {
  return recompute(MultiSegmentFn([fn](const std::vector<Tensor>& in) { return std::vector<Tensor>{fn(in)}; }),
                   inputs)[0];
}

Tensor chunked_lm_loss(const Tensor& h, const Tensor& head, const Tensor& targets, int64_t chunk_rows,
                       int64_t num_valid) {
  if (h.ndim() != 2 || head.ndim() != 2 || h.size(1) == 0 || h.size(1) != head.size(1) || targets.shape() != Shape{h.size(0)})
    throw std::invalid_argument("chunked_lm_loss: h " + shape_str(h.shape()) + ", head " + shape_str(head.shape()) +
                                ", targets " + shape_str(targets.shape()) +
                                " (expected h [N, d] with d > 0, head [V, d], targets [N])");
  const int64_t rows = h.size(0);
  if (num_valid < 0) {
    num_valid = 0;
    for (int64_t t : targets.to_vector<int64_t>()) num_valid += t != -1;
  }
  if (chunk_rows <= 0 || chunk_rows >= rows) return cross_entropy(linear(h, head), targets, num_valid);
  // One split of the flattened h into row chunks: its backward assembles dh once, O(N d) in total
  // (a narrow() per chunk would build a full-size zero gradient per chunk and sum them: O(chunks N d)).
  const int64_t d = h.size(1);
  std::vector<int64_t> flat_sizes;
  for (int64_t start = 0; start < rows; start += chunk_rows) flat_sizes.push_back(std::min(chunk_rows, rows - start) * d);
  const std::vector<Tensor> h_chunks = split(reshape(h, {1, rows * d}), flat_sizes);
  Tensor total;
  for (size_t c = 0; c < h_chunks.size(); ++c) {
    const int64_t start = static_cast<int64_t>(c) * chunk_rows, n = flat_sizes[c] / d;
    Tensor h_chunk = reshape(h_chunks[c], {n, d});
    Tensor t_chunk = targets.narrow_view(0, start, n).contiguous();
    // Each chunk contributes sum(loss) / num_valid, so the chunks add up to the overall mean.
    Tensor part = recompute(
        [t_chunk, num_valid](const std::vector<Tensor>& in) { return cross_entropy(linear(in[0], in[1]), t_chunk, num_valid); },
        {h_chunk, head});
    total = total.defined() ? add(total, part) : part;
  }
  return total;
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

namespace {
struct CastCachedNode final : Node {
  DType from;
  const char* name() const override { return "cast_cached"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override { return {g[0].to(from)}; }
};
}  // namespace

Tensor cast_cached(const Tensor& master, const Tensor& copy) {
  if (!master.defined() || !copy.defined()) throw std::invalid_argument("cast_cached: undefined master or copy");
  if (copy.shape() != master.shape() || copy.device() != master.device() || !copy.is_contiguous())
    throw std::invalid_argument("cast_cached: copy " + copy.describe() + " does not match master " + master.describe());
  Tensor out = copy.detach();
  if (any_requires_grad({&master})) {
    auto node = std::make_shared<CastCachedNode>();
    node->from = master.dtype();
    record(node, {master}, {out});
  }
  return out;
}

std::shared_ptr<TensorImpl> compute_copy_master(const std::shared_ptr<Node>& grad_fn) {
  auto* node = dynamic_cast<CastCachedNode*>(grad_fn.get());
  if (!node || node->inputs.empty()) return nullptr;
  return node->inputs[0].leaf;  // null when the master is not a leaf
}

}  // namespace pt::ops
