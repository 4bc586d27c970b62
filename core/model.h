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

#include "core/rng.h"
#include "core/spec.h"
#include "core/tensor.h"

namespace pt {

// What a parameter is, for initialisation and weight-decay rules.
enum class ParamKind { matrix, embedding, norm_scale, bias };
const char* param_kind_name(ParamKind kind);

struct ParamInfo {
  std::string name;  // e.g. "blocks.3.attn.qkv.weight"
  Shape shape;
  ParamKind kind;
  double init_std = 0.0;   // normal(0, init_std) for matrices and embeddings
  double init_value = 0.0; // constant for norm scales and biases
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

  const ModelSpec& spec() const { return spec_; }
  std::vector<Parameter>& parameters() { return params_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  const Tensor& param(const std::string& name) const;  // throws naming the missing parameter
  int64_t num_parameters() const;
  void zero_grad();

 private:
  Tensor norm(const Tensor& x, const std::string& prefix) const;
  Tensor attention(const Tensor& x, const std::string& prefix) const;
  Tensor mlp(const Tensor& x, const std::string& prefix) const;
  Tensor maybe_param(const std::string& name) const;  // undefined when absent

  ModelSpec spec_;
  std::vector<Parameter> params_;
  std::map<std::string, size_t> index_;
};

}  // namespace pt
