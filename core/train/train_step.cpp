#include "core/train/train_step.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "core/engine/autograd.h"
#include "core/engine/ops.h"

namespace pt {
namespace {

// Scalar device tensors read back with a single device-to-host copy (each read synchronises the
// device), in order.
std::vector<double> read_scalars(const std::vector<Tensor>& scalars) {
  NoGradGuard no_grad;
  if (scalars.empty()) return {};
  if (scalars.size() == 1) return {scalars[0].item()};
  std::vector<Tensor> parts;
  for (const Tensor& s : scalars) parts.push_back(s.view({1}));
  return ops::concat(parts).to_vector<double>();
}

}  // namespace

TrainStep::TrainStep(Transformer& model, AdamW& optimizer, int64_t micro_batches, Device device)
    : model_(model), optimizer_(optimizer), micro_batches_(micro_batches), device_(device) {
  if (micro_batches < 1) throw std::invalid_argument("TrainStep: " + std::to_string(micro_batches) + " micro-batches");
}

StepStats TrainStep::run(const std::function<data::TokenBatch()>& next_batch, double lr, int64_t step) {
  // Per micro-batch: the total loss, the LM loss (when aux losses exist), then each aux loss.
  std::vector<Tensor> scalars;
  std::vector<std::string> aux_names;
  size_t per_micro = 1;
  for (int64_t micro = 0; micro < micro_batches_; ++micro) {
    auto [inputs, targets] = batch_to_device(next_batch(), device_);
    const LossParts parts = model_.loss_parts(inputs, targets, targets.numel());
    parts.total.backward();
    scalars.push_back(parts.total.detach());  // read once per step below, not once per micro-batch
    if (!parts.aux.empty()) {
      if (micro == 0)
        for (const NamedLoss& l : parts.aux) aux_names.push_back(l.name);
      scalars.push_back(parts.lm.detach());
      for (const NamedLoss& l : parts.aux) scalars.push_back(l.value.detach().view({}));
    }
    per_micro = parts.aux.empty() ? 1 : 2 + parts.aux.size();
  }
  const std::vector<double> values = read_scalars(scalars);
  StepStats stats;
  stats.aux.resize(aux_names.size());
  for (size_t i = 0; i < aux_names.size(); ++i) stats.aux[i].first = aux_names[i];
  // Sums in micro-batch order from 0 (as reading them one by one would), then the mean.
  for (int64_t micro = 0; micro < micro_batches_; ++micro) {
    const double* v = &values[size_t(micro) * per_micro];
    stats.loss += v[0];
    stats.lm_loss += per_micro == 1 ? v[0] : v[1];
    for (size_t i = 0; i < aux_names.size(); ++i) stats.aux[i].second += v[2 + i];
  }
  const double n = double(micro_batches_);
  stats.loss /= n;
  stats.lm_loss /= n;
  for (auto& [name, value] : stats.aux) value /= n;
  if (!std::isfinite(stats.loss))
    throw std::runtime_error("loss became " + std::to_string(stats.loss) + " at step " + std::to_string(step) +
                             " (lr " + std::to_string(lr) + "); the last checkpoint is intact");
  if (grad_sync_) grad_sync_(model_.params());
  const OptimizerStepStats opt = optimizer_.step(lr, 1.0 / n);
  model_.zero_grad();
  stats.grad_norm = opt.grad_norm;
  stats.clip_factor = opt.clip_factor;
  return stats;
}

std::pair<Tensor, Tensor> batch_to_device(const data::TokenBatch& batch, Device device) {
  const size_t n = batch.inputs.size();
  if (batch.targets.size() != n || static_cast<int64_t>(n) != batch.batch * batch.seq)
    throw std::invalid_argument("batch_to_device: " + std::to_string(batch.inputs.size()) + " inputs and " +
                                std::to_string(batch.targets.size()) + " targets for a [" + std::to_string(batch.batch) +
                                ", " + std::to_string(batch.seq) + "] batch");
  std::vector<int32_t> both;
  both.reserve(2 * n);
  both.insert(both.end(), batch.inputs.begin(), batch.inputs.end());
  both.insert(both.end(), batch.targets.begin(), batch.targets.end());
  const Tensor t = Tensor::from_vector(both, {2, batch.batch, batch.seq}, device);
  return {t.narrow_view(0, 0, 1).view({batch.batch, batch.seq}), t.narrow_view(0, 1, 1).view({batch.batch, batch.seq})};
}

}  // namespace pt
