// The training loop behind `pretrain train`: model, AdamW, schedule, data, validation,
// metrics and checkpoints, with exact resume.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <utility>
#include <vector>

#include "core/spec/spec.h"
#include "core/engine/tensor.h"
#include "core/train/train_state.h"
#include "core/train/train_step.h"
#include "data/batch_source.h"

namespace pt {

struct TrainOptions {
  std::filesystem::path run_dir;  // spec.json, metrics.jsonl and checkpoints/ live here
  bool resume = false;            // continue from the newest valid checkpoint in run_dir
  int64_t stop_at_step = 0;       // > 0: checkpoint and stop once this step is done (for job time limits)
  bool quiet = false;             // no console progress (tests)
};

struct TrainResult {
  int64_t start_step = 0;       // 0, or the step a resumed run continued from
  int64_t final_step = 0;
  std::vector<double> train_losses;  // per optimizer step run in this process
  double final_val_loss = 0.0;       // NaN when there is no validation data
  double entropy_floor = 0.0;        // NaN unless the data is the synthetic source
  bool interrupted = false;          // stopped by a signal (checkpoint written)
};

// Runs (or resumes) training. Throws with a clear message on bad input; a checkpoint is written
// at the configured cadence, at stop_at_step, on SIGINT/SIGTERM, and at the end.
TrainResult train(const ExperimentSpec& spec, const TrainOptions& options);

// The data sources the spec names. `split` is "train" or "val"; returns nullptr for a val split
// that the spec does not provide (shards with an empty data.val).
std::unique_ptr<data::BatchSource> make_batch_source(const ExperimentSpec& spec, const std::string& split);

// The synthetic source's entropy floor for this spec (NaN for other sources).
double entropy_floor(const ExperimentSpec& spec);

}  // namespace pt
