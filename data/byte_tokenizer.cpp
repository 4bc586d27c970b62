#include "data/byte_tokenizer.h"

namespace pt::data {

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    if (text.substr(pos, kEndOfText.size()) == kEndOfText) {
      ids.push_back(kEotId);
      pos += kEndOfText.size();
    } else {
      ids.push_back(static_cast<unsigned char>(text[pos++]));
    }
  }
  return ids;
}

std::vector<int32_t> ByteTokenizer::encode_ordinary(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  out.reserve(ids.size());
  for (int32_t id : ids) {
    if (id == kEotId) {
      out += kEndOfText;
    } else if (id >= 0 && id < kEotId) {
      out += static_cast<char>(id);
    } else {
      throw std::out_of_range("byte tokenizer: id " + std::to_string(id) + " is outside the vocabulary (257)");
    }
  }
  return out;
}

std::optional<int32_t> ByteTokenizer::special_token(std::string_view text) const {
  if (text == kEndOfText) return kEotId;
  return std::nullopt;
}

}  // namespace pt::data
