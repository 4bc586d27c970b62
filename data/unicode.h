// Minimal Unicode support for the GPT-2 pre-tokenizer: lenient UTF-8 decoding and the
// character classes its regex uses (\p{L}, \p{N}, \s).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pt::data {

// A decoded code point; cp < 0 marks one byte that is not part of valid UTF-8 (a stray continuation
// byte, a truncated, overlong or surrogate sequence). Such bytes are classified as kOther.
struct Utf8Char {
  int32_t cp;
  int32_t len;  // bytes consumed, >= 1
};
Utf8Char decode_utf8(std::string_view s, size_t pos);

// Appends the UTF-8 encoding of a valid code point.
void append_utf8(std::string& out, uint32_t cp);

enum class CharClass { kLetter, kNumber, kSpace, kOther };
CharClass classify(int32_t cp);

}  // namespace pt::data
