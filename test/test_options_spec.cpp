// Spec keys of the research options (docs/options.md, docs/spec.md): parsing, errors naming the path,
// round trips, and the exact parameter-count change of every switch.
#include <filesystem>
#include <string>
#include <vector>

#include "core/model/model.h"
#include "core/spec/spec.h"
#include "test/catch.h"

using namespace pt;

namespace {

nlohmann::json with(const std::vector<std::string>& overrides) {
  nlohmann::json j = default_spec_json();
  for (const std::string& o : overrides) apply_override(j, o);
  return j;
}

ModelSpec model(const std::vector<std::string>& overrides) { return parse_spec(with(overrides), "spec.json").model; }
int64_t count(const std::vector<std::string>& overrides) { return count_parameters(model(overrides)); }

std::string error_of(const std::vector<std::string>& overrides) {
  try {
    parse_spec(with(overrides), "spec.json");
  } catch (const SpecError& e) {
    return e.what();
  }
  FAIL("expected a SpecError");
  return {};
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The default model's sizes: d 64, 2 layers, 4 heads of 16, 2 kv heads, vocab 64; ffn fixed explicitly.
constexpr int64_t d = 64, L = 2, hq = 4, hkv = 2, hd = 16, V = 64, F = 96;
const std::string kF = "model.ffn_hidden=96";

}  // namespace

TEST_CASE("option keys default to the baseline and round-trip", "[options][spec]") {
  const ExperimentSpec s = parse_spec(default_spec_json(), "x");
  CHECK(s.model.norm.scale_placement == ScalePlacement::input);
  CHECK_FALSE(s.model.norm.branch_scales);
  CHECK(s.model.norm.reparam == ScaleReparam::none);
  CHECK_FALSE(s.model.norm.qk_norm);
  CHECK_FALSE(s.model.norm.unified);
  CHECK(s.model.attn_gate.position == GatePosition::none);
  CHECK(s.model.la.base == ActivationFn::relu);  // resolved to the dictionary's first entry
  CHECK(s.optim.weight_decay_scales == ScaleDecayRules{});

  const std::vector<std::string> o{"model.norm.unified=true",  "model.norm.qk_norm=true",
                                   "model.activation=moa",     "model.moa.dictionary=[\"gelu\",\"silu\"]",
                                   "model.moa.gate=sigmoid",   "model.moa.init=exact",
                                   "model.la.granularity=channel", "model.attn_gate.position=g2",
                                   "model.attn_gate.bias=true", "optim.weight_decay_scales.direction=true",
                                   "optim.weight_decay_scales.input=false"};
  const ExperimentSpec t = parse_spec(with(o), "x");
  CHECK(t.model.moa.base == ActivationFn::gelu);
  CHECK_FALSE(t.optim.weight_decay_scales.input);  // explicit beats unified
  const nlohmann::json j = to_json(t);
  CHECK(parse_spec(j, "x") == t);
  CHECK(to_json(parse_spec(j, "x")) == j);
}

TEST_CASE("unified sets defaults that explicit keys override", "[options][spec]") {
  const ExperimentSpec u = parse_spec(with({"model.norm.unified=true"}), "x");
  CHECK(u.model.norm.branch_scales);
  CHECK(u.model.norm.scale_placement == ScalePlacement::both);
  CHECK(u.model.norm.reparam == ScaleReparam::magnitude_direction);
  CHECK(u.optim.weight_decay_scales.input);
  CHECK_FALSE(u.optim.weight_decay_scales.output);
  const ModelSpec m = model({"model.norm.unified=true", "model.norm.scale_placement=input", "model.norm.reparam=none"});
  CHECK(m.norm.branch_scales);
  CHECK(m.norm.scale_placement == ScalePlacement::input);
  CHECK(m.norm.reparam == ScaleReparam::none);
}

TEST_CASE("option keys are strict and errors name the path", "[options][spec]") {
  CHECK(contains(error_of({"model.norm.qk_nrom=true"}), "spec.json: model.norm.qk_nrom: unknown key (did you mean \"qk_norm\"?)"));
  CHECK(contains(error_of({"model.norm.scale_placement=outptu"}),
                 "model.norm.scale_placement: \"outptu\" is not one of input, output, both"));
  CHECK(contains(error_of({"model.activation=moe"}), "model.activation: \"moe\" is not one of"));
  CHECK(contains(error_of({"model.la.dictionary=[\"relu\",\"swish\"]"}), "model.la.dictionary[1]: \"swish\" is not one of"));
  CHECK(contains(error_of({"model.la.dictionary=[\"relu\",\"relu\"]"}), "model.la.dictionary[1]: \"relu\" appears twice"));
  CHECK(contains(error_of({"model.moa.dictionary=[]"}), "model.moa.dictionary: expected a non-empty array"));
  CHECK(contains(error_of({"model.moa.dictionary=\"relu\""}), "model.moa.dictionary: expected a non-empty array"));
  CHECK(contains(error_of({"model.moa.base=tanh"}), "model.moa.base: \"tanh\" is not in the dictionary (relu, gelu, silu, relu2)"));
  CHECK(contains(error_of({"model.moa.gate=relu"}), "model.moa.gate: \"relu\" is not one of softmax, sigmoid"));
  CHECK(contains(error_of({"model.moa.init_logit=-1"}), "model.moa.init_logit: expected a number >= 0"));
  CHECK(contains(error_of({"model.attn_gate.position=g3"}), "model.attn_gate.position: \"g3\" is not one of none, g1, g2, g5"));
  CHECK(contains(error_of({"model.attn_gate.granularity=channel"}), "model.attn_gate.granularity"));
  CHECK(contains(error_of({"model.attn_gate.bias=1"}), "model.attn_gate.bias: expected a boolean"));
  CHECK(contains(error_of({"optim.weight_decay_scales.inputs=true"}),
                 "optim.weight_decay_scales.inputs: unknown key (did you mean \"input\"?)"));
  CHECK(contains(error_of({"model.norm.reparam=magnitude_direction", "model.norm.scale=zero_centered"}),
                 "model.norm.reparam \"magnitude_direction\" requires model.norm.scale \"vector\""));
  CHECK(contains(error_of({"model.norm.unified=true", "model.norm.scale=none"}), "(model.norm.unified sets the reparam)"));
  CHECK(contains(error_of({"model.norm.unified=true", "model.norm.scale=none", "model.norm.reparam=none"}),
                 "model.norm.scale \"none\" has no scale vectors"));
  CHECK(contains(error_of({"model.norm.branch_scales=true", "model.norm.scale=none"}), "model.norm.branch_scales"));
}

TEST_CASE("each option changes the parameter count by exactly the documented amount", "[options][spec][model]") {
  const int64_t base = count({kF});
  const int64_t swiglu_up = 2 * F, qkv_rows = (hq + 2 * hkv) * hd;

  SECTION("scale none | vector | zero_centered") {
    CHECK(base - count({kF, "model.norm.scale=none"}) == (2 * L + 1) * d);
    CHECK(count({kF, "model.norm.scale=zero_centered"}) == base);
  }
  SECTION("branch-specific input scales: one d-vector per branch instead of one per norm") {
    // swiglu: attention q, k, v; FFN gate, up -> 5 per layer instead of 2
    CHECK(count({kF, "model.norm.branch_scales=true"}) - base == L * d * (5 - 2));
    // ungated FFN: q, k, v, up -> 4; with an attention gate: + gate branch
    const int64_t relu = count({kF, "model.activation=relu"});
    CHECK(count({kF, "model.activation=relu", "model.norm.branch_scales=true"}) - relu == L * d * (4 - 2));
    const int64_t gated = count({kF, "model.attn_gate.position=g1"});
    CHECK(count({kF, "model.attn_gate.position=g1", "model.norm.branch_scales=true"}) - gated == L * d * (6 - 2));
  }
  SECTION("output-side scales: one entry per output row of every norm-fed projection") {
    const int64_t out_rows = L * (qkv_rows + swiglu_up) + V;
    CHECK(count({kF, "model.norm.scale_placement=output"}) - base == out_rows - (2 * L + 1) * d);
    CHECK(count({kF, "model.norm.scale_placement=both"}) - base == out_rows);
    // branch scales do not change output-side scales (they are per row anyway)
    CHECK(count({kF, "model.norm.scale_placement=output", "model.norm.branch_scales=true"}) ==
          count({kF, "model.norm.scale_placement=output"}));
  }
  SECTION("magnitude-direction: one extra scalar per scale vector") {
    CHECK(count({kF, "model.norm.reparam=magnitude_direction"}) - base == 2 * L + 1);
    // unified: branch (5 per layer) + output scales (5 branches per layer + lm_head) + final norm
    const int64_t vectors = L * 5 + L * 5 + 1 + 1;
    const int64_t entries = L * 5 * d + L * (qkv_rows + swiglu_up) + V + d;
    CHECK(count({kF, "model.norm.unified=true"}) - base == entries + vectors - (2 * L + 1) * d);
  }
  SECTION("QK-norm: a head_dim scale for q and for k per layer, and no q/k output scales") {
    CHECK(count({kF, "model.norm.qk_norm=true"}) - base == L * 2 * hd);
    CHECK(count({kF, "model.norm.qk_norm=true", "model.norm.scale=none"}) == count({kF, "model.norm.scale=none"}));
    CHECK(count({kF, "model.norm.qk_norm=true", "model.norm.scale_placement=both"}) -
              count({kF, "model.norm.scale_placement=both"}) ==
          L * 2 * hd - L * (hq + hkv) * hd);
  }
  SECTION("LA: K coefficients per layer, or K * ffn_hidden per channel") {
    const int64_t relu = count({kF, "model.activation=relu"});
    CHECK(count({kF, "model.activation=la"}) - relu == L * 4);
    CHECK(count({kF, "model.activation=la", "model.la.granularity=channel"}) - relu == L * 4 * F);
    CHECK(count({kF, "model.activation=la", "model.la.dictionary=[\"gelu\",\"silu\"]", "model.la.gated=true"}) - base == L * 2);
  }
  SECTION("MoA: a K x d router with a K bias per layer (+1 blend scalar with init exact)") {
    const int64_t relu = count({kF, "model.activation=relu"});
    CHECK(count({kF, "model.activation=moa"}) - relu == L * (4 * d + 4));
    CHECK(count({kF, "model.activation=moa", "model.moa.init=exact"}) - relu == L * (4 * d + 4 + 1));
    CHECK(count({kF, "model.activation=moa", "model.moa.gated=true", "model.moa.dictionary=[\"silu\",\"gelu\"]"}) - base ==
          L * (2 * d + 2));
    // the router is a branch of the FFN norm: branch and output scales cover it too
    CHECK(count({kF, "model.activation=moa", "model.norm.branch_scales=true"}) -
              count({kF, "model.activation=relu", "model.norm.branch_scales=true"}) ==
          L * (4 * d + 4 + d));
    CHECK(count({kF, "model.activation=moa", "model.norm.scale_placement=both"}) -
              count({kF, "model.activation=relu", "model.norm.scale_placement=both"}) ==
          L * (4 * d + 4 + 4));
  }
  SECTION("attention gate: G rows of d in the fused QKV projection per layer (+G bias)") {
    struct Case {
      std::string position, granularity;
      int64_t G;
    };
    for (const Case& c : {Case{"g1", "headwise", hq}, Case{"g1", "elementwise", hq * hd}, Case{"g2", "headwise", hkv},
                          Case{"g2", "elementwise", hkv * hd}, Case{"g5", "headwise", hq}, Case{"g5", "elementwise", d}}) {
      INFO(c.position << " " << c.granularity);
      const std::vector<std::string> o{kF, "model.attn_gate.position=" + c.position, "model.attn_gate.granularity=" + c.granularity};
      CHECK(count(o) - base == L * c.G * d);
      std::vector<std::string> b = o;
      b.push_back("model.attn_gate.bias=true");
      CHECK(count(b) - base == L * c.G * (d + 1));
      std::vector<std::string> out = o;
      out.push_back("model.norm.scale_placement=output");
      CHECK(count(out) - count({kF, "model.norm.scale_placement=output"}) == L * c.G * (d + 1));  // + gate out_scale
    }
  }
  SECTION("the model allocates exactly the table") {
    for (const std::vector<std::string>& o :
         {std::vector<std::string>{"model.norm.unified=true", "model.norm.qk_norm=true", "model.activation=moa"},
          std::vector<std::string>{"model.activation=la", "model.la.granularity=channel", "model.attn_gate.position=g5"}}) {
      Rng rng(1);
      Transformer t(model(o), rng);
      CHECK(t.num_parameters() == count(o));
    }
  }
}

TEST_CASE("the ablation specs parse and each differs from the baseline", "[options][spec]") {
  const std::string dir = std::string(PRETRAIN_SOURCE_DIR) + "/configs/ablations/";
  const ExperimentSpec base = load_spec(dir + "baseline.json");
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".json") continue;
    INFO(entry.path().string());
    const ExperimentSpec s = load_spec(entry.path().string());
    CHECK(s.training.device == DeviceKind::cpu);
    CHECK(parse_spec(to_json(s), "x") == s);
    if (entry.path().filename() != "baseline.json") {
      CHECK((s.model != base.model || s.optim != base.optim));
      CHECK(s.training == base.training);
    }
    ++n;
  }
  CHECK(n >= 30);
}
