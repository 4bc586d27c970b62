// Byte-level tokenizer: id = byte value (0..255); id 256 is <|endoftext|>, so the vocabulary is 257.
// Needs no files, round-trips any byte string.
#pragma once

#include "data/tokenizer.h"

namespace pt::data {

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kEotId = 256;

  std::vector<int32_t> encode(std::string_view text) const override;
  std::vector<int32_t> encode_ordinary(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int64_t vocab_size() const override { return kEotId + 1; }
  std::optional<int32_t> special_token(std::string_view text) const override;
  std::string describe() const override { return "byte-level tokenizer (vocab 257, <|endoftext|> = 256)"; }
};

}  // namespace pt::data
