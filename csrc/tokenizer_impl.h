// The tokenizer's stages and per-thread scratch (internal to bpe_tokenizer.cpp and
// tokenizer_batch.cpp).
#pragma once

#include <string>
#include <vector>

#include "added_vocabulary.h"
#include "bpe_model.h"
#include "bpe_tokenizer.h"
#include "normalizer.h"
#include "post_processor.h"
#include "pre_tokenizer.h"

namespace l2vf::tok {

struct Workspace {
  ModelScratch model;
  std::vector<Level> levels;  // one per pre-tokeniser step, and one more
  NormalizerScratch norm;
  std::vector<Split> matches, splits_raw, splits_norm;
  std::vector<int32_t> core, tmp;
  std::string joined;
};

struct Tokenizer::Impl {
  // The stages are built (and their specs checked) in this order.
  explicit Impl(const TokenizerSpec& spec)
      : pre(spec.pre_tokenizer),
        normalizer(spec.normalizer),
        model(spec.model, pre.byte_level()),
        added(spec.added_tokens),
        post(spec.prefix, spec.suffix) {}

  PreTokenizer pre;
  Normalizer normalizer;
  BpeModel model;
  AddedVocabulary added;
  PostProcessor post;
};

}  // namespace l2vf::tok
