// Packer: token-id lists -> padding-free packed batches under a token budget.
//
// Plain C++17, no Python and no libtorch; the pybind11 binding lives in
// bindings.cpp. Every function here may run with the GIL released.
//
// Semantics (the Python fallback in llm2vec_fast/packing.py matches them
// exactly; tests/test_packing.py checks it):
//
//   input    n texts, text i = ids[offsets[i] .. offsets[i+1]) (int32, >= 0),
//            pool_lengths[i] >= 0: how many tokens at the END of text i's
//            truncated sequence are pooled.
//   truncate len_i = offsets[i+1] - offsets[i], cut to max_length when
//            max_length > 0 (right truncation: the first max_length ids stay).
//   sort     texts by len_i, longest first; STABLE (equal lengths keep their
//            input order).
//   cut      greedily, in sorted order: a text joins the current batch while
//            the batch's total tokens stay <= max_tokens_per_batch and its text
//            count stays <= max_batch_size (<= 0: no count limit). A text
//            longer than the budget goes alone in its own batch. Empty texts
//            are allowed (they sort last and cost no tokens).
//   batch    indices      int64 [b]      input position of each text, batch order
//            input_ids    int32 [total]  the texts back to back
//            cu_seqlens   int32 [b + 1]  prefix sums of the lengths, from 0
//            position_ids int32 [total]  0 .. len-1 inside each text
//            pool_mask    uint8 [total]  1 on the last min(pool_lengths[i], len_i)
//                                        tokens of text i, 0 elsewhere
//            max_seqlen   int            longest text in the batch (0 if all empty)
//
// Bad input throws std::invalid_argument (ValueError in Python).
#pragma once

#include <cstdint>
#include <vector>

namespace l2vf {

struct PackOptions {
  int64_t max_length = 0;            // <= 0: no truncation
  int64_t max_tokens_per_batch = 0;  // 1 .. INT32_MAX
  int64_t max_batch_size = 0;        // <= 0: no count limit
};

// Where every text goes; computed before any output is allocated.
struct PackPlan {
  std::vector<int32_t> lengths;       // [n_texts] truncated length, input order
  std::vector<int64_t> order;         // [n_texts] input positions, sorted
  std::vector<int64_t> batch_starts;  // [n_batches + 1] offsets into `order`
  std::vector<int64_t> batch_tokens;  // [n_batches] total tokens per batch

  int64_t n_batches() const { return static_cast<int64_t>(batch_tokens.size()); }
  int64_t batch_size(int64_t b) const { return batch_starts[b + 1] - batch_starts[b]; }
};

// Output buffers of one batch, sized from the plan (batch_size(b) and
// batch_tokens[b]); the caller owns them.
struct BatchBuffers {
  int64_t* indices;       // [b]
  int32_t* input_ids;     // [total]
  int32_t* cu_seqlens;    // [b + 1]
  int32_t* position_ids;  // [total]
  uint8_t* pool_mask;     // [total]
};

// Throw std::invalid_argument when an option is out of range.
void validate_options(const PackOptions& opts);

// Throw std::invalid_argument unless offsets[0] == 0, offsets is
// non-decreasing and offsets[n_texts] == n_ids.
void validate_offsets(const int64_t* offsets, int64_t n_texts, int64_t n_ids);

// Throw std::invalid_argument on the first negative id.
void validate_ids(const int32_t* ids, int64_t n_ids);

// Throw std::invalid_argument unless n_pool == n_texts and all are >= 0.
void validate_pool_lengths(const int64_t* pool_lengths, int64_t n_pool, int64_t n_texts);

// Truncate, sort and cut into batches. Inputs must be valid.
PackPlan plan_batches(const int64_t* offsets, int64_t n_texts, const PackOptions& opts);

// Fill batch b's buffers; returns its max_seqlen.
int32_t fill_batch(const PackPlan& plan, int64_t b, const int32_t* ids, const int64_t* offsets,
                   const int64_t* pool_lengths, const BatchBuffers& out);

}  // namespace l2vf
