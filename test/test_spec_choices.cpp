// Spec choices (core/spec/choices.h): one name table per enum drives parsing, errors, to_json and the
// docs. to_json output is pinned byte for byte to what the string-typed spec wrote before the enums
// (run directories, checkpoints and docs depend on it).
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "core/spec/spec.h"
#include "test/catch.h"

using namespace pt;
using nlohmann::json;

namespace {

json default_with(const std::vector<std::string>& overrides) {
  json j = default_spec_json();
  for (const std::string& o : overrides) apply_override(j, o);
  return j;
}

std::string error_of(const json& j) {
  try {
    parse_spec(j, "spec.json");
  } catch (const SpecError& e) {
    return e.what();
  }
  FAIL("expected a pt::SpecError");
  return {};
}

std::string joined(const std::vector<std::string_view>& names) {
  std::string out;
  for (std::string_view n : names) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

// Every option changed from its default (and from the preset's).
const std::vector<std::string> kEveryOption = {
    "name=\"all-options\"", "model.preset=gpt2", "model.vocab_size=96", "model.seq_len=32", "model.d_model=48",
    "model.n_layers=3", "model.n_heads=6", "model.n_kv_heads=3", "model.ffn_hidden=100",
    "model.norm.type=rmsnorm", "model.norm.scale=zero_centered", "model.norm.eps=1e-6", "model.norm.unified=true",
    "model.norm.branch_scales=false", "model.norm.scale_placement=output", "model.norm.reparam=none", "model.norm.qk_norm=true",
    "model.activation=moa", "model.la.dictionary=[\"tanh\",\"identity\",\"gelu_tanh\"]", "model.la.granularity=channel",
    "model.la.base=identity", "model.la.gated=true", "model.moa.dictionary=[\"silu\",\"relu2\",\"gelu\"]", "model.moa.gate=sigmoid",
    "model.moa.base=relu2", "model.moa.gated=true", "model.moa.init=exact", "model.moa.init_logit=2.5",
    "model.attn_gate.position=g2", "model.attn_gate.granularity=elementwise", "model.attn_gate.bias=true",
    "model.position=none", "model.rope_theta=500000", "model.tied_embeddings=false", "model.bias=false", "model.init_std=0.01",
    "model.scaled_residual_init=false",
    "optim.lr=1e-4", "optim.beta1=0.8", "optim.beta2=0.99", "optim.eps=1e-6", "optim.weight_decay=0.05",
    "optim.decay.embeddings=true", "optim.decay.norm_scales=true", "optim.decay.biases=true",
    "optim.weight_decay_scales.input=false", "optim.weight_decay_scales.output=true", "optim.weight_decay_scales.direction=true",
    "optim.grad_clip=0.5",
    "schedule.type=wsd", "schedule.warmup_steps=5", "schedule.min_lr_ratio=0.05", "schedule.decay_fraction=0.3",
    "data.source=shards", "data.synthetic.seed=7", "data.synthetic.support=8", "data.synthetic.concentration=0.5",
    "data.train=a/*.bin", "data.val=b/*.bin",
    "training.device=cuda", "training.precision=bf16", "training.micro_batch=4", "training.grad_accum=3", "training.steps=0",
    "training.tokens=100000", "training.seed=9", "training.eval_every=7", "training.eval_batches=2", "training.recompute=full",
    "training.loss_chunk_rows=128", "checkpoint.every=50", "checkpoint.keep_last=5", "logging.every=3"};

// Captured from to_json of the string-typed spec (commit 53f3ddb), before the choices became enums.
constexpr const char* kDefaultResolved = R"({
  "checkpoint": {
    "every": 200,
    "keep_last": 2
  },
  "data": {
    "source": "synthetic",
    "synthetic": {
      "concentration": 1.0,
      "seed": 1234,
      "support": 4
    },
    "train": "",
    "val": ""
  },
  "logging": {
    "every": 20
  },
  "model": {
    "activation": "swiglu",
    "attn_gate": {
      "bias": false,
      "granularity": "headwise",
      "position": "none"
    },
    "bias": false,
    "d_model": 64,
    "ffn_hidden": 176,
    "init_std": 0.02,
    "la": {
      "base": "relu",
      "dictionary": [
        "relu",
        "gelu",
        "silu",
        "relu2"
      ],
      "gated": false,
      "granularity": "layer"
    },
    "moa": {
      "base": "relu",
      "dictionary": [
        "relu",
        "gelu",
        "silu",
        "relu2"
      ],
      "gate": "softmax",
      "gated": false,
      "init": "bias",
      "init_logit": 4.0
    },
    "n_heads": 4,
    "n_kv_heads": 2,
    "n_layers": 2,
    "norm": {
      "branch_scales": false,
      "eps": 1e-05,
      "qk_norm": false,
      "reparam": "none",
      "scale": "vector",
      "scale_placement": "input",
      "type": "rmsnorm",
      "unified": false
    },
    "position": "rope",
    "preset": "llama",
    "rope_theta": 10000.0,
    "scaled_residual_init": true,
    "seq_len": 64,
    "tied_embeddings": false,
    "vocab_size": 64
  },
  "name": "default",
  "optim": {
    "beta1": 0.9,
    "beta2": 0.95,
    "decay": {
      "biases": false,
      "embeddings": false,
      "norm_scales": false
    },
    "eps": 1e-08,
    "grad_clip": 1.0,
    "lr": 0.003,
    "name": "adamw",
    "weight_decay": 0.1,
    "weight_decay_scales": {
      "direction": false,
      "input": false,
      "output": false
    }
  },
  "schedule": {
    "decay_fraction": 0.2,
    "min_lr_ratio": 0.1,
    "type": "cosine",
    "warmup_steps": 30
  },
  "training": {
    "device": "cpu",
    "eval_batches": 4,
    "eval_every": 100,
    "grad_accum": 1,
    "loss_chunk_rows": 0,
    "micro_batch": 16,
    "precision": "fp32",
    "recompute": "none",
    "seed": 1,
    "steps": 600,
    "tokens": 0
  }
})";
constexpr const char* kEveryOptionResolved = R"({
  "checkpoint": {
    "every": 50,
    "keep_last": 5
  },
  "data": {
    "source": "shards",
    "synthetic": {
      "concentration": 0.5,
      "seed": 7,
      "support": 8
    },
    "train": "a/*.bin",
    "val": "b/*.bin"
  },
  "logging": {
    "every": 3
  },
  "model": {
    "activation": "moa",
    "attn_gate": {
      "bias": true,
      "granularity": "elementwise",
      "position": "g2"
    },
    "bias": false,
    "d_model": 48,
    "ffn_hidden": 100,
    "init_std": 0.01,
    "la": {
      "base": "identity",
      "dictionary": [
        "tanh",
        "identity",
        "gelu_tanh"
      ],
      "gated": true,
      "granularity": "channel"
    },
    "moa": {
      "base": "relu2",
      "dictionary": [
        "silu",
        "relu2",
        "gelu"
      ],
      "gate": "sigmoid",
      "gated": true,
      "init": "exact",
      "init_logit": 2.5
    },
    "n_heads": 6,
    "n_kv_heads": 3,
    "n_layers": 3,
    "norm": {
      "branch_scales": false,
      "eps": 1e-06,
      "qk_norm": true,
      "reparam": "none",
      "scale": "zero_centered",
      "scale_placement": "output",
      "type": "rmsnorm",
      "unified": true
    },
    "position": "none",
    "preset": "gpt2",
    "rope_theta": 500000.0,
    "scaled_residual_init": false,
    "seq_len": 32,
    "tied_embeddings": false,
    "vocab_size": 96
  },
  "name": "all-options",
  "optim": {
    "beta1": 0.8,
    "beta2": 0.99,
    "decay": {
      "biases": true,
      "embeddings": true,
      "norm_scales": true
    },
    "eps": 1e-06,
    "grad_clip": 0.5,
    "lr": 0.0001,
    "name": "adamw",
    "weight_decay": 0.05,
    "weight_decay_scales": {
      "direction": true,
      "input": false,
      "output": true
    }
  },
  "schedule": {
    "decay_fraction": 0.3,
    "min_lr_ratio": 0.05,
    "type": "wsd",
    "warmup_steps": 5
  },
  "training": {
    "device": "cuda",
    "eval_batches": 2,
    "eval_every": 7,
    "grad_accum": 3,
    "loss_chunk_rows": 128,
    "micro_batch": 4,
    "precision": "bf16",
    "recompute": "full",
    "seed": 9,
    "steps": 0,
    "tokens": 100000
  }
})";

}  // namespace

TEST_CASE("choice tables: names round-trip and JSON conversion uses the names", "[spec][choices]") {
  for (const ChoiceKey& key : choice_keys()) {
    INFO(key.path);
    CHECK_FALSE(key.names.empty());
  }
  CHECK(to_string(NormType::layernorm) == "layernorm");
  CHECK(to_string(ActivationFn::gelu_tanh) == "gelu_tanh");
  CHECK(choice_from_string<ScheduleType>("wsd") == ScheduleType::wsd);
  CHECK_FALSE(choice_from_string<ScheduleType>("WSD").has_value());
  CHECK(choice_names<GatePosition>() == std::vector<std::string_view>{"none", "g1", "g2", "g5"});
  for (std::string_view n : choice_names<Activation>()) CHECK(to_string(*choice_from_string<Activation>(n)) == n);
  // json(value) writes the name, not the enum's integer; get<E>() reads only names.
  CHECK(json(Precision::bf16).dump() == "\"bf16\"");
  CHECK(json(std::vector<ActivationFn>{ActivationFn::tanh, ActivationFn::identity}).dump() == "[\"tanh\",\"identity\"]");
  CHECK(json("g5").get<GatePosition>() == GatePosition::g5);
  CHECK_THROWS_WITH(json(1).get<GatePosition>(), pt::test::contains("is not one of none, g1, g2, g5"));
  std::ostringstream out;
  out << MoaInit::exact;
  CHECK(out.str() == "exact");
}

TEST_CASE("an unknown value of every choice is an error naming the key and listing the names", "[spec][choices]") {
  for (const ChoiceKey& key : choice_keys()) {
    INFO(key.path);
    const bool list = key.path.ends_with(".dictionary");
    const std::string message = error_of(default_with({key.path + (list ? "=[\"bogus\"]" : "=bogus")}));
    CHECK(message.starts_with("spec.json: " + key.path + (list ? "[0]" : "") + ": \"bogus\" is not one of " + joined(key.names)));
    // a wrong JSON type names the key and the names too
    const std::string typed = error_of(default_with({key.path + (list ? "=[3]" : "=3")}));
    CHECK(typed.starts_with("spec.json: " + key.path + (list ? "[0]" : "") + ": expected one of " + joined(key.names) +
                            ", got 3 (number)"));
  }
  // representative ones spelled out, with the close-name suggestion
  CHECK(error_of(default_with({"schedule.type=cosin"})) ==
        "spec.json: schedule.type: \"cosin\" is not one of constant, cosine, linear, wsd (did you mean \"cosine\"?)");
  CHECK(error_of(default_with({"model.norm.type=rmsnrom"})) ==
        "spec.json: model.norm.type: \"rmsnrom\" is not one of rmsnorm, layernorm (did you mean \"rmsnorm\"?)");
  CHECK(error_of(default_with({"training.precision=fp33"})) ==
        "spec.json: training.precision: \"fp33\" is not one of fp32, bf16 (did you mean \"fp32\"?)");
  CHECK(error_of(default_with({"data.source=shard"})) ==
        "spec.json: data.source: \"shard\" is not one of synthetic, shards (did you mean \"shards\"?)");
  CHECK(error_of(default_with({"model.moa.dictionary=[\"relu\",\"gleu\"]"})) ==
        "spec.json: model.moa.dictionary[1]: \"gleu\" is not one of relu, gelu, gelu_tanh, silu, relu2, tanh, identity "
        "(did you mean \"gelu\"?)");
  CHECK(error_of(default_with({"model.la.base=gleu"})) ==
        "spec.json: model.la.base: \"gleu\" is not in the dictionary (relu, gelu, silu, relu2)");
}

TEST_CASE("to_json output is unchanged from the string-typed spec", "[spec][choices]") {
  const ExperimentSpec d = parse_spec(default_spec_json(), "default");
  CHECK(to_json(d).dump(2) == kDefaultResolved);
  const ExperimentSpec all = parse_spec(default_with(kEveryOption), "all");
  CHECK(to_json(all).dump(2) == kEveryOptionResolved);
  CHECK(parse_spec(to_json(all), "again") == all);
  CHECK(parse_spec(json::parse(kEveryOptionResolved), "literal") == all);
  // every choice really is changed from the default in that spec
  CHECK(all.model.preset != d.model.preset);
  CHECK(all.model.norm.scale != d.model.norm.scale);
  CHECK(all.model.activation != d.model.activation);
  CHECK(all.model.la.dictionary != d.model.la.dictionary);
  CHECK(all.model.moa.base != d.model.moa.base);
  CHECK(all.model.attn_gate.position != d.model.attn_gate.position);
  CHECK(all.schedule.type != d.schedule.type);
  CHECK(all.data.source != d.data.source);
  CHECK(all.training.recompute != d.training.recompute);
}

TEST_CASE("docs/spec.md lists exactly each choice table's names", "[spec][choices][docs]") {
  std::ifstream in(std::string(PRETRAIN_SOURCE_DIR) + "/docs/spec.md");
  REQUIRE(in);
  // | `path` | type | default | allowed | description |
  std::map<std::string, std::string> allowed;
  const std::regex row(R"(^\| `([a-z_.]+)` \| [^|]* \| [^|]* \| ([^|]*) \|)");
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_search(line, m, row)) allowed[m[1]] = m[2];
  }
  const std::regex word("`([a-z0-9_.]+)`");
  for (const ChoiceKey& key : choice_keys()) {
    INFO(key.path);
    REQUIRE(allowed.count(key.path) == 1);
    std::string cell = allowed[key.path];
    std::smatch as;
    if (std::regex_match(cell, as, std::regex("as `([a-z_.]+)`"))) cell = allowed[as[1]];  // "as `model.la.dictionary`"
    std::vector<std::string_view> listed;
    std::vector<std::string> storage;
    for (auto it = std::sregex_iterator(cell.begin(), cell.end(), word); it != std::sregex_iterator(); ++it)
      storage.push_back((*it)[1]);
    for (const std::string& s : storage) listed.push_back(s);
    CHECK(listed == key.names);
  }
}
