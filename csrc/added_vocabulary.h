// Added tokens (HF AddedVocabulary): cut out of the text before the other stages see it,
// leftmost-longest over a byte trie, with their lstrip / rstrip. Tokens that are not
// normalised are matched in the raw text, the others in each normalised piece.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer_spec.h"

namespace l2vf::tok {

struct Split {
  size_t start, end;
  int32_t id;  // -1: not an added token
};

class AddedMatcher {
 public:
  AddedMatcher() : nodes_(1) { std::fill(std::begin(root_), std::end(root_), -1); }

  void add(std::string_view content, size_t token) {
    int32_t node = 0;
    for (size_t k = 0; k < content.size(); ++k) {
      const uint8_t byte = static_cast<uint8_t>(content[k]);
      int32_t child = child_of(node, byte);
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_.push_back(Node{});
        if (node == 0)
          root_[byte] = child;
        else
          nodes_[node].children.emplace_back(byte, child);
      }
      node = child;
    }
    nodes_[node].token = static_cast<int32_t>(token);
  }
  bool empty() const { return nodes_.size() == 1; }

  // Non-overlapping leftmost-longest matches: (start, end, token index).
  void find(std::string_view s, std::vector<Split>& out) const {
    out.clear();
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
      int32_t node = root_[p[i]];
      if (node < 0) {
        ++i;
        continue;
      }
      int32_t best = -1;
      size_t best_end = 0;
      size_t j = i + 1;
      while (true) {
        if (nodes_[node].token >= 0) {
          best = nodes_[node].token;
          best_end = j;
        }
        if (j >= n) break;
        node = child_of(node, p[j]);
        if (node < 0) break;
        ++j;
      }
      if (best >= 0) {
        out.push_back(Split{i, best_end, best});
        i = best_end;
      } else {
        ++i;
      }
    }
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;
    int32_t token = -1;
  };
  int32_t child_of(int32_t node, uint8_t byte) const {
    if (node == 0) return root_[byte];
    for (const auto& c : nodes_[node].children)
      if (c.first == byte) return c.second;
    return -1;
  }
  std::vector<Node> nodes_;
  int32_t root_[256];
};

class AddedVocabulary {
 public:
  // Throws std::invalid_argument on an empty token.
  explicit AddedVocabulary(const std::vector<AddedTokenSpec>& tokens);

  bool has_normalized() const { return !norm_matcher_.empty(); }

  // HF AddedVocabulary::find_matches: `s` cut into the added tokens (id >= 0) of one kind
  // (`normalized` or raw) and the text between them (id -1). `matches` is scratch.
  void split(std::string_view s, bool normalized, std::vector<Split>& matches,
             std::vector<Split>& out) const;

 private:
  std::vector<AddedTokenSpec> added_;
  AddedMatcher raw_matcher_, norm_matcher_;
};

}  // namespace l2vf::tok
