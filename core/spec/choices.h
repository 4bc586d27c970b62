// The choices of the experiment spec: one `enum class` per kind of choice and ONE name table per enum
// (value <-> the name used in JSON), plus the generic helpers built on those tables.
//
// The tables are the single source of the names: parse_spec reads them (ObjectReader::read_choice),
// to_json writes them (to_string), error messages list them in table order and suggest a close one,
// and test/test_spec_docs.cpp checks that docs/spec.md lists exactly them for each key.
//
// Adding a value: add it to the enum AND to its table, in the same position (a static_assert checks the
// table lists the values in enum order), then handle it wherever the compiler warns about a switch.
// The spec layer knows nothing of the tensor engine: core/model maps these values to engine types.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

namespace pt {

// One entry of a name table.
template <typename E>
struct ChoiceName {
  E value;
  std::string_view name;
};

// ChoiceTable<E>::names: the table of enum E, specialised below for every choice enum.
template <typename E>
struct ChoiceTable;

template <typename E>
concept Choice = std::is_enum_v<E> && requires { ChoiceTable<E>::names; };

// True when the table lists the enum's values 0, 1, 2, ... in order, with distinct names.
template <Choice E>
constexpr bool choice_table_ordered() {
  const auto& names = ChoiceTable<E>::names;
  for (size_t i = 0; i < std::size(names); ++i) {
    if (static_cast<size_t>(names[i].value) != i) return false;
    for (size_t k = 0; k < i; ++k)
      if (names[k].name == names[i].name) return false;
  }
  return true;
}

// The JSON name of a value.
template <Choice E>
constexpr std::string_view to_string(E value) {
  static_assert(choice_table_ordered<E>(), "a choice table must list the enum's values in order, with distinct names");
  const auto& names = ChoiceTable<E>::names;
  const auto i = static_cast<size_t>(value);
  return i < std::size(names) ? names[i].name : std::string_view("?");
}

// The value called `name`, or nullopt.
template <Choice E>
constexpr std::optional<E> choice_from_string(std::string_view name) {
  for (const ChoiceName<E>& n : ChoiceTable<E>::names)
    if (n.name == name) return n.value;
  return std::nullopt;
}

// Every name of E, in table order (the order error messages and docs list them in).
template <Choice E>
std::vector<std::string_view> choice_names() {
  std::vector<std::string_view> out;
  for (const ChoiceName<E>& n : ChoiceTable<E>::names) out.push_back(n.name);
  return out;
}

// Prints the JSON name (test failure messages, logs).
template <Choice E>
std::ostream& operator<<(std::ostream& out, E value) {
  return out << to_string(value);
}

// JSON conversion by name (nlohmann's default would write the enum's integer): json(value) is the
// name; get<E>() accepts only a name of the table. parse_spec does not use get<E>() (its errors name
// the spec's path); this is for code that writes or reads a choice in other JSON documents.
template <Choice E>
void to_json(nlohmann::json& j, E value) {
  j = std::string(to_string(value));
}
template <Choice E>
void from_json(const nlohmann::json& j, E& value) {
  const std::optional<E> parsed = j.is_string() ? choice_from_string<E>(j.get<std::string>()) : std::nullopt;
  if (!parsed) {
    std::string names;
    for (std::string_view n : choice_names<E>()) names += (names.empty() ? "" : ", ") + std::string(n);
    throw std::invalid_argument(j.dump() + " is not one of " + names);
  }
  value = *parsed;
}

// ------------------------------------------------------------------ the choices

// model.preset: the family whose defaults fill the keys not given.
enum class Preset { llama, gpt2 };
template <> struct ChoiceTable<Preset> {
  static constexpr ChoiceName<Preset> names[] = {{Preset::llama, "llama"}, {Preset::gpt2, "gpt2"}};
};

// model.norm.type
enum class NormType { rmsnorm, layernorm };
template <> struct ChoiceTable<NormType> {
  static constexpr ChoiceName<NormType> names[] = {{NormType::rmsnorm, "rmsnorm"}, {NormType::layernorm, "layernorm"}};
};

// model.norm.scale: no scale, a gain vector gamma, or x_hat * (1 + w) with w initialised to 0.
enum class NormScale { none, vector, zero_centered };
template <> struct ChoiceTable<NormScale> {
  static constexpr ChoiceName<NormScale> names[] = {
      {NormScale::none, "none"}, {NormScale::vector, "vector"}, {NormScale::zero_centered, "zero_centered"}};
};

// model.norm.scale_placement: y = diag(b) W diag(g) n with g (input), b (output) or both.
enum class ScalePlacement { input, output, both };
template <> struct ChoiceTable<ScalePlacement> {
  static constexpr ChoiceName<ScalePlacement> names[] = {
      {ScalePlacement::input, "input"}, {ScalePlacement::output, "output"}, {ScalePlacement::both, "both"}};
};

// model.norm.reparam: g = m * v / ||v|| * sqrt(dim) for magnitude_direction.
enum class ScaleReparam { none, magnitude_direction };
template <> struct ChoiceTable<ScaleReparam> {
  static constexpr ChoiceName<ScaleReparam> names[] = {{ScaleReparam::none, "none"},
                                                       {ScaleReparam::magnitude_direction, "magnitude_direction"}};
};

// model.activation: plain, gated (GLU), learnable (la) or mixture (moa).
enum class Activation { relu, gelu, gelu_tanh, silu, relu2, swiglu, geglu, reglu, la, moa };
template <> struct ChoiceTable<Activation> {
  static constexpr ChoiceName<Activation> names[] = {
      {Activation::relu, "relu"},     {Activation::gelu, "gelu"},   {Activation::gelu_tanh, "gelu_tanh"},
      {Activation::silu, "silu"},     {Activation::relu2, "relu2"}, {Activation::swiglu, "swiglu"},
      {Activation::geglu, "geglu"},   {Activation::reglu, "reglu"}, {Activation::la, "la"},
      {Activation::moa, "moa"}};
};

// An entry of the model.la / model.moa activation dictionary (gelu is the exact erf GELU).
enum class ActivationFn { relu, gelu, gelu_tanh, silu, relu2, tanh, identity };
template <> struct ChoiceTable<ActivationFn> {
  static constexpr ChoiceName<ActivationFn> names[] = {
      {ActivationFn::relu, "relu"},   {ActivationFn::gelu, "gelu"}, {ActivationFn::gelu_tanh, "gelu_tanh"},
      {ActivationFn::silu, "silu"},   {ActivationFn::relu2, "relu2"}, {ActivationFn::tanh, "tanh"},
      {ActivationFn::identity, "identity"}};
};

// model.la.granularity: one coefficient vector per layer, or per layer and hidden channel.
enum class LaGranularity { layer, channel };
template <> struct ChoiceTable<LaGranularity> {
  static constexpr ChoiceName<LaGranularity> names[] = {{LaGranularity::layer, "layer"},
                                                        {LaGranularity::channel, "channel"}};
};

// model.moa.gate
enum class MoaGate { softmax, sigmoid };
template <> struct ChoiceTable<MoaGate> {
  static constexpr ChoiceName<MoaGate> names[] = {{MoaGate::softmax, "softmax"}, {MoaGate::sigmoid, "sigmoid"}};
};

// model.moa.init: a logit offset on the base entry, or an exact blend starting at the base.
enum class MoaInit { bias, exact };
template <> struct ChoiceTable<MoaInit> {
  static constexpr ChoiceName<MoaInit> names[] = {{MoaInit::bias, "bias"}, {MoaInit::exact, "exact"}};
};

// model.attn_gate.position: none, after SDPA (g1), on V (g2), after the output projection (g5).
enum class GatePosition { none, g1, g2, g5 };
template <> struct ChoiceTable<GatePosition> {
  static constexpr ChoiceName<GatePosition> names[] = {
      {GatePosition::none, "none"}, {GatePosition::g1, "g1"}, {GatePosition::g2, "g2"}, {GatePosition::g5, "g5"}};
};

// model.attn_gate.granularity: one gate per head, or per head dimension.
enum class GateGranularity { headwise, elementwise };
template <> struct ChoiceTable<GateGranularity> {
  static constexpr ChoiceName<GateGranularity> names[] = {{GateGranularity::headwise, "headwise"},
                                                          {GateGranularity::elementwise, "elementwise"}};
};

// model.position: rotary embeddings, a learned table, or none.
enum class PositionEncoding { rope, learned, none };
template <> struct ChoiceTable<PositionEncoding> {
  static constexpr ChoiceName<PositionEncoding> names[] = {
      {PositionEncoding::rope, "rope"}, {PositionEncoding::learned, "learned"}, {PositionEncoding::none, "none"}};
};

// optim.name
enum class OptimizerKind { adamw };
template <> struct ChoiceTable<OptimizerKind> {
  static constexpr ChoiceName<OptimizerKind> names[] = {{OptimizerKind::adamw, "adamw"}};
};

// schedule.type: the learning-rate shape after warm-up.
enum class ScheduleType { constant, cosine, linear, wsd };
template <> struct ChoiceTable<ScheduleType> {
  static constexpr ChoiceName<ScheduleType> names[] = {{ScheduleType::constant, "constant"},
                                                       {ScheduleType::cosine, "cosine"},
                                                       {ScheduleType::linear, "linear"},
                                                       {ScheduleType::wsd, "wsd"}};
};

// data.source
enum class DataSource { synthetic, shards };
template <> struct ChoiceTable<DataSource> {
  static constexpr ChoiceName<DataSource> names[] = {{DataSource::synthetic, "synthetic"}, {DataSource::shards, "shards"}};
};

// training.device: the kind of device (the engine's Device comes from parse_device(to_string(...))).
enum class DeviceKind { cpu, cuda };
template <> struct ChoiceTable<DeviceKind> {
  static constexpr ChoiceName<DeviceKind> names[] = {{DeviceKind::cpu, "cpu"}, {DeviceKind::cuda, "cuda"}};
};

// training.precision: fp32, or bf16 compute with fp32 master weights.
enum class Precision { fp32, bf16 };
template <> struct ChoiceTable<Precision> {
  static constexpr ChoiceName<Precision> names[] = {{Precision::fp32, "fp32"}, {Precision::bf16, "bf16"}};
};

// training.recompute: activation recomputation (one segment per block) or none.
enum class Recompute { none, full };
template <> struct ChoiceTable<Recompute> {
  static constexpr ChoiceName<Recompute> names[] = {{Recompute::none, "none"}, {Recompute::full, "full"}};
};

}  // namespace pt
