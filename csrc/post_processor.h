// The post-processor (HF processors: TemplateProcessing, RobertaProcessing, BertProcessing,
// reduced to the special-token ids before and after a single sequence), with the
// truncation that comes before it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

#include "tokenizer_spec.h"

namespace l2vf::tok {

class PostProcessor {
 public:
  PostProcessor(std::vector<int32_t> prefix, std::vector<int32_t> suffix)
      : prefix_(std::move(prefix)), suffix_(std::move(suffix)) {}

  int64_t n_special(bool add_special_tokens) const {
    return add_special_tokens ? static_cast<int64_t>(prefix_.size() + suffix_.size()) : 0;
  }

  // out = the special tokens around `ids`, truncated so that the whole fits max_length.
  // Throws std::invalid_argument when max_length leaves no room for the special tokens.
  void apply(const std::vector<int32_t>& ids, const EncodeOptions& opts,
             std::vector<int32_t>& out) const {
    size_t keep = ids.size(), first = 0;
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
    out.insert(out.end(), ids.begin() + first, ids.begin() + first + keep);
    if (opts.add_special_tokens) out.insert(out.end(), suffix_.begin(), suffix_.end());
  }

 private:
  std::vector<int32_t> prefix_, suffix_;
};

}  // namespace l2vf::tok
