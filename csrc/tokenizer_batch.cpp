// Tokenizer::run_batch: many texts on threads, with the llm2vec batch modes (bpe_tokenizer.h,
// BatchMode): the instruction join and pooled count, and the doc_max_length cut.
#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>

#include "bpe_tokenizer.h"
#include "text.h"
#include "tokenizer_impl.h"

namespace l2vf::tok {

bool is_python_space(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

namespace {

// Python's text.split(): the runs of non-space code points.
void split_words(std::string_view text, std::vector<std::string_view>& words) {
  words.clear();
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t i = 0, start = 0;
  bool in_word = false;
  while (i < text.size()) {
    const size_t at = i;
    const uint32_t cp = decode_at(s, i);
    if (is_python_space(cp)) {
      if (in_word) words.push_back(text.substr(start, at - start));
      in_word = false;
    } else if (!in_word) {
      in_word = true;
      start = at;
    }
  }
  if (in_word) words.push_back(text.substr(start));
}

}  // namespace

void Tokenizer::run_batch(const std::vector<std::string_view>& texts, BatchMode mode,
                          const EncodeOptions& opts, std::string_view separator, int n_threads,
                          BatchResult& out) const {
  const size_t n = texts.size();
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const size_t chunk = std::max<size_t>(1, std::min<size_t>(64, n / (8 * n_threads) + 1));
  const int workers = static_cast<int>(std::min<size_t>(n_threads, (n + chunk - 1) / chunk));

  const bool counts_only = mode == BatchMode::Count || mode == BatchMode::DocCut;
  out.counts.assign(mode == BatchMode::Ids ? 0 : n, 0);
  if (mode == BatchMode::DocCut) {
    out.cut.assign(n, std::string());
    out.was_cut.assign(n, 0);
  }
  std::vector<int64_t> lens(counts_only ? 0 : n, 0);
  std::vector<int64_t> src_off(lens.size(), 0);
  std::vector<int32_t> src_worker(lens.size(), 0);
  std::vector<std::vector<int32_t>> bufs(std::max(workers, 1));
  std::atomic<size_t> next{0};
  std::vector<std::exception_ptr> errors(std::max(workers, 1));

  EncodeOptions pooled_opts = opts;
  pooled_opts.add_special_tokens = false;

  auto work = [&](int w) {
    std::unique_ptr<Workspace> ws;
    try {
      ws = acquire();
      std::vector<int32_t>& buf = bufs[w];
      std::vector<int32_t>& ids = ws->tmp;
      while (true) {
        const size_t begin = next.fetch_add(chunk);
        if (begin >= n) break;
        const size_t end = std::min(n, begin + chunk);
        for (size_t i = begin; i < end; ++i) {
          std::string_view text = texts[i];
          if (mode == BatchMode::Pooled || mode == BatchMode::Joined) {
            // parts = text.split(separator); ids of "".join(parts); count of parts[1]
            std::string_view pooled;
            size_t at = separator.empty() ? std::string_view::npos : text.find(separator);
            if (at != std::string_view::npos) {
              std::string& joined = ws->joined;
              joined.assign(text.data(), at);
              size_t from = at + separator.size();
              const size_t second = text.find(separator, from);
              pooled = text.substr(from, second == std::string_view::npos ? std::string_view::npos
                                                                            : second - from);
              while (true) {
                const size_t nxt = text.find(separator, from);
                if (nxt == std::string_view::npos) break;
                joined.append(text.data() + from, nxt - from);
                from = nxt + separator.size();
              }
              joined.append(text.data() + from, text.size() - from);
              if (mode == BatchMode::Pooled) {
                encode_into(pooled, pooled_opts, *ws, ids);
                out.counts[i] = static_cast<int64_t>(ids.size());
              }
              text = joined;
            } else {
              out.counts[i] = 0;
            }
          }
          encode_into(text, opts, *ws, ids);
          if (mode == BatchMode::DocCut) {
            int64_t count = static_cast<int64_t>(ids.size());
            if (count > opts.doc_max_length) {
              std::vector<std::string_view> words;
              split_words(text, words);
              const size_t n_words = words.size();
              std::string& cut = out.cut[i];
              while (count > opts.doc_max_length) {
                // Python: int(len(words) * (doc_max_length / n)), in doubles
                const double keep = static_cast<double>(words.size()) *
                                    (static_cast<double>(opts.doc_max_length) /
                                     static_cast<double>(count));
                words.resize(std::min(words.size(), static_cast<size_t>(keep)));
                std::string joined;
                for (size_t k = 0; k < words.size(); ++k) {
                  if (k) joined.push_back(' ');
                  joined.append(words[k]);
                }
                cut.swap(joined);
                // `words` view the original text, which is still alive; the cut text's words
                // are its first words
                encode_into(cut, opts, *ws, ids);
                count = static_cast<int64_t>(ids.size());
              }
              if (cut.empty() && n_words > 0) {
                // llm2vec-fast's one deviation from the official cut, which empties a
                // non-blank text (a long "word": a line without spaces): a prefix of the
                // text, in whole code points, within doc_max_length tokens. Found by
                // doubling a prefix of doc_max_length code points while it fits, then
                // bisecting (the Python fallback, llm2vec_fast.tokenizer.prefix_search,
                // probes the same lengths): it fits, and one more code point would not.
                const auto* s = reinterpret_cast<const unsigned char*>(text.data());
                std::vector<size_t> at;  // byte offset of each code point, then the end
                for (size_t b = 0; b < text.size(); b += utf8_len(s[b])) at.push_back(b);
                at.push_back(text.size());
                const size_t size = at.size() - 1;
                const int64_t limit = opts.doc_max_length;
                auto fits = [&](size_t m) {
                  encode_into(text.substr(0, at[m]), opts, *ws, ids);
                  return static_cast<int64_t>(ids.size()) <= limit;
                };
                size_t lo = 0;
                size_t hi = std::min(size, static_cast<size_t>(std::max<int64_t>(limit, 1)));
                while (hi < size && fits(hi)) {
                  lo = hi;
                  hi = std::min(size, 2 * hi);
                }
                while (hi - lo > 1) {
                  const size_t mid = lo + (hi - lo) / 2;
                  if (fits(mid))
                    lo = mid;
                  else
                    hi = mid;
                }
                cut.assign(text.data(), at[lo]);
                encode_into(cut, opts, *ws, ids);
                count = static_cast<int64_t>(ids.size());
              }
              out.was_cut[i] = 1;
            }
            out.counts[i] = count;
            continue;
          }
          if (mode == BatchMode::Count || mode == BatchMode::Joined)
            out.counts[i] = static_cast<int64_t>(ids.size());
          if (mode != BatchMode::Count) {
            lens[i] = static_cast<int64_t>(ids.size());
            src_off[i] = static_cast<int64_t>(buf.size());
            src_worker[i] = w;
            buf.insert(buf.end(), ids.begin(), ids.end());
          }
        }
      }
    } catch (...) {
      errors[w] = std::current_exception();
      next.store(n);  // stop the others early
    }
    if (ws) release(std::move(ws));
  };

  if (workers <= 1) {
    work(0);
  } else {
    std::vector<std::thread> threads;
    threads.reserve(workers - 1);
    for (int w = 1; w < workers; ++w) threads.emplace_back(work, w);
    work(0);
    for (auto& t : threads) t.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);

  if (counts_only) return;
  out.offsets.assign(n + 1, 0);
  for (size_t i = 0; i < n; ++i) out.offsets[i + 1] = out.offsets[i] + lens[i];
  out.ids.resize(static_cast<size_t>(out.offsets[n]));
  for (size_t i = 0; i < n; ++i) {
    if (lens[i] == 0) continue;
    const int32_t* src = bufs[src_worker[i]].data() + src_off[i];
    std::copy(src, src + lens[i], out.ids.begin() + out.offsets[i]);
  }
}

}  // namespace l2vf::tok
