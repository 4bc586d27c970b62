// GPT-2 pre-tokenization: splits text into the pieces matched by
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (the regex of Hugging Face's ByteLevel pre-tokenizer), implemented by hand because std::regex
// has no Unicode classes. Bytes that are not valid UTF-8 count as one [^\s\p{L}\p{N}] character
// each, so any byte string splits, and the pieces concatenate back to the input.
#pragma once

#include <string_view>
#include <vector>

namespace pt::data {

std::vector<std::string_view> pretokenize(std::string_view text);

// Whether `pos` (0 < pos < text.size()) is a piece boundary that depends on nothing before it:
// text[pos] is '\n' and text[pos - 1] is an ASCII character other than whitespace. Pre-tokenizing
// text[0, pos) and text[pos, end) separately then gives the same pieces as the whole, which lets
// long texts be cut into chunks and encoded in parallel.
bool is_safe_cut(std::string_view text, size_t pos);

}  // namespace pt::data
