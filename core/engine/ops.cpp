#include "core/engine/ops.h"

#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>

#include "core/engine/autograd.h"
#include "core/engine/memory_ops.h"

namespace pt::ops {
namespace {

using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

// A Node whose backward is a closure. Closures must capture saved tensors detached (never an
// op's output handle itself, which would make a cycle through its grad_fn).
struct FunctionNode final : Node {
  FunctionNode(const char* op, BackwardFn fn) : op_name(op), backward_fn(std::move(fn)) {}
  const char* name() const override { return op_name; }
  std::vector<Tensor> backward(const std::vector<Tensor>& grad_outputs) override {
    if (!backward_fn)
      throw std::logic_error(std::string(op_name) +
                             ": backward through a graph a second time (its saved tensors were freed by the first)");
    return backward_fn(grad_outputs);
  }
  void release() override { backward_fn = nullptr; }
  const char* op_name;
  BackwardFn backward_fn;
};

// Records `outputs` as produced by `inputs` with the given backward, if any input needs grad.
void record_op(const char* op, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
               BackwardFn backward) {
  if (!any_requires_grad(inputs)) return;
  record(std::make_shared<FunctionNode>(op, std::move(backward)), inputs, outputs);
}

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

void check_defined(const char* op, const Tensor& t, const char* arg) {
  if (!t.defined()) fail(op, std::string(arg) + " is undefined");
}

// Same floating dtype and device for every defined tensor.
void check_compatible(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
  const Tensor* first = nullptr;
  const char* first_name = "";
  for (auto [name, t] : tensors) {
    if (!t->defined()) continue;
    if (!is_floating(t->dtype())) fail(op, std::string(name) + " must be floating, got " + t->describe());
    if (!first) {
      first = t;
      first_name = name;
      continue;
    }
    if (t->dtype() != first->dtype() || t->device() != first->device())
      fail(op, std::string(name) + " is " + t->describe() + " but " + first_name + " is " + first->describe());
  }
}

void check_ids(const char* op, const Tensor& ids, Device device) {
  if (ids.dtype() != DType::i32 && ids.dtype() != DType::i64)
    fail(op, "ids must be i32 or i64, got " + ids.describe());
  if (ids.device() != device) fail(op, "ids are on " + ids.device().str() + " but the data on " + device.str());
}

// Per-row statistics (norm mean/rstd, attention and loss log-sum-exp) stay in f32 for bf16 data.
DType stat_dtype(DType data) { return data == DType::bf16 ? DType::f32 : data; }

Tensor like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), t.device()); }
Tensor zeros_like(const Tensor& t) { return Tensor::zeros(t.shape(), t.dtype(), t.device()); }
Backend& be(const Tensor& t) { return backend_for(t.device()); }

// A view of `t` broadcast to `shape` (stride 0 along expanded dims).
Tensor expand_view(const Tensor& t, const Shape& shape) {
  const size_t nd = shape.size(), td = t.shape().size();
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.impl()->storage;
  impl->offset = t.impl()->offset;
  impl->dtype = t.dtype();
  impl->shape = shape;
  impl->strides.assign(nd, 0);
  for (size_t i = 0; i < td; ++i) {
    const size_t d = nd - td + i;
    impl->strides[d] = t.shape()[i] == 1 && shape[d] != 1 ? 0 : t.strides()[i];
  }
  return Tensor(impl);
}

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  const size_t nd = std::max(a.size(), b.size());
  Shape out(nd);
  for (size_t i = 0; i < nd; ++i) {
    const int64_t da = i < nd - a.size() ? 1 : a[i - (nd - a.size())];
    const int64_t db = i < nd - b.size() ? 1 : b[i - (nd - b.size())];
    if (da != db && da != 1 && db != 1) fail(op, "shapes " + shape_str(a) + " and " + shape_str(b) + " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// Sum a gradient of the broadcast shape back to `shape` (no autograd).
Tensor reduce_to(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  Shape padded(grad.shape().size(), 1);
  for (size_t i = 0; i < shape.size(); ++i) padded[padded.size() - shape.size() + i] = shape[i];
  Tensor out = Tensor::empty(padded, grad.dtype(), grad.device());
  be(grad).sum_to(grad, out);
  return out.view(shape);
}

// Materialise `grad` broadcast to `shape` (no autograd).
Tensor broadcast_to(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  Tensor out = Tensor::empty(shape, grad.dtype(), grad.device());
  be(grad).copy(expand_view(grad, shape), out);
  return out;
}

Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b, const Shape& shape) {
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  be(a).binary(op, expand_view(a, shape), expand_view(b, shape), out);
  return out;
}

Tensor binary(const char* name, BinaryOp op, const Tensor& a, const Tensor& b) {
  check_defined(name, a, "a");
  check_defined(name, b, "b");
  check_compatible(name, {{"a", &a}, {"b", &b}});
  const Shape shape = broadcast_shapes(name, a.shape(), b.shape());
  Tensor out = binary_raw(op, a, b, shape);
  const Shape sa = a.shape(), sb = b.shape();
  const bool need_a = a.requires_grad() || a.grad_fn(), need_b = b.requires_grad() || b.grad_fn();
  Tensor ad = a.detach(), bd = b.detach();
  record_op(name, {a, b}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    const Tensor& dy = g[0];
    Tensor da, db;
    switch (op) {
      case BinaryOp::add:
        if (need_a) da = reduce_to(dy, sa);
        if (need_b) db = reduce_to(dy, sb);
        break;
      case BinaryOp::sub:
        if (need_a) da = reduce_to(dy, sa);
        if (need_b) {
          db = like(dy);
          be(dy).affine(dy, -1.0, 0.0, db);
          db = reduce_to(db, sb);
        }
        break;
      case BinaryOp::mul:
        if (need_a) da = reduce_to(binary_raw(BinaryOp::mul, dy, bd, shape), sa);
        if (need_b) db = reduce_to(binary_raw(BinaryOp::mul, dy, ad, shape), sb);
        break;
      case BinaryOp::div: {
        // y = a / b: da = dy / b, db = -dy * a / b^2
        if (need_a) da = reduce_to(binary_raw(BinaryOp::div, dy, bd, shape), sa);
        if (need_b) {
          Tensor t = binary_raw(BinaryOp::mul, dy, ad, shape);
          t = binary_raw(BinaryOp::div, t, bd, shape);
          t = binary_raw(BinaryOp::div, t, bd, shape);
          Tensor neg = like(t);
          be(t).affine(t, -1.0, 0.0, neg);
          db = reduce_to(neg, sb);
        }
        break;
      }
    }
    return {da, db};
  });
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary("add", BinaryOp::add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary("sub", BinaryOp::sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary("mul", BinaryOp::mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary("div", BinaryOp::div, a, b); }

namespace {
Tensor affine_op(const char* name, const Tensor& x, double factor, double shift) {
  check_defined(name, x, "x");
  check_compatible(name, {{"x", &x}});
  Tensor xc = x.contiguous();
  Tensor out = like(xc);
  be(xc).affine(xc, factor, shift, out);
  record_op(name, {x}, {out}, [factor](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = like(g[0]);
    be(g[0]).affine(g[0].contiguous(), factor, 0.0, dx);
    return {dx};
  });
  return out;
}
}  // namespace

Tensor scale(const Tensor& x, double factor) { return affine_op("scale", x, factor, 0.0); }
Tensor add_scalar(const Tensor& x, double value) { return affine_op("add_scalar", x, 1.0, value); }

Tensor unary(UnaryOp op, const Tensor& x) {
  const char* name = unary_op_name(op);
  check_defined(name, x, "x");
  check_compatible(name, {{"x", &x}});
  Tensor xc = x.contiguous();
  Tensor y = like(xc);
  be(xc).unary(op, xc, y);
  Tensor xd = xc.detach(), yd = y.detach();
  record_op(name, {x}, {y}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = like(xd);
    be(xd).unary_backward(op, xd, yd, g[0].contiguous(), dx);
    return {dx};
  });
  return y;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  check_defined("sum_to", x, "x");
  check_compatible("sum_to", {{"x", &x}});
  if (broadcast_shapes("sum_to", x.shape(), shape) != x.shape())
    fail("sum_to", "cannot reduce " + shape_str(x.shape()) + " to " + shape_str(shape));
  Tensor out = reduce_to(x, shape);
  if (out.same_impl(x)) return x;
  const Shape xs = x.shape();
  record_op("sum_to", {x}, {out}, [xs](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    return {broadcast_to(g[0], xs)};
  });
  return out;
}

Tensor sum(const Tensor& x) { return reshape(sum_to(x, Shape(x.shape().size(), 1)), {}); }

Tensor mean(const Tensor& x) {
  if (x.numel() == 0) fail("mean", "of an empty tensor " + x.describe());
  return scale(sum(x), 1.0 / static_cast<double>(x.numel()));
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  check_defined("reshape", x, "x");
  Tensor out = x.contiguous().view(shape);
  if (out.same_impl(x)) return x;
  const Shape xs = x.shape();
  record_op("reshape", {x}, {out}, [xs](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    return {g[0].contiguous().view(xs)};
  });
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes) {
  check_defined("split", x, "x");
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  if (x.ndim() == 0 || total != x.size(-1))
    fail("split", "sizes sum to " + std::to_string(total) + " but the last dim of " + x.describe() + " is " +
                      (x.ndim() ? std::to_string(x.size(-1)) : "missing"));
  std::vector<Tensor> outs;
  int64_t start = 0;
  for (int64_t s : sizes) {
    outs.push_back(x.narrow_view(-1, start, s).contiguous());
    start += s;
  }
  if (outs.size() == 1 && outs[0].same_impl(x)) outs[0] = x.clone();
  const Tensor xd = x.detach();
  record_op("split", {x}, outs, [xd, sizes](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::empty(xd.shape(), xd.dtype(), xd.device());
    int64_t offset = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      Tensor slot = dx.narrow_view(-1, offset, sizes[i]);
      if (g[i].defined())
        be(dx).copy(g[i], slot);
      else
        be(dx).fill(slot, 0.0);
      offset += sizes[i];
    }
    return {dx};
  });
  return outs;
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  check_defined("narrow", x, "x");
  Tensor out = x.narrow_view(dim, start, length).contiguous();
  if (out.same_impl(x)) out = x.clone();
  const Tensor xd = x.detach();
  record_op("narrow", {x}, {out}, [xd, dim, start, length](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = Tensor::zeros(xd.shape(), xd.dtype(), xd.device());
    be(dx).copy(g[0], dx.narrow_view(dim, start, length));
    return {dx};
  });
  return out;
}

Tensor concat(const std::vector<Tensor>& xs) {
  if (xs.empty()) fail("concat", "no tensors");
  Shape shape = xs[0].shape();
  if (shape.empty()) fail("concat", "of a scalar");
  int64_t total = 0;
  std::vector<int64_t> sizes;
  for (const Tensor& x : xs) {
    check_defined("concat", x, "input");
    Shape s = x.shape();
    if (s.size() != shape.size() || !std::equal(s.begin(), s.end() - 1, shape.begin()) || x.dtype() != xs[0].dtype() ||
        x.device() != xs[0].device())
      fail("concat", "input " + x.describe() + " does not match " + xs[0].describe() + " except in the last dim");
    sizes.push_back(s.back());
    total += s.back();
  }
  shape.back() = total;
  Tensor out = Tensor::empty(shape, xs[0].dtype(), xs[0].device());
  int64_t offset = 0;
  for (const Tensor& x : xs) {
    be(out).copy(x, out.narrow_view(-1, offset, x.size(-1)));
    offset += x.size(-1);
  }
  record_op("concat", xs, {out}, [sizes](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    std::vector<Tensor> parts;
    int64_t start = 0;
    for (int64_t s : sizes) {
      parts.push_back(g[0].narrow_view(-1, start, s).contiguous());
      start += s;
    }
    return parts;
  });
  return out;
}

namespace {
// Whether `t`'s backend computes bf16 x bf16 GEMMs into f32 outputs (fp32 accumulation kept in fp32),
// which a compute copy's weight gradient needs to go straight into its f32 master's home.
bool writes_f32_from_bf16(const Tensor& t) { return t.device().type == DeviceType::cuda; }
}  // namespace

namespace {
// y = x @ weight^T (+ bias) (+ residual), recorded as `op` with inputs {x, weight, bias[, residual]}.
// The residual (linear_residual) is added by the GEMM's epilogue (gemm_add) and gets the output's
// gradient unchanged.
Tensor linear_impl(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual) {
  check_defined(op, x, "x");
  check_defined(op, weight, "weight");
  check_compatible(op, {{"x", &x}, {"weight", &weight}, {"bias", &bias}, {"residual", &residual}});
  if (weight.ndim() != 2 || x.ndim() < 1 || x.size(-1) != weight.size(1))
    fail(op, "x " + shape_str(x.shape()) + " does not fit weight " + shape_str(weight.shape()) +
                 " (expected x [..., in] and weight [out, in])");
  const int64_t in = weight.size(1), out_features = weight.size(0);
  if (in == 0) fail(op, "weight " + shape_str(weight.shape()) + " has no input features");
  if (bias.defined() && bias.shape() != Shape{out_features})
    fail(op, "bias " + shape_str(bias.shape()) + " does not match weight " + shape_str(weight.shape()));
  const int64_t rows = x.numel() / in;
  Tensor x2 = x.contiguous();
  Tensor w = weight.contiguous();
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  if (residual.defined() && residual.shape() != out_shape)
    fail(op, "residual " + shape_str(residual.shape()) + " does not match the output " + shape_str(out_shape));
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
  if (residual.defined()) {
    be(x2).gemm_add(false, true, rows, out_features, in, x2, w, residual.contiguous(), y);
  } else {
    double beta = 0.0;
    if (bias.defined()) {
      be(y).copy(expand_view(bias, {rows, out_features}), y.view({rows, out_features}));
      beta = 1.0;
    }
    be(x2).gemm(false, true, rows, out_features, in, 1.0, x2, w, beta, y);
  }
  const bool need_x = x.requires_grad() || x.grad_fn();
  const bool need_w = weight.requires_grad() || weight.grad_fn();
  const Tensor xd = x2.detach(), wd = w.detach();
  const Shape bias_shape = bias.shape();
  const bool has_bias = bias.defined(), has_residual = residual.defined();
  const GradSinkSource weight_home = need_w ? grad_sink_source(weight) : GradSinkSource();
  std::vector<Tensor> inputs{x, weight, bias};
  if (has_residual) inputs.push_back(residual);
  record_op(op, inputs, {y}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dy = g[0].contiguous();
    Tensor dx, dw, db;
    if (need_x) {
      dx = Tensor::empty(xd.shape(), xd.dtype(), xd.device());
      be(dy).gemm(false, false, rows, in, out_features, 1.0, dy, wd, 0.0, dx);
    }
    if (const GradSink sink = grad_sink(weight_home, wd.dtype(), writes_f32_from_bf16(wd))) {
      be(dy).gemm(true, false, out_features, in, rows, 1.0, dy, xd, sink.accumulate ? 1.0 : 0.0, sink.target);
      sink.commit();
    } else if (need_w) {
      dw = Tensor::empty(wd.shape(), wd.dtype(), wd.device());
      be(dy).gemm(true, false, out_features, in, rows, 1.0, dy, xd, 0.0, dw);
    }
    if (has_bias) db = reduce_to(dy.view({rows, out_features}), {1, out_features}).view(bias_shape);
    if (has_residual) return {dx, dw, db, dy};
    return {dx, dw, db};
  });
  return y;
}
}  // namespace

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  return linear_impl("linear", x, weight, bias, Tensor());
}

Tensor linear_residual(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& residual) {
  check_defined("linear_residual", residual, "residual");
  if (bias.defined()) return add(residual, linear(x, weight, bias));  // no epilogue for both: compose
  return linear_impl("linear_residual", x, weight, Tensor(), residual);
}

std::vector<Tensor> linear_split(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                 const std::vector<int64_t>& sizes) {
  check_defined("linear_split", x, "x");
  check_defined("linear_split", weight, "weight");
  check_compatible("linear_split", {{"x", &x}, {"weight", &weight}, {"bias", &bias}});
  if (weight.ndim() != 2 || x.ndim() < 1 || x.size(-1) != weight.size(1))
    fail("linear_split", "x " + shape_str(x.shape()) + " does not fit weight " + shape_str(weight.shape()) +
                             " (expected x [..., in] and weight [out, in])");
  const int64_t in = weight.size(1), out_features = weight.size(0);
  if (in == 0) fail("linear_split", "weight " + shape_str(weight.shape()) + " has no input features");
  if (bias.defined() && bias.shape() != Shape{out_features})
    fail("linear_split", "bias " + shape_str(bias.shape()) + " does not match weight " + shape_str(weight.shape()));
  int64_t total = 0;
  for (int64_t s : sizes) {
    if (s < 0) fail("linear_split", "negative part size " + std::to_string(s));
    total += s;
  }
  if (sizes.empty() || total != out_features)
    fail("linear_split", "part sizes sum to " + std::to_string(total) + " but weight " + shape_str(weight.shape()) +
                             " has " + std::to_string(out_features) + " rows");
  const int64_t rows = x.numel() / in;
  const Tensor x2 = x.contiguous(), w = weight.contiguous();
  std::vector<Tensor> outs;
  std::vector<int64_t> starts;
  int64_t start = 0;
  for (int64_t n : sizes) {
    Shape out_shape = x.shape();
    out_shape.back() = n;
    Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
    double beta = 0.0;
    if (bias.defined() && n > 0) {
      be(y).copy(expand_view(bias.narrow_view(0, start, n), {rows, n}), y.view({rows, n}));
      beta = 1.0;
    }
    // Rows [start, start + n) of a contiguous [out, in] weight are themselves a contiguous [n, in] matrix.
    be(x2).gemm(false, true, rows, n, in, 1.0, x2, w.narrow_view(0, start, n), beta, y);
    outs.push_back(y);
    starts.push_back(start);
    start += n;
  }
  const bool need_x = x.requires_grad() || x.grad_fn();
  const bool need_w = weight.requires_grad() || weight.grad_fn();
  const Tensor xd = x2.detach(), wd = w.detach();
  const Shape bias_shape = bias.shape();
  const bool has_bias = bias.defined();
  const GradSinkSource weight_home = need_w ? grad_sink_source(weight) : GradSinkSource();
  record_op("linear_split", {x, weight, bias}, outs, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx, dw, db;
    if (need_x) {
      // dx = sum over parts of dy_i @ W_i: the first GEMM writes dx, the others accumulate (beta = 1).
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (!g[i].defined() || sizes[i] == 0) continue;
        const Tensor dy = g[i].contiguous();
        const bool first = !dx.defined();
        if (first) dx = Tensor::empty(xd.shape(), xd.dtype(), xd.device());
        be(dy).gemm(false, false, rows, in, sizes[i], 1.0, dy, wd.narrow_view(0, starts[i], sizes[i]), first ? 0.0 : 1.0,
                    dx);
      }
      if (!dx.defined()) dx = zeros_like(xd);
    }
    if (const GradSink sink = grad_sink(weight_home, wd.dtype(), writes_f32_from_bf16(wd))) {
      // Each part's rows of the weight's gradient home: written (fresh) or accumulated into.
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (sizes[i] == 0) continue;
        const Tensor slot = sink.target.narrow_view(0, starts[i], sizes[i]);
        if (g[i].defined())
          be(slot).gemm(true, false, sizes[i], in, rows, 1.0, g[i].contiguous(), xd, sink.accumulate ? 1.0 : 0.0, slot);
        else if (!sink.accumulate)
          be(slot).fill(slot, 0.0);
      }
      sink.commit();
    } else if (need_w) {
      dw = Tensor::empty(wd.shape(), wd.dtype(), wd.device());
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (sizes[i] == 0) continue;
        const Tensor slot = dw.narrow_view(0, starts[i], sizes[i]);  // contiguous rows of dw
        if (g[i].defined())
          be(dw).gemm(true, false, sizes[i], in, rows, 1.0, g[i].contiguous(), xd, 0.0, slot);
        else
          be(dw).fill(slot, 0.0);
      }
    }
    if (has_bias) {
      db = Tensor::empty(bias_shape, wd.dtype(), wd.device());
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (sizes[i] == 0) continue;
        const Tensor slot = db.narrow_view(0, starts[i], sizes[i]);
        if (g[i].defined())
          be(db).copy(reduce_to(g[i].contiguous().view({rows, sizes[i]}), {1, sizes[i]}).view({sizes[i]}), slot);
        else
          be(db).fill(slot, 0.0);
      }
    }
    return {dx, dw, db};
  });
  return outs;
}

Tensor embedding(const Tensor& ids, const Tensor& table) {
  check_defined("embedding", ids, "ids");
  check_defined("embedding", table, "table");
  check_compatible("embedding", {{"table", &table}});
  check_ids("embedding", ids, table.device());
  if (table.ndim() != 2) fail("embedding", "table must be [vocab, dim], got " + shape_str(table.shape()));
  Tensor idc = ids.contiguous();
  Shape out_shape = ids.shape();
  out_shape.push_back(table.size(1));
  Tensor out = Tensor::empty(out_shape, table.dtype(), table.device());
  be(table).embedding_forward(idc, table.contiguous(), out);
  const Tensor idd = idc.detach();
  const Shape ts = table.shape();
  const DType dt = table.dtype();
  const Device dev = table.device();
  const GradSinkSource table_home = grad_sink_source(table);
  record_op("embedding", {ids, table}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    // The table's gradient home when it holds nothing yet (zeroed, then scattered into: the same
    // values as a fresh zero table); else a fresh table that autograd adds.
    if (const GradSink sink = grad_sink(table_home, dt, false); sink && !sink.accumulate) {
      be(sink.target).fill(sink.target, 0.0);
      be(sink.target).embedding_backward(idd, g[0].contiguous(), sink.target);
      sink.commit();
      return {Tensor(), Tensor()};
    }
    Tensor dtable = Tensor::zeros(ts, dt, dev);
    be(dtable).embedding_backward(idd, g[0].contiguous(), dtable);
    return {Tensor(), dtable};
  });
  return out;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_defined("rms_norm", x, "x");
  check_compatible("rms_norm", {{"x", &x}, {"weight", &weight}});
  if (x.ndim() < 1 || x.size(-1) == 0 || (weight.defined() && weight.shape() != Shape{x.size(-1)}))
    fail("rms_norm", "x " + shape_str(x.shape()) + " and weight " + shape_str(weight.shape()) +
                         " (expected a non-empty last dim and weight [last dim of x])");
  Tensor xc = x.contiguous();
  Tensor w = weight.defined() ? weight.contiguous() : Tensor();
  const int64_t rows = xc.numel() / xc.size(-1);
  Tensor y = like(xc);
  Tensor rstd = Tensor::empty({rows}, stat_dtype(x.dtype()), x.device());
  be(xc).rms_norm_forward(xc, w, eps, y, rstd);
  const Tensor xd = xc.detach(), wd = w.detach(), rd = rstd.detach();
  record_op("rms_norm", {x, weight}, {y}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = like(xd);
    Tensor dw = wd.defined() ? zeros_like(wd) : Tensor();
    be(xd).rms_norm_backward(xd, wd, rd, g[0].contiguous(), dx, dw);
    return {dx, dw};
  });
  return y;
}

std::vector<Tensor> add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps) {
  check_defined("add_rms_norm", x, "x");
  check_defined("add_rms_norm", residual, "residual");
  check_compatible("add_rms_norm", {{"x", &x}, {"residual", &residual}, {"weight", &weight}});
  if (x.ndim() < 1 || x.size(-1) == 0 || residual.shape() != x.shape() ||
      (weight.defined() && weight.shape() != Shape{x.size(-1)}))
    fail("add_rms_norm", "x " + shape_str(x.shape()) + ", residual " + shape_str(residual.shape()) + " and weight " +
                             shape_str(weight.shape()) +
                             " (expected x and residual of one shape with a non-empty last dim, weight [last dim])");
  const Tensor xc = x.contiguous(), rc = residual.contiguous();
  const Tensor w = weight.defined() ? weight.contiguous() : Tensor();
  const int64_t rows = xc.numel() / xc.size(-1);
  Tensor sum = like(xc), y = like(xc);
  Tensor rstd = Tensor::empty({rows}, stat_dtype(x.dtype()), x.device());
  be(xc).add_rms_norm_forward(xc, rc, w, eps, sum, y, rstd);
  const Tensor sd = sum.detach(), wd = w.detach(), rd = rstd.detach();
  record_op("add_rms_norm", {x, residual, weight}, {sum, y}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    // d(sum) total = the gradient that reached sum directly + the norm's backward; x and residual
    // both get it (a sum's inputs share its gradient).
    Tensor dsum = like(sd);
    Tensor dw = wd.defined() ? zeros_like(wd) : Tensor();
    if (g[1].defined() && g[0].defined())
      be(sd).rms_norm_backward_add(sd, wd, rd, g[1].contiguous(), g[0].contiguous(), dsum, dw);
    else if (g[1].defined())
      be(sd).rms_norm_backward(sd, wd, rd, g[1].contiguous(), dsum, dw);
    else
      be(sd).copy(g[0], dsum);  // only sum was used: the norm contributes nothing
    return {dsum, dsum, dw};
  });
  return {sum, y};
}

std::vector<Tensor> rms_norm_fork(const Tensor& x, const Tensor& weight, double eps) {
  check_defined("rms_norm_fork", x, "x");
  check_compatible("rms_norm_fork", {{"x", &x}, {"weight", &weight}});
  if (x.ndim() < 1 || x.size(-1) == 0 || (weight.defined() && weight.shape() != Shape{x.size(-1)}))
    fail("rms_norm_fork", "x " + shape_str(x.shape()) + " and weight " + shape_str(weight.shape()) +
                              " (expected a non-empty last dim and weight [last dim of x])");
  const Tensor xc = x.contiguous();
  const Tensor w = weight.defined() ? weight.contiguous() : Tensor();
  const int64_t rows = xc.numel() / xc.size(-1);
  Tensor through = xc.detach(), y = like(xc);  // `through` shares x's storage: no copy
  Tensor rstd = Tensor::empty({rows}, stat_dtype(x.dtype()), x.device());
  be(xc).rms_norm_forward(xc, w, eps, y, rstd);
  const Tensor xd = xc.detach(), wd = w.detach(), rd = rstd.detach();
  record_op("rms_norm_fork", {x, weight}, {through, y}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    // dx = the gradient of the pass-through + the norm's backward, in one kernel.
    if (!g[1].defined()) return {g[0], Tensor()};  // only the pass-through was used: no weight gradient
    Tensor dx = like(xd);
    Tensor dw = wd.defined() ? zeros_like(wd) : Tensor();
    if (g[0].defined())
      be(xd).rms_norm_backward_add(xd, wd, rd, g[1].contiguous(), g[0].contiguous(), dx, dw);
    else
      be(xd).rms_norm_backward(xd, wd, rd, g[1].contiguous(), dx, dw);
    return {dx, dw};
  });
  return {through, y};
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  check_defined("layer_norm", x, "x");
  check_compatible("layer_norm", {{"x", &x}, {"weight", &weight}, {"bias", &bias}});
  const Shape dim_shape{x.ndim() ? x.size(-1) : 0};
  if (x.ndim() < 1 || x.size(-1) == 0 || (weight.defined() && weight.shape() != dim_shape) || (bias.defined() && bias.shape() != dim_shape))
    fail("layer_norm", "x " + shape_str(x.shape()) + ", weight " + shape_str(weight.shape()) + ", bias " +
                           shape_str(bias.shape()) + " (expected weight and bias [last dim of x])");
  Tensor xc = x.contiguous();
  Tensor w = weight.defined() ? weight.contiguous() : Tensor();
  Tensor b = bias.defined() ? bias.contiguous() : Tensor();
  const int64_t rows = xc.numel() / xc.size(-1);
  Tensor y = like(xc);
  Tensor mean_t = Tensor::empty({rows}, stat_dtype(x.dtype()), x.device());
  Tensor rstd = Tensor::empty({rows}, stat_dtype(x.dtype()), x.device());
  be(xc).layer_norm_forward(xc, w, b, eps, y, mean_t, rstd);
  const Tensor xd = xc.detach(), wd = w.detach(), md = mean_t.detach(), rd = rstd.detach();
  const bool has_bias = b.defined();
  record_op("layer_norm", {x, weight, bias}, {y}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = like(xd);
    Tensor dw = wd.defined() ? zeros_like(wd) : Tensor();
    Tensor db = has_bias ? Tensor::zeros(dim_shape, xd.dtype(), xd.device()) : Tensor();
    be(xd).layer_norm_backward(xd, wd, md, rd, g[0].contiguous(), dx, dw, db);
    return {dx, dw, db};
  });
  return y;
}

Tensor rope(const Tensor& x, double theta) {
  check_defined("rope", x, "x");
  check_compatible("rope", {{"x", &x}});
  if (x.ndim() != 4 || x.size(3) % 2 != 0)
    fail("rope", "x must be [batch, seq, heads, head_dim] with an even head_dim, got " + shape_str(x.shape()));
  Tensor xc = x.contiguous();
  Tensor y = like(xc);
  be(xc).rope(xc, theta, false, y);
  record_op("rope", {x}, {y}, [theta](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dy = g[0].contiguous();
    Tensor dx = like(dy);
    be(dy).rope(dy, theta, true, dx);
    return {dx};
  });
  return y;
}

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  check_defined("causal_attention", q, "q");
  check_defined("causal_attention", k, "k");
  check_defined("causal_attention", v, "v");
  check_compatible("causal_attention", {{"q", &q}, {"k", &k}, {"v", &v}});
  if (q.ndim() != 4 || k.shape() != v.shape() || k.ndim() != 4 || q.size(0) != k.size(0) || q.size(1) != k.size(1) ||
      q.size(3) != k.size(3) || k.size(2) == 0 || q.size(2) % k.size(2) != 0)
    fail("causal_attention", "q " + shape_str(q.shape()) + ", k " + shape_str(k.shape()) + ", v " +
                                 shape_str(v.shape()) +
                                 " (expected q [B, T, Hq, D], k and v [B, T, Hkv, D], Hq a multiple of Hkv)");
  if (scale == 0.0) scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  Tensor out = like(qc);
  Tensor lse = Tensor::empty({q.size(0), q.size(2), q.size(1)}, stat_dtype(q.dtype()), q.device());
  be(qc).attention_forward(qc, kc, vc, scale, out, lse);
  const Tensor qd = qc.detach(), kd = kc.detach(), vd = vc.detach(), od = out.detach(), ld = lse.detach();
  record_op("causal_attention", {q, k, v}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dq = like(qd), dk = like(kd), dv = like(vd);
    be(qd).attention_backward(qd, kd, vd, od, ld, g[0].contiguous(), scale, dq, dk, dv);
    return {dq, dk, dv};
  });
  return out;
}

Tensor softmax(const Tensor& x) {
  check_defined("softmax", x, "x");
  check_compatible("softmax", {{"x", &x}});
  if (x.ndim() < 1 || x.size(-1) == 0) fail("softmax", "needs a non-empty last dim, got " + shape_str(x.shape()));
  Tensor xc = x.contiguous();
  Tensor y = like(xc);
  be(xc).softmax_forward(xc, y);
  const Tensor yd = y.detach();
  record_op("softmax", {x}, {y}, [yd](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dx = like(yd);
    be(yd).softmax_backward(yd, g[0].contiguous(), dx);
    return {dx};
  });
  return y;
}

Tensor glu(GluKind kind, const Tensor& gate, const Tensor& up) {
  check_defined("glu", gate, "gate");
  check_defined("glu", up, "up");
  check_compatible("glu", {{"gate", &gate}, {"up", &up}});
  if (gate.shape() != up.shape())
    fail("glu", "gate " + shape_str(gate.shape()) + " and up " + shape_str(up.shape()) + " differ");
  Tensor gc = gate.contiguous(), uc = up.contiguous();
  Tensor out = like(gc);
  be(gc).glu_forward(kind, gc, uc, out);
  const Tensor gd = gc.detach(), ud = uc.detach();
  record_op("glu", {gate, up}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dg = like(gd), du = like(ud);
    be(gd).glu_backward(kind, gd, ud, g[0].contiguous(), dg, du);
    return {dg, du};
  });
  return out;
}

Tensor activation_mixture(const Tensor& h, const std::vector<UnaryOp>& dictionary, const Tensor& coef,
                          MixtureCoef layout) {
  check_defined("activation_mixture", h, "h");
  check_defined("activation_mixture", coef, "coef");
  check_compatible("activation_mixture", {{"h", &h}, {"coef", &coef}});
  const int64_t K = static_cast<int64_t>(dictionary.size());
  if (K < 1 || K > ActivationDictionary::kMaxSize)
    fail("activation_mixture", "the dictionary has " + std::to_string(K) + " entries (1 to " +
                                   std::to_string(ActivationDictionary::kMaxSize) + " supported)");
  if (h.ndim() < 1 || h.size(-1) == 0) fail("activation_mixture", "h must have a non-empty last dim, got " + shape_str(h.shape()));
  const int64_t F = h.size(-1);
  Shape expected;
  switch (layout) {
    case MixtureCoef::per_row: expected = h.shape(); expected.back() = K; break;
    case MixtureCoef::shared: expected = {K}; break;
    case MixtureCoef::per_channel: expected = {K, F}; break;
  }
  if (coef.shape() != expected)
    fail("activation_mixture", "coef " + shape_str(coef.shape()) + " does not fit h " + shape_str(h.shape()) + " and " +
                                   std::to_string(K) + " entries (expected " + shape_str(expected) + ")");
  ActivationDictionary dict;
  dict.size = static_cast<int>(K);
  for (int64_t k = 0; k < K; ++k) dict.ops[k] = dictionary[size_t(k)];
  Tensor hc = h.contiguous(), cc = coef.contiguous();
  Tensor out = like(hc);
  be(hc).activation_mixture_forward(dict, layout, hc, cc, out);
  const Tensor hd = hc.detach(), cd = cc.detach();
  record_op("activation_mixture", {h, coef}, {out}, [=](const std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dh = like(hd), dcoef = like(cd);
    be(hd).activation_mixture_backward(dict, layout, hd, cd, g[0].contiguous(), dh, dcoef);
    return {dh, dcoef};
  });
  return out;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t num_valid) {
  check_defined("cross_entropy", logits, "logits");
  check_defined("cross_entropy", targets, "targets");
  check_compatible("cross_entropy", {{"logits", &logits}});
  check_ids("cross_entropy", targets, logits.device());
  if (logits.ndim() != 2 || logits.size(1) == 0 || targets.shape() != Shape{logits.size(0)})
    fail("cross_entropy", "logits " + shape_str(logits.shape()) + " and targets " + shape_str(targets.shape()) +
                              " (expected logits [N, V] with V > 0 and targets [N])");
  Tensor lc = logits.contiguous(), tc = targets.contiguous();
  if (num_valid < 0) {
    num_valid = 0;
    for (int64_t t : tc.to_vector<int64_t>()) num_valid += t != -1;
  }
  const DType acc = stat_dtype(logits.dtype());
  const int64_t rows = logits.size(0);
  Tensor losses = Tensor::empty({rows}, acc, logits.device());
  Tensor lse = Tensor::empty({rows}, acc, logits.device());
  const double inv = num_valid > 0 ? 1.0 / static_cast<double>(num_valid) : 0.0;
  if (any_requires_grad({&logits})) {
    // Training: dlogits for dloss = 1 come out of the same pass over the logits (which are then not
    // kept); the backward only applies the real dloss, a no-op when it is the usual seed 1.
    Tensor dlogits = like(lc);
    be(lc).cross_entropy_forward_backward(lc, tc, losses, lse, inv, dlogits);
    Tensor total = reduce_to(losses.view({rows}), {1});
    Tensor loss = Tensor::empty({}, acc, logits.device());
    be(total).affine(total, inv, 0.0, loss.view({1}));
    record_op("cross_entropy", {logits, targets}, {loss}, [dlogits](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      be(dlogits).scale_by_scalar(dlogits, g[0]);  // runs once (the graph is released after backward)
      return {dlogits, Tensor()};
    });
    return loss;
  }
  // No gradient wanted (evaluation): the forward kernel alone.
  be(lc).cross_entropy_forward(lc, tc, losses, lse);
  Tensor total = reduce_to(losses.view({rows}), {1});
  Tensor loss = Tensor::empty({}, acc, logits.device());
  be(total).affine(total, inv, 0.0, loss.view({1}));
  return loss;
}

}  // namespace pt::ops
