#include "core/model/param_store.h"

#include <stdexcept>

#include "core/engine/autograd.h"
#include "core/engine/memory_ops.h"
#include "core/engine/ops.h"

namespace pt {

const char* param_kind_name(ParamKind kind) {
  switch (kind) {
    case ParamKind::matrix: return "matrix";
    case ParamKind::embedding: return "embedding";
    case ParamKind::norm_scale: return "norm_scale";
    case ParamKind::bias: return "bias";
    case ParamKind::scale_direction: return "scale_direction";
    case ParamKind::coefficient: return "coefficient";
  }
  return "?";
}

const char* scale_role_name(ScaleRole role) {
  switch (role) {
    case ScaleRole::none: return "none";
    case ScaleRole::input: return "input";
    case ScaleRole::output: return "output";
  }
  return "?";
}

namespace {

int64_t aligned(int64_t n) {
  constexpr int64_t a = ParamStore::kAlignElements;
  return (n + a - 1) / a * a;
}

// The initial value of a table entry, drawn from its own stream (as a plain tensor).
Tensor initial_value(const ParamInfo& info, Rng& stream, DType dtype, Device device) {
  if (!info.init_rows.empty()) {
    const int64_t n = shape_numel(info.shape), per_row = n / info.shape.at(0);
    std::vector<double> values(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) values[size_t(j)] = info.init_rows.at(size_t(j / per_row));
    return Tensor::from_vector(values, info.shape, Device::cpu()).to(dtype).to(device);
  }
  return info.init_std > 0.0 ? Tensor::randn(info.shape, stream, info.init_std, dtype, device)
                             : Tensor::full(info.shape, info.init_value, dtype, device);
}

}  // namespace

ParamStore::ParamStore(std::vector<ParamInfo> table, Rng& rng, DType dtype, Device device)
    : dtype_(dtype), device_(device) {
  if (!is_floating(dtype)) throw std::invalid_argument(std::string("ParamStore: dtype ") + dtype_name(dtype) + " is not floating");
  int64_t trainable = 0, buffers = 0;
  for (ParamInfo& info : table) {
    if (!by_name_.emplace(info.name, entries_.size()).second)
      throw std::logic_error("parameter table: \"" + info.name + "\" is declared twice");
    Entry e;
    int64_t& end = info.trainable ? trainable : buffers;
    e.offset = end;
    end = aligned(end + shape_numel(info.shape));
    e.info = std::move(info);
    entries_.push_back(std::move(e));
  }
  values_ = Tensor::zeros({trainable}, dtype, device);
  grads_ = Tensor::zeros({trainable}, dtype, device);
  buffers_ = Tensor::zeros({buffers}, dtype, device);
  for (size_t i = 0; i < entries_.size(); ++i) {
    Entry& e = entries_[i];
    const int64_t n = shape_numel(e.info.shape);
    const Tensor& flat = e.info.trainable ? values_ : buffers_;
    e.value = flat.narrow_view(0, e.offset, n).view(e.info.shape);
    Rng stream = rng.fork(i);
    backend_for(device).copy(initial_value(e.info, stream, dtype, device), e.value);
    if (e.info.trainable) {
      e.value.set_requires_grad(true);
      e.value.set_grad_home(grads_.narrow_view(0, e.offset, n).view(e.info.shape));
    }
  }
}

size_t ParamStore::index_of(ParamRef p) const {
  if (!p.defined() || static_cast<size_t>(p.index) >= entries_.size())
    throw std::out_of_range("ParamStore: parameter reference " + std::to_string(p.index) + " out of range (" +
                            std::to_string(entries_.size()) + " parameters)");
  return static_cast<size_t>(p.index);
}

ParamRef ParamStore::find(std::string_view name) const {
  const auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? ParamRef{} : ParamRef{static_cast<int32_t>(it->second)};
}

ParamRef ParamStore::at(std::string_view name) const {
  const ParamRef p = find(name);
  if (!p) throw std::out_of_range("model has no parameter \"" + std::string(name) + "\"");
  return p;
}

int64_t ParamStore::num_parameters() const {
  int64_t n = 0;
  for (const Entry& e : entries_) n += shape_numel(e.info.shape);
  return n;
}

void ParamStore::load_value(size_t i, const Tensor& src) {
  Entry& e = entries_.at(i);
  if (src.shape() != e.info.shape)
    throw std::invalid_argument("parameter \"" + e.info.name + "\" is " + shape_str(e.info.shape) + ", not " +
                                shape_str(src.shape()));
  NoGradGuard no_grad;
  e.value.copy_from(src);
  e.copy_valid = false;
}

void ParamStore::zero_grad() {
  for (Entry& e : entries_) e.value.zero_grad();
}

void ParamStore::set_compute_dtype(std::optional<DType> dtype) {
  if (dtype && !is_floating(*dtype))
    throw std::invalid_argument(std::string("compute dtype must be floating, got ") + dtype_name(*dtype));
  compute_dtype_ = dtype;
  drop_compute_copies();
  const bool copies = dtype && *dtype == DType::bf16 && dtype_ == DType::f32;
  compute_ = copies ? Tensor::empty(values_.shape(), DType::bf16, device_) : Tensor();
  for (Entry& e : entries_)
    e.copy = copies && e.info.trainable ? compute_.narrow_view(0, e.offset, shape_numel(e.info.shape)).view(e.info.shape)
                                        : Tensor();
}

void ParamStore::drop_compute_copies() const {
  for (const Entry& e : entries_) e.copy_valid = false;
}

Tensor ParamStore::compute_copy(size_t i) const {
  const Entry& e = entries_.at(i);
  return e.copy_valid ? e.copy : Tensor();
}

Tensor ParamStore::compute_value(ParamRef p) const {
  const Entry& e = entries_[index_of(p)];
  if (!compute_dtype_ || e.value.dtype() == *compute_dtype_) return e.value;
  if (!e.copy.defined()) return ops::cast(e.value, *compute_dtype_);
  if (!e.copy_valid) {
    NoGradGuard no_grad;
    backend_for(device_).copy(e.value, e.copy);
    e.copy_valid = true;
  }
  return ops::cast_cached(e.value, e.copy);
}

}  // namespace pt
