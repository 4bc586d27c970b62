// End-to-end: each option family still trains the tiny default model to near the synthetic source's
// entropy floor on CPU, and the validation line of metrics.jsonl carries the family's diagnostics.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "core/spec/spec.h"
#include "core/train/trainer.h"
#include "test/catch.h"

using namespace pt;
namespace fs = std::filesystem;

namespace {

struct Run {
  TrainResult result;
  nlohmann::json last_val;  // the last validation line of metrics.jsonl
};

// The default spec, shortened: 32-token windows, `steps` steps, validation only at the end.
Run train_with(const std::string& name, int64_t steps, std::vector<std::string> overrides) {
  const fs::path dir = fs::temp_directory_path() / ("pretrain_test_options_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  nlohmann::json j = default_spec_json();
  std::vector<std::string> base{"model.seq_len=32", "training.steps=" + std::to_string(steps), "training.eval_every=0",
                                "checkpoint.every=0", "schedule.warmup_steps=20"};
  base.insert(base.end(), overrides.begin(), overrides.end());
  for (const std::string& o : base) apply_override(j, o);
  TrainOptions options;
  options.run_dir = dir;
  options.quiet = true;
  Run run;
  run.result = train(parse_spec(j, name), options);
  std::ifstream in(dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json m = nlohmann::json::parse(line);
    if (m.contains("val_loss")) run.last_val = m;
  }
  fs::remove_all(dir);
  return run;
}

// Stated margin for every family: within 0.08 nats/token of the entropy floor after 250 steps of
// 16 x 32 tokens (the plain default model reaches floor + 0.045 in this budget, the four option
// runs below floor + 0.041 .. 0.051).
constexpr int64_t kSteps = 250;
constexpr double kMargin = 0.08;

void check_near_floor(const Run& run) {
  INFO("final val loss " << run.result.final_val_loss << ", floor " << run.result.entropy_floor);
  CHECK(run.result.final_val_loss < run.result.entropy_floor + kMargin);
  CHECK(run.result.final_val_loss > run.result.entropy_floor - 0.03);
}

}  // namespace

TEST_CASE("end-to-end: unified scale vectors with QK-norm reach the entropy floor", "[options][e2e]") {
  const Run run = train_with("norm", kSteps, {"model.norm.unified=true", "model.norm.qk_norm=true"});
  check_near_floor(run);
  CHECK(run.last_val.at("attn_sink_share").size() == 2);
}

TEST_CASE("end-to-end: learnable activations (per channel) reach the entropy floor", "[options][e2e]") {
  const Run run = train_with("la", kSteps, {"model.activation=la", "model.la.granularity=channel", "model.ffn_hidden=128"});
  check_near_floor(run);
  REQUIRE(run.last_val.contains("la_coef"));
  CHECK(run.last_val.at("la_coef").at(0).size() == 4);
}

TEST_CASE("end-to-end: mixture of activations reaches the entropy floor and logs gate statistics", "[options][e2e]") {
  const Run run = train_with("moa", kSteps, {"model.activation=moa", "model.moa.gated=true", "model.moa.base=silu"});
  check_near_floor(run);
  REQUIRE(run.last_val.contains("moa_alpha_mean"));
  const nlohmann::json& alpha = run.last_val.at("moa_alpha_mean");
  REQUIRE(alpha.size() == 2);
  double total = 0;
  for (const auto& a : alpha.at(0)) total += a.get<double>();
  CHECK(total == Approx(1.0));  // softmax gate: the mean alphas of a layer sum to 1
  CHECK(run.last_val.at("moa_gate_entropy").at(0).get<double>() >= 0.0);
  CHECK(run.last_val.at("moa_gate_entropy").at(0).get<double>() <= std::log(4.0) + 1e-9);
}

TEST_CASE("end-to-end: gated attention (G1, headwise) reaches the entropy floor and logs gate statistics", "[options][e2e]") {
  const Run run = train_with("gate", kSteps, {"model.attn_gate.position=g1"});
  check_near_floor(run);
  REQUIRE(run.last_val.contains("attn_gate_mean"));
  const double gate = run.last_val.at("attn_gate_mean").at(0).get<double>();
  CHECK(gate > 0.0);
  CHECK(gate < 1.0);
  const double sink = run.last_val.at("attn_sink_share").at(1).get<double>();
  CHECK(sink >= 0.0);
  CHECK(sink <= 1.0);
}
