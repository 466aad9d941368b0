// The hash tables of the BPE model: the vocabulary (string -> id), the merges ((id, id) ->
// (rank, merged id)) and the per-thread cache of tokenised pieces. Header-only: their
// lookups are the model's inner loop.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace l2vf::tok {

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

inline size_t pow2_at_least(size_t n) {
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

}  // namespace l2vf::tok
