// The normalizer (HF normalizers): Prepend, Replace (a literal string), Strip and NFC, in
// the order the tokenizer.json's Sequence gives.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer_spec.h"

namespace l2vf::tok {

struct NormalizerScratch {  // per thread
  std::string a, b;  // the steps write into these in turn
  std::vector<uint32_t> nfc_buf;
};

class Normalizer {
 public:
  // Throws std::invalid_argument on a Replace with an empty pattern.
  explicit Normalizer(const std::vector<NormalizerStep>& steps);

  // A view of the normalised piece: into `scratch`, or into `s` when no step changed it
  // (or only Strip did).
  std::string_view apply(std::string_view s, NormalizerScratch& scratch) const;

 private:
  std::vector<NormalizerStep> steps_;
};

}  // namespace l2vf::tok
