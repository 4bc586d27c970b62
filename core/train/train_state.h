// What a training checkpoint holds, and how it is written and read back: the model's parameters and
// buffers ("model/<name>"), the optimizer's state by name ("optim/..."), and a meta document with
// the format version, the step, the resolved spec and the data loader's position
// (docs/checkpoints.md). The container itself (atomic write, checksum) is core/io/checkpoint.h.
#pragma once

#include <cstdint>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/io/checkpoint.h"
#include "core/model/model.h"
#include "core/spec/spec.h"
#include "core/train/optim.h"

namespace pt {

// The checkpoint format this build writes; it reads every version from 1 up to this one.
inline constexpr int64_t kCheckpointFormatVersion = 2;

// A checkpoint of the training state after `step` optimizer steps.
ckpt::Checkpoint training_checkpoint(const ExperimentSpec& spec, int64_t step, const Transformer& model,
                                     const AdamW& optimizer, const nlohmann::json& train_data_state);

// The step of a training checkpoint, after checking its format version (a version newer than this
// build reads is an error naming the file and both versions).
int64_t checkpoint_step(const ckpt::Checkpoint& ck, const std::filesystem::path& file);

struct RestoredTraining {
  int64_t step = 0;
  nlohmann::json train_data_state;
};

// Loads `ck` (read from `file`) into `model` and `optimizer`. Checks the format version, and that
// the checkpoint's model is the spec's model (compared semantically: the saved spec is parsed with
// this build's defaults, so keys added since it was written do not count as changes); throws naming
// the file and the differing keys otherwise. Other changed spec keys are logged as warnings.
RestoredTraining restore_training_state(const ckpt::Checkpoint& ck, const std::filesystem::path& file,
                                        const ExperimentSpec& spec, Transformer& model, AdamW& optimizer);

}  // namespace pt
