#include "core/engine/tensor.h"

#include <sstream>
#include <stdexcept>

#include "core/engine/autograd.h"
#include "core/engine/backend.h"
#include "core/engine/rng.h"

namespace pt {

std::string shape_str(const Shape& s) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < s.size(); ++i) out << (i ? ", " : "") << s[i];
  out << ']';
  return out.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s)
    if (__builtin_mul_overflow(n, d, &n))
      throw std::overflow_error("tensor shape " + shape_str(s) + " has more elements than fit in 64 bits");
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape strides(s.size());
  int64_t stride = 1;
  for (size_t i = s.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= s[i];
  }
  return strides;
}

Storage::Storage(size_t nbytes, Device dev) : bytes(nbytes), device(dev), allocator(&allocator_for(dev)) {
  data = allocator->allocate(nbytes);
}

Storage::~Storage() { allocator->deallocate(data, bytes); }

namespace {
const Shape kEmptyShape;
const Tensor kUndefined;
const std::shared_ptr<Node> kNoNode;

std::shared_ptr<TensorImpl> make_impl(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    if (d < 0) throw std::invalid_argument("tensor shape " + shape_str(shape) + " has a negative size");
  size_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<size_t>(shape_numel(shape)), dtype_size(dtype), &bytes))
    throw std::overflow_error("tensor shape " + shape_str(shape) + " of " + dtype_name(dtype) + " is too large to allocate");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(bytes, device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return impl;
}

void require_defined(const TensorImpl* impl, const char* what) {
  if (!impl) throw std::logic_error(std::string(what) + " on an undefined tensor");
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) { return Tensor(make_impl(shape, dtype, device)); }

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::randn(const Shape& shape, Rng& rng, double std, DType dtype, Device device) {
  std::vector<double> values(static_cast<size_t>(shape_numel(shape)));
  for (double& v : values) v = rng.normal() * std;
  return from_vector(values, shape, Device::cpu()).to(dtype).to(device);
}

Tensor Tensor::uniform(const Shape& shape, Rng& rng, double lo, double hi, DType dtype, Device device) {
  std::vector<double> values(static_cast<size_t>(shape_numel(shape)));
  for (double& v : values) v = lo + (hi - lo) * rng.uniform();
  return from_vector(values, shape, Device::cpu()).to(dtype).to(device);
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw std::invalid_argument("from_vector: " + std::to_string(values.size()) + " values for shape " +
                                shape_str(shape));
  Tensor t = empty(shape, dtype_of<T>(), device);
  backend_for(device).copy_from_host(values.data(), t);
  return t;
}

template Tensor Tensor::from_vector(const std::vector<float>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<double>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<int32_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<int64_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<bf16>&, const Shape&, Device);

const Shape& Tensor::shape() const { return impl_ ? impl_->shape : kEmptyShape; }
const Shape& Tensor::strides() const { return impl_ ? impl_->strides : kEmptyShape; }
int64_t Tensor::numel() const { return impl_ ? shape_numel(impl_->shape) : 0; }
DType Tensor::dtype() const {
  require_defined(impl_.get(), "dtype()");
  return impl_->dtype;
}
Device Tensor::device() const {
  require_defined(impl_.get(), "device()");
  return impl_->storage->device;
}

int64_t Tensor::size(int64_t dim) const {
  const int64_t n = ndim();
  const int64_t d = dim < 0 ? dim + n : dim;
  if (d < 0 || d >= n)
    throw std::out_of_range("dim " + std::to_string(dim) + " out of range for shape " + shape_str(shape()));
  return shape()[static_cast<size_t>(d)];
}

bool Tensor::is_contiguous() const {
  if (!impl_) return true;
  int64_t expected = 1;
  for (size_t i = impl_->shape.size(); i-- > 0;) {
    if (impl_->shape[i] != 1 && impl_->strides[i] != expected) return false;
    expected *= impl_->shape[i];
  }
  return true;
}

std::string Tensor::describe() const {
  if (!impl_) return "undefined";
  return std::string(dtype_name(dtype())) + shape_str(shape()) + " " + device().str();
}

void* Tensor::raw_data() const {
  require_defined(impl_.get(), "raw_data()");
  return static_cast<char*>(impl_->storage->data) + impl_->offset * static_cast<int64_t>(dtype_size(impl_->dtype));
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = to(DType(dtype_of<T>())).to(Device::cpu()).contiguous();
  const T* p = host.data<T>();
  return std::vector<T>(p, p + host.numel());
}

template std::vector<float> Tensor::to_vector() const;
template std::vector<double> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;
template std::vector<int64_t> Tensor::to_vector() const;

double Tensor::item() const {
  if (numel() != 1) throw std::invalid_argument("item() on a tensor with " + std::to_string(numel()) + " elements");
  return to_vector<double>()[0];
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor out = empty(shape(), dtype(), device());
  backend_for(device()).copy(*this, out);
  return out;
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  backend_for(device()).copy(*this, out);
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape(), dtype(), target);
  if (target.is_cpu()) {
    backend_for(src.device()).copy_to_host(src, out.raw_data());
  } else if (src.device().is_cpu()) {
    backend_for(target).copy_from_host(src.raw_data(), out);
  } else {
    return to(Device::cpu()).to(target);
  }
  return out;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor out = empty(shape(), target, device());
  backend_for(device()).copy(*this, out);
  return out;
}

Tensor Tensor::view(const Shape& new_shape) const {
  if (!is_contiguous()) throw std::invalid_argument("view() of a non-contiguous tensor " + describe());
  Shape resolved = new_shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < resolved.size(); ++i) {
    if (resolved[i] < -1)
      throw std::invalid_argument("view(" + shape_str(new_shape) + ") of " + describe() + ": negative size");
    if (resolved[i] == -1) {
      if (infer >= 0) throw std::invalid_argument("view(" + shape_str(new_shape) + "): more than one -1");
      infer = static_cast<int64_t>(i);
    } else {
      if (__builtin_mul_overflow(known, resolved[i], &known))
        throw std::invalid_argument("view(" + shape_str(new_shape) + ") of " + describe() + ": element count differs");
    }
  }
  if (infer >= 0) {
    if (known == 0)
      throw std::invalid_argument("view(" + shape_str(new_shape) + ") of " + describe() +
                                  ": cannot infer the -1 size next to a zero size");
    resolved[static_cast<size_t>(infer)] = numel() / known;
  }
  if (shape_numel(resolved) != numel())
    throw std::invalid_argument("view(" + shape_str(new_shape) + ") of " + describe() + ": element count differs");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->offset = impl_->offset;
  impl->shape = resolved;
  impl->strides = contiguous_strides(resolved);
  impl->dtype = impl_->dtype;
  return Tensor(impl);
}

Tensor Tensor::narrow_view(int64_t dim, int64_t start, int64_t length) const {
  const int64_t d = dim < 0 ? dim + ndim() : dim;
  if (d < 0 || d >= ndim() || start < 0 || length < 0 || start > size(d) || length > size(d) - start)
    throw std::out_of_range("narrow_view(dim " + std::to_string(dim) + ", " + std::to_string(start) + ", " +
                            std::to_string(length) + ") of " + describe());
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->offset = impl_->offset + start * impl_->strides[static_cast<size_t>(d)];
  impl->shape = impl_->shape;
  impl->shape[static_cast<size_t>(d)] = length;
  impl->strides = impl_->strides;
  impl->dtype = impl_->dtype;
  return Tensor(impl);
}

Tensor Tensor::detach() const {
  if (!impl_) return {};
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->offset = impl_->offset;
  impl->shape = impl_->shape;
  impl->strides = impl_->strides;
  impl->dtype = impl_->dtype;
  return Tensor(impl);
}

void Tensor::copy_from(const Tensor& src) {
  if (src.shape() != shape())
    throw std::invalid_argument("copy_from: shape " + shape_str(src.shape()) + " into " + shape_str(shape()));
  if (src.device() == device()) {
    backend_for(device()).copy(src, *this);
    return;
  }
  Tensor moved = src.to(device());
  backend_for(device()).copy(moved, *this);
}

void Tensor::fill_(double value) { backend_for(device()).fill(*this, value); }

bool Tensor::requires_grad() const { return impl_ && impl_->requires_grad; }

Tensor& Tensor::set_requires_grad(bool requires_grad) {
  require_defined(impl_.get(), "set_requires_grad()");
  if (requires_grad && !is_floating(dtype()))
    throw std::invalid_argument("set_requires_grad on a non-floating tensor " + describe());
  impl_->requires_grad = requires_grad;
  return *this;
}

const Tensor& Tensor::grad() const { return impl_ ? impl_->grad : kUndefined; }
void Tensor::set_grad(const Tensor& grad) {
  require_defined(impl_.get(), "set_grad()");
  impl_->grad = grad;
}
void Tensor::set_grad_home(const Tensor& home) {
  require_defined(impl_.get(), "set_grad_home()");
  if (home.defined() && (home.shape() != shape() || home.device() != device() || !home.is_contiguous() ||
                         !is_floating(home.dtype())))
    throw std::invalid_argument("set_grad_home: home " + home.describe() + " does not fit " + describe() +
                                " (same shape and device, contiguous, floating)");
  impl_->grad_home = home;
  impl_->grad = Tensor();
}
const Tensor& Tensor::grad_home() const { return impl_ ? impl_->grad_home : kUndefined; }
void Tensor::zero_grad() {
  if (impl_) impl_->grad = Tensor();
}
const std::shared_ptr<Node>& Tensor::grad_fn() const { return impl_ ? impl_->grad_fn : kNoNode; }
int Tensor::output_nr() const { return impl_ ? impl_->output_nr : 0; }
void Tensor::set_grad_fn(std::shared_ptr<Node> fn, int output_nr) {
  require_defined(impl_.get(), "set_grad_fn()");
  impl_->grad_fn = std::move(fn);
  impl_->output_nr = output_nr;
}

void Tensor::backward(const Tensor& grad_output) const { run_backward({*this}, {grad_output}); }

}  // namespace pt
