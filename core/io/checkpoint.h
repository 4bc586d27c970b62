// Checkpoint container: a JSON `meta` document plus named tensors stored as raw bytes.
//
// The byte layout is documented in docs/checkpoints.md. Files are written atomically (temp file,
// fsync, rename, fsync of the directory) and every read validates the structure and an XXH3-64
// checksum of the whole file, so a resumed run never starts from a torn or corrupt checkpoint.
// This module does not know the tensor engine: payloads are opaque bytes tagged with a dtype and shape.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace pt::ckpt {

// Every failure (I/O, validation, corruption) is reported as a CheckpointError whose message names
// the file and what is wrong with it.
class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TensorRecord {
  std::string name;            // unique within a checkpoint
  std::string dtype;           // "f32", "f64", "bf16", "i32", "i64", "u8"
  std::vector<int64_t> shape;  // {} is a scalar (one element); a zero dimension makes an empty tensor
  std::vector<uint8_t> bytes;  // exactly numel * dtype size bytes, stored as given
};

struct Checkpoint {
  nlohmann::json meta;
  std::vector<TensorRecord> tensors;

  // The tensor called `name`, or nullptr.
  const TensorRecord* find(const std::string& name) const;
};

// Write `ck` to `file` atomically: either the old file (if any) or the complete new one is there,
// even after a crash. Creates the parent directory if missing. Rejects an inconsistent checkpoint
// (unknown dtype, byte count not matching the shape, duplicate names) before touching the disk.
void write_checkpoint(const std::filesystem::path& file, const Checkpoint& ck);

// Read and fully validate a checkpoint (structure, index, size, trailer, checksum).
Checkpoint read_checkpoint(const std::filesystem::path& file);

// dir/step_00000100.ckpt: the step zero-padded to 8 digits (more digits when the step needs them).
std::filesystem::path checkpoint_file(const std::filesystem::path& dir, int64_t step);

// Checkpoints in `dir` named exactly as checkpoint_file() names them, sorted by step ascending.
// Temp files and other names are ignored; a missing directory has none. Throws CheckpointError if
// `dir` exists but cannot be listed (so do prune_checkpoints and load_latest_valid).
std::vector<std::pair<int64_t, std::filesystem::path>> list_checkpoints(const std::filesystem::path& dir);

// Delete all but the `keep_last` (>= 1) newest checkpoints listed by list_checkpoints().
void prune_checkpoints(const std::filesystem::path& dir, int64_t keep_last);

// The newest checkpoint in `dir` that reads back valid. Each rejected one is reported through
// `on_reject(path, reason)` (the caller logs it) and the next older one is tried.
// std::nullopt when none is valid or present.
std::optional<std::pair<std::filesystem::path, Checkpoint>> load_latest_valid(
    const std::filesystem::path& dir,
    const std::function<void(const std::filesystem::path&, const std::string&)>& on_reject);

}  // namespace pt::ckpt
