// CUDA parity of the research options (docs/options.md): the loss and every parameter gradient of a
// small model with each option, on the GPU against the CPU reference, in f32. The options are
// compositions of existing ops, so this checks the composition on the CUDA backend end to end.
// Tagged [gpu]; skips itself with a warning when no CUDA device is available.
#include <cmath>
#include <string>
#include <vector>

#include "core/engine/backend.h"
#include "core/model/model.h"
#include "core/spec/spec.h"
#include "test/catch.h"
#include "test/gpu_test.h"

using namespace pt;

namespace {

double l2_norm(const Tensor& t) {
  double sum = 0;
  for (double x : t.to_vector<double>()) sum += x * x;
  return std::sqrt(sum);
}

// ||got - ref|| / (||ref|| + floor). Some gradients are ~0 at initialisation by cancellation: with
// unified norms + qk_norm the scale magnitudes of blocks.*.attn.{q,k,v} have gradient norms of
// 1e-6..2e-5 against a whole-model gradient norm of 2.7 (e.g. q/k scale magnitudes are divided
// out by the QK-norm up to its eps). Both backends hold f32 rounding noise there, so a plain
// relative error is meaningless: CPU f32 against CPU f64 already differs by 6e-4 on them. The floor,
// 1e-3 of the whole model's gradient norm, bounds that noise (CPU f32 vs f64: <= 2e-6 with it)
// while an absolute error above ~3e-7 on a near-zero gradient still fails.
double gradient_error(const Tensor& got, const Tensor& ref, double floor) {
  const auto a = got.to_vector<double>(), b = ref.to_vector<double>();
  REQUIRE(a.size() == b.size());
  double num = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]);
  if (!std::isfinite(num)) return INFINITY;
  return std::sqrt(num) / (l2_norm(ref) + floor);
}

}  // namespace

TEST_CASE("cuda: option models match the CPU (loss, gradients, diagnostics)", "[gpu][options]") {
  REQUIRE_GPU_OR_SKIP("option parity");
  const std::vector<std::vector<std::string>> variants{
      {"model.norm.unified=true", "model.norm.qk_norm=true"},
      {"model.norm.scale_placement=both", "model.norm.scale=zero_centered", "model.norm.type=layernorm", "model.bias=true"},
      {"model.activation=la", "model.la.granularity=channel"},
      {"model.activation=moa", "model.moa.gated=true", "model.moa.base=silu"},
      {"model.activation=moa", "model.moa.gate=sigmoid", "model.moa.init=exact", "model.norm.branch_scales=true"},
      {"model.attn_gate.position=g1", "model.attn_gate.bias=true"},
      {"model.attn_gate.position=g2", "model.attn_gate.granularity=elementwise"},
      {"model.attn_gate.position=g5", "model.norm.unified=true"},
  };
  std::vector<int32_t> ids(2 * 16);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7 + 3) % 64);
  std::vector<int32_t> next(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) next[i] = int32_t((i * 5 + 1) % 64);
  for (const auto& v : variants) {
    std::string name;
    for (const auto& o : v) name += o + " ";
    INFO("variant: " << name);
    nlohmann::json j = default_spec_json();
    for (const auto& o : v) apply_override(j, o);
    const ModelSpec spec = parse_spec(j, "test").model;
    Rng r1(7), r2(7);
    Transformer cpu(spec, r1, DType::f32, Device::cpu());
    Transformer gpu(spec, r2, DType::f32, Device::cuda(0));
    const Tensor tokens = Tensor::from_vector(ids, {2, 16}), targets = Tensor::from_vector(next, {2, 16});
    Tensor lc = cpu.loss(tokens, targets);
    Tensor lg = gpu.loss(tokens.to(Device::cuda(0)), targets.to(Device::cuda(0)));
    CHECK(lg.item() == Approx(lc.item()).epsilon(1e-5));
    lc.backward();
    lg.backward();
    REQUIRE(cpu.params().size() == gpu.params().size());
    double total = 0;  // the whole model's gradient norm (CPU)
    for (size_t i = 0; i < cpu.params().size(); ++i) {
      INFO("parameter " << cpu.params().info(i).name);
      REQUIRE(cpu.params().grad(i).defined());
      const double n = l2_norm(cpu.params().grad(i));
      total += n * n;
    }
    const double floor = 1e-3 * std::sqrt(total);
    for (size_t i = 0; i < cpu.params().size(); ++i) {
      const Tensor& gc = cpu.params().grad(i);
      const Tensor& gg = gpu.params().grad(i);
      INFO("parameter " << cpu.params().info(i).name);
      REQUIRE(gg.defined());
      const double err = gradient_error(gg, gc, floor);
      INFO("gradient norm " << l2_norm(gc) << ", error " << err << " (floor " << floor << ")");
      CHECK(err < 1e-4);
    }
    const nlohmann::json dc = cpu.diagnostics(tokens), dg = gpu.diagnostics(tokens.to(Device::cuda(0)));
    for (const auto& [key, value] : dc.items()) {
      INFO("diagnostic " << key);
      REQUIRE(dg.contains(key));
      const nlohmann::json flat_c = value.flatten(), flat_g = dg.at(key).flatten();
      REQUIRE(flat_c.size() == flat_g.size());
      for (auto it = flat_c.begin(); it != flat_c.end(); ++it)
        CHECK(flat_g.at(it.key()).get<double>() == Approx(it.value().get<double>()).epsilon(1e-4).margin(1e-6));
    }
  }
}
