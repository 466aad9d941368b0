// The pre-tokenizer (HF pre_tokenizers): Split (a literal string or one of the known
// regexes, with HF's split behaviours), Metaspace and ByteLevel (last), in the order the
// tokenizer.json's Sequence gives. It runs depth first: each piece that comes out of the
// last step goes to a PieceSink (the BPE model) before the next piece is cut.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer_spec.h"

namespace l2vf::tok {

struct Segment {
  size_t start, end;
  bool match;
};

struct Level {  // scratch of one pre-tokeniser step (the steps recurse)
  std::string buf;
  std::vector<uint32_t> cps;
  std::vector<uint32_t> pos;
  std::vector<Segment> segs;
  std::vector<std::pair<size_t, size_t>> pieces;
};

// Takes each final piece; it must not keep the pointer.
class PieceSink {
 public:
  virtual void piece(const char* p, size_t n) = 0;

 protected:
  ~PieceSink() = default;
};

class PreTokenizer {
 public:
  // Throws std::invalid_argument when ByteLevel is not last, or a Metaspace replacement or
  // a Split pattern is empty.
  explicit PreTokenizer(const std::vector<PreTokenizerStep>& steps);

  bool byte_level() const { return byte_level_; }  // ByteLevel is the last step
  size_t levels() const { return steps_.size() + 1; }  // the scratch levels run() needs

  // Cuts p[0, n) and hands the pieces to `sink` in order. `at_origin`: the piece starts the
  // text (for Metaspace's prepend_scheme "first").
  void run(const char* p, size_t n, bool at_origin, std::vector<Level>& levels,
           PieceSink& sink) const {
    step(0, p, n, at_origin, levels, sink);
  }

 private:
  void step(size_t k, const char* p, size_t n, bool at_origin, std::vector<Level>& levels,
            PieceSink& sink) const;

  std::vector<PreTokenizerStep> steps_;
  bool byte_level_ = false;
};

}  // namespace l2vf::tok
