// A BatchSource yields (input, target) token windows for training or evaluation.
// It is independent of the tensor engine: batches are plain int32 token ids, row-major [batch, seq].
// Its whole position is serialisable so a checkpoint can resume on exactly the next batch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pt::data {

struct TokenBatch {
  int64_t batch = 0;
  int64_t seq = 0;
  std::vector<int32_t> inputs;   // [batch, seq]
  std::vector<int32_t> targets;  // [batch, seq]: inputs shifted left by one token (never -1: no masking)
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // Next batch of `batch` windows of `seq` + 1 tokens, split into inputs and targets.
  virtual TokenBatch next(int64_t batch, int64_t seq) = 0;
  // Everything needed to continue with exactly the next batch (and nothing that is not).
  virtual nlohmann::json state() const = 0;
  virtual void load_state(const nlohmann::json& state) = 0;
  // Largest token id + 1 this source can produce (checked against the model's vocab).
  virtual int64_t vocab_size() const = 0;
  // One line for logs: what is being read.
  virtual std::string describe() const = 0;
};

}  // namespace pt::data
