#include "core/rng.h"

#include <cstring>
#include <sstream>
#include <stdexcept>

namespace pt {

std::string Rng::serialize() const {
  uint64_t spare_bits;
  std::memcpy(&spare_bits, &spare_normal_, sizeof spare_bits);
  std::ostringstream out;
  for (uint64_t s : state_) out << s << ' ';
  out << (has_spare_normal_ ? 1 : 0) << ' ' << spare_bits;
  return out.str();
}

void Rng::deserialize(const std::string& text) {
  std::istringstream in(text);
  std::array<uint64_t, 4> state{};
  int has_spare = 0;
  uint64_t spare_bits = 0;
  for (auto& s : state) in >> s;
  in >> has_spare >> spare_bits;
  if (!in || (has_spare != 0 && has_spare != 1))
    throw std::invalid_argument("malformed RNG state \"" + text + "\"");
  state_ = state;
  has_spare_normal_ = has_spare == 1;
  std::memcpy(&spare_normal_, &spare_bits, sizeof spare_bits);
}

}  // namespace pt
