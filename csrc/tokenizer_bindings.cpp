// pybind11 bindings of the BPE tokenizer (bpe_tokenizer.h): llm2vec_fast._C.BPETokenizer.
// Checks happen here, with the GIL held: texts must be str (UTF-8 taken from Python's own
// cache, no copy for ASCII); lone surrogates are refused. Tokenisation runs without the GIL
// on C++ threads; the outputs are built afterwards, with the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "bpe_tokenizer.h"

namespace py = pybind11;
namespace tk = l2vf::tok;

namespace {

// Each step dict of d[key], by its "type", through `parse`.
template <typename Step, typename Parse>
std::vector<Step> steps_from(const py::dict& d, const char* key, Parse parse) {
  std::vector<Step> steps;
  for (auto item : d[key].cast<py::list>()) {
    const py::dict step = item.cast<py::dict>();
    steps.push_back(parse(step, step["type"].cast<std::string>()));
  }
  return steps;
}

tk::NormalizerStep normalizer_step(const py::dict& step, const std::string& kind) {
  tk::NormalizerStep s;
  if (kind == "prepend") {
    s.op = tk::NormOp::Prepend;
    s.a = step["prepend"].cast<std::string>();
  } else if (kind == "replace") {
    s.op = tk::NormOp::Replace;
    s.a = step["pattern"].cast<std::string>();
    s.b = step["content"].cast<std::string>();
  } else if (kind == "nfc") {
    s.op = tk::NormOp::Nfc;
  } else if (kind == "strip") {
    s.op = tk::NormOp::Strip;
    s.left = step["left"].cast<bool>();
    s.right = step["right"].cast<bool>();
  } else {
    throw py::value_error("unknown normalizer step '" + kind + "'");
  }
  return s;
}

tk::PreTokenizerStep pre_tokenizer_step(const py::dict& step, const std::string& kind) {
  tk::PreTokenizerStep s;
  if (kind == "byte_level") {
    s.op = tk::PreOp::ByteLevel;
    s.add_prefix_space = step["add_prefix_space"].cast<bool>();
    s.use_regex = step["use_regex"].cast<bool>();
  } else if (kind == "split_string" || kind == "split_regex") {
    s.op = kind == "split_string" ? tk::PreOp::SplitString : tk::PreOp::SplitRegex;
    if (kind == "split_string")
      s.pattern = step["pattern"].cast<std::string>();
    else
      s.regex = static_cast<tk::RegexKind>(step["regex"].cast<int>());
    s.behavior = static_cast<tk::Behavior>(step["behavior"].cast<int>());
    s.invert = step["invert"].cast<bool>();
  } else if (kind == "metaspace") {
    s.op = tk::PreOp::Metaspace;
    s.replacement = step["replacement"].cast<std::string>();
    s.prepend = static_cast<tk::PrependScheme>(step["prepend_scheme"].cast<int>());
    s.split = step["split"].cast<bool>();
  } else {
    throw py::value_error("unknown pre-tokenizer step '" + kind + "'");
  }
  return s;
}

// The spec dict built by llm2vec_fast/tokenizer_json.py -> TokenizerSpec.
tk::TokenizerSpec spec_from_dict(const py::dict& d) {
  tk::TokenizerSpec spec;
  for (auto item : d["added_tokens"].cast<py::list>()) {
    auto t = item.cast<std::tuple<std::string, int32_t, bool, bool, bool>>();
    spec.added_tokens.push_back(tk::AddedTokenSpec{std::get<0>(t), std::get<1>(t),
                                                   std::get<2>(t), std::get<3>(t),
                                                   std::get<4>(t)});
  }
  spec.normalizer = steps_from<tk::NormalizerStep>(d, "normalizer", normalizer_step);
  spec.pre_tokenizer = steps_from<tk::PreTokenizerStep>(d, "pre_tokenizer", pre_tokenizer_step);
  const py::dict vocab = d["vocab"].cast<py::dict>();
  spec.model.vocab.reserve(vocab.size());
  for (auto kv : vocab)
    spec.model.vocab.emplace_back(kv.first.cast<std::string>(), kv.second.cast<int32_t>());
  spec.model.merges = d["merges"].cast<std::vector<std::pair<std::string, std::string>>>();
  spec.model.unk_id = d["unk_id"].cast<int32_t>();
  spec.model.fuse_unk = d["fuse_unk"].cast<bool>();
  spec.model.byte_fallback = d["byte_fallback"].cast<bool>();
  spec.model.ignore_merges = d["ignore_merges"].cast<bool>();
  spec.prefix = d["prefix"].cast<std::vector<int32_t>>();
  spec.suffix = d["suffix"].cast<std::vector<int32_t>>();
  return spec;
}

// A sequence of str -> UTF-8 views. `keep` holds a tuple of the strings so that they live
// (and stay unchanged) while the GIL is released.
std::vector<std::string_view> utf8_views(py::handle texts, py::object& keep) {
  if (PyUnicode_Check(texts.ptr()))
    throw py::type_error("texts must be a sequence of str, got a single str");
  PyObject* tup = PySequence_Tuple(texts.ptr());
  if (tup == nullptr) throw py::error_already_set();
  keep = py::reinterpret_steal<py::object>(tup);
  const Py_ssize_t n = PyTuple_GET_SIZE(tup);
  std::vector<std::string_view> views(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PyTuple_GET_ITEM(tup, i);
    if (PyBytes_Check(item)) {  // UTF-8 bytes: checked strictly, then read in place
      char* data = nullptr;
      Py_ssize_t len = 0;
      if (PyBytes_AsStringAndSize(item, &data, &len) != 0) throw py::error_already_set();
      PyObject* decoded = PyUnicode_DecodeUTF8(data, len, "strict");
      if (decoded == nullptr) {
        py::error_already_set err;  // UnicodeDecodeError, with the byte position
        throw py::value_error("texts[" + std::to_string(i) +
                              "] is not valid UTF-8: " + std::string(err.what()));
      }
      Py_DECREF(decoded);
      views[static_cast<size_t>(i)] = std::string_view(data, static_cast<size_t>(len));
      continue;
    }
    if (!PyUnicode_Check(item))
      throw py::type_error("texts[" + std::to_string(i) + "] must be a str or UTF-8 bytes, got " +
                           std::string(Py_TYPE(item)->tp_name));
    Py_ssize_t len = 0;
    const char* data = PyUnicode_AsUTF8AndSize(item, &len);
    if (data == nullptr) {
      py::error_already_set err;  // UnicodeEncodeError: lone surrogates
      throw py::value_error("texts[" + std::to_string(i) +
                            "] is not valid Unicode (it cannot be encoded as UTF-8): " +
                            std::string(err.what()));
    }
    views[static_cast<size_t>(i)] = std::string_view(data, static_cast<size_t>(len));
  }
  return views;
}

py::list to_lists(const tk::BatchResult& r, size_t n) {
  py::list out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t b = r.offsets[i], e = r.offsets[i + 1];
    PyObject* row = PyList_New(static_cast<Py_ssize_t>(e - b));
    if (row == nullptr) throw py::error_already_set();
    for (int64_t k = b; k < e; ++k) {
      PyObject* v = PyLong_FromLong(r.ids[static_cast<size_t>(k)]);
      if (v == nullptr) {
        Py_DECREF(row);
        throw py::error_already_set();
      }
      PyList_SET_ITEM(row, static_cast<Py_ssize_t>(k - b), v);
    }
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), row);
  }
  return out;
}

template <typename T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
  return a;
}

class PyTokenizer {
 public:
  explicit PyTokenizer(const py::dict& spec) {
    tk::TokenizerSpec s = spec_from_dict(spec);
    py::gil_scoped_release nogil;
    tok_ = std::make_unique<tk::Tokenizer>(s);
  }

  // -> list[list[int]], or (ids int32 [total], offsets int64 [n + 1]) with as_arrays
  py::object encode_batch(py::handle texts, bool add_special_tokens, int64_t max_length,
                          bool truncate_left, int num_threads, bool as_arrays) const {
    tk::BatchResult r = run(texts, tk::BatchMode::Ids, add_special_tokens, max_length,
                            truncate_left, "", num_threads);
    const size_t n = r.offsets.empty() ? 0 : r.offsets.size() - 1;
    if (as_arrays) return py::make_tuple(to_array(r.ids), to_array(r.offsets));
    return to_lists(r, n);
  }

  py::array_t<int64_t> count(py::handle texts, bool add_special_tokens, int64_t max_length,
                             bool truncate_left, int num_threads) const {
    tk::BatchResult r = run(texts, tk::BatchMode::Count, add_special_tokens, max_length,
                            truncate_left, "", num_threads);
    return to_array(r.counts);
  }

  py::tuple encode_pooled(py::handle texts, const std::string& separator, int64_t max_length,
                          bool truncate_left, int num_threads, bool as_arrays,
                          bool count_pooled) const {
    if (separator.empty()) throw py::value_error("separator must not be empty");
    tk::BatchResult r =
        run(texts, count_pooled ? tk::BatchMode::Pooled : tk::BatchMode::Joined, true,
            max_length, truncate_left, separator, num_threads);
    const size_t n = r.counts.size();
    if (as_arrays) return py::make_tuple(to_array(r.ids), to_array(r.offsets), to_array(r.counts));
    return py::make_tuple(to_lists(r, n), to_array(r.counts));
  }

  // -> (counts int64 [n], list of the cut texts, None where a text was not cut)
  py::tuple doc_cut(py::handle texts, int64_t doc_max_length, int64_t max_length,
                    bool truncate_left, int num_threads) const {
    if (doc_max_length < 0) throw py::value_error("doc_max_length must be >= 0");
    tk::BatchResult r = run(texts, tk::BatchMode::DocCut, false, max_length, truncate_left, "",
                            num_threads, doc_max_length);
    const size_t n = r.counts.size();
    py::list cut(n);
    for (size_t i = 0; i < n; ++i) {
      if (r.was_cut[i]) {
        PyObject* str = PyUnicode_DecodeUTF8(r.cut[i].data(),
                                             static_cast<Py_ssize_t>(r.cut[i].size()), "strict");
        if (str == nullptr) throw py::error_already_set();
        PyList_SET_ITEM(cut.ptr(), static_cast<Py_ssize_t>(i), str);
      } else {
        PyList_SET_ITEM(cut.ptr(), static_cast<Py_ssize_t>(i), Py_NewRef(Py_None));
      }
    }
    return py::make_tuple(to_array(r.counts), cut);
  }

  int64_t n_special(bool add_special_tokens) const { return tok_->n_special(add_special_tokens); }

 private:
  tk::BatchResult run(py::handle texts, tk::BatchMode mode, bool add_special_tokens,
                      int64_t max_length, bool truncate_left, const std::string& separator,
                      int num_threads, int64_t doc_max_length = -1) const {
    py::object keep;
    const std::vector<std::string_view> views = utf8_views(texts, keep);
    tk::EncodeOptions opts;
    opts.add_special_tokens = add_special_tokens;
    opts.max_length = max_length;
    opts.truncate_left = truncate_left;
    opts.doc_max_length = doc_max_length;
    if (max_length >= 0 && max_length < tok_->n_special(add_special_tokens))
      throw py::value_error("max_length=" + std::to_string(max_length) +
                            " is smaller than the " +
                            std::to_string(tok_->n_special(add_special_tokens)) +
                            " special tokens the post-processor adds");
    tk::BatchResult r;
    {
      py::gil_scoped_release nogil;
      tok_->run_batch(views, mode, opts, separator, num_threads, r);
    }
    if (mode != tk::BatchMode::Count && r.offsets.empty()) r.offsets.assign(1, 0);
    return r;
  }

  std::unique_ptr<tk::Tokenizer> tok_;
};

}  // namespace

void register_tokenizer(py::module_& m) {
  py::class_<PyTokenizer>(m, "BPETokenizer", R"doc(The C++ BPE tokenizer.

Build it with llm2vec_fast.Tokenizer (which reads tokenizer.json and checks what it
asks for); the spec dict is that module's internal format.)doc")
      .def(py::init<const py::dict&>(), py::arg("spec"))
      .def("encode_batch", &PyTokenizer::encode_batch, py::arg("texts"),
           py::arg("add_special_tokens") = true, py::kw_only(), py::arg("max_length") = -1,
           py::arg("truncate_left") = false, py::arg("num_threads") = 0,
           py::arg("as_arrays") = false,
           "texts: sequence of str -> list[list[int]] (or (ids int32, offsets int64 [n+1]))")
      .def("count", &PyTokenizer::count, py::arg("texts"), py::arg("add_special_tokens") = true,
           py::kw_only(), py::arg("max_length") = -1, py::arg("truncate_left") = false,
           py::arg("num_threads") = 0, "number of ids of each text, int64 [n]")
      .def("encode_pooled", &PyTokenizer::encode_pooled, py::arg("texts"),
           py::arg("separator"), py::kw_only(), py::arg("max_length") = -1,
           py::arg("truncate_left") = false, py::arg("num_threads") = 0,
           py::arg("as_arrays") = false, py::arg("count_pooled") = true,
           R"doc(Each text is parts joined by separator: the ids of the parts concatenated
(special tokens added, truncated to max_length), and the number of ids of parts[1] alone
(no special tokens, capped at max_length; 0 without a separator; with count_pooled=False,
the number of ids of the whole). Returns (ids lists, counts int64 [n]) or (ids int32,
offsets int64 [n+1], counts int64 [n]).)doc")
      .def("doc_cut", &PyTokenizer::doc_cut, py::arg("texts"), py::arg("doc_max_length"),
           py::kw_only(), py::arg("max_length") = -1, py::arg("truncate_left") = false,
           py::arg("num_threads") = 0,
           R"doc(The official llm2vec doc_max_length cut of each text (no special tokens, counts
capped at max_length), except that a non-blank text it would empty is cut to a prefix within
doc_max_length tokens: (final counts int64 [n], the cut texts, None where not cut).)doc")
      .def("n_special", &PyTokenizer::n_special, py::arg("add_special_tokens") = true);
}
