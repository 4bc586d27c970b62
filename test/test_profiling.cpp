// ProfilingBackend (pretrain bench --profile): attributes every kernel call of a training step and
// changes no result.
#include <cmath>

#include "core/engine/autograd.h"
#include "core/engine/backend.h"
#include "core/model/model.h"
#include "core/train/optim.h"
#include "core/engine/profiling_backend.h"
#include "core/engine/rng.h"
#include "core/spec/spec.h"
#include "test/catch.h"

using namespace pt;

namespace {

// One training step of the default model on fixed data; returns the loss and the parameters after.
std::pair<double, std::vector<float>> one_step() {
  const ExperimentSpec spec = parse_spec(default_spec_json(), "default");
  Rng rng(3);
  Transformer model(spec.model, rng);
  AdamW optimizer(model.params(), spec.optim);
  const int64_t B = 2, T = spec.model.seq_len;
  std::vector<int32_t> tokens(size_t(B * T)), targets(size_t(B * T));
  Rng data(5);
  for (auto& t : tokens) t = static_cast<int32_t>(data.below(uint64_t(spec.model.vocab_size)));
  for (size_t i = 0; i < targets.size(); ++i) targets[i] = i + 1 < tokens.size() ? tokens[i + 1] : -1;
  Tensor loss = model.loss(Tensor::from_vector(tokens, {B, T}), Tensor::from_vector(targets, {B, T}), B * T - 1);
  loss.backward();
  optimizer.step(1e-3);
  std::vector<float> params;
  for (size_t i = 0; i < model.params().size(); ++i)
    for (float x : model.params().value(i).to_vector<float>()) params.push_back(x);
  return {loss.item(), params};
}

}  // namespace

TEST_CASE("the profiling backend times every kernel of a step and changes no result", "[cpu][profile]") {
  const auto plain = one_step();
  ProfilingBackend profiler(backend_for(Device::cpu()));
  override_backend(DeviceType::cpu, &profiler);
  std::pair<double, std::vector<float>> profiled;
  try {
    profiled = one_step();
  } catch (...) {
    override_backend(DeviceType::cpu, nullptr);
    throw;
  }
  override_backend(DeviceType::cpu, nullptr);
  CHECK(&backend_for(Device::cpu()) != static_cast<Backend*>(&profiler));

  CHECK(profiled.first == plain.first);
  CHECK(profiled.second == plain.second);

  const auto entries = profiler.entries();
  REQUIRE(!entries.empty());
  double sum = 0.0;
  bool saw_gemm = false, saw_attention = false, saw_adamw = false, saw_loss = false;
  for (size_t i = 0; i < entries.size(); ++i) {
    INFO(entries[i].key);
    CHECK(entries[i].calls > 0);
    CHECK(entries[i].seconds >= 0.0);
    if (i > 0) CHECK(entries[i].seconds <= entries[i - 1].seconds);  // sorted, largest first
    sum += entries[i].seconds;
    saw_gemm = saw_gemm || entries[i].key.rfind("gemm f32", 0) == 0;
    saw_attention = saw_attention || entries[i].key.rfind("attention_backward f32", 0) == 0;
    saw_adamw = saw_adamw || (entries[i].key == "adamw_step_multi" && entries[i].calls == 1);
    saw_loss = saw_loss || entries[i].key == "cross_entropy_forward_backward f32";  // training: the fused kernel
  }
  CHECK(saw_gemm);
  CHECK(saw_attention);
  CHECK(saw_adamw);
  CHECK(saw_loss);
  CHECK(sum > 0.0);
  CHECK(std::abs(sum - profiler.total_seconds()) < 1e-12);
}
