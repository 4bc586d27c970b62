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
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/engine/rng.h"
#include "core/model/param_store.h"
#include "core/spec/spec.h"
#include "core/engine/tensor.h"

namespace pt {

std::vector<ParamInfo> parameter_table(const ModelSpec& spec);
int64_t count_parameters(const ModelSpec& spec);

// How the model executes (not what it computes): set from the spec's training section.
struct ExecutionOptions {
  // Unset: compute in the parameters' dtype. bf16: parameters are cast from their f32 masters at each use.
  std::optional<DType> compute_dtype;
  bool recompute_blocks = false;     // activation recomputation, one segment per block
  int64_t loss_chunk_rows = 0;       // > 0: LM head + loss in chunks of this many rows
};

// The execution options a spec's training section asks for.
ExecutionOptions execution_options(const TrainingSpec& training);

class Transformer {
 public:
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;
  // Allocates and initialises every parameter from `rng` (one forked stream per parameter, so
  // initial values depend only on the seed and the parameter's position in the table).
  Transformer(const ModelSpec& spec, Rng& rng, DType dtype = DType::f32, Device device = Device::cpu());

  // tokens [B, T] (i32) -> logits [B * T, vocab]
  Tensor forward(const Tensor& tokens) const;
  // Mean next-token cross-entropy; targets [B, T] (i32; -1 = ignored). `num_valid` = number of
  // non-ignored targets if known (avoids reading targets back from the device), else -1.
  Tensor loss(const Tensor& tokens, const Tensor& targets, int64_t num_valid = -1) const;

  // Diagnostics on one batch (no autograd), as JSON keys for the validation line of metrics.jsonl:
  // attn_sink_share [per layer]; with an attention gate attn_gate_mean [per layer]; with MoA
  // moa_alpha_mean [layer][entry] and moa_gate_entropy [per layer]; with LA la_coef [layer][entry]
  // (the mean over channels with per-channel coefficients). See docs/options.md.
  nlohmann::json diagnostics(const Tensor& tokens) const;

  void set_execution(const ExecutionOptions& options);
  const ExecutionOptions& execution() const { return execution_; }

  const ModelSpec& spec() const { return spec_; }
  // Every parameter and buffer, in flat buffers (the optimizer and checkpoints work on it).
  ParamStore& params() { return store_; }
  const ParamStore& params() const { return store_; }
  const Tensor& param(const std::string& name) const;  // the master value; throws naming a missing parameter
  int64_t num_parameters() const { return store_.num_parameters(); }
  void zero_grad() { store_.zero_grad(); }

 private:
  Tensor norm(const Tensor& x, const std::string& prefix) const;
  // {x + residual, norm(x + residual)}: the residual add fused with the norm that reads it (RMSNorm).
  std::pair<Tensor, Tensor> add_norm(const Tensor& x, const Tensor& residual, const std::string& prefix) const;
  // {x passed through, norm(x)}: x feeds the residual stream and the norm (rms_norm_fork for RMSNorm).
  std::pair<Tensor, Tensor> norm_fork(const Tensor& x, const std::string& prefix) const;
  Tensor norm_over_last(const Tensor& x, const std::string& prefix) const;  // QK-norm (no bias)
  Tensor attention(const Tensor& x, const std::string& prefix) const;
  // residual (optional): added by the down projection's GEMM (the block's second residual add).
  Tensor mlp(const Tensor& x, const std::string& prefix, const Tensor& residual = Tensor()) const;
  // Parameters as the forward pass uses them (cast to the compute dtype): undefined when absent / throws.
  Tensor maybe_param(const std::string& name) const;
  Tensor use(const std::string& name) const;
  Tensor hidden(const Tensor& tokens) const;  // final-normed hidden states [B, T, d]
  Tensor head_weight() const;                 // the LM head [vocab, d] (tied or not, with its output scale)
  Tensor scale_value(const std::string& name) const;  // effective scale vector g, undefined when absent
  // linear(x, diag(b) W diag(g)) over the branches of a fused projection named `linear_prefix`,
  // one output per branch (in `branches` order).
  std::vector<Tensor> project(const Tensor& x, const std::string& linear_prefix, const std::string& branch_prefix,
                              const std::vector<std::pair<std::string, int64_t>>& branches, const Tensor& bias) const;

  struct Diagnostics;
  mutable Diagnostics* diag_ = nullptr;  // set while diagnostics() runs
  mutable Tensor positions_;              // i32 [T] = 0..T-1 on the parameters' device (learned positions)

  ModelSpec spec_;
  ExecutionOptions execution_;
  ParamStore store_;
};

}  // namespace pt
