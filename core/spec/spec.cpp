// The experiment spec: strict parsing with presets, cross-field validation, `--set` overrides and
// serialisation of the resolved spec. Every key is documented in docs/spec.md.
#include "core/spec/spec.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <span>
#include <string_view>

namespace pt {
namespace {

using json = nlohmann::json;
using Choices = std::span<const std::string_view>;

constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();
constexpr int64_t kMaxDim = int64_t{1} << 24;  // bound on sizes, so derived sizes cannot overflow
constexpr int64_t kMaxVocab = std::numeric_limits<int32_t>::max();  // token ids are int32

// ------------------------------------------------------------------ messages

[[noreturn]] void fail(const std::string& source, const std::string& path, const std::string& message) {
  throw SpecError(source + ": " + (path.empty() ? "" : path + ": ") + message);
}

// A JSON value as it appears in a message, shortened if long.
std::string show(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

std::string quote(std::string_view s) { return show(json(std::string(s))); }

std::string join(Choices words) {
  std::string out;
  for (std::string_view w : words) out += (out.empty() ? "" : ", ") + std::string(w);
  return out;
}

// Edits (insert, delete, substitute, swap adjacent characters) that turn `a` into `b`.
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t k = 0; k <= b.size(); ++k) d[0][k] = k;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t k = 1; k <= b.size(); ++k) {
      d[i][k] = std::min({d[i - 1][k] + 1, d[i][k - 1] + 1, d[i - 1][k - 1] + (a[i - 1] != b[k - 1] ? 1 : 0)});
      if (i > 1 && k > 1 && a[i - 1] == b[k - 2] && a[i - 2] == b[k - 1]) d[i][k] = std::min(d[i][k], d[i - 2][k - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// " (did you mean "x"?)" when one of `candidates` is close enough to `word` to be a likely typo.
std::string suggestion(std::string_view word, Choices candidates) {
  const size_t tolerance = std::max<size_t>(1, word.size() / 3);
  std::optional<std::string_view> best;
  size_t best_distance = tolerance + 1;
  for (std::string_view c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_distance) best = c, best_distance = d;
  }
  return best ? " (did you mean " + quote(*best) + "?)" : "";
}

// ------------------------------------------------------------------ value conversion

// The value of an integer, or of a float with an exact integer value (1e6), if it fits in int64.
std::optional<int64_t> as_int64(const json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(kMaxInt)) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::trunc(d) && d >= -0x1p63 && d < 0x1p63) return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

std::optional<uint64_t> as_uint64(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < 0) return std::nullopt;
    return static_cast<uint64_t>(i);
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::trunc(d) && d >= 0 && d < 0x1p64) return static_cast<uint64_t>(d);
  }
  return std::nullopt;
}

// An interval of allowed real values.
struct Interval {
  double lo;
  double hi;  // infinity = unbounded
  bool lo_open;
  bool hi_open;

  bool contains(double v) const {
    return std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  }
  std::string describe() const {
    std::ostringstream out;
    if (std::isinf(hi)) {
      out << "a number " << (lo_open ? "> " : ">= ") << lo;
    } else {
      out << "a number in " << (lo_open ? "(" : "[") << lo << ", " << hi << (hi_open ? ")" : "]");
    }
    return out.str();
  }
};

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr Interval kPositive{0, kInf, true, false};
constexpr Interval kNonNegative{0, kInf, false, false};
constexpr Interval kUnitClosed{0, 1, false, false};
constexpr Interval kUnitHalfOpen{0, 1, false, true};

std::string describe_int_min(int64_t min) {
  if (min == 1) return "a positive integer";
  if (min == 0) return "a non-negative integer";
  return "an integer >= " + std::to_string(min);
}

// ------------------------------------------------------------------ object reader

// Reads the keys of one JSON object into typed fields, leaving a field untouched when its key is absent.
// Every key asked for is remembered, so reject_unknown() can report any other key, with a suggestion.
class ObjectReader {
 public:
  // `object` may be null: the key was absent, which reads like an empty object.
  ObjectReader(const json* object, std::string path, const std::string& source)
      : object_(object), path_(std::move(path)), source_(source) {
    if (object_ && !object_->is_object()) {
      fail(source_, path_, "expected " + std::string(path_.empty() ? "a JSON object" : "an object") + ", got " +
                               show(*object_) + " (" + object_->type_name() + ")");
    }
  }

  ObjectReader child(std::string_view key) { return ObjectReader(find(key), path_of(key), source_); }

  void read(std::string_view key, std::string& out) {
    if (const json* v = find(key)) {
      if (!v->is_string()) wrong(key, *v, "a string");
      out = v->get<std::string>();
    }
  }

  // A string naming a value of E (its table: core/spec/choices.h).
  template <Choice E>
  void read_choice(std::string_view key, E& out) {
    if (const json* v = find(key)) out = choice_of<E>(*v, path_of(key));
  }

  // A non-empty array of distinct strings, each naming a value of E.
  template <Choice E>
  void read_choice_list(std::string_view key, std::vector<E>& out) {
    if (const json* v = find(key)) {
      if (!v->is_array() || v->empty()) wrong(key, *v, "a non-empty array of " + join(choice_names<E>()));
      std::vector<E> items;
      for (size_t i = 0; i < v->size(); ++i) {
        const std::string at = path_of(key) + "[" + std::to_string(i) + "]";
        const E item = choice_of<E>((*v)[i], at);
        if (std::find(items.begin(), items.end(), item) != items.end()) fail(source_, at, show((*v)[i]) + " appears twice");
        items.push_back(item);
      }
      out = items;
    }
  }

  // Fails naming `key` under this object.
  [[noreturn]] void fail_at(std::string_view key, const std::string& message) const { fail(source_, path_of(key), message); }

  void read(std::string_view key, bool& out) {
    if (const json* v = find(key)) {
      if (!v->is_boolean()) wrong(key, *v, "a boolean (true or false)");
      out = v->get<bool>();
    }
  }

  void read(std::string_view key, int64_t& out, int64_t min, int64_t max = kMaxInt) {
    if (const json* v = find(key)) {
      const std::optional<int64_t> i = as_int64(*v);
      if (!i || *i < min) wrong(key, *v, describe_int_min(min), v->is_number());
      if (*i > max) wrong(key, *v, describe_int_min(min) + " <= " + std::to_string(max), true);
      out = *i;
    }
  }

  void read(std::string_view key, uint64_t& out) {
    if (const json* v = find(key)) {
      const std::optional<uint64_t> u = as_uint64(*v);
      if (!u) wrong(key, *v, "a non-negative integer", v->is_number());
      out = *u;
    }
  }

  void read(std::string_view key, double& out, const Interval& allowed) {
    if (const json* v = find(key)) {
      if (!v->is_number() || !allowed.contains(v->get<double>())) wrong(key, *v, allowed.describe(), v->is_number());
      out = v->get<double>();
    }
  }

  // Call after reading every key: any key not asked for is an error.
  void reject_unknown() const {
    if (!object_) return;
    for (const auto& [key, value] : object_->items()) {
      if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
      const std::string hint = suggestion(key, known_);
      fail(source_, path_of(key), "unknown key" + (hint.empty() ? " (known keys: " + join(known_) + ")" : hint));
    }
  }

 private:
  const json* find(std::string_view key) {
    known_.push_back(key);
    if (!object_) return nullptr;
    const auto it = object_->find(std::string(key));
    return it == object_->end() ? nullptr : &*it;
  }

  // The value of E that `v` (at `at`) names; an error listing the names (and a close one) otherwise.
  template <Choice E>
  E choice_of(const json& v, const std::string& at) const {
    const std::vector<std::string_view> names = choice_names<E>();
    if (!v.is_string()) fail(source_, at, "expected one of " + join(names) + ", got " + show(v) + " (" + v.type_name() + ")");
    const std::string s = v.get<std::string>();
    const std::optional<E> value = choice_from_string<E>(s);
    if (!value) fail(source_, at, show(v) + " is not one of " + join(names) + suggestion(s, names));
    return *value;
  }

  std::string path_of(std::string_view key) const { return path_.empty() ? std::string(key) : path_ + "." + std::string(key); }

  // The JSON type is named unless `type_ok` (a number of the right kind, but out of range).
  [[noreturn]] void wrong(std::string_view key, const json& v, const std::string& expected, bool type_ok = false) const {
    fail(source_, path_of(key),
         "expected " + expected + ", got " + show(v) + (type_ok ? "" : " (" + std::string(v.type_name()) + ")"));
  }

  const json* object_;
  std::string path_;
  const std::string& source_;
  std::vector<std::string_view> known_;
};

// ------------------------------------------------------------------ sections

// A model with the preset's defaults for every preset-dependent key.
ModelSpec preset_model(Preset preset) {
  const bool gpt2 = preset == Preset::gpt2;
  ModelSpec m;
  m.preset = preset;
  m.norm.type = gpt2 ? NormType::layernorm : NormType::rmsnorm;
  m.norm.scale = NormScale::vector;
  m.activation = gpt2 ? Activation::gelu_tanh : Activation::swiglu;
  m.position = gpt2 ? PositionEncoding::learned : PositionEncoding::rope;
  m.bias = gpt2;
  m.tied_embeddings = gpt2;
  return m;
}

// ffn_hidden when not given: gpt2 4 d; llama 8/3 d rounded up to a multiple of 8 (as in the Llama code).
int64_t preset_ffn_hidden(const ModelSpec& m) {
  if (m.preset == Preset::gpt2) return 4 * m.d_model;
  constexpr int64_t multiple_of = 8;
  const int64_t hidden = 8 * m.d_model / 3;
  return multiple_of * ((hidden + multiple_of - 1) / multiple_of);
}

ModelSpec parse_model(ObjectReader r) {
  Preset preset = Preset::llama;
  r.read_choice("preset", preset);
  ModelSpec m = preset_model(preset);
  r.read("vocab_size", m.vocab_size, 1, kMaxVocab);
  r.read("seq_len", m.seq_len, 1, kMaxDim);
  r.read("d_model", m.d_model, 1, kMaxDim);
  r.read("n_layers", m.n_layers, 1, kMaxDim);
  r.read("n_heads", m.n_heads, 1, kMaxDim);
  r.read("n_kv_heads", m.n_kv_heads, 0, kMaxDim);
  r.read("ffn_hidden", m.ffn_hidden, 0, kMaxDim);
  ObjectReader norm = r.child("norm");
  norm.read_choice("type", m.norm.type);
  norm.read_choice("scale", m.norm.scale);
  norm.read("eps", m.norm.eps, kPositive);
  norm.read("unified", m.norm.unified);
  if (m.norm.unified) {  // defaults of the unified strategy; explicit keys below still win
    m.norm.branch_scales = true;
    m.norm.scale_placement = ScalePlacement::both;
    m.norm.reparam = ScaleReparam::magnitude_direction;
  }
  norm.read("branch_scales", m.norm.branch_scales);
  norm.read_choice("scale_placement", m.norm.scale_placement);
  norm.read_choice("reparam", m.norm.reparam);
  norm.read("qk_norm", m.norm.qk_norm);
  norm.reject_unknown();
  r.read_choice("activation", m.activation);
  // The base entry ("" or absent: the dictionary's first) must be in the dictionary.
  const auto resolve_base = [](ObjectReader& sub, const std::string& name, const std::vector<ActivationFn>& dictionary) {
    if (name.empty()) return dictionary.front();
    const std::optional<ActivationFn> base = choice_from_string<ActivationFn>(name);
    if (!base || std::find(dictionary.begin(), dictionary.end(), *base) == dictionary.end()) {
      std::string list;
      for (ActivationFn d : dictionary) list += (list.empty() ? "" : ", ") + std::string(to_string(d));
      sub.fail_at("base", quote(name) + " is not in the dictionary (" + list + ")");
    }
    return *base;
  };
  std::string la_base, moa_base;
  ObjectReader la = r.child("la");
  la.read_choice_list("dictionary", m.la.dictionary);
  la.read_choice("granularity", m.la.granularity);
  la.read("base", la_base);
  la.read("gated", m.la.gated);
  la.reject_unknown();
  m.la.base = resolve_base(la, la_base, m.la.dictionary);
  ObjectReader moa = r.child("moa");
  moa.read_choice_list("dictionary", m.moa.dictionary);
  moa.read_choice("gate", m.moa.gate);
  moa.read("base", moa_base);
  moa.read("gated", m.moa.gated);
  moa.read_choice("init", m.moa.init);
  moa.read("init_logit", m.moa.init_logit, kNonNegative);
  moa.reject_unknown();
  m.moa.base = resolve_base(moa, moa_base, m.moa.dictionary);
  ObjectReader gate = r.child("attn_gate");
  gate.read_choice("position", m.attn_gate.position);
  gate.read_choice("granularity", m.attn_gate.granularity);
  gate.read("bias", m.attn_gate.bias);
  gate.reject_unknown();
  r.read_choice("position", m.position);
  r.read("rope_theta", m.rope_theta, kPositive);
  r.read("tied_embeddings", m.tied_embeddings);
  r.read("bias", m.bias);
  r.read("init_std", m.init_std, kPositive);
  r.read("scaled_residual_init", m.scaled_residual_init);
  r.reject_unknown();

  if (m.n_kv_heads == 0) m.n_kv_heads = m.n_heads;
  if (m.ffn_hidden == 0) m.ffn_hidden = preset_ffn_hidden(m);
  return m;
}

OptimSpec parse_optim(ObjectReader r, const ModelSpec& m) {
  OptimSpec o;
  o.weight_decay_scales.input = m.norm.unified;  // the unified strategy decays input-role scales unless told otherwise
  r.read_choice("name", o.name);
  r.read("lr", o.lr, kPositive);
  r.read("beta1", o.beta1, kUnitHalfOpen);
  r.read("beta2", o.beta2, kUnitHalfOpen);
  r.read("eps", o.eps, kPositive);
  r.read("weight_decay", o.weight_decay, kNonNegative);
  ObjectReader decay = r.child("decay");
  decay.read("embeddings", o.decay.embeddings);
  decay.read("norm_scales", o.decay.norm_scales);
  decay.read("biases", o.decay.biases);
  decay.reject_unknown();
  ObjectReader scales = r.child("weight_decay_scales");
  scales.read("input", o.weight_decay_scales.input);
  scales.read("output", o.weight_decay_scales.output);
  scales.read("direction", o.weight_decay_scales.direction);
  scales.reject_unknown();
  r.read("grad_clip", o.grad_clip, kNonNegative);
  r.reject_unknown();
  return o;
}

ScheduleSpec parse_schedule(ObjectReader r) {
  ScheduleSpec s;
  r.read_choice("type", s.type);
  r.read("warmup_steps", s.warmup_steps, 0);
  r.read("min_lr_ratio", s.min_lr_ratio, kUnitClosed);
  r.read("decay_fraction", s.decay_fraction, kUnitClosed);
  r.reject_unknown();
  return s;
}

DataSpec parse_data(ObjectReader r) {
  DataSpec d;
  r.read_choice("source", d.source);
  ObjectReader synthetic = r.child("synthetic");
  synthetic.read("seed", d.synthetic.seed);
  synthetic.read("support", d.synthetic.support, 1, kMaxVocab);
  synthetic.read("concentration", d.synthetic.concentration, kPositive);
  synthetic.reject_unknown();
  r.read("train", d.train);
  r.read("val", d.val);
  r.reject_unknown();
  return d;
}

TrainingSpec parse_training(ObjectReader r) {
  TrainingSpec t;
  r.read_choice("device", t.device);
  r.read_choice("precision", t.precision);
  r.read("micro_batch", t.micro_batch, 1, kMaxDim);
  r.read("grad_accum", t.grad_accum, 1, kMaxDim);
  r.read("steps", t.steps, 0);
  r.read("tokens", t.tokens, 0);
  r.read("seed", t.seed);
  r.read("eval_every", t.eval_every, 0);
  r.read("eval_batches", t.eval_batches, 1);
  r.read_choice("recompute", t.recompute);
  r.read("loss_chunk_rows", t.loss_chunk_rows, 0);
  r.reject_unknown();
  return t;
}

CheckpointSpec parse_checkpoint(ObjectReader r) {
  CheckpointSpec c;
  r.read("every", c.every, 0);
  r.read("keep_last", c.keep_last, 1);
  r.reject_unknown();
  return c;
}

LoggingSpec parse_logging(ObjectReader r) {
  LoggingSpec l;
  r.read("every", l.every, 1);
  r.reject_unknown();
  return l;
}

// ------------------------------------------------------------------ cross-field rules

bool valid_name(const std::string& name) {
  const auto plain = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); };
  return !name.empty() && plain(name.front()) &&
         std::all_of(name.begin(), name.end(), [&](char c) { return plain(c) || c == '.' || c == '_' || c == '-'; });
}

void validate(const ExperimentSpec& s, const std::string& source) {
  const auto fail_rule = [&](const std::string& message) { fail(source, "", message); };
  const ModelSpec& m = s.model;
  const TrainingSpec& t = s.training;

  if (!valid_name(s.name)) {
    fail(source, "name",
         quote(s.name) + " is not a valid run name (letters, digits, '.', '_' and '-', starting with a letter or digit)");
  }

  if (m.d_model % m.n_heads != 0) {
    fail_rule("model.d_model (" + std::to_string(m.d_model) + ") must be divisible by model.n_heads (" +
              std::to_string(m.n_heads) + ")");
  }
  if (m.n_heads % m.n_kv_heads != 0) {
    fail_rule("model.n_heads (" + std::to_string(m.n_heads) + ") must be divisible by model.n_kv_heads (" +
              std::to_string(m.n_kv_heads) + ")");
  }
  if (m.position == PositionEncoding::rope && m.head_dim() % 2 != 0) {
    fail_rule("model.position \"rope\" needs an even head dimension, but model.d_model / model.n_heads = " +
              std::to_string(m.d_model) + " / " + std::to_string(m.n_heads) + " = " + std::to_string(m.head_dim()));
  }

  if (m.norm.reparam == ScaleReparam::magnitude_direction && m.norm.scale != NormScale::vector) {
    fail_rule("model.norm.reparam \"magnitude_direction\" requires model.norm.scale \"vector\" (got " +
              quote(to_string(m.norm.scale)) + ")" + (m.norm.unified ? " (model.norm.unified sets the reparam)" : ""));
  }
  if (m.norm.scale == NormScale::none && (m.norm.branch_scales || m.norm.scale_placement != ScalePlacement::input)) {
    fail_rule("model.norm.scale \"none\" has no scale vectors to place: model.norm.branch_scales must be false and "
              "model.norm.scale_placement \"input\" (got " + std::string(m.norm.branch_scales ? "true" : "false") + ", " +
              quote(to_string(m.norm.scale_placement)) + ")" + (m.norm.unified ? " (model.norm.unified sets both)" : ""));
  }

  if (t.precision == Precision::bf16 && t.device != DeviceKind::cuda) {
    fail_rule("training.precision \"bf16\" requires training.device \"cuda\" (got " + quote(to_string(t.device)) + ")");
  }
  int64_t tokens_per_step = 0;
  if (__builtin_mul_overflow(t.micro_batch * t.grad_accum, m.seq_len, &tokens_per_step)) {
    fail_rule("training.micro_batch * training.grad_accum * model.seq_len is too large");
  }
  if (t.steps > 0 && t.tokens > 0) {
    fail_rule("set only one of training.steps (" + std::to_string(t.steps) + ") and training.tokens (" +
              std::to_string(t.tokens) + "); the other must be 0");
  }
  if (t.steps == 0 && t.tokens == 0) {
    fail_rule("training.steps and training.tokens are both 0: set one of them to the length of the run");
  }

  const int64_t total = s.total_steps();
  int64_t total_tokens = 0;
  if (__builtin_mul_overflow(total, tokens_per_step, &total_tokens)) {
    fail_rule("training.steps (" + std::to_string(total) + ") * tokens per step (" + std::to_string(tokens_per_step) +
              ") does not fit in a 64-bit integer");
  }
  const ScheduleSpec& sched = s.schedule;
  if (sched.warmup_steps >= total) {
    fail_rule("schedule.warmup_steps (" + std::to_string(sched.warmup_steps) + ") must be less than the total steps (" +
              std::to_string(total) + ")");
  }
  if (sched.type == ScheduleType::wsd && static_cast<double>(sched.warmup_steps) + sched.decay_fraction * static_cast<double>(total) >
                                 static_cast<double>(total)) {
    fail_rule("schedule \"wsd\": schedule.warmup_steps (" + std::to_string(sched.warmup_steps) +
              ") plus schedule.decay_fraction * total steps (" + show(json(sched.decay_fraction)) + " * " +
              std::to_string(total) + ") exceeds the total steps");
  }

  if (s.data.source == DataSource::shards && s.data.train.empty()) {
    fail_rule("data.source \"shards\" requires data.train (a glob of training shard files)");
  }
  if (s.data.source == DataSource::synthetic && s.data.synthetic.support > m.vocab_size) {
    fail_rule("data.synthetic.support (" + std::to_string(s.data.synthetic.support) +
              ") must not exceed model.vocab_size (" + std::to_string(m.vocab_size) + ")");
  }
}

// ------------------------------------------------------------------ files

std::string read_file(const std::string& path) {
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored)) fail(path, "", "is a directory, not a spec file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "", std::string("cannot open spec file (") + std::strerror(errno) + ")");
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) fail(path, "", "cannot read spec file");
  return content.str();
}

// Parse JSON text, rejecting duplicate keys (which JSON parsers otherwise resolve silently).
json parse_json_text(const std::string& text, const std::string& source) {
  struct Frame {
    bool is_object;
    std::string path;
    std::set<std::string> keys;
  };
  std::vector<Frame> frames;
  std::string last_key;
  const auto nested_path = [&]() -> std::string {
    if (frames.empty()) return "";
    const Frame& parent = frames.back();
    if (!parent.is_object) return parent.path + "[]";
    return parent.path.empty() ? last_key : parent.path + "." + last_key;
  };
  const json::parser_callback_t check_keys = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        frames.push_back({event == json::parse_event_t::object_start, nested_path(), {}});
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        frames.pop_back();
        break;
      case json::parse_event_t::key:
        last_key = parsed.get<std::string>();
        if (!frames.back().keys.insert(last_key).second) fail(source, nested_path(), "duplicate key");
        break;
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return json::parse(text, check_keys);
  } catch (const json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 3, column 5: ..."
    std::string what = e.what();
    if (const size_t bracket = what.find("] "); what.starts_with("[json.exception") && bracket != std::string::npos) {
      what = what.substr(bracket + 2);
    }
    fail(source, "", "invalid JSON: " + what);
  }
}

constexpr const char* kDefaultSpec = R"({
  "name": "default",
  "model": {
    "preset": "llama",
    "vocab_size": 64,
    "seq_len": 64,
    "d_model": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2
  },
  "optim": {
    "lr": 3e-3,
    "weight_decay": 0.1,
    "grad_clip": 1.0
  },
  "schedule": {
    "type": "cosine",
    "warmup_steps": 30,
    "min_lr_ratio": 0.1
  },
  "data": {
    "source": "synthetic",
    "synthetic": {
      "seed": 1234,
      "support": 4,
      "concentration": 1.0
    }
  },
  "training": {
    "device": "cpu",
    "precision": "fp32",
    "micro_batch": 16,
    "grad_accum": 1,
    "steps": 600,
    "seed": 1,
    "eval_every": 100,
    "eval_batches": 4
  },
  "checkpoint": {
    "every": 200,
    "keep_last": 2
  },
  "logging": {
    "every": 20
  }
}
)";

}  // namespace

// ------------------------------------------------------------------ public API

int64_t ExperimentSpec::total_steps() const {
  if (training.steps > 0) return training.steps;
  const int64_t per_step = training.tokens_per_step(model.seq_len);
  if (per_step <= 0) return 0;
  return training.tokens / per_step + (training.tokens % per_step != 0 ? 1 : 0);
}

ExperimentSpec parse_spec(const nlohmann::json& j, const std::string& source) {
  ObjectReader root(&j, "", source);
  ExperimentSpec s;
  root.read("name", s.name);
  s.model = parse_model(root.child("model"));
  s.optim = parse_optim(root.child("optim"), s.model);
  s.schedule = parse_schedule(root.child("schedule"));
  s.data = parse_data(root.child("data"));
  s.training = parse_training(root.child("training"));
  s.checkpoint = parse_checkpoint(root.child("checkpoint"));
  s.logging = parse_logging(root.child("logging"));
  root.reject_unknown();
  validate(s, source);
  return s;
}

std::vector<std::string> inert_settings(const ExperimentSpec& s) {
  std::vector<std::string> out;
  const ExperimentSpec defaults;  // its base entries are the default dictionaries' first, as parse_spec resolves them
  const ModelSpec& m = s.model;
  if (m.activation != Activation::la && !(m.la == defaults.model.la))
    out.push_back("model.la is set but model.activation is " + quote(to_string(m.activation)) + ", not \"la\": it has no effect");
  if (m.activation != Activation::moa && !(m.moa == defaults.model.moa))
    out.push_back("model.moa is set but model.activation is " + quote(to_string(m.activation)) + ", not \"moa\": it has no effect");
  if (m.attn_gate.position == GatePosition::none && !(m.attn_gate == defaults.model.attn_gate))
    out.push_back("model.attn_gate.granularity/bias are set but model.attn_gate.position is \"none\": no gate is built");
  if (m.position != PositionEncoding::rope && m.rope_theta != defaults.model.rope_theta)
    out.push_back("model.rope_theta is set but model.position is " + quote(to_string(m.position)) + ": it has no effect");
  if (s.schedule.type != ScheduleType::wsd && s.schedule.decay_fraction != defaults.schedule.decay_fraction)
    out.push_back("schedule.decay_fraction is set but schedule.type is " + quote(to_string(s.schedule.type)) +
                  ", not \"wsd\": it has no effect");
  if (s.schedule.type == ScheduleType::constant && s.schedule.min_lr_ratio != defaults.schedule.min_lr_ratio)
    out.push_back("schedule.min_lr_ratio is set but schedule.type is \"constant\": it has no effect");
  return out;
}

ExperimentSpec load_spec(const std::string& path, const std::vector<std::string>& overrides) {
  json j = parse_json_text(read_file(path), path);
  for (const std::string& assignment : overrides) apply_override(j, assignment);
  return parse_spec(j, path);
}

void apply_override(nlohmann::json& j, const std::string& assignment) {
  const auto malformed = [&](const std::string& why) { throw SpecError("--set " + quote(assignment) + ": " + why); };
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos) malformed("expected path=value, e.g. model.d_model=128");
  const std::string path = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);

  std::vector<std::string> keys;
  for (size_t begin = 0;;) {
    const size_t dot = path.find('.', begin);
    keys.push_back(path.substr(begin, dot == std::string::npos ? std::string::npos : dot - begin));
    if (keys.back().empty()) malformed("empty key in path " + quote(path));
    if (dot == std::string::npos) break;
    begin = dot + 1;
  }

  // The value is JSON if it parses as JSON (3, true, "x", [1,2]), else the raw text (cuda, data/*.bin).
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;

  if (j.is_null()) j = json::object();
  json* node = &j;
  std::string walked;
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    if (!node->is_object()) malformed((walked.empty() ? "the spec" : walked) + " is " + node->type_name() + ", not an object");
    walked += (walked.empty() ? "" : ".") + keys[i];
    node = &(*node)[keys[i]];
    if (node->is_null()) *node = json::object();
  }
  if (!node->is_object()) malformed((walked.empty() ? "the spec" : walked) + " is " + node->type_name() + ", not an object");
  (*node)[keys.back()] = std::move(value);
}

// Choices convert to their names through the to_json of core/spec/choices.h.
nlohmann::json to_json(const ExperimentSpec& s) {
  const ModelSpec& m = s.model;
  const OptimSpec& o = s.optim;
  const DataSpec& d = s.data;
  const TrainingSpec& t = s.training;
  json j;
  j["name"] = s.name;
  j["model"] = {
      {"preset", m.preset},
      {"vocab_size", m.vocab_size},
      {"seq_len", m.seq_len},
      {"d_model", m.d_model},
      {"n_layers", m.n_layers},
      {"n_heads", m.n_heads},
      {"n_kv_heads", m.n_kv_heads},
      {"ffn_hidden", m.ffn_hidden},
      {"norm",
       {{"type", m.norm.type},
        {"scale", m.norm.scale},
        {"eps", m.norm.eps},
        {"unified", m.norm.unified},
        {"branch_scales", m.norm.branch_scales},
        {"scale_placement", m.norm.scale_placement},
        {"reparam", m.norm.reparam},
        {"qk_norm", m.norm.qk_norm}}},
      {"activation", m.activation},
      {"la",
       {{"dictionary", m.la.dictionary}, {"granularity", m.la.granularity}, {"base", m.la.base}, {"gated", m.la.gated}}},
      {"moa",
       {{"dictionary", m.moa.dictionary},
        {"gate", m.moa.gate},
        {"base", m.moa.base},
        {"gated", m.moa.gated},
        {"init", m.moa.init},
        {"init_logit", m.moa.init_logit}}},
      {"attn_gate",
       {{"position", m.attn_gate.position}, {"granularity", m.attn_gate.granularity}, {"bias", m.attn_gate.bias}}},
      {"position", m.position},
      {"rope_theta", m.rope_theta},
      {"tied_embeddings", m.tied_embeddings},
      {"bias", m.bias},
      {"init_std", m.init_std},
      {"scaled_residual_init", m.scaled_residual_init},
  };
  j["optim"] = {
      {"name", o.name},
      {"lr", o.lr},
      {"beta1", o.beta1},
      {"beta2", o.beta2},
      {"eps", o.eps},
      {"weight_decay", o.weight_decay},
      {"decay",
       {{"embeddings", o.decay.embeddings},
        {"norm_scales", o.decay.norm_scales},
        {"biases", o.decay.biases}}},
      {"weight_decay_scales",
       {{"input", o.weight_decay_scales.input},
        {"output", o.weight_decay_scales.output},
        {"direction", o.weight_decay_scales.direction}}},
      {"grad_clip", o.grad_clip},
  };
  j["schedule"] = {
      {"type", s.schedule.type},
      {"warmup_steps", s.schedule.warmup_steps},
      {"min_lr_ratio", s.schedule.min_lr_ratio},
      {"decay_fraction", s.schedule.decay_fraction},
  };
  j["data"] = {
      {"source", d.source},
      {"synthetic",
       {{"seed", d.synthetic.seed}, {"support", d.synthetic.support}, {"concentration", d.synthetic.concentration}}},
      {"train", d.train},
      {"val", d.val},
  };
  j["training"] = {
      {"device", t.device},           {"precision", t.precision}, {"micro_batch", t.micro_batch},
      {"grad_accum", t.grad_accum},   {"steps", t.steps},         {"tokens", t.tokens},
      {"seed", t.seed},               {"eval_every", t.eval_every}, {"eval_batches", t.eval_batches},
      {"recompute", t.recompute},     {"loss_chunk_rows", t.loss_chunk_rows},
  };
  j["checkpoint"] = {{"every", s.checkpoint.every}, {"keep_last", s.checkpoint.keep_last}};
  j["logging"] = {{"every", s.logging.every}};
  return j;
}

std::vector<ChoiceKey> choice_keys() {
  return {
      {"model.preset", choice_names<Preset>()},
      {"model.norm.type", choice_names<NormType>()},
      {"model.norm.scale", choice_names<NormScale>()},
      {"model.norm.scale_placement", choice_names<ScalePlacement>()},
      {"model.norm.reparam", choice_names<ScaleReparam>()},
      {"model.activation", choice_names<Activation>()},
      {"model.la.dictionary", choice_names<ActivationFn>()},
      {"model.la.granularity", choice_names<LaGranularity>()},
      {"model.moa.dictionary", choice_names<ActivationFn>()},
      {"model.moa.gate", choice_names<MoaGate>()},
      {"model.moa.init", choice_names<MoaInit>()},
      {"model.attn_gate.position", choice_names<GatePosition>()},
      {"model.attn_gate.granularity", choice_names<GateGranularity>()},
      {"model.position", choice_names<PositionEncoding>()},
      {"optim.name", choice_names<OptimizerKind>()},
      {"schedule.type", choice_names<ScheduleType>()},
      {"data.source", choice_names<DataSource>()},
      {"training.device", choice_names<DeviceKind>()},
      {"training.precision", choice_names<Precision>()},
      {"training.recompute", choice_names<Recompute>()},
  };
}

nlohmann::json default_spec_json() { return json::parse(kDefaultSpec); }

}  // namespace pt
