// TrainStep: one optimizer step, the same for `pretrain train`, `pretrain bench` and the tests.
//
//   for each micro-batch: loss_parts = model.loss_parts(batch); loss_parts.total.backward()
//                         (gradients accumulate in the parameter store's gradient homes)
//   losses read back once (one device sync), checked finite
//   gradient synchronisation hook (data parallelism: all-reduce / reduce-scatter of the flat gradients)
//   optimizer step with grad_scale = 1 / micro-batches (the mean over micro-batches) and clipping
//   gradients forgotten
//
// A non-finite loss throws before the optimizer runs (and AdamW refuses a non-finite gradient norm),
// so a checkpoint never holds parameters damaged by a NaN/inf step.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/model/model.h"
#include "core/train/optim.h"
#include "data/batch_source.h"

namespace pt {

struct StepStats {
  double loss = 0.0;          // mean over micro-batches of the total loss (LM + auxiliary)
  double lm_loss = 0.0;       // mean LM cross-entropy (equals loss without auxiliary losses)
  std::vector<std::pair<std::string, double>> aux;  // mean of each auxiliary loss, by name
  double grad_norm = 0.0;     // before clipping
  double clip_factor = 1.0;
};

class TrainStep {
 public:
  // Called after every micro-batch's backward and before the optimizer, with the store whose gradient
  // homes hold the summed gradients (data parallelism reduces them here).
  using GradSync = std::function<void(ParamStore&)>;

  TrainStep(Transformer& model, AdamW& optimizer, int64_t micro_batches, Device device);

  void set_grad_sync(GradSync sync) { grad_sync_ = std::move(sync); }

  // One step at learning rate `lr`; `next_batch` yields each micro-batch (called micro_batches times).
  // `step` (1-based, for messages) is the step being taken.
  StepStats run(const std::function<data::TokenBatch()>& next_batch, double lr, int64_t step);

 private:
  Transformer& model_;
  AdamW& optimizer_;
  int64_t micro_batches_;
  Device device_;
  GradSync grad_sync_;
};

// A batch's inputs and targets as [batch, seq] i32 tensors on `device`, moved in one host-to-device
// copy (every such copy synchronises the device, so one per batch rather than two).
std::pair<Tensor, Tensor> batch_to_device(const data::TokenBatch& batch, Device device);

}  // namespace pt
