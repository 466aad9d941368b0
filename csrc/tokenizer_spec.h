// What a tokenizer.json asks for, one struct per HF tokenizers stage: added tokens,
// normalizer steps, pre-tokenizer steps, the BPE model and the post-processor's special
// tokens. llm2vec_fast/tokenizer_json.py builds these (through the bindings) after checking
// that every component is one this tokenizer reproduces.
#pragma once

#include <cstdint>
#include <string>
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

}  // namespace l2vf::tok
