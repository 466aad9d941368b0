// pybind11 module llm2vec_fast._C: thin bindings over the packer core
// (packer.h has the semantics). Checks happen here, at the boundary; the
// packing itself runs with the GIL released on plain C++ buffers, and the
// output numpy arrays are allocated with the GIL held and filled without it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "packer.h"

namespace py = pybind11;

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

bool is_integer_kind(const py::array& arr) {
  const char kind = arr.dtype().kind();
  return kind == 'i' || kind == 'u' || kind == 'b';
}

// Any 1-D integer array-like -> C-contiguous int64 array (no copy when it is one).
I64Array as_int64_1d(py::handle obj, const std::string& name) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(name + " must be a 1-D array of integers");
  if (arr.ndim() != 1)
    throw py::value_error(name + " must be 1-D, got " + std::to_string(arr.ndim()) + " dims");
  if (arr.size() > 0 && !is_integer_kind(arr))
    throw py::type_error(name + " must hold integers, got dtype " +
                         py::str(arr.dtype()).cast<std::string>());
  return I64Array::ensure(arr);
}

[[noreturn]] void bad_id(long long v, const std::string& where) {
  if (v < 0)
    throw py::value_error("token ids must be >= 0, but " + where + " = " + std::to_string(v) +
                          " is negative");
  throw py::value_error("token ids must fit in int32, but " + where + " = " + std::to_string(v) +
                        " is too large");
}

std::string at(int64_t i, int64_t j) {
  return "token_ids[" + std::to_string(i) + "][" + std::to_string(j) + "]";
}

// One Python object -> token id. Accepts what Python treats as an int
// (int, bool, numpy integers via __index__).
inline int32_t to_id(PyObject* item, int64_t i, int64_t j) {
  long long v;
  if (PyLong_Check(item)) {
    int overflow = 0;
    v = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (overflow != 0)
      throw py::value_error("token ids must fit in int32, but " + at(i, j) + " = " +
                            py::repr(item).cast<std::string>() + " is out of range");
  } else if (PyIndex_Check(item)) {
    v = PyLong_AsLongLong(item);
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
  } else {
    throw py::type_error(at(i, j) + " must be an int, got " +
                         std::string(Py_TYPE(item)->tp_name));
  }
  if (v < 0 || v > kInt32Max) bad_id(v, at(i, j));
  return static_cast<int32_t>(v);
}

// Sequence of token-id sequences -> flat ids + offsets [n + 1].
void flatten_rows(py::handle token_ids, std::vector<int32_t>& ids,
                  std::vector<int64_t>& offsets) {
  if (PyUnicode_Check(token_ids.ptr()) || PyBytes_Check(token_ids.ptr()))
    throw py::type_error("token_ids must be a sequence of token-id sequences, got a string");
  PyObject* outer_raw = PySequence_Fast(
      token_ids.ptr(),
      "token_ids must be a sequence of token-id sequences (or a flat integer array with offsets)");
  if (outer_raw == nullptr) throw py::error_already_set();
  py::object outer = py::reinterpret_steal<py::object>(outer_raw);
  const int64_t n = PySequence_Fast_GET_SIZE(outer_raw);
  PyObject** rows = PySequence_Fast_ITEMS(outer_raw);

  offsets.assign(n + 1, 0);
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (PyList_Check(rows[i]) || PyTuple_Check(rows[i])) total += Py_SIZE(rows[i]);
  }
  ids.clear();
  ids.reserve(total);

  for (int64_t i = 0; i < n; ++i) {
    PyObject* row = rows[i];
    if (PyUnicode_Check(row) || PyBytes_Check(row))
      throw py::type_error("token_ids[" + std::to_string(i) +
                           "] is a string; expected a sequence of token ids (tokenize first)");
    if (py::isinstance<py::array>(row)) {
      I64Array arr = as_int64_1d(row, "token_ids[" + std::to_string(i) + "]");
      const int64_t* p = arr.data();
      for (int64_t j = 0; j < arr.size(); ++j) {
        if (p[j] < 0 || p[j] > kInt32Max) bad_id(p[j], at(i, j));
        ids.push_back(static_cast<int32_t>(p[j]));
      }
    } else {
      PyObject* inner_raw = PySequence_Fast(
          row, ("token_ids[" + std::to_string(i) + "] must be a sequence of ints").c_str());
      if (inner_raw == nullptr) throw py::error_already_set();
      py::object inner = py::reinterpret_steal<py::object>(inner_raw);
      const int64_t len = PySequence_Fast_GET_SIZE(inner_raw);
      PyObject** items = PySequence_Fast_ITEMS(inner_raw);
      for (int64_t j = 0; j < len; ++j) ids.push_back(to_id(items[j], i, j));
    }
    offsets[i + 1] = static_cast<int64_t>(ids.size());
  }
}

template <typename T>
T* alloc(std::vector<py::array>& keep, int64_t n) {
  py::array_t<T> arr(static_cast<py::ssize_t>(n));
  T* p = arr.mutable_data();
  keep.push_back(std::move(arr));
  return p;
}

// The shared path: valid options, flat ids (int32, contiguous), offsets,
// pool lengths -> list of dicts of numpy arrays.
py::list pack_flat(const int32_t* ids, int64_t n_ids, bool check_ids, const int64_t* offsets,
                   int64_t n_texts, const I64Array& pool_lengths, const l2vf::PackOptions& opts) {
  const int64_t* pool = pool_lengths.data();
  l2vf::validate_pool_lengths(pool, pool_lengths.size(), n_texts);

  l2vf::PackPlan plan;
  {
    py::gil_scoped_release nogil;
    l2vf::validate_offsets(offsets, n_texts, n_ids);
    if (check_ids) l2vf::validate_ids(ids, n_ids);
    plan = l2vf::plan_batches(offsets, n_texts, opts);
  }

  const int64_t n_batches = plan.n_batches();
  std::vector<py::array> keep;
  keep.reserve(5 * n_batches);
  std::vector<l2vf::BatchBuffers> buffers(n_batches);
  for (int64_t b = 0; b < n_batches; ++b) {
    const int64_t size = plan.batch_size(b);
    const int64_t tokens = plan.batch_tokens[b];
    buffers[b].indices = alloc<int64_t>(keep, size);
    buffers[b].input_ids = alloc<int32_t>(keep, tokens);
    buffers[b].cu_seqlens = alloc<int32_t>(keep, size + 1);
    buffers[b].position_ids = alloc<int32_t>(keep, tokens);
    buffers[b].pool_mask = alloc<uint8_t>(keep, tokens);
  }

  std::vector<int32_t> max_seqlen(n_batches);
  {
    py::gil_scoped_release nogil;
    for (int64_t b = 0; b < n_batches; ++b)
      max_seqlen[b] = l2vf::fill_batch(plan, b, ids, offsets, pool, buffers[b]);
  }

  const py::str k_indices("indices"), k_input_ids("input_ids"), k_cu_seqlens("cu_seqlens"),
      k_position_ids("position_ids"), k_pool_mask("pool_mask"), k_max_seqlen("max_seqlen");
  py::list out(n_batches);
  for (int64_t b = 0; b < n_batches; ++b) {
    py::dict d;
    d[k_indices] = keep[5 * b];
    d[k_input_ids] = keep[5 * b + 1];
    d[k_cu_seqlens] = keep[5 * b + 2];
    d[k_position_ids] = keep[5 * b + 3];
    d[k_pool_mask] = keep[5 * b + 4];
    d[k_max_seqlen] = py::int_(max_seqlen[b]);
    out[b] = std::move(d);
  }
  return out;
}

py::list pack(py::handle token_ids, py::handle pool_lengths, int64_t max_length,
              int64_t max_tokens_per_batch, int64_t max_batch_size, py::handle offsets) {
  l2vf::PackOptions opts;
  opts.max_length = max_length;
  opts.max_tokens_per_batch = max_tokens_per_batch;
  opts.max_batch_size = max_batch_size;
  l2vf::validate_options(opts);

  if (offsets.is_none()) {  // list form
    std::vector<int32_t> ids;
    std::vector<int64_t> offs;
    flatten_rows(token_ids, ids, offs);
    const I64Array pool = as_int64_1d(pool_lengths, "pool_lengths");
    return pack_flat(ids.data(), static_cast<int64_t>(ids.size()), /*check_ids=*/false,
                     offs.data(), static_cast<int64_t>(offs.size()) - 1, pool, opts);
  }

  // flat form: int32 ids (zero-copy when already int32 and contiguous)
  py::array ids_any = py::array::ensure(token_ids);
  if (!ids_any || ids_any.ndim() != 1)
    throw py::value_error("with offsets, token_ids must be a flat 1-D integer array");
  if (ids_any.size() > 0 && !is_integer_kind(ids_any))
    throw py::type_error("token_ids must hold integers, got dtype " +
                         py::str(ids_any.dtype()).cast<std::string>());
  I32Array ids32;
  bool check_ids = true;
  if (ids_any.dtype().kind() == 'i' && ids_any.dtype().itemsize() == 4) {
    ids32 = I32Array::ensure(ids_any);
  } else {
    const I64Array ids64 = as_int64_1d(ids_any, "token_ids");
    ids32 = I32Array(ids64.size());
    int32_t* dst = ids32.mutable_data();
    const int64_t* src = ids64.data();
    for (int64_t k = 0; k < ids64.size(); ++k) {
      if (src[k] < 0 || src[k] > kInt32Max)
        bad_id(src[k], "token_ids[" + std::to_string(k) + "]");
      dst[k] = static_cast<int32_t>(src[k]);
    }
    check_ids = false;
  }
  const I64Array offs = as_int64_1d(offsets, "offsets");
  if (offs.size() < 1) throw py::value_error("offsets must have n_texts + 1 >= 1 entries");
  const I64Array pool = as_int64_1d(pool_lengths, "pool_lengths");
  return pack_flat(ids32.data(), ids32.size(), check_ids, offs.data(), offs.size() - 1, pool,
                   opts);
}

}  // namespace

void register_tokenizer(py::module_& m);  // tokenizer_bindings.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "llm2vec_fast C++ extension: the packer (token ids -> padding-free batches) and the BPE "
      "tokenizer.";
  register_tokenizer(m);
  m.def("pack", &pack, py::arg("token_ids"), py::arg("pool_lengths"), py::kw_only(),
        py::arg("max_length"), py::arg("max_tokens_per_batch"), py::arg("max_batch_size") = 0,
        py::arg("offsets") = py::none(),
        R"doc(Pack token-id sequences into padding-free batches under a token budget.

token_ids: list of int sequences (one per text), or, with ``offsets``, a flat
    1-D integer array (int32 is the zero-copy fast path).
offsets: None, or int64 [n + 1]: text i is token_ids[offsets[i]:offsets[i+1]].
pool_lengths: int [n], tokens pooled at the end of each truncated text.
max_length: right truncation (<= 0: none). max_tokens_per_batch: token budget
    (> 0). max_batch_size: text-count limit (<= 0: none).

Texts are sorted by truncated length, longest first (stable), and cut greedily.
Returns a list of dicts: indices int64 [b], input_ids int32 [total],
cu_seqlens int32 [b + 1], position_ids int32 [total], pool_mask uint8 [total],
max_seqlen int. Raises ValueError on bad values, TypeError on bad types.)doc");
}
