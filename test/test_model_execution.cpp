// Execution options of the model (recomputation, chunked loss, compute dtype) and a sweep over
// every ablation spec checking that each parameter takes part in the loss.
#include <filesystem>

#include "core/model/model.h"
#include "core/spec/spec.h"
#include "data/synthetic.h"
#include "test/catch.h"

using namespace pt;
namespace fs = std::filesystem;

namespace {

ExperimentSpec tiny_spec(const std::vector<std::string>& overrides = {}) {
  nlohmann::json j = default_spec_json();
  for (const auto& o : overrides) apply_override(j, o);
  return parse_spec(j, "test");
}

std::pair<Tensor, Tensor> batch(const ExperimentSpec& spec, int64_t b, int64_t t) {
  data::MarkovSource source({spec.model.vocab_size, 4, 1.0, 3}, 5);
  const auto tb = source.next(b, t);
  return {Tensor::from_vector(tb.inputs, {b, t}), Tensor::from_vector(tb.targets, {b, t})};
}

// Loss and every gradient of a freshly initialised model under `options`.
std::pair<double, std::vector<std::vector<double>>> loss_and_grads(const ExperimentSpec& spec,
                                                                   const ExecutionOptions& options,
                                                                   DType dtype = DType::f32) {
  Rng rng(spec.training.seed);
  Transformer model(spec.model, rng, dtype);
  model.set_execution(options);
  auto [inputs, targets] = batch(spec, 2, 16);
  Tensor loss = model.loss(inputs, targets);
  loss.backward();
  std::vector<std::vector<double>> grads;
  for (size_t i = 0; i < model.params().size(); ++i) {
    REQUIRE(model.params().grad(i).defined());
    CHECK(model.params().grad(i).dtype() == dtype);
    grads.push_back(model.params().grad(i).to_vector<double>());
  }
  return {loss.item(), grads};
}

}  // namespace

TEST_CASE("recompute: loss and gradients are bit-identical with and without it", "[model][recompute]") {
  const ExperimentSpec spec = tiny_spec();
  ExecutionOptions recompute;
  recompute.recompute_blocks = true;
  const auto plain = loss_and_grads(spec, {});
  const auto again = loss_and_grads(spec, recompute);
  CHECK(again.first == plain.first);
  CHECK(again.second == plain.second);
}

TEST_CASE("chunked loss matches the one-pass loss and gradients", "[model][recompute]") {
  const ExperimentSpec spec = tiny_spec();
  ExecutionOptions chunked;
  chunked.loss_chunk_rows = 5;  // 32 rows: chunks of 5, the last one short
  const auto plain = loss_and_grads(spec, {}, DType::f64);
  const auto chunks = loss_and_grads(spec, chunked, DType::f64);
  CHECK(chunks.first == Approx(plain.first).epsilon(1e-12));
  for (size_t i = 0; i < plain.second.size(); ++i)
    for (size_t j = 0; j < plain.second[i].size(); ++j) CHECK(chunks.second[i][j] == Approx(plain.second[i][j]).margin(1e-12));
}

TEST_CASE("compute dtype: masters keep their dtype, the forward runs in the compute dtype", "[model]") {
  // On CPU bf16 cannot compute, so exercise the same path with f64 masters and f32 compute.
  const ExperimentSpec spec = tiny_spec();
  ExecutionOptions f32_compute;
  f32_compute.compute_dtype = DType::f32;
  const auto mixed = loss_and_grads(spec, f32_compute, DType::f64);  // grads arrive as f64
  const auto reference = loss_and_grads(spec, {}, DType::f64);
  CHECK(mixed.first == Approx(reference.first).epsilon(1e-5));
  CHECK(mixed.first != reference.first);  // it really ran in f32
}

TEST_CASE("execution options come from the spec's training section", "[model][spec]") {
  const ExperimentSpec spec = tiny_spec({"training.recompute=\"full\"", "training.loss_chunk_rows=256"});
  const ExecutionOptions options = execution_options(spec.training);
  CHECK(options.recompute_blocks);
  CHECK(options.loss_chunk_rows == 256);
  CHECK_FALSE(options.compute_dtype.has_value());
  CHECK(execution_options(tiny_spec({"training.device=\"cuda\"", "training.precision=\"bf16\""}).training)
            .compute_dtype == DType::bf16);
  CHECK_THROWS_AS(tiny_spec({"training.recompute=\"some\""}), SpecError);
}

TEST_CASE("every parameter of every ablation spec receives a gradient", "[model][options]") {
  for (const auto& entry : fs::directory_iterator(fs::path(PRETRAIN_SOURCE_DIR) / "configs" / "ablations")) {
    if (entry.path().extension() != ".json") continue;
    INFO("spec " << entry.path().filename().string());
    const ExperimentSpec spec = load_spec(entry.path().string());
    Rng rng(1);
    Transformer model(spec.model, rng);
    auto [inputs, targets] = batch(spec, 2, 8);
    model.loss(inputs, targets).backward();
    for (size_t i = 0; i < model.params().size(); ++i) {
      INFO("parameter " << model.params().info(i).name);
      CHECK(model.params().grad(i).defined());
    }
  }
}

TEST_CASE("loss_parts: the LM loss is the total without auxiliary losses, with and without recompute", "[model]") {
  for (const bool recompute : {false, true}) {
    INFO("recompute " << recompute);
    const ExperimentSpec spec = tiny_spec();
    Rng rng(spec.training.seed);
    Transformer model(spec.model, rng);
    ExecutionOptions options;
    options.recompute_blocks = recompute;
    model.set_execution(options);
    auto [inputs, targets] = batch(spec, 2, 16);
    const LossParts parts = model.loss_parts(inputs, targets);
    CHECK(parts.aux.empty());
    CHECK(parts.total.same_impl(parts.lm));
    CHECK(parts.lm.item() == model.loss(inputs, targets).item());
  }
}

TEST_CASE("the model's store holds exactly the parameter table the modules declare", "[model]") {
  for (const std::vector<std::string>& overrides :
       {std::vector<std::string>{}, {"model.norm.unified=true", "model.attn_gate.position=\"g1\""},
        {"model.preset=\"gpt2\""}, {"model.activation=\"moa\"", "model.moa.init=\"exact\""},
        {"model.activation=\"la\"", "model.la.granularity=\"channel\"", "model.norm.qk_norm=true"}}) {
    const ExperimentSpec spec = tiny_spec(overrides);
    const std::vector<ParamInfo> table = parameter_table(spec.model);
    Rng rng(1);
    const Transformer model(spec.model, rng);
    REQUIRE(model.params().size() == table.size());
    for (size_t i = 0; i < table.size(); ++i) {
      INFO(table[i].name);
      CHECK(model.params().info(i).name == table[i].name);
      CHECK(model.params().value(i).shape() == table[i].shape);
      CHECK(model.params().find(table[i].name).index == static_cast<int32_t>(i));
    }
    CHECK(model.num_parameters() == count_parameters(spec.model));
  }
}
