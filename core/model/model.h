// The decoder-only transformer, composed of modules (core/model/*.h), built from a ModelSpec.
//
//   h = Embedding(tokens)                                   embedding.h
//   for each block:                                         (Block below)
//     h = h + Attention(Norm(h))                            norm.h, attention.h
//     h = h + FeedForward(Norm(h))                          mlp.h (dense; MoE is another FeedForward)
//   logits = LMHead(Norm(h))                                lm_head.h
//
// The parameter set is data: the modules declare their parameters into a ParamTable when built, so
// `parameter_table(spec)` (the modules built into a table, nothing allocated) is what `pretrain
// validate` counts, and the model's ParamStore allocates exactly that list. Each module holds typed
// references to its parameters; names are used only by checkpoints and reports.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/engine/rng.h"
#include "core/engine/tensor.h"
#include "core/model/attention.h"
#include "core/model/embedding.h"
#include "core/model/lm_head.h"
#include "core/model/mlp.h"
#include "core/model/module.h"
#include "core/model/norm.h"
#include "core/model/param_store.h"
#include "core/spec/spec.h"

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

// What a training forward returns: the loss to differentiate and its parts.
struct LossParts {
  Tensor total;               // lm plus every auxiliary loss: call backward() on this
  Tensor lm;                  // mean next-token cross-entropy (the same tensor as total without aux losses)
  std::vector<NamedLoss> aux; // weighted auxiliary losses by name (e.g. a MoE balancing loss), in layer order
};

// One pre-norm transformer block: x = h + attn(norm(h)); out = x + ffn(norm(x)). No separate residual
// adds: the first is fused with the norm that reads it, the second done by the FFN's down projection;
// in the backward, h's two gradients are summed inside attn_norm's kernel (Norm::fork).
class Block {
 public:
  Block(const ModelSpec& spec, ParamTable& table, int64_t layer, double out_init_std);
  FeedForwardOutput forward(const ForwardContext& ctx, const Tensor& h) const;
  const FeedForward& feed_forward() const { return *ffn_; }

 private:
  Norm attn_norm_, mlp_norm_;
  std::unique_ptr<Attention> attention_;
  std::unique_ptr<FeedForward> ffn_;
};

class Transformer {
 public:
  // Builds the modules; allocates and initialises every parameter from `rng` (one forked stream per
  // parameter, so initial values depend only on the seed and the parameter's position in the table).
  Transformer(const ModelSpec& spec, Rng& rng, DType dtype = DType::f32, Device device = Device::cpu());
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  // tokens [B, T] (i32) -> logits [B * T, vocab]
  Tensor forward(const Tensor& tokens) const;
  // The training objective: mean next-token cross-entropy plus auxiliary losses; targets [B, T] (i32;
  // -1 = ignored). `num_valid` = number of non-ignored targets if known (avoids reading targets back
  // from the device), else -1.
  LossParts loss_parts(const Tensor& tokens, const Tensor& targets, int64_t num_valid = -1) const;
  // loss_parts(...).total
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
  friend std::vector<ParamInfo> parameter_table(const ModelSpec& spec);
  // The modules, declared into `table` (no allocation).
  Transformer(const ModelSpec& spec, ParamTable& table);

  // Final-normed hidden states [B, T, d] and the blocks' auxiliary losses.
  Tensor hidden(const ForwardContext& ctx, const Tensor& tokens, std::vector<NamedLoss>* aux) const;

  ModelSpec spec_;
  ExecutionOptions execution_;
  std::unique_ptr<Embedding> embedding_;
  std::vector<std::unique_ptr<Block>> blocks_;
  Norm final_norm_;
  std::unique_ptr<LMHead> head_;
  ParamStore store_;
};

}  // namespace pt
