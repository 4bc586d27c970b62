// The decoder-only transformer, built from a ModelSpec.
//
// The parameter set is data: `parameter_table(spec)` lists every tensor (name, shape, kind,
// init), the model allocates exactly that list, and `pretrain validate` counts it without
// allocating anything. The forward pass reads like the architecture:
//
//   h = embed(tokens) (+ learned positions)
//   for each block:  h = h + Attention(Norm(h));  h = h + MLP(Norm(h))
//   logits = LMHead(Norm(h))
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "core/spec.h"
#include "core/tensor.h"

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
};

std::vector<ParamInfo> parameter_table(const ModelSpec& spec);
int64_t count_parameters(const ModelSpec& spec);

struct Parameter {
  ParamInfo info;
  Tensor value;  // requires_grad; its .grad holds the accumulated gradient
};

class Transformer {
 public:
  // Allocates and initialises every parameter from `rng` (one forked stream per parameter, so
  // initial values depend only on the seed and the parameter's position in the table).
  Transformer(const ModelSpec& spec, Rng& rng, DType dtype = DType::f32, Device device = Device::cpu());

  // tokens [B, T] (i32) -> logits [B * T, vocab]
  Tensor forward(const Tensor& tokens) const;
  // Mean next-token cross-entropy; targets [B, T] (i32).
  Tensor loss(const Tensor& tokens, const Tensor& targets) const;

  // Diagnostics on one batch (no autograd), as JSON keys for the validation line of metrics.jsonl:
  // attn_sink_share [per layer]; with an attention gate attn_gate_mean [per layer]; with MoA
  // moa_alpha_mean [layer][entry] and moa_gate_entropy [per layer]; with LA la_coef [layer][entry]
  // (the mean over channels with per-channel coefficients). See docs/options.md.
  nlohmann::json diagnostics(const Tensor& tokens) const;

  const ModelSpec& spec() const { return spec_; }
  std::vector<Parameter>& parameters() { return params_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  const Tensor& param(const std::string& name) const;  // throws naming the missing parameter
  int64_t num_parameters() const;
  void zero_grad();

 private:
  Tensor norm(const Tensor& x, const std::string& prefix) const;
  Tensor norm_over_last(const Tensor& x, const std::string& prefix) const;  // QK-norm (no bias)
  Tensor attention(const Tensor& x, const std::string& prefix) const;
  Tensor mlp(const Tensor& x, const std::string& prefix) const;
  Tensor maybe_param(const std::string& name) const;  // undefined when absent
  Tensor scale_value(const std::string& name) const;  // effective scale vector g, undefined when absent
  // linear(x, diag(b) W diag(g)) over the branches of a fused projection named `linear_prefix`.
  Tensor project(const Tensor& x, const std::string& linear_prefix, const std::string& branch_prefix,
                 const std::vector<std::pair<std::string, int64_t>>& branches, const Tensor& bias) const;

  struct Diagnostics;
  mutable Diagnostics* diag_ = nullptr;  // set while diagnostics() runs

  ModelSpec spec_;
  std::vector<Parameter> params_;
  std::map<std::string, size_t> index_;
};

}  // namespace pt
