// BPE tokenizer core; bpe_tokenizer.h has the pipeline and its HF counterparts.
#include "bpe_tokenizer.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <queue>
#include <stdexcept>
#include <thread>

#include "unicode_tables.h"

namespace l2vf::tok {

namespace {

// ---------------------------------------------------------------------------
// UTF-8 and character classes

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

void encode_utf8(uint32_t cp, std::string& out) {
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
const AsciiFlags kAscii;

inline uint8_t cls(uint32_t cp) { return cp < 128 ? kAscii.f[cp] : unicode::flags(cp); }
inline bool is_letter(uint32_t cp) { return cls(cp) & unicode::kLetter; }
inline bool is_number(uint32_t cp) { return cls(cp) & unicode::kNumber; }
inline bool is_space(uint32_t cp) { return cls(cp) & unicode::kSpace; }
// [^\s\p{L}\p{N}]
inline bool is_other(uint32_t cp) { return cls(cp) == 0; }

// ---------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------
// hashing and tables

inline uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0x100000001B3ULL);
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0x87c37b91114253d5ULL;
    h = (h << 31) | (h >> 33);
    p += 8;
    n -= 8;
  }
  uint64_t v = 0;
  std::memcpy(&v, p, n);
  return mix(h ^ v);
}

size_t pow2_at_least(size_t n) {
  size_t c = 16;
  while (c < n) c <<= 1;
  return c;
}

// string -> int32, open addressing, keys in one arena.
class StrMap {
 public:
  void reserve(size_t n) {
    slots_.assign(pow2_at_least(2 * n + 1), Slot{});
    mask_ = slots_.size() - 1;
  }
  // Inserts or overwrites.
  void set(std::string_view key, int32_t value) {
    if (slots_.empty() || 2 * (size_ + 1) > slots_.size()) grow();
    const uint64_t h = hash_bytes(key.data(), key.size()) | 1;
    size_t i = h & mask_;
    while (slots_[i].hash != 0) {
      if (slots_[i].hash == h && view(slots_[i]) == key) {
        slots_[i].value = value;
        return;
      }
      i = (i + 1) & mask_;
    }
    slots_[i] = Slot{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(key.size()),
                     value};
    keys_.append(key.data(), key.size());
    ++size_;
  }
  const int32_t* find(std::string_view key) const {
    if (slots_.empty()) return nullptr;
    const uint64_t h = hash_bytes(key.data(), key.size()) | 1;
    size_t i = h & mask_;
    while (slots_[i].hash != 0) {
      if (slots_[i].hash == h && view(slots_[i]) == key) return &slots_[i].value;
      i = (i + 1) & mask_;
    }
    return nullptr;
  }
  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t off = 0, len = 0;
    int32_t value = 0;
  };
  std::string_view view(const Slot& s) const { return {keys_.data() + s.off, s.len}; }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(pow2_at_least(std::max<size_t>(32, old.size() * 2)), Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.hash == 0) continue;
      size_t i = s.hash & mask_;
      while (slots_[i].hash != 0) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  std::string keys_;
  size_t mask_ = 0, size_ = 0;
};

// (left id, right id) -> (rank, merged id)
class PairMap {
 public:
  static constexpr uint64_t kEmpty = ~0ULL;
  void reserve(size_t n) {
    slots_.assign(pow2_at_least(2 * n + 1), Slot{});
    mask_ = slots_.size() - 1;
  }
  // Later entries overwrite earlier ones (HF collects the merges into a HashMap).
  void set(int32_t a, int32_t b, int32_t rank, int32_t merged) {
    const uint64_t k = key(a, b);
    size_t i = mix(k) & mask_;
    while (slots_[i].key != kEmpty && slots_[i].key != k) i = (i + 1) & mask_;
    slots_[i] = Slot{k, rank, merged};
  }
  // false when the pair does not merge
  inline bool find(int32_t a, int32_t b, int32_t& rank, int32_t& merged) const {
    const uint64_t k = key(a, b);
    size_t i = mix(k) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.key == k) {
        rank = s.rank;
        merged = s.merged;
        return true;
      }
      if (s.key == kEmpty) return false;
      i = (i + 1) & mask_;
    }
  }

 private:
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  struct Slot {
    uint64_t key = kEmpty;
    int32_t rank = 0, merged = 0;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Piece -> ids, per thread. Cleared when full (HF keeps a bounded cache too; a cache never
// changes the ids).
class WordCache {
 public:
  static constexpr size_t kSlots = 1 << 17;
  static constexpr size_t kMaxEntries = kSlots / 2;
  static constexpr size_t kMaxKey = 256;  // HF caches pieces shorter than 256 bytes

  WordCache() : slots_(kSlots) {}

  const int32_t* find(std::string_view key, uint64_t h, uint32_t& n) const {
    size_t i = h & (kSlots - 1);
    while (slots_[i].hash != 0) {
      const Slot& s = slots_[i];
      if (s.hash == h && s.key_len == key.size() &&
          std::memcmp(keys_.data() + s.key_off, key.data(), key.size()) == 0) {
        n = s.val_len;
        return vals_.data() + s.val_off;
      }
      i = (i + 1) & (kSlots - 1);
    }
    return nullptr;
  }
  void insert(std::string_view key, uint64_t h, const int32_t* ids, size_t n) {
    if (count_ >= kMaxEntries || keys_.size() > (64u << 20)) clear();
    size_t i = h & (kSlots - 1);
    while (slots_[i].hash != 0) i = (i + 1) & (kSlots - 1);
    slots_[i] = Slot{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(key.size()),
                     static_cast<uint32_t>(vals_.size()), static_cast<uint32_t>(n)};
    keys_.append(key.data(), key.size());
    vals_.insert(vals_.end(), ids, ids + n);
    ++count_;
  }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    vals_.clear();
    count_ = 0;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_off = 0, key_len = 0, val_off = 0, val_len = 0;
  };
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> vals_;
  size_t count_ = 0;
};

// ---------------------------------------------------------------------------
// added tokens: leftmost-longest matching over a byte trie

struct Split {
  size_t start, end;
  int32_t id;  // -1: not an added token
};

class AddedMatcher {
 public:
  AddedMatcher() : nodes_(1) { std::fill(std::begin(root_), std::end(root_), -1); }

  void add(std::string_view content, size_t token) {
    int32_t node = 0;
    for (size_t k = 0; k < content.size(); ++k) {
      const uint8_t byte = static_cast<uint8_t>(content[k]);
      int32_t child = child_of(node, byte);
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_.push_back(Node{});
        if (node == 0)
          root_[byte] = child;
        else
          nodes_[node].children.emplace_back(byte, child);
      }
      node = child;
    }
    nodes_[node].token = static_cast<int32_t>(token);
  }
  bool empty() const { return nodes_.size() == 1; }

  // Non-overlapping leftmost-longest matches: (start, end, token index).
  void find(std::string_view s, std::vector<Split>& out) const {
    out.clear();
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
      int32_t node = root_[p[i]];
      if (node < 0) {
        ++i;
        continue;
      }
      int32_t best = -1;
      size_t best_end = 0;
      size_t j = i + 1;
      while (true) {
        if (nodes_[node].token >= 0) {
          best = nodes_[node].token;
          best_end = j;
        }
        if (j >= n) break;
        node = child_of(node, p[j]);
        if (node < 0) break;
        ++j;
      }
      if (best >= 0) {
        out.push_back(Split{i, best_end, best});
        i = best_end;
      } else {
        ++i;
      }
    }
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;
    int32_t token = -1;
  };
  int32_t child_of(int32_t node, uint8_t byte) const {
    if (node == 0) return root_[byte];
    for (const auto& c : nodes_[node].children)
      if (c.first == byte) return c.second;
    return -1;
  }
  std::vector<Node> nodes_;
  int32_t root_[256];
};

// ---------------------------------------------------------------------------
// the pre-tokenisation regexes (bpe_tokenizer.h spells them out), leftmost-first like
// Oniguruma. Every position starts a match, so the matches tile the piece.

inline bool is_cr_lf(uint32_t c) { return c == '\r' || c == '\n'; }

inline size_t run_while_letter(const uint32_t* c, size_t i, size_t n) {
  while (i < n && is_letter(c[i])) ++i;
  return i;
}
inline size_t run_while_number(const uint32_t* c, size_t i, size_t n) {
  while (i < n && is_number(c[i])) ++i;
  return i;
}
inline size_t run_while_other(const uint32_t* c, size_t i, size_t n) {
  while (i < n && is_other(c[i])) ++i;
  return i;
}
inline size_t run_while_space(const uint32_t* c, size_t i, size_t n) {
  while (i < n && is_space(c[i])) ++i;
  return i;
}

// \s+(?!\S)|\s+ at i (c[i] is a space)
inline size_t match_spaces(const uint32_t* c, size_t i, size_t n) {
  const size_t e = run_while_space(c, i, n);
  if (e == n || e - i == 1) return e;
  return e - 1;
}

size_t match_gpt2(const uint32_t* c, size_t i, size_t n) {
  const uint32_t ch = c[i];
  if (ch == '\'' && i + 1 < n) {
    const uint32_t c1 = c[i + 1];
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
    if (i + 2 < n) {
      const uint32_t c2 = c[i + 2];
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
        return i + 3;
    }
  }
  const bool sp = ch == ' ' && i + 1 < n;
  if (sp && is_letter(c[i + 1])) return run_while_letter(c, i + 1, n);
  if (is_letter(ch)) return run_while_letter(c, i, n);
  if (sp && is_number(c[i + 1])) return run_while_number(c, i + 1, n);
  if (is_number(ch)) return run_while_number(c, i, n);
  if (sp && is_other(c[i + 1])) return run_while_other(c, i + 1, n);
  if (is_other(ch)) return run_while_other(c, i, n);
  return match_spaces(c, i, n);
}

// ASCII case folding plus U+017F (long s folds to s), as Oniguruma's (?i:) does here.
inline uint32_t fold(uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c == 0x17F) return 's';
  return c;
}

template <int kMaxDigits>
size_t match_llama3(const uint32_t* c, size_t i, size_t n) {
  const uint32_t ch = c[i];
  if (ch == '\'' && i + 1 < n) {
    const uint32_t c1 = fold(c[i + 1]);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
    if (i + 2 < n && c1 < 128) {
      const uint32_t c2 = fold(c[i + 2]);
      if (c2 < 128 &&
          ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')))
        return i + 3;
    }
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  const uint8_t f = cls(ch);
  if (f & unicode::kLetter) return run_while_letter(c, i, n);
  if (!(f & unicode::kNumber) && !is_cr_lf(ch) && i + 1 < n && is_letter(c[i + 1]))
    return run_while_letter(c, i + 1, n);
  // \p{N}{1,kMaxDigits}
  if (f & unicode::kNumber) {
    size_t e = i + 1;
    while (e < n && e - i < static_cast<size_t>(kMaxDigits) && is_number(c[e])) ++e;
    return e;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  size_t e = SIZE_MAX;
  if (ch == ' ' && i + 1 < n && is_other(c[i + 1]))
    e = run_while_other(c, i + 1, n);
  else if (f == 0)
    e = run_while_other(c, i, n);
  if (e != SIZE_MAX) {
    while (e < n && is_cr_lf(c[e])) ++e;
    return e;
  }
  // here c[i] is a space. \s*[\r\n]+ : up to the last \r or \n of the space run
  const size_t w = run_while_space(c, i, n);
  for (size_t q = w; q > i; --q)
    if (is_cr_lf(c[q - 1])) return q;
  // \s+(?!\S)|\s+
  if (w == n || w - i == 1) return w;
  return w - 1;
}

size_t match_regex(RegexKind kind, const uint32_t* c, size_t i, size_t n) {
  switch (kind) {
    case RegexKind::Gpt2:
      return match_gpt2(c, i, n);
    case RegexKind::Llama3:
      return match_llama3<3>(c, i, n);
    case RegexKind::Qwen2:
      return match_llama3<1>(c, i, n);
  }
  return n;
}

// GPT-2's bytes_to_unicode
uint32_t byte_to_char(uint8_t b) {
  static const auto table = [] {
    std::vector<uint32_t> t(256, 0);
    std::vector<bool> direct(256, false);
    for (int x = '!'; x <= '~'; ++x) direct[x] = true;
    for (int x = 0xA1; x <= 0xAC; ++x) direct[x] = true;
    for (int x = 0xAE; x <= 0xFF; ++x) direct[x] = true;
    uint32_t extra = 0;
    for (int x = 0; x < 256; ++x) t[x] = direct[x] ? x : 256 + extra++;
    return t;
  }();
  return table[b];
}

struct Segment {
  size_t start, end;
  bool match;
};

// HF NormalizedString::split: which parts of the segments survive, merged as the behaviour
// says. `segs` tile the piece.
void apply_behavior(const std::vector<Segment>& segs, Behavior behavior,
                    std::vector<std::pair<size_t, size_t>>& out) {
  out.clear();
  switch (behavior) {
    case Behavior::Isolated:
      for (const Segment& s : segs) out.emplace_back(s.start, s.end);
      return;
    case Behavior::Removed:
      for (const Segment& s : segs)
        if (!s.match) out.emplace_back(s.start, s.end);
      return;
    case Behavior::Contiguous: {
      bool previous = false;
      for (const Segment& s : segs) {
        if (s.match == previous && !out.empty())
          out.back().second = s.end;
        else
          out.emplace_back(s.start, s.end);
        previous = s.match;
      }
      return;
    }
    case Behavior::MergedWithPrevious: {
      bool previous = false;
      for (const Segment& s : segs) {
        if (s.match && !previous && !out.empty())
          out.back().second = s.end;
        else
          out.emplace_back(s.start, s.end);
        previous = s.match;
      }
      return;
    }
    case Behavior::MergedWithNext: {
      bool previous = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !previous && !out.empty())
          out.back().first = it->start;
        else
          out.emplace_back(it->start, it->end);
        previous = it->match;
      }
      std::reverse(out.begin(), out.end());
      return;
    }
  }
}

constexpr int32_t kNoRank = INT32_MAX;

}  // namespace

// ---------------------------------------------------------------------------
// per-thread state

struct Level {  // scratch of one pre-tokeniser step (the steps recurse)
  std::string buf;
  std::vector<uint32_t> cps;
  std::vector<uint32_t> pos;
  std::vector<Segment> segs;
  std::vector<std::pair<size_t, size_t>> pieces;
};

struct Workspace {
  WordCache cache;
  std::vector<Level> levels;
  std::string norm_a, norm_b, joined;
  std::vector<uint32_t> nfc_buf;
  std::vector<Split> matches, splits_raw, splits_norm;
  std::vector<int32_t> syms, word, core, tmp;
  std::vector<int32_t> ranks, merged;
  struct Node {
    int32_t id, prev, next;
  };
  std::vector<Node> nodes;
};

// ---------------------------------------------------------------------------

struct Tokenizer::Impl {
  // added tokens
  std::vector<AddedTokenSpec> added;
  AddedMatcher raw_matcher, norm_matcher;
  // normaliser and pre-tokenisers
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre;
  // model
  bool byte_mode = false;
  StrMap vocab;      // as in the file
  StrMap raw_vocab;  // byte mode: raw bytes of each token spelled in the byte alphabet
  PairMap merges;
  std::vector<int32_t> bmp_ids;                 // char mode: single-character tokens < U+10000
  int32_t byte_ids[256];                        // byte mode: the token of each byte's character
  std::vector<int32_t> byte_char_fallback[256];  // byte mode: fallback ids of that character
  int32_t fallback_ids[256];                     // "<0xXX>"
  int32_t unk_id = -1;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  bool split_words = false;  // see model()
  static constexpr char kMeta[4] = "\xE2\x96\x81";  // U+2581, SentencePiece's space

  // --- added tokens (HF AddedVocabulary::find_matches)
  void split_added(std::string_view s, const AddedMatcher& matcher, Workspace& ws,
                   std::vector<Split>& out) const {
    out.clear();
    if (s.empty()) return;
    if (matcher.empty()) {
      out.push_back(Split{0, s.size(), -1});
      return;
    }
    matcher.find(s, ws.matches);
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t start_offset = 0;
    for (const Split& m : ws.matches) {
      const AddedTokenSpec& tok = added[static_cast<size_t>(m.id)];
      size_t start = m.start, stop = m.end;
      if (tok.lstrip) {
        // start of the whitespace run that ends at `start`
        size_t k = start;
        while (k > 0) {
          size_t b = k - 1;
          while (b > 0 && (p[b] & 0xC0) == 0x80) --b;
          size_t j = b;
          if (!is_space(decode_at(p, j))) break;
          k = b;
        }
        start = std::max(k, start_offset);
      }
      if (tok.rstrip) {
        size_t k = stop;
        while (k < s.size()) {
          size_t j = k;
          if (!is_space(decode_at(p, j))) break;
          k = j;
        }
        stop = k;
      }
      if (start_offset < start) out.push_back(Split{start_offset, start, -1});
      out.push_back(Split{start, stop, tok.id});
      start_offset = stop;
    }
    if (start_offset != s.size()) out.push_back(Split{start_offset, s.size(), -1});
  }

  // --- normaliser: returns a view of the normalised piece (into ws.norm_a/b or `s`)
  std::string_view normalize(std::string_view s, Workspace& ws) const {
    std::string_view cur = s;
    bool in_a = false;
    for (const NormalizerStep& step : normalizer) {
      std::string& dst = in_a ? ws.norm_b : ws.norm_a;
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
          if (step.left) {
            while (b < e) {
              size_t j = b;
              if (!is_space(decode_at(p, j))) break;
              b = j;
            }
          }
          if (step.right) {
            while (e > b) {
              size_t k = e - 1;
              while (k > b && (p[k] & 0xC0) == 0x80) --k;
              size_t j = k;
              if (!is_space(decode_at(p, j))) break;
              e = k;
            }
          }
          cur = cur.substr(b, e - b);  // a view: no copy needed
          continue;
        }
        case NormOp::Nfc:
          if (nfc_quick(cur)) continue;
          nfc(cur, ws.nfc_buf, dst);
          break;
      }
      cur = dst;
      in_a = !in_a;
    }
    return cur;
  }

  // --- pre-tokenisers, depth first; pieces reaching the end go to the model
  void pretok(size_t step, const char* p, size_t n, bool at_origin, Workspace& ws,
              std::vector<int32_t>& out) const {
    if (n == 0) return;
    if (step == pre.size()) {
      model(p, n, ws, out);
      return;
    }
    const PreTokenizerStep& op = pre[step];
    Level& lv = ws.levels[step];
    switch (op.op) {
      case PreOp::ByteLevel: {  // always the last step
        if (op.add_prefix_space && p[0] != ' ') {
          lv.buf.assign(1, ' ');
          lv.buf.append(p, n);
          p = lv.buf.data();
          n = lv.buf.size();
        }
        if (!op.use_regex) {
          model(p, n, ws, out);
          return;
        }
        decode(p, n, lv);
        const uint32_t* c = lv.cps.data();
        const size_t m = lv.cps.size();
        for (size_t i = 0; i < m;) {
          const size_t e = match_gpt2(c, i, m);
          model(p + lv.pos[i], lv.pos[e] - lv.pos[i], ws, out);
          i = e;
        }
        return;
      }
      case PreOp::SplitRegex: {
        decode(p, n, lv);
        const uint32_t* c = lv.cps.data();
        const size_t m = lv.cps.size();
        if (op.behavior == Behavior::Isolated) {  // every match and gap is a piece
          // (copy the cut points first: the recursion below reuses this level's buffers
          // only when it is deeper, but keep it simple and safe)
          lv.pieces.clear();
          for (size_t i = 0; i < m;) {
            const size_t e = match_regex(op.regex, c, i, m);
            lv.pieces.emplace_back(lv.pos[i], lv.pos[e]);
            i = e;
          }
        } else {
          lv.segs.clear();
          for (size_t i = 0; i < m;) {
            const size_t e = match_regex(op.regex, c, i, m);
            lv.segs.push_back(Segment{lv.pos[i], lv.pos[e], !op.invert});
            i = e;
          }
          apply_behavior(lv.segs, op.behavior, lv.pieces);
        }
        break;
      }
      case PreOp::SplitString: {
        const std::string_view s(p, n);
        lv.segs.clear();
        size_t from = 0;
        while (true) {
          const size_t at = s.find(op.pattern, from);
          if (at == std::string_view::npos) break;
          if (at > from) lv.segs.push_back(Segment{from, at, op.invert});
          lv.segs.push_back(Segment{at, at + op.pattern.size(), !op.invert});
          from = at + op.pattern.size();
        }
        if (from < n) lv.segs.push_back(Segment{from, n, op.invert});
        apply_behavior(lv.segs, op.behavior, lv.pieces);
        break;
      }
      case PreOp::Metaspace: {
        lv.buf.clear();
        const std::string& rep = op.replacement;
        for (size_t k = 0; k < n; ++k) {
          if (p[k] == ' ')
            lv.buf.append(rep);
          else
            lv.buf.push_back(p[k]);
        }
        const bool starts = lv.buf.compare(0, rep.size(), rep) == 0;
        if (!starts && (op.prepend == PrependScheme::Always ||
                        (op.prepend == PrependScheme::First && at_origin)))
          lv.buf.insert(0, rep);
        if (!op.split) {
          pretok(step + 1, lv.buf.data(), lv.buf.size(), at_origin, ws, out);
          return;
        }
        // split on each replacement character, MergedWithNext
        const std::string_view s(lv.buf);
        lv.segs.clear();
        size_t from = 0;
        while (true) {
          const size_t at = s.find(rep, from);
          if (at == std::string_view::npos) break;
          if (at > from) lv.segs.push_back(Segment{from, at, false});
          lv.segs.push_back(Segment{at, at + rep.size(), true});
          from = at + rep.size();
        }
        if (from < s.size()) lv.segs.push_back(Segment{from, s.size(), false});
        apply_behavior(lv.segs, Behavior::MergedWithNext, lv.pieces);
        p = lv.buf.data();
        break;
      }
    }
    for (const auto& [b, e] : lv.pieces)
      pretok(step + 1, p + b, e - b, at_origin && b == 0, ws, out);
  }

  static void decode(const char* p, size_t n, Level& lv) {
    lv.cps.clear();
    lv.pos.clear();
    const auto* s = reinterpret_cast<const unsigned char*>(p);
    size_t i = 0;
    while (i < n) {
      lv.pos.push_back(static_cast<uint32_t>(i));
      lv.cps.push_back(decode_at(s, i));
    }
    lv.pos.push_back(static_cast<uint32_t>(n));
  }

  // --- the BPE model on one piece
  void model(const char* p, size_t n, Workspace& ws, std::vector<int32_t>& out) const {
    const std::string_view piece(p, n);
    if (ignore_merges) {
      const int32_t* id = byte_mode ? raw_vocab.find(piece) : vocab.find(piece);
      if (id != nullptr) {
        out.push_back(*id);
        return;
      }
    }
    if (split_words && n > 16) {
      // No token holds a '▁' after another character, so no merge crosses the start of a
      // '▁' run: the words between run starts merge independently (and hit the cache).
      size_t begin = 0;
      for (size_t k = 1; k + 3 <= n; ++k) {
        if (std::memcmp(p + k, kMeta, 3) == 0 && (k < 3 || std::memcmp(p + k - 3, kMeta, 3) != 0)) {
          word(p + begin, k - begin, ws, out);
          begin = k;
        }
      }
      word(p + begin, n - begin, ws, out);
      return;
    }
    word(p, n, ws, out);
  }

  // one word: the cache, else the merges
  void word(const char* p, size_t n, Workspace& ws, std::vector<int32_t>& out) const {
    const std::string_view piece(p, n);
    if (n < WordCache::kMaxKey) {
      const uint64_t h = hash_bytes(p, n) | 1;
      uint32_t len = 0;
      if (const int32_t* hit = ws.cache.find(piece, h, len)) {
        out.insert(out.end(), hit, hit + len);
        return;
      }
      merge_word(p, n, ws);
      ws.cache.insert(piece, h, ws.syms.data(), ws.syms.size());
    } else {
      merge_word(p, n, ws);
    }
    out.insert(out.end(), ws.syms.begin(), ws.syms.end());
  }

  // HF BPE::merge_word: initial symbols (with byte fallback and unk), then the merges.
  void merge_word(const char* p, size_t n, Workspace& ws) const {
    std::vector<int32_t>& syms = ws.syms;
    syms.clear();
    int32_t pending_unk = -1;  // HF keeps one unk pending to fuse the next ones into it
    auto unknown = [&]() {
      if (unk_id < 0) return;  // no unk token: the character is dropped
      if (pending_unk >= 0 && !fuse_unk) syms.push_back(pending_unk);
      pending_unk = unk_id;
    };
    auto known = [&](int32_t id) {
      if (pending_unk >= 0) {
        syms.push_back(pending_unk);
        pending_unk = -1;
      }
      syms.push_back(id);
    };
    const auto* s = reinterpret_cast<const unsigned char*>(p);
    if (byte_mode) {
      for (size_t i = 0; i < n; ++i) {
        const int32_t id = byte_ids[s[i]];
        if (id >= 0) {
          known(id);
        } else if (byte_fallback && !byte_char_fallback[s[i]].empty()) {
          // HF adds the fallback bytes without flushing a pending unk
          const auto& fb = byte_char_fallback[s[i]];
          syms.insert(syms.end(), fb.begin(), fb.end());
        } else {
          unknown();
        }
      }
    } else {
      size_t i = 0;
      while (i < n) {
        const size_t b = i;
        const uint32_t cp = decode_at(s, i);
        int32_t id = -1;
        if (cp < 0x10000) {
          id = bmp_ids[cp];
        } else if (const int32_t* f = vocab.find(std::string_view(p + b, i - b))) {
          id = *f;
        }
        if (id >= 0) {
          known(id);
          continue;
        }
        if (byte_fallback) {
          bool all = true;
          for (size_t k = b; k < i; ++k) all = all && fallback_ids[s[k]] >= 0;
          if (all) {
            for (size_t k = b; k < i; ++k) syms.push_back(fallback_ids[s[k]]);
            continue;
          }
        }
        unknown();
      }
    }
    if (pending_unk >= 0) syms.push_back(pending_unk);
    if (syms.size() < 2) return;
    if (syms.size() <= 64)
      merge_small(ws);
    else
      merge_heap(ws);
  }

  inline int32_t rank_of(int32_t a, int32_t b, int32_t& merged) const {
    int32_t rank;
    return merges.find(a, b, rank, merged) ? rank : kNoRank;
  }

  // Short words: repeatedly merge the lowest-ranked pair, leftmost first. This is what HF's
  // priority queue does (ranks first, then positions).
  void merge_small(Workspace& ws) const {
    std::vector<int32_t>& syms = ws.syms;
    std::vector<int32_t>& ranks = ws.ranks;
    std::vector<int32_t>& merged = ws.merged;
    size_t m = syms.size();
    ranks.resize(m);
    merged.resize(m);
    for (size_t i = 0; i + 1 < m; ++i) ranks[i] = rank_of(syms[i], syms[i + 1], merged[i]);
    while (m > 1) {
      size_t best = 0;
      int32_t best_rank = ranks[0];
      for (size_t i = 1; i + 1 < m; ++i) {
        if (ranks[i] < best_rank) {
          best_rank = ranks[i];
          best = i;
        }
      }
      if (best_rank == kNoRank) break;
      syms[best] = merged[best];
      // drop symbol best + 1 and pair best + 1
      for (size_t i = best + 1; i + 1 < m; ++i) {
        syms[i] = syms[i + 1];
        ranks[i] = ranks[i + 1];
        merged[i] = merged[i + 1];
      }
      --m;
      if (best + 1 < m) ranks[best] = rank_of(syms[best], syms[best + 1], merged[best]);
      if (best > 0) ranks[best - 1] = rank_of(syms[best - 1], syms[best], merged[best - 1]);
    }
    syms.resize(m);
  }

  // Long words (a SentencePiece-style text without pre-tokenisation): HF's algorithm, a heap
  // of (rank, position) over a linked list of symbols, stale entries skipped.
  void merge_heap(Workspace& ws) const {
    std::vector<int32_t>& syms = ws.syms;
    const int32_t m = static_cast<int32_t>(syms.size());
    auto& nodes = ws.nodes;
    nodes.resize(m);
    for (int32_t i = 0; i < m; ++i) nodes[i] = {syms[i], i - 1, i + 1 < m ? i + 1 : -1};
    struct Entry {
      int32_t rank, pos, merged;
      bool operator<(const Entry& o) const {  // max-heap -> reversed: lowest rank, then pos
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Entry> queue;
    for (int32_t i = 0; i + 1 < m; ++i) {
      int32_t merged;
      const int32_t r = rank_of(nodes[i].id, nodes[i + 1].id, merged);
      if (r != kNoRank) queue.push(Entry{r, i, merged});
    }
    while (!queue.empty()) {
      const Entry top = queue.top();
      queue.pop();
      Workspace::Node& cur = nodes[top.pos];
      if (cur.id < 0 || cur.next < 0) continue;  // merged away, or last
      const int32_t next = cur.next;
      int32_t merged;
      if (rank_of(cur.id, nodes[next].id, merged) == kNoRank || merged != top.merged) continue;
      cur.id = top.merged;
      cur.next = nodes[next].next;
      if (cur.next >= 0) nodes[cur.next].prev = top.pos;
      nodes[next].id = -1;
      if (cur.prev >= 0) {
        const int32_t r = rank_of(nodes[cur.prev].id, cur.id, merged);
        if (r != kNoRank) queue.push(Entry{r, cur.prev, merged});
      }
      if (cur.next >= 0) {
        const int32_t r = rank_of(cur.id, nodes[cur.next].id, merged);
        if (r != kNoRank) queue.push(Entry{r, top.pos, merged});
      }
    }
    syms.clear();
    for (int32_t i = 0; i >= 0; i = nodes[i].next) syms.push_back(nodes[i].id);
  }
};

// ---------------------------------------------------------------------------

Tokenizer::Tokenizer(const TokenizerSpec& spec) : impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  prefix_ = spec.prefix;
  suffix_ = spec.suffix;
  im.normalizer = spec.normalizer;
  im.pre = spec.pre_tokenizer;
  for (size_t k = 0; k < im.pre.size(); ++k) {
    if (im.pre[k].op == PreOp::ByteLevel) {
      if (k + 1 != im.pre.size())
        throw std::invalid_argument("ByteLevel must be the last pre-tokenizer");
      im.byte_mode = true;
    }
    if (im.pre[k].op == PreOp::Metaspace && im.pre[k].replacement.empty())
      throw std::invalid_argument("Metaspace replacement must not be empty");
    if (im.pre[k].op == PreOp::SplitString && im.pre[k].pattern.empty())
      throw std::invalid_argument("Split pattern must not be empty");
  }
  for (const NormalizerStep& step : im.normalizer)
    if (step.op == NormOp::Replace && step.a.empty())
      throw std::invalid_argument("Replace pattern must not be empty");

  const ModelSpec& ms = spec.model;
  im.unk_id = ms.unk_id;
  im.fuse_unk = ms.fuse_unk;
  im.byte_fallback = ms.byte_fallback;
  im.ignore_merges = ms.ignore_merges;
  im.vocab.reserve(ms.vocab.size());
  for (const auto& [token, id] : ms.vocab) {
    if (id < 0) throw std::invalid_argument("negative token id for '" + token + "'");
    im.vocab.set(token, id);
  }

  im.merges.reserve(ms.merges.size());
  std::string joined;
  for (size_t r = 0; r < ms.merges.size(); ++r) {
    const auto& [a, b] = ms.merges[r];
    const int32_t* ia = im.vocab.find(a);
    const int32_t* ib = im.vocab.find(b);
    if (ia == nullptr || ib == nullptr)
      throw std::invalid_argument("merge " + std::to_string(r) + " ('" + a + "' '" + b +
                                  "') uses a token that is not in the vocabulary");
    joined.assign(a).append(b);
    const int32_t* ij = im.vocab.find(joined);
    if (ij == nullptr)
      throw std::invalid_argument("merge " + std::to_string(r) + " makes '" + joined +
                                  "', which is not in the vocabulary");
    im.merges.set(*ia, *ib, static_cast<int32_t>(r), *ij);
  }

  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    const int32_t* id = im.vocab.find(name);
    im.fallback_ids[b] = id ? *id : -1;
  }
  if (im.byte_mode) {
    // the byte alphabet: raw byte -> its character, and back
    std::vector<int32_t> char_to_byte(512, -1);
    for (int b = 0; b < 256; ++b) {
      const uint32_t ch = byte_to_char(static_cast<uint8_t>(b));
      char_to_byte[ch] = b;
      std::string utf8;
      encode_utf8(ch, utf8);
      const int32_t* id = im.vocab.find(utf8);
      im.byte_ids[b] = id ? *id : -1;
      bool all = true;
      std::vector<int32_t> fb;
      for (unsigned char u : utf8) {
        all = all && im.fallback_ids[u] >= 0;
        fb.push_back(im.fallback_ids[u]);
      }
      if (all) im.byte_char_fallback[b] = fb;
    }
    // tokens spelled in the alphabet, keyed by their raw bytes (for ignore_merges)
    im.raw_vocab.reserve(ms.vocab.size());
    std::string raw;
    for (const auto& [token, id] : ms.vocab) {
      raw.clear();
      const auto* s = reinterpret_cast<const unsigned char*>(token.data());
      size_t i = 0;
      bool ok = true;
      while (i < token.size()) {
        const uint32_t cp = decode_at(s, i);
        if (cp >= 512 || char_to_byte[cp] < 0) {
          ok = false;
          break;
        }
        raw.push_back(static_cast<char>(char_to_byte[cp]));
      }
      if (ok) im.raw_vocab.set(raw, id);
    }
  } else {
    im.bmp_ids.assign(0x10000, -1);
    for (const auto& [token, id] : ms.vocab) {
      if (token.empty()) continue;
      const auto* s = reinterpret_cast<const unsigned char*>(token.data());
      size_t i = 0;
      const uint32_t cp = decode_at(s, i);
      if (i == token.size() && cp < 0x10000) im.bmp_ids[cp] = *im.vocab.find(token);
    }
  }

  if (!im.byte_mode && !im.ignore_merges && im.vocab.find(Impl::kMeta) != nullptr) {
    // SentencePiece-style: split long pieces into words when no token holds a '▁' right
    // after another character (then no merge can join across such a point).
    im.split_words = true;
    for (const auto& [token, id] : ms.vocab) {
      for (size_t k = 1; k + 3 <= token.size() && im.split_words; ++k) {
        if (std::memcmp(token.data() + k, Impl::kMeta, 3) != 0) continue;
        // the character before position k
        size_t b = k - 1;
        while (b > 0 && (static_cast<unsigned char>(token[b]) & 0xC0) == 0x80) --b;
        if (k - b != 3 || std::memcmp(token.data() + b, Impl::kMeta, 3) != 0)
          im.split_words = false;
      }
      if (!im.split_words) break;
    }
  }

  im.added = spec.added_tokens;
  for (size_t k = 0; k < im.added.size(); ++k) {
    const AddedTokenSpec& t = im.added[k];
    if (t.content.empty()) throw std::invalid_argument("empty added token");
    (t.normalized ? im.norm_matcher : im.raw_matcher).add(t.content, k);
  }
}

Tokenizer::~Tokenizer() = default;

std::unique_ptr<Workspace> Tokenizer::acquire() const {
  {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    if (!pool_.empty()) {
      auto ws = std::move(pool_.back());
      pool_.pop_back();
      return ws;
    }
  }
  auto ws = std::make_unique<Workspace>();
  ws->levels.resize(impl_->pre.size() + 1);
  return ws;
}

void Tokenizer::release(std::unique_ptr<Workspace> ws) const {
  std::lock_guard<std::mutex> lock(pool_mutex_);
  pool_.push_back(std::move(ws));
}

void Tokenizer::encode_into(std::string_view text, const EncodeOptions& opts, Workspace& ws,
                            std::vector<int32_t>& out) const {
  const Impl& im = *impl_;
  std::vector<int32_t>& core = ws.core;
  core.clear();
  im.split_added(text, im.raw_matcher, ws, ws.splits_raw);
  for (const Split& sp : ws.splits_raw) {
    if (sp.id >= 0) {
      core.push_back(sp.id);
      continue;
    }
    if (sp.end <= sp.start) continue;
    const std::string_view norm = im.normalize(text.substr(sp.start, sp.end - sp.start), ws);
    if (norm.empty()) continue;
    const bool at_origin = sp.start == 0;
    if (im.norm_matcher.empty()) {
      im.pretok(0, norm.data(), norm.size(), at_origin, ws, core);
      continue;
    }
    im.split_added(norm, im.norm_matcher, ws, ws.splits_norm);
    for (const Split& s2 : ws.splits_norm) {
      if (s2.id >= 0)
        core.push_back(s2.id);
      else if (s2.end > s2.start)
        im.pretok(0, norm.data() + s2.start, s2.end - s2.start, at_origin && s2.start == 0, ws,
                  core);
    }
  }

  size_t keep = core.size(), first = 0;
  if (opts.max_length >= 0) {
    const int64_t limit = opts.max_length - n_special(opts.add_special_tokens);
    if (limit < 0)
      throw std::invalid_argument("max_length is smaller than the special tokens added");
    if (static_cast<int64_t>(keep) > limit) {
      if (opts.truncate_left) first = keep - static_cast<size_t>(limit);
      keep = static_cast<size_t>(limit);
    }
  }
  out.clear();
  if (opts.add_special_tokens) out.insert(out.end(), prefix_.begin(), prefix_.end());
  out.insert(out.end(), core.begin() + first, core.begin() + first + keep);
  if (opts.add_special_tokens) out.insert(out.end(), suffix_.begin(), suffix_.end());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& opts) const {
  auto ws = acquire();
  std::vector<int32_t> out;
  try {
    encode_into(text, opts, *ws, out);
  } catch (...) {
    release(std::move(ws));
    throw;
  }
  release(std::move(ws));
  return out;
}

bool is_python_space(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

namespace {

// Python's text.split(): the runs of non-space code points.
void split_words(std::string_view text, std::vector<std::string_view>& words) {
  words.clear();
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t i = 0, start = 0;
  bool in_word = false;
  while (i < text.size()) {
    const size_t at = i;
    const uint32_t cp = decode_at(s, i);
    if (is_python_space(cp)) {
      if (in_word) words.push_back(text.substr(start, at - start));
      in_word = false;
    } else if (!in_word) {
      in_word = true;
      start = at;
    }
  }
  if (in_word) words.push_back(text.substr(start));
}

}  // namespace

void Tokenizer::run_batch(const std::vector<std::string_view>& texts, BatchMode mode,
                          const EncodeOptions& opts, std::string_view separator, int n_threads,
                          BatchResult& out) const {
  const size_t n = texts.size();
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const size_t chunk = std::max<size_t>(1, std::min<size_t>(64, n / (8 * n_threads) + 1));
  const int workers = static_cast<int>(std::min<size_t>(n_threads, (n + chunk - 1) / chunk));

  const bool counts_only = mode == BatchMode::Count || mode == BatchMode::DocCut;
  out.counts.assign(mode == BatchMode::Ids ? 0 : n, 0);
  if (mode == BatchMode::DocCut) {
    out.cut.assign(n, std::string());
    out.was_cut.assign(n, 0);
  }
  std::vector<int64_t> lens(counts_only ? 0 : n, 0);
  std::vector<int64_t> src_off(lens.size(), 0);
  std::vector<int32_t> src_worker(lens.size(), 0);
  std::vector<std::vector<int32_t>> bufs(std::max(workers, 1));
  std::atomic<size_t> next{0};
  std::vector<std::exception_ptr> errors(std::max(workers, 1));

  EncodeOptions pooled_opts = opts;
  pooled_opts.add_special_tokens = false;

  auto work = [&](int w) {
    std::unique_ptr<Workspace> ws;
    try {
      ws = acquire();
      std::vector<int32_t>& buf = bufs[w];
      std::vector<int32_t>& ids = ws->tmp;
      while (true) {
        const size_t begin = next.fetch_add(chunk);
        if (begin >= n) break;
        const size_t end = std::min(n, begin + chunk);
        for (size_t i = begin; i < end; ++i) {
          std::string_view text = texts[i];
          if (mode == BatchMode::Pooled || mode == BatchMode::Joined) {
            // parts = text.split(separator); ids of "".join(parts); count of parts[1]
            std::string_view pooled;
            size_t at = separator.empty() ? std::string_view::npos : text.find(separator);
            if (at != std::string_view::npos) {
              std::string& joined = ws->joined;
              joined.assign(text.data(), at);
              size_t from = at + separator.size();
              const size_t second = text.find(separator, from);
              pooled = text.substr(from, second == std::string_view::npos ? std::string_view::npos
                                                                            : second - from);
              while (true) {
                const size_t nxt = text.find(separator, from);
                if (nxt == std::string_view::npos) break;
                joined.append(text.data() + from, nxt - from);
                from = nxt + separator.size();
              }
              joined.append(text.data() + from, text.size() - from);
              if (mode == BatchMode::Pooled) {
                encode_into(pooled, pooled_opts, *ws, ids);
                out.counts[i] = static_cast<int64_t>(ids.size());
              }
              text = joined;
            } else {
              out.counts[i] = 0;
            }
          }
          encode_into(text, opts, *ws, ids);
          if (mode == BatchMode::DocCut) {
            int64_t count = static_cast<int64_t>(ids.size());
            if (count > opts.doc_max_length) {
              std::vector<std::string_view> words;
              split_words(text, words);
              const size_t n_words = words.size();
              std::string& cut = out.cut[i];
              while (count > opts.doc_max_length) {
                // Python: int(len(words) * (doc_max_length / n)), in doubles
                const double keep = static_cast<double>(words.size()) *
                                    (static_cast<double>(opts.doc_max_length) /
                                     static_cast<double>(count));
                words.resize(std::min(words.size(), static_cast<size_t>(keep)));
                std::string joined;
                for (size_t k = 0; k < words.size(); ++k) {
                  if (k) joined.push_back(' ');
                  joined.append(words[k]);
                }
                cut.swap(joined);
                // `words` view the original text, which is still alive; the cut text's words
                // are its first words
                encode_into(cut, opts, *ws, ids);
                count = static_cast<int64_t>(ids.size());
              }
              if (cut.empty() && n_words > 0) {
                // llm2vec-fast's one deviation from the official cut, which empties a
                // non-blank text (a long "word": a line without spaces): a prefix of the
                // text, in whole code points, within doc_max_length tokens. Found by
                // doubling a prefix of doc_max_length code points while it fits, then
                // bisecting (the Python fallback, llm2vec_fast.tokenizer.prefix_search,
                // probes the same lengths): it fits, and one more code point would not.
                const auto* s = reinterpret_cast<const unsigned char*>(text.data());
                std::vector<size_t> at;  // byte offset of each code point, then the end
                for (size_t b = 0; b < text.size(); b += utf8_len(s[b])) at.push_back(b);
                at.push_back(text.size());
                const size_t size = at.size() - 1;
                const int64_t limit = opts.doc_max_length;
                auto fits = [&](size_t m) {
                  encode_into(text.substr(0, at[m]), opts, *ws, ids);
                  return static_cast<int64_t>(ids.size()) <= limit;
                };
                size_t lo = 0;
                size_t hi = std::min(size, static_cast<size_t>(std::max<int64_t>(limit, 1)));
                while (hi < size && fits(hi)) {
                  lo = hi;
                  hi = std::min(size, 2 * hi);
                }
                while (hi - lo > 1) {
                  const size_t mid = lo + (hi - lo) / 2;
                  if (fits(mid))
                    lo = mid;
                  else
                    hi = mid;
                }
                cut.assign(text.data(), at[lo]);
                encode_into(cut, opts, *ws, ids);
                count = static_cast<int64_t>(ids.size());
              }
              out.was_cut[i] = 1;
            }
            out.counts[i] = count;
            continue;
          }
          if (mode == BatchMode::Count || mode == BatchMode::Joined)
            out.counts[i] = static_cast<int64_t>(ids.size());
          if (mode != BatchMode::Count) {
            lens[i] = static_cast<int64_t>(ids.size());
            src_off[i] = static_cast<int64_t>(buf.size());
            src_worker[i] = w;
            buf.insert(buf.end(), ids.begin(), ids.end());
          }
        }
      }
    } catch (...) {
      errors[w] = std::current_exception();
      next.store(n);  // stop the others early
    }
    if (ws) release(std::move(ws));
  };

  if (workers <= 1) {
    work(0);
  } else {
    std::vector<std::thread> threads;
    threads.reserve(workers - 1);
    for (int w = 1; w < workers; ++w) threads.emplace_back(work, w);
    work(0);
    for (auto& t : threads) t.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);

  if (counts_only) return;
  out.offsets.assign(n + 1, 0);
  for (size_t i = 0; i < n; ++i) out.offsets[i + 1] = out.offsets[i] + lens[i];
  out.ids.resize(static_cast<size_t>(out.offsets[n]));
  for (size_t i = 0; i < n; ++i) {
    if (lens[i] == 0) continue;
    const int32_t* src = bufs[src_worker[i]].data() + src_off[i];
    std::copy(src, src + lens[i], out.ids.begin() + out.offsets[i]);
  }
}

}  // namespace l2vf::tok
