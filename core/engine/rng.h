// Deterministic, serialisable random numbers (xoshiro256**, seeded through splitmix64).
// Header-only so data/ can use it without linking core.
// All parameter init and data order comes from here, so a run is reproducible from its seed
// and a checkpoint can restore the exact stream.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>

namespace pt {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { reseed(seed); }

  void reseed(uint64_t seed) {
    uint64_t x = seed;
    for (auto& s : state_) s = splitmix64(x);
    has_spare_normal_ = false;
  }

  uint64_t next_u64() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

  // Uniform integer in [0, n) without modulo bias.
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do r = next_u64();
    while (r >= limit);
    return r % n;
  }

  // Standard normal (Box-Muller; the second value is kept for the next call).
  double normal() {
    if (has_spare_normal_) {
      has_spare_normal_ = false;
      return spare_normal_;
    }
    double u1;
    do u1 = uniform();
    while (u1 <= 0.0);
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_normal_ = r * std::sin(2.0 * M_PI * u2);
    has_spare_normal_ = true;
    return r * std::cos(2.0 * M_PI * u2);
  }

  // A derived, independent generator (e.g. one per layer or per data rank).
  Rng fork(uint64_t stream) {
    Rng child(next_u64() ^ (stream * 0x9E3779B97F4A7C15ull));
    return child;
  }

  // Exact state as text, for checkpoints: 4 words, the spare-normal flag and its bits.
  std::string serialize() const {
    uint64_t spare_bits;
    std::memcpy(&spare_bits, &spare_normal_, sizeof spare_bits);
    std::ostringstream out;
    for (uint64_t s : state_) out << s << ' ';
    out << (has_spare_normal_ ? 1 : 0) << ' ' << spare_bits;
    return out.str();
  }
  // Throws std::invalid_argument on malformed text.
  void deserialize(const std::string& text) {
    std::istringstream in(text);
    std::array<uint64_t, 4> state{};
    int has_spare = 0;
    uint64_t spare_bits = 0;
    for (auto& s : state) in >> s;
    in >> has_spare >> spare_bits;
    if (!in || (has_spare != 0 && has_spare != 1)) throw std::invalid_argument("malformed RNG state \"" + text + "\"");
    state_ = state;
    has_spare_normal_ = has_spare == 1;
    std::memcpy(&spare_normal_, &spare_bits, sizeof spare_bits);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  std::array<uint64_t, 4> state_{};
  bool has_spare_normal_ = false;
  double spare_normal_ = 0.0;
};

}  // namespace pt
