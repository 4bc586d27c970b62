// Research options (docs/options.md): float64 gradchecks of every new composite and of whole tiny
// models with each parameterisation, baseline-preserving initialisation, role-based weight decay,
// diagnostics.
#include <cmath>

#include "core/model/model.h"
#include "core/engine/ops.h"
#include "core/train/optim.h"
#include "core/model/research_ops.h"
#include "core/spec/spec.h"
#include "test/catch.h"
#include "test/gradcheck.h"

using namespace pt;
using pt::test::gradcheck;
using pt::test::random_f64;

namespace {

// Moves values away from the kinks of relu/relu2 at 0 so finite differences are valid.
Tensor away_from_zero(Tensor x) {
  double* v = x.data<double>();
  for (int64_t i = 0; i < x.numel(); ++i)
    if (std::abs(v[i]) < 0.05) v[i] += v[i] < 0 ? -0.1 : 0.1;
  return x;
}

ModelSpec model_with(const std::vector<std::string>& overrides) {
  nlohmann::json j = default_spec_json();
  for (const std::string& o : overrides) apply_override(j, o);
  return parse_spec(j, "test").model;
}

// A tiny model in float64 for whole-model gradchecks.
ModelSpec tiny(std::vector<std::string> overrides) {
  std::vector<std::string> base{"model.vocab_size=11", "model.seq_len=5",   "model.d_model=8",
                                "model.n_layers=1",    "model.n_heads=2",   "model.n_kv_heads=1",
                                "model.ffn_hidden=6",  "model.init_std=0.4", "data.synthetic.support=4"};
  base.insert(base.end(), overrides.begin(), overrides.end());
  return model_with(base);
}

// Gradcheck of the model's mean cross-entropy with respect to every parameter, after moving every
// parameter away from its initial value (so that no gradient is zero by symmetry of the init).
void check_model_gradients(const ModelSpec& spec) {
  Rng rng(5);
  Transformer model(spec, rng, DType::f64);
  std::vector<Tensor> params;
  Rng noise(17);
  for (size_t k = 0; k < model.params().size(); ++k) {
    const Tensor& value = model.params().value(k);
    double* v = value.data<double>();
    const Tensor n = Tensor::randn(value.shape(), noise, 0.15, DType::f64);
    const double* nv = n.data<double>();
    for (int64_t i = 0; i < value.numel(); ++i) v[i] += nv[i];
    params.push_back(value);
  }
  const Tensor tokens = Tensor::from_vector<int32_t>({1, 4, 7, 2, 9, 3, 3, 10, 0, 5}, {2, 5});
  const Tensor targets = Tensor::from_vector<int32_t>({4, 7, 2, 9, 1, 3, 10, 0, 5, 6}, {2, 5});
  auto result = gradcheck([&](const std::vector<Tensor>&) { return model.loss(tokens, targets); }, params, 1e-6, 1e-6, 1e-4);
  INFO("worst: " << result.worst);
  INFO("max abs error " << result.max_abs_error);
  CHECK(result.ok);
}

}  // namespace

TEST_CASE("gradcheck: magnitude-direction scale", "[options][gradcheck]") {
  auto m = random_f64({1}, 1);
  auto v = random_f64({6}, 2);
  CHECK_GRAD(gradcheck([](auto& in) { return research::magnitude_direction(in[0], in[1]); }, {m, v}));
  // g = 1 at the initialisation m = 1, v = 1
  const Tensor g = research::magnitude_direction(Tensor::full({1}, 1.0, DType::f64), Tensor::full({5}, 1.0, DType::f64));
  for (double x : g.to_vector<double>()) CHECK(x == Approx(1.0));
}

TEST_CASE("gradcheck: branch and output scales folded into a fused projection", "[options][gradcheck]") {
  auto x = random_f64({2, 3, 4}, 3);
  auto w = random_f64({7, 4}, 4);  // branches of 3, 2, 2 rows
  auto g0 = random_f64({4}, 5), g2 = random_f64({4}, 6);
  auto b0 = random_f64({3}, 7), b1 = random_f64({2}, 8);
  const std::vector<int64_t> rows{3, 2, 2};
  CHECK_GRAD(gradcheck(
      [&](auto& in) {
        return ops::linear(in[0], research::scaled_weight(in[1], rows, {in[2], Tensor(), in[3]}, {in[4], in[5], Tensor()}));
      },
      {x, w, g0, g2, b0, b1}));
  // Single branch: W diag(g), and diag(b) W alone.
  CHECK_GRAD(gradcheck([](auto& in) { return ops::linear(in[0], research::scaled_weight(in[1], {7}, {in[2]}, {Tensor()})); },
                       {x.clone(), w.clone(), g0.clone()}));
  CHECK_GRAD(gradcheck(
      [](auto& in) { return ops::linear(in[0], research::scaled_weight(in[1], {7}, {Tensor()}, {in[2]})); },
      {x.clone(), w.clone(), random_f64({7}, 9)}));

  SECTION("the folded weight equals diag(b) W diag(g) per branch") {
    const Tensor y = ops::linear(x, research::scaled_weight(w, rows, {g0, Tensor(), g2}, {b0, b1, Tensor()}));
    const auto xv = x.to_vector<double>(), wv = w.to_vector<double>(), yv = y.to_vector<double>();
    const auto g0v = g0.to_vector<double>(), g2v = g2.to_vector<double>();
    const auto b0v = b0.to_vector<double>(), b1v = b1.to_vector<double>();
    for (int t = 0; t < 6; ++t)
      for (int r = 0; r < 7; ++r) {
        double acc = 0;
        for (int c = 0; c < 4; ++c) {
          const double g = r < 3 ? g0v[size_t(c)] : r < 5 ? 1.0 : g2v[size_t(c)];
          acc += wv[size_t(r * 4 + c)] * g * xv[size_t(t * 4 + c)];
        }
        const double b = r < 3 ? b0v[size_t(r)] : r < 5 ? b1v[size_t(r - 3)] : 1.0;
        CHECK(yv[size_t(t * 7 + r)] == Approx(b * acc));
      }
  }
}

TEST_CASE("gradcheck: learnable activation (per layer and per channel)", "[options][gradcheck]") {
  const std::vector<UnaryOp> dict{UnaryOp::relu, UnaryOp::gelu_erf, UnaryOp::silu, UnaryOp::relu2, UnaryOp::identity};
  auto h = away_from_zero(random_f64({2, 3, 4}, 10));
  CHECK_GRAD(gradcheck([&](auto& in) { return research::learnable_activation(in[0], dict, in[1]); }, {h, random_f64({5}, 11)}));
  CHECK_GRAD(gradcheck([&](auto& in) { return research::learnable_activation(in[0], dict, in[1]); },
                       {h.clone(), random_f64({5, 4}, 12)}));
  SECTION("a one-hot coefficient vector is the base activation") {
    const Tensor coef = Tensor::from_vector<double>({0, 0, 1, 0, 0}, {5});
    const auto got = research::learnable_activation(h, dict, coef).to_vector<double>();
    const auto want = ops::silu(h).to_vector<double>();
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]));
  }
}

TEST_CASE("gradcheck: mixture of activations with softmax and sigmoid gates", "[options][gradcheck]") {
  const std::vector<UnaryOp> dict{UnaryOp::relu, UnaryOp::gelu_tanh, UnaryOp::silu, UnaryOp::tanh};
  auto x = random_f64({2, 3, 5}, 13);
  auto h = away_from_zero(random_f64({2, 3, 4}, 14));
  auto wg = random_f64({4, 5}, 15);
  auto bg = random_f64({4}, 16);
  for (bool sigmoid_gate : {false, true}) {
    INFO("sigmoid gate " << sigmoid_gate);
    CHECK_GRAD(gradcheck(
        [&](auto& in) {
          return research::mixture_of_activations(in[1], dict, research::moa_gate(ops::linear(in[0], in[2], in[3]), sigmoid_gate));
        },
        {x.clone(), h.clone(), wg.clone(), bg.clone()}));
  }
}

TEST_CASE("gradcheck: head-specific attention gates", "[options][gradcheck]") {
  auto y = random_f64({2, 3, 2, 4}, 17);
  CHECK_GRAD(gradcheck([](auto& in) { return research::apply_head_gate(in[0], in[1]); }, {y, random_f64({2, 3, 2}, 18)}));
  CHECK_GRAD(gradcheck([](auto& in) { return research::apply_head_gate(in[0], in[1]); }, {y.clone(), random_f64({2, 3, 8}, 19)}));
}

TEST_CASE("gradcheck: whole tiny models with each parameterisation", "[options][gradcheck]") {
  // Smooth dictionaries (no relu kinks) so finite differences are valid everywhere.
  const std::vector<std::vector<std::string>> variants{
      {"model.norm.branch_scales=true"},
      {"model.norm.scale_placement=output"},
      {"model.norm.scale_placement=both", "model.norm.scale=zero_centered"},
      {"model.norm.unified=true"},
      {"model.norm.unified=true", "model.norm.qk_norm=true", "model.norm.type=layernorm", "model.bias=true"},
      {"model.norm.qk_norm=true", "model.norm.scale=none"},
      {"model.activation=la", "model.la.dictionary=[\"gelu\",\"silu\",\"tanh\"]"},
      {"model.activation=la", "model.la.dictionary=[\"gelu\",\"silu\"]", "model.la.granularity=channel", "model.la.gated=true"},
      {"model.activation=moa", "model.moa.dictionary=[\"gelu\",\"silu\",\"tanh\"]"},
      {"model.activation=moa", "model.moa.dictionary=[\"gelu_tanh\",\"silu\"]", "model.moa.gate=sigmoid",
       "model.moa.init=exact", "model.moa.gated=true", "model.norm.unified=true"},
      {"model.attn_gate.position=g1"},
      {"model.attn_gate.position=g1", "model.attn_gate.granularity=elementwise", "model.attn_gate.bias=true"},
      {"model.attn_gate.position=g2", "model.attn_gate.bias=true", "model.norm.branch_scales=true"},
      {"model.attn_gate.position=g2", "model.attn_gate.granularity=elementwise", "model.bias=true"},
      {"model.attn_gate.position=g5", "model.norm.scale_placement=both"},
      {"model.attn_gate.position=g5", "model.attn_gate.granularity=elementwise"},
  };
  for (const auto& v : variants) {
    std::string name;
    for (const auto& o : v) name += o + " ";
    INFO("variant: " << name);
    check_model_gradients(tiny(v));
  }
}

TEST_CASE("baseline-preserving initialisation: new options start at the baseline function", "[options][model]") {
  // The baseline's weights copied by name into the option model: scales at init are 1 (or reparameterised
  // to 1), LA starts at its base, MoA "exact" starts at its base, so the logits agree.
  const std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>> cases{
      {{}, {"model.norm.branch_scales=true"}},
      {{}, {"model.norm.scale_placement=both"}},
      {{}, {"model.norm.unified=true"}},
      {{"model.norm.scale=zero_centered"},
       {"model.norm.scale=zero_centered", "model.norm.scale_placement=both", "model.norm.branch_scales=true"}},
      {{}, {"model.activation=la", "model.la.gated=true", "model.la.dictionary=[\"silu\",\"gelu\",\"relu2\"]"}},
      {{}, {"model.activation=moa", "model.moa.gated=true", "model.moa.init=exact", "model.moa.base=silu"}},
      {{"model.activation=gelu_tanh", "model.ffn_hidden=24"},
       {"model.activation=la", "model.la.dictionary=[\"relu\",\"gelu_tanh\"]", "model.la.base=gelu_tanh",
        "model.la.granularity=channel", "model.ffn_hidden=24"}},
  };
  const Tensor tokens = Tensor::from_vector<int32_t>({1, 4, 7, 2, 9, 3, 3, 10, 0, 5}, {2, 5});
  for (const auto& [base_overrides, option_overrides] : cases) {
    std::string name;
    for (const auto& o : option_overrides) name += o + " ";
    INFO("variant: " << name);
    std::vector<std::string> b{"model.vocab_size=11", "model.d_model=16", "model.n_heads=2"};
    std::vector<std::string> o = b;
    b.insert(b.end(), base_overrides.begin(), base_overrides.end());
    o.insert(o.end(), option_overrides.begin(), option_overrides.end());
    Rng r1(3), r2(4);
    Transformer base(model_with(b), r1, DType::f64);
    Transformer option(model_with(o), r2, DType::f64);
    for (size_t i = 0; i < option.params().size(); ++i) {
      const ParamInfo& info = option.params().info(i);
      const ParamRef q = base.params().find(info.name);
      if (q && base.params().info(q).shape == info.shape) option.params().load_value(i, base.params().value(q));
    }
    const auto want = base.forward(tokens).to_vector<double>();
    const auto got = option.forward(tokens).to_vector<double>();
    REQUIRE(got.size() == want.size());
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
    CHECK(worst < 1e-10);
  }
}

TEST_CASE("MoA bias initialisation puts the documented weight on the base entry", "[options][model]") {
  for (const std::string gate : {"softmax", "sigmoid"}) {
    INFO(gate);
    const ModelSpec spec = model_with({"model.activation=moa", "model.moa.gate=" + gate, "model.moa.base=silu",
                                       "model.moa.init_logit=3"});
    Rng rng(1);
    Transformer model(spec, rng, DType::f64);
    const auto bias = model.param("blocks.0.mlp.router.bias").to_vector<double>();
    REQUIRE(bias.size() == 4);  // relu, gelu, silu, relu2
    CHECK(bias[2] == 3.0);
    CHECK(bias[0] == (gate == "softmax" ? 0.0 : -3.0));
    const Tensor tokens = Tensor::from_vector<int32_t>({1, 4, 7, 2}, {1, 4});
    const nlohmann::json d = model.diagnostics(tokens);
    const double expected = gate == "softmax" ? std::exp(3.0) / (std::exp(3.0) + 3.0) : 1.0 / (1.0 + std::exp(-3.0));
    CHECK(d.at("moa_alpha_mean").at(0).at(2).get<double>() == Approx(expected));  // router weights start at 0
    CHECK(d.at("moa_gate_entropy").size() == 2);
  }
}

TEST_CASE("attention-sink share matches a direct computation", "[options]") {
  const int64_t B = 2, T = 5, Hq = 4, Hkv = 2, D = 3;
  const Tensor q = random_f64({B, T, Hq, D}, 21), k = random_f64({B, T, Hkv, D}, 22);
  const auto qv = q.to_vector<double>(), kv = k.to_vector<double>();
  double total = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t t = 1; t < T; ++t) {
        std::vector<double> s;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < D; ++c)
            dot += qv[size_t(((b * T + t) * Hq + h) * D + c)] * kv[size_t(((b * T + j) * Hkv + h / 2) * D + c)];
          s.push_back(std::exp(dot / std::sqrt(double(D))));
        }
        double z = 0;
        for (double e : s) z += e;
        total += s[0] / z;
      }
  CHECK(research::attention_sink_share(q, k, 2) == Approx(total / double(B * Hq * (T - 1))));
}

TEST_CASE("diagnostics report per-layer attention and gate statistics", "[options][model]") {
  const ModelSpec spec = model_with({"model.attn_gate.position=g1", "model.activation=la", "model.n_layers=3"});
  Rng rng(1);
  Transformer model(spec, rng);
  const nlohmann::json d = model.diagnostics(Tensor::from_vector<int32_t>({1, 4, 7, 2, 5, 5}, {2, 3}));
  CHECK(d.at("attn_sink_share").size() == 3);
  CHECK(d.at("attn_gate_mean").size() == 3);
  CHECK(d.at("attn_gate_mean").at(0).get<double>() == Approx(0.5).margin(0.05));  // small init: logits near 0
  CHECK(d.at("la_coef").at(1) == nlohmann::json({1.0, 0.0, 0.0, 0.0}));
  CHECK_FALSE(d.contains("moa_alpha_mean"));
}

TEST_CASE("role-based weight decay of scale vectors", "[options][optim]") {
  const auto decays = [](const ModelSpec& m, const OptimSpec& o, const std::string& name) {
    for (const ParamInfo& p : parameter_table(m))
      if (p.name == name) return applies_weight_decay(p, o);
    FAIL("no parameter " << name);
    return false;
  };
  nlohmann::json j = default_spec_json();
  apply_override(j, "model.norm.unified=true");
  apply_override(j, "model.norm.qk_norm=true");
  const ExperimentSpec unified = parse_spec(j, "x");
  CHECK(unified.optim.weight_decay_scales.input);  // unified turns role decay on
  CHECK_FALSE(unified.optim.weight_decay_scales.output);
  const ModelSpec& m = unified.model;
  const OptimSpec& o = unified.optim;
  CHECK(decays(m, o, "blocks.0.attn.q.in_scale_magnitude"));         // input role
  CHECK(decays(m, o, "final_norm.weight_magnitude"));
  CHECK_FALSE(decays(m, o, "blocks.0.attn.q_norm.weight_magnitude"));  // output role
  CHECK_FALSE(decays(m, o, "blocks.0.mlp.up.out_scale_magnitude"));
  CHECK_FALSE(decays(m, o, "blocks.0.attn.q.in_scale_direction"));     // directions: weight_decay_scales.direction
  CHECK(decays(m, o, "blocks.0.attn.qkv.weight"));
  OptimSpec o2 = o;
  o2.weight_decay_scales = {false, true, true};
  CHECK_FALSE(decays(m, o2, "blocks.0.attn.q.in_scale_magnitude"));
  CHECK(decays(m, o2, "blocks.0.attn.q_norm.weight_magnitude"));
  CHECK(decays(m, o2, "blocks.0.attn.q.in_scale_direction"));
  OptimSpec o3;
  o3.decay.norm_scales = true;  // the legacy switch decays every scale whatever its role
  CHECK(decays(m, o3, "blocks.0.attn.q_norm.weight_magnitude"));
  CHECK_FALSE(decays(m, o3, "blocks.0.attn.q.in_scale_direction"));
  // the default model: one input-role scale per norm, not decayed by default
  const ExperimentSpec def = parse_spec(default_spec_json(), "x");
  for (const ParamInfo& p : parameter_table(def.model))
    if (p.kind == ParamKind::norm_scale) CHECK(p.role == ScaleRole::input);
  CHECK_FALSE(decays(def.model, def.optim, "blocks.0.attn_norm.weight"));
}
