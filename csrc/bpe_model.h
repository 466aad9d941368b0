// The BPE model (HF models::bpe): each pre-tokenised piece -> ids, by rank-ordered merges,
// with byte fallback, unk fusing and ignore_merges, and a per-thread cache of short pieces.
// In byte mode (a ByteLevel pre-tokenizer) pieces are raw bytes, each standing for its
// character of GPT-2's byte alphabet; otherwise pieces are UTF-8 characters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "hash_tables.h"
#include "tokenizer_spec.h"

namespace l2vf::tok {

struct ModelScratch {  // per thread
  WordCache cache;
  std::vector<int32_t> syms, ranks, merged;
  struct Node {
    int32_t id, prev, next;
  };
  std::vector<Node> nodes;
};

class BpeModel {
 public:
  // Throws std::invalid_argument when the spec is inconsistent (a negative id, a merge of
  // tokens that are not in the vocabulary or into one that is not).
  BpeModel(const ModelSpec& spec, bool byte_mode);

  // The ids of one piece, appended to `out`.
  void tokenize(const char* p, size_t n, ModelScratch& ws, std::vector<int32_t>& out) const;

 private:
  void word(const char* p, size_t n, ModelScratch& ws, std::vector<int32_t>& out) const;
  void merge_word(const char* p, size_t n, ModelScratch& ws) const;
  int32_t rank_of(int32_t a, int32_t b, int32_t& merged) const;
  void merge_small(ModelScratch& ws) const;
  void merge_heap(ModelScratch& ws) const;

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
  bool split_words = false;  // see tokenize()
  static constexpr char kMeta[4] = "\xE2\x96\x81";  // U+2581, SentencePiece's space
};

}  // namespace l2vf::tok
