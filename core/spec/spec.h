// The experiment spec: a JSON document parsed into typed structs.
//
// Every key is documented in docs/spec.md. Parsing is strict: an unknown key, a wrong type or an
// out-of-range value is a SpecError whose message names the source (file), the JSON path
// (e.g. `model.n_heads`) and the offending value. Every choice is an enum whose names (the JSON
// spelling) come from its one table in core/spec/choices.h.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/spec/choices.h"

namespace pt {

class SpecError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Normalisation and scale vectors (formulas in docs/options.md).
struct NormSpec {
  NormType type = NormType::rmsnorm;
  NormScale scale = NormScale::vector;  // gamma, or x_hat * (1 + w) with w init 0
  double eps = 1e-5;
  // "unified" strategy: sets the defaults of branch_scales (true), scale_placement (both), reparam
  // (magnitude_direction) and optim.weight_decay_scales.input (true) when those keys are not given.
  bool unified = false;
  bool branch_scales = false;            // one input-side scale per projection branch (q, k, v, gate; FFN gate, up; router)
  ScalePlacement scale_placement = ScalePlacement::input;  // y = diag(b) W diag(g) n
  ScaleReparam reparam = ScaleReparam::none;               // magnitude_direction: g = m * v / ||v|| * sqrt(dim)
  bool qk_norm = false;                  // normalise q and k over head_dim (scale role: output)

  bool operator==(const NormSpec&) const = default;
};

// Learnable activation: act(h) = sum_k a_k phi_k(h).
struct LaSpec {
  std::vector<ActivationFn> dictionary = {ActivationFn::relu, ActivationFn::gelu, ActivationFn::silu, ActivationFn::relu2};
  LaGranularity granularity = LaGranularity::layer;  // layer: a [K] per layer | channel: a [K, ffn_hidden] per layer
  ActivationFn base = ActivationFn::relu;  // entry whose coefficient starts at 1 (others 0); "" or absent in JSON = dictionary[0]
  bool gated = false;                 // Type-II: act(h_gate) * h_up (two up matrices)

  bool operator==(const LaSpec&) const = default;
};

// Mixture of activations: act_t(h) = sum_k alpha_{t,k} phi_k(h), alpha = gate(x W_r^T + b_r + c).
struct MoaSpec {
  std::vector<ActivationFn> dictionary = {ActivationFn::relu, ActivationFn::gelu, ActivationFn::silu, ActivationFn::relu2};
  MoaGate gate = MoaGate::softmax;
  ActivationFn base = ActivationFn::relu;  // the baseline activation the mixture starts at; "" or absent in JSON = dictionary[0]
  bool gated = false;                      // Type-II: act_t(h_gate) * h_up
  MoaInit init = MoaInit::bias;  // bias: constant logit offset init_logit on base | exact: blended, exactly the base at init
  double init_logit = 4.0;       // bias init: the base's logit offset (softmax) or +/- offset (sigmoid)

  bool operator==(const MoaSpec&) const = default;
};

// Sigmoid attention gate computed from the normed block input (weights fused into the QKV projection).
struct AttnGateSpec {
  GatePosition position = GatePosition::none;  // g1 (after SDPA) | g2 (after V) | g5 (after the output projection)
  GateGranularity granularity = GateGranularity::headwise;
  bool bias = false;                     // a learned bias on the gate logits

  bool operator==(const AttnGateSpec&) const = default;
};

struct ModelSpec {
  Preset preset = Preset::llama;  // sets the defaults of the keys below that are not given
  int64_t vocab_size = 64;
  int64_t seq_len = 64;          // context length (training window)
  int64_t d_model = 64;
  int64_t n_layers = 2;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 0;        // 0 = n_heads (multi-head); fewer = grouped-query attention
  int64_t ffn_hidden = 0;        // 0 = preset default (llama: multiple_of(8/3 d); gpt2: 4 d)
  NormSpec norm;                 // llama: rmsnorm/vector; gpt2: layernorm/vector
  Activation activation = Activation::swiglu;
  LaSpec la;                     // used when activation = la
  MoaSpec moa;                   // used when activation = moa
  AttnGateSpec attn_gate;
  PositionEncoding position = PositionEncoding::rope;
  double rope_theta = 10000.0;
  bool tied_embeddings = false;
  bool bias = false;             // biases on linear maps (gpt2 preset: true)
  double init_std = 0.02;        // std of the normal init of weight matrices and embeddings
  bool scaled_residual_init = true;  // output projections init with std / sqrt(2 * n_layers)

  int64_t head_dim() const { return d_model / n_heads; }
  int64_t kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  bool gated_activation() const {
    switch (activation) {
      case Activation::swiglu:
      case Activation::geglu:
      case Activation::reglu: return true;
      case Activation::la: return la.gated;
      case Activation::moa: return moa.gated;
      case Activation::relu:
      case Activation::gelu:
      case Activation::gelu_tanh:
      case Activation::silu:
      case Activation::relu2: return false;
    }
    return false;
  }

  bool operator==(const ModelSpec&) const = default;
};

// Which parameter groups get weight decay (matrices always do).
struct WeightDecayRules {
  bool embeddings = false;  // token and position embeddings (and the tied LM head)
  bool norm_scales = false; // scale vectors of normalisations
  bool biases = false;

  bool operator==(const WeightDecayRules&) const = default;
};

// Weight decay of scale vectors by role (docs/options.md). A scale decays when optim.decay.norm_scales
// is true or the rule for its role is. input: scales of norms that feed a linear map (and the
// input-side branch scales); output: output-side scales diag(b), QK-norm scales; direction: the
// direction v of magnitude-direction scales (the magnitude m follows its role).
struct ScaleDecayRules {
  bool input = false;      // unified: true unless given
  bool output = false;
  bool direction = false;

  bool operator==(const ScaleDecayRules&) const = default;
};

struct OptimSpec {
  OptimizerKind name = OptimizerKind::adamw;
  double lr = 1e-3;          // peak learning rate
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  WeightDecayRules decay;
  ScaleDecayRules weight_decay_scales;
  double grad_clip = 1.0;    // global L2 norm; 0 disables clipping

  bool operator==(const OptimSpec&) const = default;
};

struct ScheduleSpec {
  ScheduleType type = ScheduleType::cosine;
  int64_t warmup_steps = 0;     // linear warm-up from 0 to the peak lr
  double min_lr_ratio = 0.1;    // final lr = min_lr_ratio * lr (cosine, linear, wsd)
  double decay_fraction = 0.2;  // wsd: fraction of all steps spent in the final linear decay

  bool operator==(const ScheduleSpec&) const = default;
};

struct SyntheticDataSpec {
  uint64_t seed = 1234;       // the Markov source's transition table
  int64_t support = 4;        // next-token candidates per state (entropy floor <= log(support))
  double concentration = 1.0; // Dirichlet-like skew of the candidate probabilities (larger = flatter)

  bool operator==(const SyntheticDataSpec&) const = default;
};

struct DataSpec {
  DataSource source = DataSource::synthetic;
  SyntheticDataSpec synthetic;
  std::string train;   // shards: glob of training shards
  std::string val;     // shards: glob of validation shards

  bool operator==(const DataSpec&) const = default;
};

struct TrainingSpec {
  DeviceKind device = DeviceKind::cpu;
  Precision precision = Precision::fp32;  // bf16: bf16 compute, fp32 master weights; cuda only
  int64_t micro_batch = 8;        // sequences per micro-step
  int64_t grad_accum = 1;         // micro-steps per optimizer step
  int64_t steps = 0;              // optimizer steps; 0 = derive from tokens
  int64_t tokens = 0;             // token budget (used when steps == 0)
  uint64_t seed = 1;              // parameter init and data order
  int64_t eval_every = 100;       // steps between validation passes; 0 = only at the end
  int64_t eval_batches = 4;       // micro-batches per validation pass
  Recompute recompute = Recompute::none;  // full: activation recomputation, one segment per block
  int64_t loss_chunk_rows = 0;    // > 0: LM head + cross-entropy over this many rows at a time

  int64_t tokens_per_step(int64_t seq_len) const { return micro_batch * grad_accum * seq_len; }

  bool operator==(const TrainingSpec&) const = default;
};

struct CheckpointSpec {
  int64_t every = 0;      // steps between checkpoints; 0 = only the final one
  int64_t keep_last = 3;  // older checkpoints are deleted

  bool operator==(const CheckpointSpec&) const = default;
};

struct LoggingSpec {
  int64_t every = 10;     // steps between console lines (metrics.jsonl gets every step)

  bool operator==(const LoggingSpec&) const = default;
};

struct ExperimentSpec {
  std::string name = "experiment";
  ModelSpec model;
  OptimSpec optim;
  ScheduleSpec schedule;
  DataSpec data;
  TrainingSpec training;
  CheckpointSpec checkpoint;
  LoggingSpec logging;

  // Optimizer steps this run will take (training.steps, or tokens / tokens_per_step rounded up).
  int64_t total_steps() const;

  bool operator==(const ExperimentSpec&) const = default;
};

// Parse a spec. `source` names where the JSON came from (a file path) for error messages.
// Presets are applied first, then the given keys; then the whole spec is validated.
ExperimentSpec parse_spec(const nlohmann::json& j, const std::string& source);

// Read a JSON file, apply `--set path=value` overrides (value parsed as JSON, else taken as a string),
// and parse it. Errors name the file, the path and the value.
ExperimentSpec load_spec(const std::string& path, const std::vector<std::string>& overrides = {});

// Apply one `a.b.c=value` override to a JSON document (creating objects as needed).
void apply_override(nlohmann::json& j, const std::string& assignment);

// Settings that differ from their defaults but have no effect in this configuration (e.g. model.la.*
// without model.activation "la"), one message each naming the keys; the CLI prints them as warnings.
std::vector<std::string> inert_settings(const ExperimentSpec& s);

// The fully resolved spec (every key, defaults filled in); parse_spec(to_json(s)) == s.
nlohmann::json to_json(const ExperimentSpec& s);

// Every choice key of the spec (JSON path, e.g. "model.norm.type"; a dictionary's entries for
// "model.la.dictionary") with the names its table allows, in table order.
struct ChoiceKey {
  std::string path;
  std::vector<std::string_view> names;
};
std::vector<ChoiceKey> choice_keys();

// The embedded default spec: a tiny llama-style model on the synthetic Markov source, on CPU.
nlohmann::json default_spec_json();

}  // namespace pt
