// The normalizer (normalizer.h), with NFC.
#include "normalizer.h"

#include <algorithm>
#include <iterator>
#include <stdexcept>
#include <utility>

#include "text.h"
#include "unicode_tables.h"

namespace l2vf::tok {

namespace {

// NFC (Unicode 9.0, as HF tokenizers' unicode-normalization-alignments)

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto* begin = std::begin(unicode::kDecompositions);
  const auto* end = std::end(unicode::kDecompositions);
  const auto* it = std::lower_bound(
      begin, end, cp, [](const unicode::Decomposition& d, uint32_t c) { return d.cp < c; });
  if (it != end && it->cp == cp) {
    out.insert(out.end(), unicode::kDecompositionPool + it->offset,
               unicode::kDecompositionPool + it->offset + it->length);
  } else {
    out.push_back(cp);
  }
}

bool compose(uint32_t a, uint32_t b, uint32_t& composite) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    composite = kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
    return true;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    composite = a + (b - kTBase);
    return true;
  }
  const uint64_t key = (static_cast<uint64_t>(a) << 21) | b;
  const auto* begin = std::begin(unicode::kCompositions);
  const auto* end = std::end(unicode::kCompositions);
  const auto* it = std::lower_bound(
      begin, end, key, [](const unicode::Composition& c, uint64_t k) { return c.key < k; });
  if (it != end && it->key == key) {
    composite = it->composite;
    return true;
  }
  return false;
}

// Below U+0300 nothing changes under NFC (checked by the table generator); those characters'
// UTF-8 bytes are all < 0xCC.
inline bool nfc_quick(std::string_view s) {
  for (unsigned char b : s)
    if (b >= 0xCC) return false;
  return true;
}

// Canonical decomposition, canonical ordering, canonical composition (UAX #15).
void nfc(std::string_view in, std::vector<uint32_t>& buf, std::string& out) {
  buf.clear();
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  for (size_t i = 0; i < in.size();) decompose(decode_at(p, i), buf);
  // stable sort of each run of non-starters by combining class
  for (size_t i = 1; i < buf.size(); ++i) {
    const uint8_t c = unicode::ccc(buf[i]);
    if (c == 0) continue;
    size_t j = i;
    while (j > 0 && unicode::ccc(buf[j - 1]) > c) {
      std::swap(buf[j], buf[j - 1]);
      --j;
    }
  }
  if (!buf.empty()) {
    size_t starter = 0, out_len = 1;
    int last_class = unicode::ccc(buf[0]) == 0 ? 0 : 256;
    for (size_t i = 1; i < buf.size(); ++i) {
      const uint32_t ch = buf[i];
      const int ch_class = unicode::ccc(ch);
      uint32_t composite;
      // not blocked: nothing between, or only marks of a lower class (last_class == 0 means
      // the last character kept is the starter itself)
      if ((last_class < ch_class || last_class == 0) && compose(buf[starter], ch, composite)) {
        buf[starter] = composite;
        continue;
      }
      if (ch_class == 0) starter = out_len;
      last_class = ch_class;
      buf[out_len++] = ch;
    }
    buf.resize(out_len);
  }
  out.clear();
  for (uint32_t cp : buf) encode_utf8(cp, out);
}

}  // namespace

Normalizer::Normalizer(const std::vector<NormalizerStep>& steps) : steps_(steps) {
  for (const NormalizerStep& step : steps_)
    if (step.op == NormOp::Replace && step.a.empty())
      throw std::invalid_argument("Replace pattern must not be empty");
}

std::string_view Normalizer::apply(std::string_view s, NormalizerScratch& scratch) const {
  std::string_view cur = s;
  bool in_a = false;
  for (const NormalizerStep& step : steps_) {
    std::string& dst = in_a ? scratch.b : scratch.a;
    switch (step.op) {
      case NormOp::Prepend:
        if (cur.empty()) continue;
        dst.assign(step.a);
        dst.append(cur.data(), cur.size());
        break;
      case NormOp::Replace: {
        if (cur.find(step.a) == std::string_view::npos) continue;
        dst.clear();
        size_t from = 0;
        while (true) {
          const size_t at = cur.find(step.a, from);
          if (at == std::string_view::npos) break;
          dst.append(cur.data() + from, at - from);
          dst.append(step.b);
          from = at + step.a.size();
        }
        dst.append(cur.data() + from, cur.size() - from);
        break;
      }
      case NormOp::Strip: {
        const auto* p = reinterpret_cast<const unsigned char*>(cur.data());
        size_t b = 0, e = cur.size();
        if (step.left) b = skip_spaces(p, b, e);
        if (step.right) e = skip_spaces_back(p, e, b);
        cur = cur.substr(b, e - b);  // a view: no copy needed
        continue;
      }
      case NormOp::Nfc:
        if (nfc_quick(cur)) continue;
        nfc(cur, scratch.nfc_buf, dst);
        break;
    }
    cur = dst;
    in_a = !in_a;
  }
  return cur;
}

}  // namespace l2vf::tok
