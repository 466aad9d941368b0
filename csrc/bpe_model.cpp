// The BPE model (bpe_model.h).
#include "bpe_model.h"

#include <climits>
#include <cstdio>
#include <cstring>
#include <queue>
#include <stdexcept>
#include <string>
#include <string_view>

#include "text.h"

namespace l2vf::tok {

namespace {

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

constexpr int32_t kNoRank = INT32_MAX;

}  // namespace

BpeModel::BpeModel(const ModelSpec& ms, bool byte_level) : byte_mode(byte_level) {
  unk_id = ms.unk_id;
  fuse_unk = ms.fuse_unk;
  byte_fallback = ms.byte_fallback;
  ignore_merges = ms.ignore_merges;
  vocab.reserve(ms.vocab.size());
  for (const auto& [token, id] : ms.vocab) {
    if (id < 0) throw std::invalid_argument("negative token id for '" + token + "'");
    vocab.set(token, id);
  }

  merges.reserve(ms.merges.size());
  std::string joined;
  for (size_t r = 0; r < ms.merges.size(); ++r) {
    const auto& [a, b] = ms.merges[r];
    const int32_t* ia = vocab.find(a);
    const int32_t* ib = vocab.find(b);
    if (ia == nullptr || ib == nullptr)
      throw std::invalid_argument("merge " + std::to_string(r) + " ('" + a + "' '" + b +
                                  "') uses a token that is not in the vocabulary");
    joined.assign(a).append(b);
    const int32_t* ij = vocab.find(joined);
    if (ij == nullptr)
      throw std::invalid_argument("merge " + std::to_string(r) + " makes '" + joined +
                                  "', which is not in the vocabulary");
    merges.set(*ia, *ib, static_cast<int32_t>(r), *ij);
  }

  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    const int32_t* id = vocab.find(name);
    fallback_ids[b] = id ? *id : -1;
  }
  if (byte_mode) {
    // the byte alphabet: raw byte -> its character, and back
    std::vector<int32_t> char_to_byte(512, -1);
    for (int b = 0; b < 256; ++b) {
      const uint32_t ch = byte_to_char(static_cast<uint8_t>(b));
      char_to_byte[ch] = b;
      std::string utf8;
      encode_utf8(ch, utf8);
      const int32_t* id = vocab.find(utf8);
      byte_ids[b] = id ? *id : -1;
      bool all = true;
      std::vector<int32_t> fb;
      for (unsigned char u : utf8) {
        all = all && fallback_ids[u] >= 0;
        fb.push_back(fallback_ids[u]);
      }
      if (all) byte_char_fallback[b] = fb;
    }
    // tokens spelled in the alphabet, keyed by their raw bytes (for ignore_merges)
    raw_vocab.reserve(ms.vocab.size());
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
      if (ok) raw_vocab.set(raw, id);
    }
  } else {
    bmp_ids.assign(0x10000, -1);
    for (const auto& [token, id] : ms.vocab) {
      if (token.empty()) continue;
      const auto* s = reinterpret_cast<const unsigned char*>(token.data());
      size_t i = 0;
      const uint32_t cp = decode_at(s, i);
      if (i == token.size() && cp < 0x10000) bmp_ids[cp] = *vocab.find(token);
    }
  }

  if (!byte_mode && !ignore_merges && vocab.find(kMeta) != nullptr) {
    // SentencePiece-style: split long pieces into words when no token holds a '▁' right
    // after another character (then no merge can join across such a point).
    split_words = true;
    for (const auto& [token, id] : ms.vocab) {
      for (size_t k = 1; k + 3 <= token.size() && split_words; ++k) {
        if (std::memcmp(token.data() + k, kMeta, 3) != 0) continue;
        // the character before position k
        size_t b = k - 1;
        while (b > 0 && (static_cast<unsigned char>(token[b]) & 0xC0) == 0x80) --b;
        if (k - b != 3 || std::memcmp(token.data() + b, kMeta, 3) != 0)
          split_words = false;
      }
      if (!split_words) break;
    }
  }
}

// one piece
void BpeModel::tokenize(const char* p, size_t n, ModelScratch& ws,
                        std::vector<int32_t>& out) const {
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
void BpeModel::word(const char* p, size_t n, ModelScratch& ws,
                    std::vector<int32_t>& out) const {
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
void BpeModel::merge_word(const char* p, size_t n, ModelScratch& ws) const {
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

inline int32_t BpeModel::rank_of(int32_t a, int32_t b, int32_t& merged) const {
  int32_t rank;
  return merges.find(a, b, rank, merged) ? rank : kNoRank;
}

// Short words: repeatedly merge the lowest-ranked pair, leftmost first. This is what HF's
// priority queue does (ranks first, then positions).
void BpeModel::merge_small(ModelScratch& ws) const {
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
void BpeModel::merge_heap(ModelScratch& ws) const {
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
    ModelScratch::Node& cur = nodes[top.pos];
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

}  // namespace l2vf::tok
