// The tokenizer: its stages wired for one text (bpe_tokenizer.h has the pipeline), and the
// pool of per-thread workspaces.
#include "bpe_tokenizer.h"

#include "tokenizer_impl.h"

namespace l2vf::tok {

namespace {

// Each pre-tokenised piece straight into the BPE model.
class ModelSink final : public PieceSink {
 public:
  ModelSink(const BpeModel& model, ModelScratch& scratch, std::vector<int32_t>& out)
      : model_(model), scratch_(scratch), out_(out) {}
  void piece(const char* p, size_t n) override { model_.tokenize(p, n, scratch_, out_); }

 private:
  const BpeModel& model_;
  ModelScratch& scratch_;
  std::vector<int32_t>& out_;
};

}  // namespace

Tokenizer::Tokenizer(const TokenizerSpec& spec) : impl_(std::make_unique<Impl>(spec)) {}

Tokenizer::~Tokenizer() = default;

int64_t Tokenizer::n_special(bool add_special_tokens) const {
  return impl_->post.n_special(add_special_tokens);
}

std::unique_ptr<Workspace> Tokenizer::acquire() const {
  {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    if (!pool_.empty()) {
      auto ws = std::move(pool_.back());
      pool_.pop_back();
      return ws;
    }
  }
  auto ws = std::make_unique<Workspace>();
  ws->levels.resize(impl_->pre.levels());
  return ws;
}

void Tokenizer::release(std::unique_ptr<Workspace> ws) const {
  std::lock_guard<std::mutex> lock(pool_mutex_);
  pool_.push_back(std::move(ws));
}

void Tokenizer::encode_into(std::string_view text, const EncodeOptions& opts, Workspace& ws,
                            std::vector<int32_t>& out) const {
  const Impl& im = *impl_;
  std::vector<int32_t>& core = ws.core;
  core.clear();
  ModelSink sink(im.model, ws.model, core);
  im.added.split(text, false, ws.matches, ws.splits_raw);
  for (const Split& sp : ws.splits_raw) {
    if (sp.id >= 0) {
      core.push_back(sp.id);
      continue;
    }
    if (sp.end <= sp.start) continue;
    const std::string_view norm =
        im.normalizer.apply(text.substr(sp.start, sp.end - sp.start), ws.norm);
    if (norm.empty()) continue;
    const bool at_origin = sp.start == 0;
    if (!im.added.has_normalized()) {
      im.pre.run(norm.data(), norm.size(), at_origin, ws.levels, sink);
      continue;
    }
    im.added.split(norm, true, ws.matches, ws.splits_norm);
    for (const Split& s2 : ws.splits_norm) {
      if (s2.id >= 0)
        core.push_back(s2.id);
      else if (s2.end > s2.start)
        im.pre.run(norm.data() + s2.start, s2.end - s2.start, at_origin && s2.start == 0,
                   ws.levels, sink);
    }
  }
  im.post.apply(core, opts, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& opts) const {
  auto ws = acquire();
  std::vector<int32_t> out;
  try {
    encode_into(text, opts, *ws, out);
  } catch (...) {
    release(std::move(ws));
    throw;
  }
  release(std::move(ws));
  return out;
}

}  // namespace l2vf::tok
