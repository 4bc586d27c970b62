// What model modules are made of: a parameter table to declare into, a context to run forwards in,
// and the scale vectors and fused projections that several modules share.
//
// A module (core/model/embedding.h, norm.h, attention.h, mlp.h, lm_head.h) declares its parameters in
// its constructor, in the order they appear in the table, and keeps a ParamRef for each: its forward
// reads `ctx.use(ref)`, never a name. The table is data (`parameter_table(spec)` builds the modules
// into a table without allocating); a ParamStore allocates exactly that table, so refs taken at
// declaration index the store. Spec choices are read once, in constructors, as enums.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/engine/tensor.h"
#include "core/model/param_store.h"
#include "core/spec/spec.h"

namespace pt {

// The parameter table being declared, in order.
class ParamTable {
 public:
  ParamRef add(ParamInfo info);
  const std::vector<ParamInfo>& entries() const { return entries_; }

 private:
  std::vector<ParamInfo> entries_;
};

// Model diagnostics of one batch (docs/options.md), per layer in layer order.
struct Diagnostics {
  std::vector<double> attn_sink_share, attn_gate_mean, moa_gate_entropy;
  std::vector<std::vector<double>> moa_alpha_mean, la_coef;
};

// A named auxiliary loss (already weighted by its coefficient): added to the LM loss by the model.
struct NamedLoss {
  std::string name;
  Tensor value;
};

// What a module's forward reads besides its input.
struct ForwardContext {
  const ParamStore& params;
  Diagnostics* diagnostics = nullptr;  // set by Transformer::diagnostics (no autograd)

  // The parameter as the forward computes with it (compute copy or cast); undefined for an absent one.
  Tensor use(ParamRef p) const { return p ? params.compute_value(p) : Tensor(); }
  // True while a recompute segment re-runs the forward in the backward: counters and other side state
  // must not be updated again.
  bool replaying() const;
};

// A scale vector g of n entries as the spec's norm.scale / norm.reparam make it: a vector (init 1), a
// zero-centred vector (stored w, g = 1 + w), or magnitude-direction (m [1], v [n]: g = m v / ||v|| sqrt(n)).
// Absent (default-constructed, or norm.scale none): value() is undefined.
class ScaleVector {
 public:
  ScaleVector() = default;
  ScaleVector(const ModelSpec& spec, ParamTable& table, const std::string& name, int64_t n, ScaleRole role);
  Tensor value(const ForwardContext& ctx) const;
  bool defined() const { return weight_.defined() || magnitude_.defined(); }

 private:
  NormScale scale_ = NormScale::none;
  ParamRef weight_, magnitude_, direction_;
};

// One branch of a fused projection (q, k, v and gate rows of the QKV projection; gate and up of a GLU).
struct Branch {
  std::string name;
  int64_t rows;
};

// The scale vectors around a fused projection's branches (docs/options.md): an input-side scale per
// branch (norm.branch_scales) and an output-side scale on each branch's rows (scale_placement
// output/both; none on q and k under QK-norm). Declared in two steps because the table lists the
// input scales before the projection's weight and the output scales after it.
class BranchScales {
 public:
  BranchScales() = default;
  // `prefix` + "." + branch + ".in_scale" for each branch (when the spec has branch input scales).
  void declare_inputs(const ModelSpec& spec, ParamTable& table, const std::string& prefix, std::vector<Branch> branches);
  // `prefix` + "." + branch + ".out_scale" for each branch that takes one.
  void declare_outputs(const ModelSpec& spec, ParamTable& table, const std::string& prefix);
  // linear(x, diag(b) W diag(g), bias) with one output per branch, in branch order (linear_split
  // for several branches: no split copies).
  std::vector<Tensor> project(const ForwardContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias) const;

 private:
  std::vector<Branch> branches_;
  std::vector<ScaleVector> in_, out_;
};

// Whether a branch has an output-side scale (also used for the LM head's).
bool has_output_scale(const ModelSpec& spec, const std::string& branch);

// A linear map's parameters: `prefix.weight` [out, in] (normal init_std) and, when the spec has
// biases, `prefix.bias` [out].
struct LinearParams {
  ParamRef weight, bias;
  void declare(const ModelSpec& spec, ParamTable& table, const std::string& prefix, int64_t out, int64_t in,
               double init_std);
};

}  // namespace pt
