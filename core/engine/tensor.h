// Tensor: a typed, shaped view onto reference-counted device storage, plus autograd metadata.
//
// A Tensor is a cheap handle (shared_ptr to a TensorImpl). Copies of a Tensor alias the same
// impl; `detach()` makes a new impl over the same storage without autograd history.
// Kernels work on contiguous tensors; `contiguous()` materialises a strided view when needed.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/engine/allocator.h"
#include "core/engine/dtype.h"

namespace pt {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

class Rng;
struct Node;
struct TensorImpl;

struct Storage {
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  Allocator* allocator = nullptr;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories (uninitialised / filled)
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = Device::cpu());
  // Normal(0, std) from `rng`, generated in float64 on the CPU then cast (device-independent values).
  static Tensor randn(const Shape& shape, Rng& rng, double std = 1.0, DType dtype = DType::f32,
                      Device device = Device::cpu());
  static Tensor uniform(const Shape& shape, Rng& rng, double lo, double hi, DType dtype = DType::f32,
                        Device device = Device::cpu());
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device = Device::cpu());

  // ---- metadata
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t ndim() const { return static_cast<int64_t>(shape().size()); }
  int64_t size(int64_t dim) const;  // negative dims count from the end
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  bool is_contiguous() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  std::string describe() const;  // "f32[2, 3] cpu"

  // ---- data access (host pointers only valid for CPU tensors)
  void* raw_data() const;
  template <class T>
  T* data() const {
    return static_cast<T*>(raw_data());
  }
  template <class T>
  std::vector<T> to_vector() const;  // copies to host, converting to T
  double item() const;               // single-element tensor as double

  // ---- copies and views (no autograd; see ops.h for differentiable versions)
  Tensor contiguous() const;
  Tensor clone() const;                       // deep copy, same device/dtype
  Tensor to(Device device) const;             // copy across devices (no-op handle if same)
  Tensor to(DType dtype) const;               // cast (no-op handle if same)
  Tensor view(const Shape& shape) const;      // same storage; requires contiguous; one dim may be -1
  Tensor narrow_view(int64_t dim, int64_t start, int64_t length) const;  // strided view
  Tensor detach() const;                      // same storage, no grad history
  void copy_from(const Tensor& src);          // in place, same shape; casts dtype, crosses devices
  void fill_(double value);
  void zero_() { fill_(0.0); }

  // ---- autograd
  bool requires_grad() const;
  Tensor& set_requires_grad(bool requires_grad);
  const Tensor& grad() const;                 // undefined until a backward pass reaches it
  void set_grad(const Tensor& grad);
  void zero_grad();                           // drops the grad (the home stays; see set_grad_home)
  // A fixed home for this leaf's gradient (same shape, contiguous; a view into a parameter store's
  // flat gradient buffer): backward copies the first gradient into it and adds later ones in place,
  // and ops may write straight into it (grad_sink in autograd.h). grad() is the home once written.
  void set_grad_home(const Tensor& home);
  const Tensor& grad_home() const;
  const std::shared_ptr<Node>& grad_fn() const;
  int output_nr() const;
  void set_grad_fn(std::shared_ptr<Node> fn, int output_nr);
  // Reverse-mode pass from this tensor. Scalars need no seed; others take `grad_output`.
  void backward(const Tensor& grad_output = Tensor()) const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same_impl(const Tensor& other) const { return impl_ == other.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Shape strides;       // in elements
  DType dtype = DType::f32;

  // autograd
  bool requires_grad = false;
  Tensor grad;       // the accumulated gradient; undefined until one arrives
  Tensor grad_home;  // where `grad` lives when defined (set_grad_home), else undefined
  std::shared_ptr<Node> grad_fn;
  int output_nr = 0;
};

// Typed element access through a DType tag, for code that must handle several dtypes.
template <class T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }

}  // namespace pt
