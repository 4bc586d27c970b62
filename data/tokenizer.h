// The tokenizer interface shared by the byte-level and BPE tokenizers, and a loader by name.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace pt::data {

// A tokenizer file that cannot be read or is not supported; the message names the file.
class TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The special token that separates documents when none is named.
inline constexpr std::string_view kEndOfText = "<|endoftext|>";

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of arbitrary bytes (UTF-8 or not). Special tokens written in the text are matched as such
  // (as Hugging Face's encode does); encode_ordinary treats them as plain text.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  virtual std::vector<int32_t> encode_ordinary(std::string_view text) const = 0;
  // The bytes the ids stand for; special tokens decode to their text. Throws std::out_of_range on an
  // id outside the vocabulary.
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  // Largest id + 1.
  virtual int64_t vocab_size() const = 0;
  // Id of a special token by its text (e.g. "<|endoftext|>").
  virtual std::optional<int32_t> special_token(std::string_view text) const = 0;
  // One line for logs.
  virtual std::string describe() const = 0;
};

// "byte" gives the byte-level tokenizer; anything else is read as a tokenizer.json.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& name_or_path);

}  // namespace pt::data
