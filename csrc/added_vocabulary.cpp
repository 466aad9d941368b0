// Added tokens (added_vocabulary.h).
#include "added_vocabulary.h"

#include <stdexcept>

#include "text.h"

namespace l2vf::tok {

AddedVocabulary::AddedVocabulary(const std::vector<AddedTokenSpec>& tokens) : added_(tokens) {
  for (size_t k = 0; k < added_.size(); ++k) {
    const AddedTokenSpec& t = added_[k];
    if (t.content.empty()) throw std::invalid_argument("empty added token");
    (t.normalized ? norm_matcher_ : raw_matcher_).add(t.content, k);
  }
}

void AddedVocabulary::split(std::string_view s, bool normalized, std::vector<Split>& matches,
                            std::vector<Split>& out) const {
  const AddedMatcher& matcher = normalized ? norm_matcher_ : raw_matcher_;
  out.clear();
  if (s.empty()) return;
  if (matcher.empty()) {
    out.push_back(Split{0, s.size(), -1});
    return;
  }
  matcher.find(s, matches);
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t start_offset = 0;
  for (const Split& m : matches) {
    const AddedTokenSpec& tok = added_[static_cast<size_t>(m.id)];
    size_t start = m.start, stop = m.end;
    if (tok.lstrip) start = std::max(skip_spaces_back(p, start, 0), start_offset);
    if (tok.rstrip) stop = skip_spaces(p, stop, s.size());
    if (start_offset < start) out.push_back(Split{start_offset, start, -1});
    out.push_back(Split{start, stop, tok.id});
    start_offset = stop;
  }
  if (start_offset != s.size()) out.push_back(Split{start_offset, s.size(), -1});
}

}  // namespace l2vf::tok
