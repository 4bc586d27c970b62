#include "data/pretokenize.h"

#include "data/unicode.h"

namespace pt::data {
namespace {

struct Cursor {
  std::string_view s;
  CharClass cls(size_t pos) const { return classify(decode_utf8(s, pos).cp); }
  size_t advance(size_t pos) const { return pos + decode_utf8(s, pos).len; }
  // End of the run of characters of class `c` starting at pos.
  size_t run(size_t pos, CharClass c) const {
    while (pos < s.size() && cls(pos) == c) pos = advance(pos);
    return pos;
  }
};

// Length of the contraction ('s 't 're 've 'm 'll 'd, case-sensitive) at pos, or 0.
size_t contraction(std::string_view s, size_t pos) {
  if (s[pos] != '\'' || pos + 1 >= s.size()) return 0;
  const char a = s[pos + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (pos + 2 >= s.size()) return 0;
  const char b = s[pos + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

}  // namespace

std::vector<std::string_view> pretokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  const Cursor c{text};
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = pos + contraction(text, pos);
    if (end == pos) {
      // ` ?X+` for X in letter, number, other: an optional ASCII space, then a run of one class.
      const size_t body = text[pos] == ' ' && pos + 1 < text.size() ? pos + 1 : pos;
      const CharClass cls = c.cls(body);
      if (cls != CharClass::kSpace) {
        end = c.run(body, cls);
      } else {
        // Whitespace: \s+(?!\S) takes the run but leaves its last character to prefix the next
        // piece when a non-space follows; a single whitespace character then matches \s+ alone.
        end = c.run(pos, CharClass::kSpace);
        if (end < text.size()) {
          size_t last = pos;  // start of the run's last character
          for (size_t p = pos; p < end; p = c.advance(p)) last = p;
          if (last > pos) end = last;
        }
      }
    }
    pieces.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return pieces;
}

bool is_safe_cut(std::string_view text, size_t pos) {
  const auto prev = static_cast<unsigned char>(text[pos - 1]);
  return text[pos] == '\n' && prev < 0x80 && classify(prev) != CharClass::kSpace;
}

}  // namespace pt::data
