// Settings that are valid but have no effect in the chosen configuration are reported.
#include "core/spec/spec.h"
#include "test/catch.h"

using namespace pt;

namespace {
std::vector<std::string> inert(const std::vector<std::string>& overrides) {
  nlohmann::json j = default_spec_json();
  for (const auto& o : overrides) apply_override(j, o);
  return inert_settings(parse_spec(j, "test"));
}
bool mentions(const std::vector<std::string>& messages, const std::string& key) {
  for (const auto& m : messages)
    if (m.find(key) != std::string::npos) return true;
  return false;
}
}  // namespace

TEST_CASE("inert settings: keys that only apply to other choices are reported", "[spec]") {
  CHECK(inert({}).empty());
  CHECK(inert({"model.activation=\"la\"", "model.la.granularity=\"channel\""}).empty());
  CHECK(mentions(inert({"model.la.granularity=\"channel\""}), "model.la"));
  CHECK(mentions(inert({"model.moa.gate=\"sigmoid\""}), "model.moa"));
  CHECK(mentions(inert({"model.attn_gate.granularity=\"elementwise\""}), "model.attn_gate"));
  CHECK(inert({"model.attn_gate.position=\"g1\"", "model.attn_gate.granularity=\"elementwise\""}).empty());
  CHECK(mentions(inert({"schedule.decay_fraction=0.3"}), "schedule.decay_fraction"));
  CHECK(mentions(inert({"schedule.type=\"constant\"", "schedule.min_lr_ratio=0.5"}), "schedule.min_lr_ratio"));
  CHECK(mentions(inert({"model.preset=\"gpt2\"", "model.rope_theta=500000"}), "model.rope_theta"));
  // The resolved spec of a run (every key written out at its value) reports nothing new.
  nlohmann::json j = default_spec_json();
  CHECK(inert_settings(parse_spec(to_json(parse_spec(j, "a")), "b")).empty());
}
