// The pre-tokenizer (pre_tokenizer.h) and its regexes.
#include "pre_tokenizer.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string_view>

#include "text.h"

namespace l2vf::tok {

namespace {

// the pre-tokenisation regexes (tokenizer_spec.h spells them out), leftmost-first like
// Oniguruma. Every position starts a match, so the matches tile the piece.

inline bool is_cr_lf(uint32_t c) { return c == '\r' || c == '\n'; }

// the end of the run of characters of one class that starts at i
template <bool (*kIn)(uint32_t)>
inline size_t run_while(const uint32_t* c, size_t i, size_t n) {
  while (i < n && kIn(c[i])) ++i;
  return i;
}
constexpr auto run_while_letter = run_while<is_letter>;
constexpr auto run_while_number = run_while<is_number>;
constexpr auto run_while_other = run_while<is_other>;
constexpr auto run_while_space = run_while<is_space>;

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
    case Behavior::Contiguous:  // a segment joins the previous one of the same kind
    case Behavior::MergedWithPrevious: {  // a match joins the non-match before it
      const bool contiguous = behavior == Behavior::Contiguous;
      bool previous = false;
      for (const Segment& s : segs) {
        const bool join = contiguous ? s.match == previous : s.match && !previous;
        if (join && !out.empty())
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

// `s` tiled into the occurrences of `pattern` (match = !invert) and the gaps between them
// (match = invert); no empty gaps.
void split_literal(std::string_view s, std::string_view pattern, bool invert,
                   std::vector<Segment>& segs) {
  segs.clear();
  size_t from = 0;
  while (true) {
    const size_t at = s.find(pattern, from);
    if (at == std::string_view::npos) break;
    if (at > from) segs.push_back(Segment{from, at, invert});
    segs.push_back(Segment{at, at + pattern.size(), !invert});
    from = at + pattern.size();
  }
  if (from < s.size()) segs.push_back(Segment{from, s.size(), invert});
}

// UTF-8 -> code points, with the byte offset of each (and of the end)
void decode(const char* p, size_t n, Level& lv) {
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

}  // namespace

PreTokenizer::PreTokenizer(const std::vector<PreTokenizerStep>& steps) : steps_(steps) {
  for (size_t k = 0; k < steps_.size(); ++k) {
    if (steps_[k].op == PreOp::ByteLevel) {
      if (k + 1 != steps_.size())
        throw std::invalid_argument("ByteLevel must be the last pre-tokenizer");
      byte_level_ = true;
    }
    if (steps_[k].op == PreOp::Metaspace && steps_[k].replacement.empty())
      throw std::invalid_argument("Metaspace replacement must not be empty");
    if (steps_[k].op == PreOp::SplitString && steps_[k].pattern.empty())
      throw std::invalid_argument("Split pattern must not be empty");
  }
}

void PreTokenizer::step(size_t k, const char* p, size_t n, bool at_origin,
                        std::vector<Level>& levels, PieceSink& sink) const {
  if (n == 0) return;
  if (k == steps_.size()) {
    sink.piece(p, n);
    return;
  }
  const PreTokenizerStep& op = steps_[k];
  Level& lv = levels[k];
  switch (op.op) {
    case PreOp::ByteLevel: {  // always the last step
      if (op.add_prefix_space && p[0] != ' ') {
        lv.buf.assign(1, ' ');
        lv.buf.append(p, n);
        p = lv.buf.data();
        n = lv.buf.size();
      }
      if (!op.use_regex) {
        sink.piece(p, n);
        return;
      }
      decode(p, n, lv);
      const uint32_t* c = lv.cps.data();
      const size_t m = lv.cps.size();
      for (size_t i = 0; i < m;) {
        const size_t e = match_gpt2(c, i, m);
        sink.piece(p + lv.pos[i], lv.pos[e] - lv.pos[i]);
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
      split_literal(std::string_view(p, n), op.pattern, op.invert, lv.segs);
      apply_behavior(lv.segs, op.behavior, lv.pieces);
      break;
    }
    case PreOp::Metaspace: {
      lv.buf.clear();
      const std::string& rep = op.replacement;
      for (size_t q = 0; q < n; ++q) {
        if (p[q] == ' ')
          lv.buf.append(rep);
        else
          lv.buf.push_back(p[q]);
      }
      const bool starts = lv.buf.compare(0, rep.size(), rep) == 0;
      if (!starts && (op.prepend == PrependScheme::Always ||
                      (op.prepend == PrependScheme::First && at_origin)))
        lv.buf.insert(0, rep);
      if (!op.split) {
        step(k + 1, lv.buf.data(), lv.buf.size(), at_origin, levels, sink);
        return;
      }
      // split on each replacement character, MergedWithNext
      split_literal(lv.buf, rep, false, lv.segs);
      apply_behavior(lv.segs, Behavior::MergedWithNext, lv.pieces);
      p = lv.buf.data();
      break;
    }
  }
  for (const auto& [b, e] : lv.pieces)
    step(k + 1, p + b, e - b, at_origin && b == 0, levels, sink);
}

}  // namespace l2vf::tok
