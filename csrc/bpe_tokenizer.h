// A BPE tokenizer that reproduces HF `tokenizers` (0.23) ids for the configurations
// LLM2Vec models use: byte-level BPE (GPT-2, Llama-3, Qwen2 pre-tokenisation) and
// SentencePiece-style BPE with byte fallback (Llama-2, Mistral, Gemma).
//
// The pipeline is HF's, step by step, for one text, one file per stage:
//   1. added tokens that are not normalised are cut out of the raw text (leftmost-longest,
//      with their lstrip / rstrip) (added_vocabulary.h);
//   2. every other piece is normalised (Prepend, Replace, Strip, NFC) (normalizer.h), then
//      the normalised added tokens are cut out of it;
//   3. pre-tokenisers split the pieces (Split with a string or one of the known regexes,
//      Metaspace, ByteLevel), empty pieces dropped (pre_tokenizer.h);
//   4. each piece goes through the BPE model (rank-ordered merges, byte fallback, unk fusing,
//      ignore_merges), with a per-thread cache of short pieces (bpe_model.h);
//   5. truncation, then the post-processor's special tokens around the sequence
//      (post_processor.h).
// This file wires them (bpe_tokenizer.cpp) and runs batches on threads, with the
// llm2vec-specific batch modes (tokenizer_batch.cpp). Parsing tokenizer.json and refusing
// what is not supported happen in Python (llm2vec_fast/tokenizer_json.py); the tokenizer
// gets a checked TokenizerSpec (tokenizer_spec.h).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer_spec.h"

namespace l2vf::tok {

// What a batch call computes for each text.
enum class BatchMode : int {
  Ids = 0,     // the ids
  Count = 1,   // only the number of ids
  Pooled = 2,  // text = parts joined by `separator`: ids of the parts concatenated, and
               // the count of parts[1] alone (no special tokens, capped at max_length)
  Joined = 3,  // as Pooled, without the count (counts = number of ids)
  DocCut = 4,  // the official llm2vec doc_max_length cut (EncodeOptions::doc_max_length):
               // n = the count (capped at max_length); while n > doc_max_length keep the
               // first int(words * (doc_max_length / n)) words of Python's str.split(),
               // joined by one space, and count again. Where that empties a non-blank text
               // (no spaces: a single long "word"), a prefix of the text within
               // doc_max_length tokens instead (llm2vec-fast's deviation; see run_batch).
               // counts = the final n; cut[i] = the cut text and was_cut[i] = 1 when the
               // text changed.
};

struct BatchResult {
  std::vector<int32_t> ids;      // all ids back to back (Ids, Pooled)
  std::vector<int64_t> offsets;  // [n + 1] (Ids, Pooled)
  std::vector<int64_t> counts;   // [n] (Count, Joined: number of ids; Pooled: pooled count)
  std::vector<std::string> cut;  // [n] (DocCut: the cut text, empty where not cut)
  std::vector<uint8_t> was_cut;  // [n] (DocCut)
};

// Python's str.isspace() for one code point (the separators of str.split()).
bool is_python_space(uint32_t cp);

struct Workspace;  // per-thread scratch buffers and BPE cache (tokenizer_impl.h)

class Tokenizer {
 public:
  // Throws std::invalid_argument when the spec is inconsistent (a merge of tokens that are
  // not in the vocabulary, an id out of range...).
  explicit Tokenizer(const TokenizerSpec& spec);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Texts must be valid UTF-8. Runs on `n_threads` threads (<= 0: all cores).
  void run_batch(const std::vector<std::string_view>& texts, BatchMode mode,
                 const EncodeOptions& opts, std::string_view separator, int n_threads,
                 BatchResult& out) const;

  // One text (the calling thread only).
  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opts) const;

  // The number of special tokens the post-processor adds.
  int64_t n_special(bool add_special_tokens) const;

  struct Impl;

 private:
  void encode_into(std::string_view text, const EncodeOptions& opts, Workspace& ws,
                   std::vector<int32_t>& out) const;
  std::unique_ptr<Workspace> acquire() const;
  void release(std::unique_ptr<Workspace> ws) const;

  std::unique_ptr<Impl> impl_;
  mutable std::mutex pool_mutex_;
  mutable std::vector<std::unique_ptr<Workspace>> pool_;
};

}  // namespace l2vf::tok
