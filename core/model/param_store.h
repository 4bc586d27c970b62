// ParamStore: every parameter of a model in flat buffers, with one view per parameter.
//
// The parameter table (ParamInfo: name, shape, kind, init) is data: modules declare their entries,
// `pretrain validate` counts them without allocating, and the store allocates exactly that list.
// Storage is flat so that gradient buckets, all-reduce / reduce-scatter and ZeRO-1 shards are offset
// arithmetic:
//
//   values   [padded numel] master dtype   trainable parameters, one aligned view each (a leaf that
//                                         requires grad)
//   grads    same layout                  each view is its parameter's gradient home (autograd copies
//                                         or adds gradients into it; linear/embedding write directly,
//                                         see grad_sink in core/engine/autograd.h)
//   compute  same layout, bf16            compute copies for mixed precision (bf16 over f32 masters):
//                                         written at first use and then by the optimizer's update pass
//   buffers  [padded numel] master dtype  non-trainable state (e.g. a MoE expert bias): checkpointed,
//                                         never given a gradient, never touched by the optimizer
//
// Each view starts at a multiple of kAlignElements elements (128-byte aligned f32 rows: 128-bit loads
// and whole cache lines). Parameter i is initialised from rng.fork(i), so initial values depend only
// on the seed and the parameter's position in the table, not on the layout.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/engine/rng.h"
#include "core/engine/tensor.h"

namespace pt {

// What a parameter is, for initialisation and weight-decay rules. norm_scale: a scale vector (or the
// magnitude m of a magnitude-direction scale); scale_direction: the direction v of such a scale;
// coefficient: LA coefficients, the MoA blend scalar.
enum class ParamKind { matrix, embedding, norm_scale, bias, scale_direction, coefficient };
const char* param_kind_name(ParamKind kind);

// The role of a scale tensor (docs/options.md): input = scale of a norm that feeds a linear map, or an
// input-side branch scale W diag(g); output = output-side scale diag(b) W, QK-norm scale.
enum class ScaleRole { none, input, output };
const char* scale_role_name(ScaleRole role);

struct ParamInfo {
  std::string name;  // e.g. "blocks.3.attn.qkv.weight"
  Shape shape;
  ParamKind kind;
  double init_std = 0.0;   // normal(0, init_std) for matrices and embeddings
  double init_value = 0.0; // constant for norm scales and biases
  ScaleRole role = ScaleRole::none;  // for norm_scale / scale_direction
  std::vector<double> init_rows = {};  // if non-empty: element [i, ...] starts at init_rows[i] (overrides init_value)
  bool trainable = true;   // false: a buffer (checkpointed state the optimizer never touches)
};

// A parameter of a store, by position in its table: what modules hold instead of names.
struct ParamRef {
  int32_t index = -1;
  bool defined() const { return index >= 0; }
  explicit operator bool() const { return defined(); }
};

class ParamStore {
 public:
  static constexpr int64_t kAlignElements = 32;

  ParamStore() = default;
  // Allocates the flat buffers for `table` (names must be unique) and initialises every entry.
  ParamStore(std::vector<ParamInfo> table, Rng& rng, DType dtype = DType::f32, Device device = Device::cpu());
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;
  ParamStore(ParamStore&&) = default;
  ParamStore& operator=(ParamStore&&) = default;

  // ---- the table
  size_t size() const { return entries_.size(); }
  const ParamInfo& info(size_t i) const { return entries_.at(i).info; }
  const ParamInfo& info(ParamRef p) const { return info(index_of(p)); }
  ParamRef find(std::string_view name) const;  // undefined when absent
  ParamRef at(std::string_view name) const;    // throws std::out_of_range naming the parameter
  int64_t num_parameters() const;              // elements of every entry, trainable or not (no padding)

  // ---- values: leaves (trainable ones require grad), views into values() or buffers()
  const Tensor& value(size_t i) const { return entries_.at(i).value; }
  const Tensor& value(ParamRef p) const { return value(index_of(p)); }
  // Writes new values into parameter i (a checkpoint, an import); forgets its compute copy.
  void load_value(size_t i, const Tensor& src);

  // ---- flat layout
  const Tensor& values() const { return values_; }    // trainable parameters
  const Tensor& grads() const { return grads_; }      // their gradient homes
  const Tensor& buffers() const { return buffers_; }  // non-trainable entries
  int64_t offset(size_t i) const { return entries_.at(i).offset; }  // elements into values() or buffers()
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  // ---- gradients
  // The gradient accumulated since zero_grad(), or undefined when none reached parameter i.
  const Tensor& grad(size_t i) const { return entries_.at(i).value.grad(); }
  void zero_grad();  // forgets every gradient (the homes are overwritten by the next ones)

  // ---- mixed precision: compute copies
  // Unset: the forward reads the masters. bf16 over f32 masters: compute copies (below); another
  // pair: a cast per use. Changing it forgets the copies.
  void set_compute_dtype(std::optional<DType> dtype);
  std::optional<DType> compute_dtype() const { return compute_dtype_; }
  // Parameter p as the forward uses it: the master, its compute copy (ops::cast_cached: made at the
  // first use, then kept in step by the optimizer) or a cast. Const: the copies are a cache.
  Tensor compute_value(ParamRef p) const;
  // Parameter i's compute copy when it holds the master's current value, else undefined (the
  // optimizer rewrites the copies it is given in the same pass as the update).
  Tensor compute_copy(size_t i) const;
  void drop_compute_copies() const;  // remade from the masters at their next use

 private:
  struct Entry {
    ParamInfo info;
    int64_t offset = 0;
    Tensor value;
    Tensor copy;              // view into compute_ (when compute copies are on)
    mutable bool copy_valid = false;
  };
  size_t index_of(ParamRef p) const;

  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> by_name_;
  Tensor values_, grads_, buffers_, compute_;
  DType dtype_ = DType::f32;
  Device device_;
  std::optional<DType> compute_dtype_;
};

}  // namespace pt
