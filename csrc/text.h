// UTF-8 and the character classes the pre-tokenisation regexes and Strip use, shared by
// every stage of the tokenizer (header-only: these run per character).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "unicode_tables.h"

namespace l2vf::tok {

inline uint32_t decode_at(const unsigned char* s, size_t& i) {
  const uint32_t c = s[i];
  if (c < 0x80) {
    i += 1;
    return c;
  }
  if (c < 0xE0) {
    const uint32_t cp = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F);
    i += 2;
    return cp;
  }
  if (c < 0xF0) {
    const uint32_t cp = ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    i += 3;
    return cp;
  }
  const uint32_t cp = ((c & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) |
                      ((s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
  i += 4;
  return cp;
}

inline size_t utf8_len(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

inline void encode_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

struct AsciiFlags {
  uint8_t f[128];
  AsciiFlags() {
    for (uint32_t c = 0; c < 128; ++c) f[c] = unicode::flags(c);
  }
};
inline const AsciiFlags kAscii;

inline uint8_t cls(uint32_t cp) { return cp < 128 ? kAscii.f[cp] : unicode::flags(cp); }
inline bool is_letter(uint32_t cp) { return cls(cp) & unicode::kLetter; }
inline bool is_number(uint32_t cp) { return cls(cp) & unicode::kNumber; }
inline bool is_space(uint32_t cp) { return cls(cp) & unicode::kSpace; }
// [^\s\p{L}\p{N}]
inline bool is_other(uint32_t cp) { return cls(cp) == 0; }

// The end of the run of White_Space characters that starts at byte i of p[0, n).
inline size_t skip_spaces(const unsigned char* p, size_t i, size_t n) {
  while (i < n) {
    size_t j = i;
    if (!is_space(decode_at(p, j))) break;
    i = j;
  }
  return i;
}

// The start of the run of White_Space characters that ends at byte k, not before `floor`
// (a character boundary).
inline size_t skip_spaces_back(const unsigned char* p, size_t k, size_t floor) {
  while (k > floor) {
    size_t b = k - 1;
    while (b > floor && (p[b] & 0xC0) == 0x80) --b;
    size_t j = b;
    if (!is_space(decode_at(p, j))) break;
    k = b;
  }
  return k;
}

}  // namespace l2vf::tok
