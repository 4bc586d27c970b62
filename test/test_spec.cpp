// The experiment spec: parsing, presets, validation messages, overrides, files and round trips.
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/spec/spec.h"
#include "test/catch.h"

namespace {

using nlohmann::json;

// The default spec with `--set`-style overrides applied.
json default_with(const std::vector<std::string>& overrides) {
  json j = pt::default_spec_json();
  for (const std::string& o : overrides) pt::apply_override(j, o);
  return j;
}

// The message of the SpecError that `f` throws (fails the test if it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const pt::SpecError& e) {
    return e.what();
  }
  FAIL("expected a pt::SpecError");
  return {};
}

std::string spec_error(const json& j) {
  return error_of([&] { pt::parse_spec(j, "spec.json"); });
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::string config_path(const std::string& name) { return std::string(PRETRAIN_SOURCE_DIR) + "/configs/" + name; }

// A file in a fresh temporary directory, removed with the object.
struct TempFile {
  std::filesystem::path dir;
  std::filesystem::path path;
  TempFile(const std::string& name, const std::string& content) {
    dir = std::filesystem::temp_directory_path() / ("pretrain_test_spec_" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(dir);
    path = dir / name;
    std::ofstream(path) << content;
  }
  ~TempFile() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
};

}  // namespace

TEST_CASE("the default spec parses and resolves", "[spec]") {
  const pt::ExperimentSpec s = pt::parse_spec(pt::default_spec_json(), "default");
  CHECK(s.name == "default");
  CHECK(s.model.preset == pt::Preset::llama);
  CHECK(s.model.vocab_size == 64);
  CHECK(s.model.d_model == 64);
  CHECK(s.model.n_heads == 4);
  CHECK(s.model.n_kv_heads == 2);
  CHECK(s.model.ffn_hidden == 176);  // 8 * ceil(floor(8 * 64 / 3) / 8)
  CHECK(s.data.source == pt::DataSource::synthetic);
  CHECK(s.training.device == pt::DeviceKind::cpu);
  CHECK(s.training.precision == pt::Precision::fp32);
  CHECK(s.training.micro_batch == 16);
  CHECK(s.training.grad_accum == 1);
  CHECK(s.optim.lr == 3e-3);
  CHECK(s.schedule.type == pt::ScheduleType::cosine);
  CHECK(s.schedule.warmup_steps == 30);
  CHECK(s.checkpoint.every == 200);
  CHECK(s.checkpoint.keep_last == 2);
  CHECK(s.logging.every == 20);
  CHECK(s.total_steps() == s.training.steps);
}

TEST_CASE("presets set the defaults of keys that are not given", "[spec]") {
  SECTION("llama") {
    const pt::ModelSpec m = pt::parse_spec(default_with({"model.preset=llama"}), "x").model;
    CHECK(m.norm.type == pt::NormType::rmsnorm);
    CHECK(m.norm.scale == pt::NormScale::vector);
    CHECK(m.activation == pt::Activation::swiglu);
    CHECK(m.position == pt::PositionEncoding::rope);
    CHECK_FALSE(m.bias);
    CHECK_FALSE(m.tied_embeddings);
    CHECK(m.ffn_hidden == 176);
  }
  SECTION("gpt2") {
    const pt::ModelSpec m = pt::parse_spec(default_with({"model.preset=gpt2", "model.n_kv_heads=0"}), "x").model;
    CHECK(m.norm.type == pt::NormType::layernorm);
    CHECK(m.norm.scale == pt::NormScale::vector);
    CHECK(m.activation == pt::Activation::gelu_tanh);
    CHECK(m.position == pt::PositionEncoding::learned);
    CHECK(m.bias);
    CHECK(m.tied_embeddings);
    CHECK(m.ffn_hidden == 4 * 64);
    CHECK(m.n_kv_heads == m.n_heads);  // 0 resolves to n_heads
  }
  SECTION("the llama hidden size is rounded up to a multiple of 8") {
    const pt::ModelSpec m = pt::parse_spec(default_with({"model.d_model=96", "model.n_heads=4"}), "x").model;
    CHECK(m.ffn_hidden == 256);  // floor(8 * 96 / 3) = 256
    const pt::ModelSpec m2 = pt::parse_spec(default_with({"model.d_model=40", "model.n_heads=2", "model.n_kv_heads=1"}), "x").model;
    CHECK(m2.ffn_hidden == 112);  // floor(320 / 3) = 106 -> 112
  }
}

TEST_CASE("explicit keys override the preset", "[spec]") {
  const pt::ModelSpec m =
      pt::parse_spec(default_with({"model.preset=gpt2", "model.activation=relu2", "model.position=rope", "model.bias=false",
                                   "model.norm.type=rmsnorm", "model.tied_embeddings=false", "model.ffn_hidden=100"}),
                     "x")
          .model;
  CHECK(m.activation == pt::Activation::relu2);
  CHECK(m.position == pt::PositionEncoding::rope);
  CHECK_FALSE(m.bias);
  CHECK(m.norm.type == pt::NormType::rmsnorm);
  CHECK(m.norm.scale == pt::NormScale::vector);  // still the preset's
  CHECK_FALSE(m.tied_embeddings);
  CHECK(m.ffn_hidden == 100);
}

TEST_CASE("to_json round-trips through parse_spec", "[spec]") {
  std::vector<std::string> overrides;
  SECTION("default") {}
  SECTION("gpt2 with token budget and shards") {
    overrides = {"model.preset=gpt2",       "model.n_kv_heads=1",   "training.steps=0",
                 "training.tokens=1000000", "data.source=shards",   "data.train=shards/train-*.bin",
                 "data.val=shards/val-*.bin", "optim.lr=0.00123456789", "schedule.type=wsd",
                 "schedule.decay_fraction=0.3", "training.seed=18446744073709551615", "optim.decay.biases=true"};
  }
  const pt::ExperimentSpec s = pt::parse_spec(default_with(overrides), "x");
  const json j = pt::to_json(s);
  const pt::ExperimentSpec again = pt::parse_spec(j, "x");
  CHECK(again == s);
  CHECK(pt::to_json(again) == j);
  // Every key is present with its resolved value.
  CHECK(j.at("model").at("preset") == s.model.preset);
  CHECK(j.at("model").at("ffn_hidden") == s.model.ffn_hidden);
  CHECK(j.at("model").at("n_kv_heads") == s.model.n_kv_heads);
  CHECK(j.at("model").at("norm").at("eps") == s.model.norm.eps);
  CHECK(j.at("optim").at("decay").size() == 3);
  CHECK(j.at("data").contains("val"));
}

TEST_CASE("unknown keys are errors naming the path", "[spec]") {
  SECTION("top level") {
    const std::string e = spec_error(default_with({"modle.d_model=3"}));
    CHECK(contains(e, "spec.json: modle: unknown key"));
    CHECK(contains(e, "did you mean \"model\"?"));
  }
  SECTION("nested, with a suggestion") {
    const std::string e = spec_error(default_with({"model.activaton=gelu"}));
    CHECK(contains(e, "spec.json: model.activaton: unknown key (did you mean \"activation\"?)"));
  }
  SECTION("deeply nested, no close match lists the known keys") {
    const std::string e = spec_error(default_with({"model.norm.flavour=1"}));
    CHECK(contains(e, "model.norm.flavour: unknown key"));
    CHECK(contains(e, "known keys: type, scale, eps"));
  }
}

TEST_CASE("wrong JSON types are errors naming the path and the value", "[spec]") {
  SECTION("string for an integer") {
    const std::string e = spec_error(default_with({"model.n_heads=\"12\""}));
    CHECK(contains(e, "spec.json: model.n_heads: expected"));
    CHECK(contains(e, "got \"12\" (string)"));
  }
  SECTION("fractional number for an integer") {
    CHECK(contains(spec_error(default_with({"training.micro_batch=2.5"})), "training.micro_batch: expected a positive integer, got 2.5"));
  }
  SECTION("integral floats are accepted for integers") {
    CHECK(pt::parse_spec(default_with({"training.steps=0", "training.tokens=1e6"}), "x").training.tokens == 1000000);
  }
  SECTION("number for a boolean") {
    CHECK(contains(spec_error(default_with({"model.bias=1"})), "model.bias: expected a boolean (true or false), got 1 (number)"));
  }
  SECTION("a section that is not an object") {
    CHECK(contains(spec_error(default_with({"optim=3"})), "optim: expected an object, got 3 (number)"));
  }
  SECTION("the document is not an object") {
    CHECK(contains(spec_error(json::array()), "spec.json: expected a JSON object, got [] (array)"));
  }
  SECTION("string for a choice") {
    CHECK(contains(spec_error(default_with({"model.activation=null"})), "model.activation: expected one of relu"));
  }
}

TEST_CASE("out-of-range values and unknown choices are errors", "[spec]") {
  SECTION("enum") {
    const std::string e = spec_error(default_with({"model.activation=swish"}));
    CHECK(contains(e, "model.activation: \"swish\" is not one of relu, gelu, gelu_tanh, silu, relu2, swiglu, geglu, reglu"));
    CHECK(contains(spec_error(default_with({"model.activation=gelu-tanh"})), "did you mean \"gelu_tanh\"?"));
    CHECK(contains(spec_error(default_with({"training.device=tpu"})), "training.device: \"tpu\" is not one of cpu, cuda"));
    CHECK(contains(spec_error(default_with({"model.preset=gpt3"})), "model.preset: \"gpt3\" is not one of llama, gpt2"));
  }
  SECTION("ranges") {
    CHECK(contains(spec_error(default_with({"model.n_heads=0"})), "model.n_heads: expected a positive integer, got 0"));
    CHECK(contains(spec_error(default_with({"optim.lr=0"})), "optim.lr: expected a number > 0, got 0"));
    CHECK(contains(spec_error(default_with({"optim.lr=-1e-3"})), "optim.lr: expected a number > 0"));
    CHECK(contains(spec_error(default_with({"optim.beta2=1"})), "optim.beta2: expected a number in [0, 1), got 1"));
    CHECK(contains(spec_error(default_with({"optim.beta1=-0.1"})), "optim.beta1: expected a number in [0, 1)"));
    CHECK(contains(spec_error(default_with({"optim.weight_decay=-1"})), "optim.weight_decay: expected a number >= 0"));
    CHECK(contains(spec_error(default_with({"checkpoint.keep_last=0"})), "checkpoint.keep_last: expected a positive integer"));
    CHECK(contains(spec_error(default_with({"training.grad_accum=0"})), "training.grad_accum: expected a positive integer"));
    CHECK(contains(spec_error(default_with({"logging.every=0"})), "logging.every: expected a positive integer"));
    CHECK(contains(spec_error(default_with({"training.seed=-1"})), "training.seed: expected a non-negative integer, got -1"));
    CHECK(contains(spec_error(default_with({"model.vocab_size=4294967296"})), "model.vocab_size: expected a positive integer <= 2147483647, got 4294967296"));
    CHECK(contains(spec_error(default_with({"schedule.min_lr_ratio=1.5"})), "schedule.min_lr_ratio: expected a number in [0, 1]"));
  }
  SECTION("name") {
    CHECK(contains(spec_error(default_with({"name=my run"})), "name: \"my run\" is not a valid run name"));
    CHECK(contains(spec_error(default_with({"name=../x"})), "is not a valid run name"));
  }
}

TEST_CASE("cross-field rules name the keys involved", "[spec]") {
  CHECK(contains(spec_error(default_with({"model.n_heads=3", "model.n_kv_heads=0"})),
                 "model.d_model (64) must be divisible by model.n_heads (3)"));
  CHECK(contains(spec_error(default_with({"model.n_kv_heads=3"})), "model.n_heads (4) must be divisible by model.n_kv_heads (3)"));
  CHECK(contains(spec_error(default_with({"model.n_kv_heads=8"})), "model.n_heads (4) must be divisible by model.n_kv_heads (8)"));
  CHECK(contains(spec_error(default_with({"model.d_model=60", "model.n_heads=4", "model.n_kv_heads=4"})),
                 "model.position \"rope\" needs an even head dimension"));
  // An odd head dimension is fine without rope.
  CHECK(pt::parse_spec(default_with({"model.d_model=60", "model.position=learned"}), "x").model.head_dim() == 15);
  CHECK(contains(spec_error(default_with({"training.steps=0"})), "training.steps and training.tokens are both 0"));
  CHECK(contains(spec_error(default_with({"training.tokens=1000"})), "set only one of training.steps (600) and training.tokens (1000)"));
  CHECK(contains(spec_error(default_with({"schedule.warmup_steps=600"})),
                 "schedule.warmup_steps (600) must be less than the total steps (600)"));
  CHECK(contains(spec_error(default_with({"schedule.type=wsd", "schedule.decay_fraction=0.96"})),
                 "schedule.decay_fraction"));
  CHECK(contains(spec_error(default_with({"data.source=shards"})), "data.source \"shards\" requires data.train"));
  CHECK(contains(spec_error(default_with({"training.precision=bf16"})),
                 "training.precision \"bf16\" requires training.device \"cuda\""));
  CHECK(pt::parse_spec(default_with({"training.precision=bf16", "training.device=cuda"}), "x").training.precision == pt::Precision::bf16);
  CHECK(contains(spec_error(default_with({"data.synthetic.support=65"})),
                 "data.synthetic.support (65) must not exceed model.vocab_size (64)"));
  CHECK(contains(spec_error(default_with({"training.micro_batch=16777216", "training.grad_accum=16777216", "model.seq_len=16777216"})), "too large"));
  // The run's token count (steps * tokens per step, logged per step in metrics.jsonl) must fit too.
  CHECK(contains(spec_error(default_with({"training.steps=4611686018427387904"})),
                 "training.steps (4611686018427387904) * tokens per step (1024) does not fit"));
}

TEST_CASE("total_steps derives steps from a token budget", "[spec]") {
  // 16 sequences * 1 micro-step * 64 tokens = 1024 tokens per step.
  CHECK(pt::parse_spec(default_with({"training.steps=0", "training.tokens=102400"}), "x").total_steps() == 100);
  CHECK(pt::parse_spec(default_with({"training.steps=0", "training.tokens=102401"}), "x").total_steps() == 101);
  CHECK(contains(spec_error(default_with({"training.steps=0", "training.tokens=1024"})),
                 "schedule.warmup_steps (30) must be less than the total steps (1)"));
}

TEST_CASE("spec overrides with --set", "[spec]") {
  json j = pt::default_spec_json();
  SECTION("number, boolean, string, JSON string, object") {
    pt::apply_override(j, "model.d_model=128");
    pt::apply_override(j, "model.bias=true");
    pt::apply_override(j, "training.device=cuda");
    pt::apply_override(j, "name=\"123\"");
    pt::apply_override(j, "data.train=data/*.bin");
    pt::apply_override(j, "optim.decay={\"biases\": true}");
    pt::apply_override(j, "data.val=a=b");
    CHECK(j["model"]["d_model"] == 128);
    CHECK(j["model"]["bias"] == true);
    CHECK(j["training"]["device"] == "cuda");
    CHECK(j["name"] == "123");
    CHECK(j["data"]["train"] == "data/*.bin");
    CHECK(j["optim"]["decay"]["biases"] == true);
    CHECK(j["data"]["val"] == "a=b");
  }
  SECTION("an empty value is the empty string") {
    pt::apply_override(j, "data.val=");
    CHECK(j["data"]["val"] == "");
  }
  SECTION("missing objects are created, and parse_spec reports them") {
    pt::apply_override(j, "extra.deep.key=1");
    CHECK(j["extra"]["deep"]["key"] == 1);
    CHECK(contains(spec_error(j), "extra: unknown key"));
  }
  SECTION("malformed assignments") {
    CHECK(contains(error_of([&] { pt::apply_override(j, "model.d_model"); }), "\"model.d_model\": expected path=value"));
    CHECK(contains(error_of([&] { pt::apply_override(j, "=3"); }), "\"=3\": empty key"));
    CHECK(contains(error_of([&] { pt::apply_override(j, "model..d_model=3"); }), "empty key"));
    CHECK(contains(error_of([&] { pt::apply_override(j, "model.=3"); }), "empty key"));
    CHECK(contains(error_of([&] { pt::apply_override(j, "model.d_model.x=3"); }),
                   "model.d_model is number, not an object"));
  }
}

TEST_CASE("load_spec reads files and names them in errors", "[spec]") {
  SECTION("missing file") {
    const std::string e = error_of([] { pt::load_spec("/nonexistent/spec.json"); });
    CHECK(contains(e, "/nonexistent/spec.json"));
    CHECK(contains(e, "cannot open"));
  }
  SECTION("invalid JSON, with the position") {
    const TempFile f("bad.json", "{\n  \"name\": \"x\",\n}\n");
    const std::string e = error_of([&] { pt::load_spec(f.path.string()); });
    CHECK(contains(e, f.path.string() + ": invalid JSON"));
    CHECK(contains(e, "line 3"));
  }
  SECTION("duplicate keys") {
    const TempFile f("dup.json", R"({"model": {"d_model": 64, "d_model": 128}})");
    CHECK(contains(error_of([&] { pt::load_spec(f.path.string()); }), "model.d_model: duplicate key"));
  }
  SECTION("validation errors name the file") {
    const TempFile f("spec.json", R"({"model": {"n_heads": "12"}})");
    CHECK(contains(error_of([&] { pt::load_spec(f.path.string()); }),
                   f.path.string() + ": model.n_heads: expected a positive integer, got \"12\" (string)"));
  }
  SECTION("overrides are applied before parsing") {
    const pt::ExperimentSpec s = pt::load_spec(config_path("default.json"), {"model.d_model=128", "name=tuned"});
    CHECK(s.model.d_model == 128);
    CHECK(s.name == "tuned");
    CHECK(contains(error_of([] { pt::load_spec(config_path("default.json"), {"model.n_heads=0"}); }),
                   "default.json: model.n_heads: expected a positive integer, got 0"));
  }
}

TEST_CASE("the shipped configs parse", "[spec]") {
  for (const char* name : {"default.json", "llama-tiny.json", "gpt2-tiny.json"}) {
    INFO(name);
    const pt::ExperimentSpec s = pt::load_spec(config_path(name));
    CHECK(s.training.device == pt::DeviceKind::cpu);
    CHECK(s.data.source == pt::DataSource::synthetic);
    CHECK(pt::parse_spec(pt::to_json(s), "x") == s);
  }
  CHECK(pt::load_spec(config_path("gpt2-tiny.json")).model.preset == pt::Preset::gpt2);
  CHECK(pt::load_spec(config_path("llama-tiny.json")).model.preset == pt::Preset::llama);
}

TEST_CASE("the embedded default equals configs/default.json", "[spec]") {
  std::ifstream in(config_path("default.json"));
  const json file = json::parse(in);
  CHECK(file == pt::default_spec_json());
  CHECK(pt::load_spec(config_path("default.json")) == pt::parse_spec(pt::default_spec_json(), "default"));
}
