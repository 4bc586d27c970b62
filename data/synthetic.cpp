#include "data/synthetic.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace pt::data {

MarkovChain::MarkovChain(const MarkovSpec& spec) : spec_(spec) {
  const int64_t V = spec.vocab_size, K = spec.support;
  if (V < 2 || K < 1 || K > V || !(spec.concentration > 0))
    throw std::invalid_argument("synthetic Markov source: need vocab_size >= 2, 1 <= support <= vocab_size and "
                                "concentration > 0 (got vocab " + std::to_string(V) + ", support " +
                                std::to_string(K) + ", concentration " + std::to_string(spec.concentration) + ")");
  Rng rng(spec.table_seed);
  successors_.resize(size_t(V * K));
  cumulative_.resize(size_t(V * K));
  std::vector<double> probs(size_t(V * K));
  std::vector<int32_t> perm(static_cast<size_t>(V));
  for (int64_t s = 0; s < V; ++s) {
    // K distinct successors: the first K of a seeded Fisher-Yates shuffle.
    for (int64_t i = 0; i < V; ++i) perm[size_t(i)] = int32_t(i);
    for (int64_t i = 0; i < K; ++i) std::swap(perm[size_t(i)], perm[size_t(i + int64_t(rng.below(uint64_t(V - i))))]);
    double total = 0;
    for (int64_t i = 0; i < K; ++i) total += (probs[size_t(s * K + i)] = std::exp(rng.normal() / spec.concentration));
    double running = 0;
    for (int64_t i = 0; i < K; ++i) {
      probs[size_t(s * K + i)] /= total;
      successors_[size_t(s * K + i)] = perm[size_t(i)];
      running += probs[size_t(s * K + i)];
      cumulative_[size_t(s * K + i)] = running;
    }
    cumulative_[size_t(s * K + K - 1)] = 1.0;
  }
  // Stationary distribution by power iteration on the lazy chain (I + P) / 2, which has the
  // same stationary distribution and converges even if P is periodic.
  std::vector<double> pi(static_cast<size_t>(V), 1.0 / double(V)), next(static_cast<size_t>(V));
  for (int iter = 0; iter < 20000; ++iter) {
    for (int64_t s = 0; s < V; ++s) next[size_t(s)] = 0.5 * pi[size_t(s)];
    for (int64_t s = 0; s < V; ++s)
      for (int64_t i = 0; i < K; ++i) next[size_t(successors_[size_t(s * K + i)])] += 0.5 * pi[size_t(s)] * probs[size_t(s * K + i)];
    double diff = 0;
    for (int64_t s = 0; s < V; ++s) diff += std::abs(next[size_t(s)] - pi[size_t(s)]);
    pi.swap(next);
    if (diff < 1e-13) break;
  }
  stationary_ = pi;
  for (int64_t s = 0; s < V; ++s) {
    double h = 0;
    for (int64_t i = 0; i < K; ++i) {
      const double p = probs[size_t(s * K + i)];
      if (p > 0) h -= p * std::log(p);
    }
    entropy_rate_ += pi[size_t(s)] * h;
  }
}

int32_t MarkovChain::step(int32_t state, Rng& rng) const {
  const double u = rng.uniform();
  const int64_t K = spec_.support;
  const double* cum = &cumulative_[size_t(state * K)];
  int64_t i = 0;
  while (i + 1 < K && u >= cum[i]) ++i;
  return successors_[size_t(state * K + i)];
}

MarkovSource::MarkovSource(const MarkovSpec& spec, uint64_t stream_seed) : chain_(spec), rng_(stream_seed) {
  // Start from the stationary distribution so every position has the same statistics.
  double u = rng_.uniform(), running = 0;
  const auto& pi = chain_.stationary();
  current_ = int32_t(pi.size() - 1);
  for (size_t s = 0; s < pi.size(); ++s)
    if ((running += pi[s]) > u) {
      current_ = int32_t(s);
      break;
    }
}

TokenBatch MarkovSource::next(int64_t batch, int64_t seq) {
  TokenBatch out;
  out.batch = batch;
  out.seq = seq;
  out.inputs.resize(size_t(batch * seq));
  out.targets.resize(size_t(batch * seq));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq; ++t) {
      out.inputs[size_t(b * seq + t)] = current_;
      current_ = chain_.step(current_, rng_);
      out.targets[size_t(b * seq + t)] = current_;
    }
  }
  return out;
}

nlohmann::json MarkovSource::state() const { return {{"rng", rng_.serialize()}, {"current", current_}}; }

void MarkovSource::load_state(const nlohmann::json& state) {
  if (!state.contains("rng") || !state.contains("current"))
    throw std::invalid_argument("synthetic source state must have \"rng\" and \"current\", got " + state.dump());
  const nlohmann::json& current = state.at("current");
  if (!state.at("rng").is_string() || !current.is_number_integer() || current.get<int64_t>() < 0 ||
      current.get<int64_t>() >= chain_.vocab_size())
    throw std::invalid_argument("synthetic source state " + state.dump() + ": \"rng\" must be a string and \"current\" a token in [0, " +
                                std::to_string(chain_.vocab_size()) + ")");
  Rng rng;
  rng.deserialize(state.at("rng").get<std::string>());
  rng_ = rng;  // only once the whole state is known to be valid
  current_ = static_cast<int32_t>(current.get<int64_t>());
}

std::string MarkovSource::describe() const {
  return "synthetic Markov source (vocab " + std::to_string(chain_.vocab_size()) + ", support " +
         std::to_string(chain_.spec().support) + ", entropy floor " + std::to_string(chain_.entropy_rate()) +
         " nats/token)";
}

}  // namespace pt::data
