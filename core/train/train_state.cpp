#include "core/train/train_state.h"

#include <spdlog/spdlog.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace pt {
namespace fs = std::filesystem;

namespace {

ckpt::TensorRecord record_of(const std::string& name, const Tensor& t) {
  Tensor host = t.to(Device::cpu()).contiguous();
  ckpt::TensorRecord r;
  r.name = name;
  r.dtype = dtype_name(host.dtype());
  r.shape = host.shape();
  const auto* bytes = static_cast<const uint8_t*>(host.raw_data());
  r.bytes.assign(bytes, bytes + host.nbytes());
  return r;
}

// The checkpoint's tensor `name` as a host tensor of `shape` and `dtype`; an error names the file and
// the tensor when it is missing or differs.
Tensor restored(const ckpt::Checkpoint& ck, const std::string& name, const Shape& shape, DType dtype, const fs::path& file) {
  const ckpt::TensorRecord* r = ck.find(name);
  if (!r) throw std::runtime_error(file.string() + ": checkpoint has no tensor \"" + name + "\"");
  if (r->shape != shape || r->dtype != dtype_name(dtype))
    throw std::runtime_error(file.string() + ": tensor \"" + name + "\" is " + r->dtype + shape_str(r->shape) +
                             " in the checkpoint but the model expects " + dtype_name(dtype) + shape_str(shape));
  Tensor host = Tensor::empty(shape, dtype, Device::cpu());
  std::memcpy(host.raw_data(), r->bytes.data(), r->bytes.size());
  return host;
}

// A key of a checkpoint's meta document; a missing key is an error naming the file.
const nlohmann::json& meta_field(const ckpt::Checkpoint& ck, const char* key, const fs::path& file) {
  if (!ck.meta.is_object() || !ck.meta.contains(key))
    throw std::runtime_error(file.string() + ": checkpoint meta has no \"" + std::string(key) +
                             "\" (not a checkpoint written by pretrain train?)");
  return ck.meta.at(key);
}

int64_t meta_int(const ckpt::Checkpoint& ck, const char* key, const fs::path& file) {
  const nlohmann::json& v = meta_field(ck, key, file);
  if (!v.is_number_integer() || v.get<int64_t>() < 0)
    throw std::runtime_error(file.string() + ": checkpoint meta \"" + std::string(key) + "\" is " + v.dump() +
                             ", not a non-negative integer");
  return v.get<int64_t>();
}

// The checkpoint's format version: meta.format_version, or 1 when absent (written before it existed).
// A version this build does not know is an error naming the file and both versions.
int64_t checkpoint_format_version(const ckpt::Checkpoint& ck, const fs::path& file) {
  if (!ck.meta.is_object() || !ck.meta.contains("format_version")) return 1;
  const int64_t version = meta_int(ck, "format_version", file);
  if (version < 1 || version > kCheckpointFormatVersion)
    throw std::runtime_error(file.string() + ": checkpoint format_version " + std::to_string(version) +
                             " is not supported: this build reads format versions 1 to " +
                             std::to_string(kCheckpointFormatVersion) + " (was it written by a newer pretrain?)");
  return version;
}

// Keys (JSON paths) whose values differ between two JSON documents.
void diff_json(const nlohmann::json& a, const nlohmann::json& b, const std::string& path, std::vector<std::string>& out) {
  if (a.is_object() && b.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it)
      diff_json(it.value(), b.contains(it.key()) ? b.at(it.key()) : nlohmann::json(), path.empty() ? it.key() : path + "." + it.key(), out);
    for (auto it = b.begin(); it != b.end(); ++it)
      if (!a.contains(it.key())) out.push_back(path.empty() ? it.key() : path + "." + it.key());
    return;
  }
  if (a != b) out.push_back(path + " (" + a.dump() + " -> " + b.dump() + ")");
}

}  // namespace

int64_t checkpoint_step(const ckpt::Checkpoint& ck, const fs::path& file) {
  checkpoint_format_version(ck, file);  // versions 1 and 2 hold the same tensors and meta keys
  return meta_int(ck, "step", file);
}

ckpt::Checkpoint training_checkpoint(const ExperimentSpec& spec, int64_t step, const Transformer& model,
                                     const AdamW& optimizer, const nlohmann::json& train_data_state) {
  ckpt::Checkpoint ck;
  ck.meta = {{"format", "pretrain/1"},
             {"format_version", kCheckpointFormatVersion},
             {"step", step},
             {"optimizer_step", optimizer.step_count()},
             {"spec", to_json(spec)},
             {"train_data", train_data_state}};
  const ParamStore& params = model.params();
  for (size_t i = 0; i < params.size(); ++i) ck.tensors.push_back(record_of("model/" + params.info(i).name, params.value(i)));
  for (const auto& [name, tensor] : optimizer.state_tensors()) ck.tensors.push_back(record_of(name, tensor));
  return ck;
}

RestoredTraining restore_training_state(const ckpt::Checkpoint& ck, const fs::path& file, const ExperimentSpec& spec,
                                        Transformer& model, AdamW& optimizer) {
  const int64_t step = checkpoint_step(ck, file);
  // The saved spec is parsed as a spec file would be: keys added since it was written take their
  // defaults (so old checkpoints stay resumable); a key this build no longer knows is an error.
  ExperimentSpec saved;
  try {
    saved = parse_spec(meta_field(ck, "spec", file), file.string() + " (meta.spec)");
  } catch (const SpecError& e) {
    throw std::runtime_error(std::string("--resume: the checkpoint's spec is not valid for this build: ") + e.what());
  }
  const nlohmann::json saved_json = to_json(saved), current_json = to_json(spec);
  if (!(saved.model == spec.model)) {
    std::vector<std::string> model_diff;
    diff_json(saved_json.at("model"), current_json.at("model"), "model", model_diff);
    if (model_diff.empty()) model_diff.push_back("model");  // equal JSON but unequal values (cannot happen)
    std::string list;
    for (const auto& d : model_diff) list += "\n  " + d;
    throw std::runtime_error(file.string() + ": the checkpoint's model differs from the spec:" + list);
  }
  std::vector<std::string> other_diff;
  diff_json(saved_json, current_json, "", other_diff);
  for (const auto& d : other_diff) spdlog::warn("resuming with a changed spec key: {}", d);

  ParamStore& params = model.params();
  for (size_t i = 0; i < params.size(); ++i)
    params.load_value(i, restored(ck, "model/" + params.info(i).name, params.info(i).shape, params.dtype(), file));
  for (const auto& [name, tensor] : optimizer.state_tensors())
    optimizer.load_state(name, restored(ck, name, tensor.shape(), tensor.dtype(), file));
  optimizer.set_step_count(meta_int(ck, "optimizer_step", file));
  return {step, meta_field(ck, "train_data", file)};
}

}  // namespace pt
