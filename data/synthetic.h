// The embedded synthetic language: a seeded first-order Markov chain over the vocabulary.
//
// Each token (state) has `support` possible successors with fixed random probabilities
// p ~ exp(z / concentration), z ~ N(0, 1), normalised. Sequences are drawn by running the chain.
// Its entropy rate H = sum_s pi_s H(P_s) (pi the stationary distribution) is the lowest
// per-token cross-entropy any model can reach on it, which is what the end-to-end tests
// assert training approaches.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/engine/rng.h"
#include "data/batch_source.h"

namespace pt::data {

struct MarkovSpec {
  int64_t vocab_size = 64;
  int64_t support = 4;
  double concentration = 1.0;
  uint64_t table_seed = 1234;
};

class MarkovChain {
 public:
  explicit MarkovChain(const MarkovSpec& spec);
  int64_t vocab_size() const { return spec_.vocab_size; }
  // Next state from `state` using one uniform draw.
  int32_t step(int32_t state, Rng& rng) const;
  // Stationary distribution and entropy rate (nats/token).
  const std::vector<double>& stationary() const { return stationary_; }
  double entropy_rate() const { return entropy_rate_; }
  const MarkovSpec& spec() const { return spec_; }

 private:
  MarkovSpec spec_;
  std::vector<int32_t> successors_;    // [vocab, support]
  std::vector<double> cumulative_;     // [vocab, support], running sums ending at 1
  std::vector<double> stationary_;
  double entropy_rate_ = 0.0;
};

// A stream of the chain: windows are consecutive pieces of one long sample path, so every
// target has its predecessor in the window (the first input token) or earlier.
class MarkovSource final : public BatchSource {
 public:
  MarkovSource(const MarkovSpec& spec, uint64_t stream_seed);
  TokenBatch next(int64_t batch, int64_t seq) override;
  nlohmann::json state() const override;
  void load_state(const nlohmann::json& state) override;
  int64_t vocab_size() const override { return chain_.vocab_size(); }
  std::string describe() const override;
  const MarkovChain& chain() const { return chain_; }

 private:
  MarkovChain chain_;
  Rng rng_;
  int32_t current_ = 0;
};

}  // namespace pt::data
