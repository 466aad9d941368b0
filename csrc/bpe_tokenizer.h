// A BPE tokenizer that reproduces HF `tokenizers` (0.23) ids for the configurations
// LLM2Vec models use: byte-level BPE (GPT-2, Llama-3, Qwen2 pre-tokenisation) and
// SentencePiece-style BPE with byte fallback (Llama-2, Mistral, Gemma).
//
// The pipeline is HF's, step by step, for one text:
//   1. added tokens that are not normalised are cut out of the raw text (leftmost-longest,
//      with their lstrip / rstrip);
//   2. every other piece is normalised (Prepend, Replace, Strip, NFC), then the normalised added
//      tokens are cut out of it;
//   3. pre-tokenisers split the pieces (Split with a string or one of the known regexes,
//      Metaspace, ByteLevel), empty pieces dropped;
//   4. each piece goes through the BPE model (rank-ordered merges, byte fallback, unk fusing,
//      ignore_merges), with a per-thread cache of short pieces;
//   5. truncation, then the post-processor's special tokens around the sequence.
// Parsing tokenizer.json and refusing what is not supported happen in Python
// (llm2vec_fast/tokenizer.py); this file gets a checked TokenizerSpec.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace l2vf::tok {

struct AddedTokenSpec {
  std::string content;  // non-empty; for normalized tokens, the normalised content
  int32_t id = 0;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;  // matched in the normalised text (else in the raw text)
};

enum class NormOp : int { Prepend = 0, Replace = 1, Strip = 2, Nfc = 3 };

struct NormalizerStep {
  NormOp op = NormOp::Prepend;
  std::string a;  // Prepend: the prefix; Replace: the literal pattern (non-empty)
  std::string b;  // Replace: the content
  bool left = false, right = false;  // Strip
};

// HF SplitDelimiterBehavior
enum class Behavior : int {
  Removed = 0,
  Isolated = 1,
  MergedWithPrevious = 2,
  MergedWithNext = 3,
  Contiguous = 4
};

enum class PreOp : int { ByteLevel = 0, SplitString = 1, SplitRegex = 2, Metaspace = 3 };

// The pre-tokenisation regexes we match with hand-written code (Oniguruma semantics):
//   Gpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   Llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//           ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   Qwen2:  the Llama3 pattern with \p{N} instead of \p{N}{1,3}
enum class RegexKind : int { Gpt2 = 0, Llama3 = 1, Qwen2 = 2 };

enum class PrependScheme : int { Always = 0, First = 1, Never = 2 };

struct PreTokenizerStep {
  PreOp op = PreOp::ByteLevel;
  bool add_prefix_space = false;  // ByteLevel
  bool use_regex = false;         // ByteLevel: split with the Gpt2 regex
  std::string pattern;            // SplitString
  RegexKind regex = RegexKind::Gpt2;  // SplitRegex
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
  std::string replacement;  // Metaspace (one character, UTF-8)
  PrependScheme prepend = PrependScheme::Always;
  bool split = false;
};

struct ModelSpec {
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  int32_t unk_id = -1;  // -1: no unk token (unknown characters are dropped, as HF does)
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

struct TokenizerSpec {
  std::vector<AddedTokenSpec> added_tokens;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;  // ByteLevel, when present, comes last
  ModelSpec model;
  std::vector<int32_t> prefix;  // post-processor: ids before the sequence
  std::vector<int32_t> suffix;  // and after it
};

struct EncodeOptions {
  bool add_special_tokens = true;
  int64_t max_length = -1;  // < 0: no truncation
  bool truncate_left = false;
  int64_t doc_max_length = -1;  // BatchMode::DocCut only
};

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

struct Workspace;  // per-thread scratch buffers and BPE cache (bpe_tokenizer.cpp)

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

  int64_t n_special(bool add_special_tokens) const {
    return add_special_tokens ? static_cast<int64_t>(prefix_.size() + suffix_.size()) : 0;
  }

  struct Impl;

 private:
  void encode_into(std::string_view text, const EncodeOptions& opts, Workspace& ws,
                   std::vector<int32_t>& out) const;
  std::unique_ptr<Workspace> acquire() const;
  void release(std::unique_ptr<Workspace> ws) const;

  std::unique_ptr<Impl> impl_;
  std::vector<int32_t> prefix_, suffix_;
  mutable std::mutex pool_mutex_;
  mutable std::vector<std::unique_ptr<Workspace>> pool_;
};

}  // namespace l2vf::tok
