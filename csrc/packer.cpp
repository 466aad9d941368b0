// Packer core; semantics in packer.h.
#include "packer.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

namespace l2vf {

namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

// Input positions sorted by length, longest first, stable. Counting sort when
// the longest length is small against n (the usual case: lengths <= a few
// thousand), std::stable_sort otherwise.
std::vector<int64_t> sort_by_length_desc(const std::vector<int32_t>& lengths) {
  const int64_t n = static_cast<int64_t>(lengths.size());
  std::vector<int64_t> order(n);
  if (n == 0) return order;
  const int32_t longest = *std::max_element(lengths.begin(), lengths.end());
  if (static_cast<int64_t>(longest) <= std::max<int64_t>(int64_t{1} << 16, 4 * n)) {
    // slot[len] = first output position for texts of that length; longer first.
    std::vector<int64_t> slot(static_cast<size_t>(longest) + 2, 0);
    for (int32_t len : lengths) ++slot[len];
    int64_t next = 0;
    for (int64_t len = longest; len >= 0; --len) {
      const int64_t count = slot[len];
      slot[len] = next;
      next += count;
    }
    for (int64_t i = 0; i < n; ++i) order[slot[lengths[i]]++] = i;
  } else {
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  }
  return order;
}

}  // namespace

void validate_options(const PackOptions& opts) {
  if (opts.max_tokens_per_batch <= 0)
    fail("max_tokens_per_batch must be > 0, got " + std::to_string(opts.max_tokens_per_batch));
  if (opts.max_tokens_per_batch > kInt32Max)
    fail("max_tokens_per_batch must fit in int32 (<= 2147483647), got " +
         std::to_string(opts.max_tokens_per_batch));
}

void validate_offsets(const int64_t* offsets, int64_t n_texts, int64_t n_ids) {
  if (offsets[0] != 0) fail("offsets[0] must be 0, got " + std::to_string(offsets[0]));
  for (int64_t i = 0; i < n_texts; ++i) {
    if (offsets[i + 1] < offsets[i])
      fail("offsets must be non-decreasing, but offsets[" + std::to_string(i + 1) +
           "] = " + std::to_string(offsets[i + 1]) + " < offsets[" + std::to_string(i) +
           "] = " + std::to_string(offsets[i]));
  }
  if (offsets[n_texts] != n_ids)
    fail("offsets[-1] must equal len(token_ids) = " + std::to_string(n_ids) + ", got " +
         std::to_string(offsets[n_texts]));
}

void validate_ids(const int32_t* ids, int64_t n_ids) {
  for (int64_t k = 0; k < n_ids; ++k) {
    if (ids[k] < 0)
      fail("token ids must be >= 0, but token_ids[" + std::to_string(k) +
           "] = " + std::to_string(ids[k]) + " is negative");
  }
}

void validate_pool_lengths(const int64_t* pool_lengths, int64_t n_pool, int64_t n_texts) {
  if (n_pool != n_texts)
    fail("pool_lengths has " + std::to_string(n_pool) + " entries but there are " +
         std::to_string(n_texts) + " texts");
  for (int64_t i = 0; i < n_pool; ++i) {
    if (pool_lengths[i] < 0)
      fail("pool_lengths must be >= 0, but pool_lengths[" + std::to_string(i) +
           "] = " + std::to_string(pool_lengths[i]) + " is negative");
  }
}

PackPlan plan_batches(const int64_t* offsets, int64_t n_texts, const PackOptions& opts) {
  PackPlan plan;
  plan.lengths.resize(n_texts);
  for (int64_t i = 0; i < n_texts; ++i) {
    int64_t len = offsets[i + 1] - offsets[i];
    if (opts.max_length > 0 && len > opts.max_length) len = opts.max_length;
    if (len > kInt32Max)
      fail("text " + std::to_string(i) + " has " + std::to_string(len) +
           " tokens after truncation; at most 2147483647 fit in int32 cu_seqlens");
    plan.lengths[i] = static_cast<int32_t>(len);
  }
  plan.order = sort_by_length_desc(plan.lengths);

  const int64_t budget = opts.max_tokens_per_batch;
  const int64_t max_count = opts.max_batch_size;
  int64_t tokens = 0;
  int64_t count = 0;
  plan.batch_starts.push_back(0);
  for (int64_t k = 0; k < n_texts; ++k) {
    const int64_t len = plan.lengths[plan.order[k]];
    if (count > 0 && (tokens + len > budget || (max_count > 0 && count >= max_count))) {
      plan.batch_starts.push_back(k);
      plan.batch_tokens.push_back(tokens);
      tokens = 0;
      count = 0;
    }
    tokens += len;
    ++count;
  }
  if (count > 0) {
    plan.batch_starts.push_back(n_texts);
    plan.batch_tokens.push_back(tokens);
  }
  return plan;
}

int32_t fill_batch(const PackPlan& plan, int64_t b, const int32_t* ids, const int64_t* offsets,
                   const int64_t* pool_lengths, const BatchBuffers& out) {
  const int64_t first = plan.batch_starts[b];
  const int64_t size = plan.batch_size(b);
  int32_t pos = 0;  // < batch_tokens[b] <= INT32_MAX (or one text <= INT32_MAX)
  int32_t max_seqlen = 0;
  out.cu_seqlens[0] = 0;
  for (int64_t j = 0; j < size; ++j) {
    const int64_t i = plan.order[first + j];
    const int32_t len = plan.lengths[i];
    const int32_t n_pool = static_cast<int32_t>(std::min<int64_t>(pool_lengths[i], len));
    out.indices[j] = i;
    if (len > 0) {
      std::memcpy(out.input_ids + pos, ids + offsets[i], sizeof(int32_t) * len);
      std::iota(out.position_ids + pos, out.position_ids + pos + len, int32_t{0});
      std::memset(out.pool_mask + pos, 0, static_cast<size_t>(len - n_pool));
      std::memset(out.pool_mask + pos + (len - n_pool), 1, static_cast<size_t>(n_pool));
    }
    pos += len;
    out.cu_seqlens[j + 1] = pos;
    max_seqlen = std::max(max_seqlen, len);
  }
  return max_seqlen;
}

}  // namespace l2vf
