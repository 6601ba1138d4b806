// kiln._kiln: the C++ runtime seen from Python. Conversions only; the logic lives in libkiln.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <cstring>

#include "kiln/engine.h"
#include "kiln/generate.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using ArrayIn = nb::ndarray<nb::ro>;  // any device and strides: checked below to say what is wrong

std::optional<kiln::DType> to_kiln(nb::dlpack::dtype d) {
  using Code = nb::dlpack::dtype_code;
  if (d.lanes != 1) return std::nullopt;
  switch (static_cast<Code>(d.code)) {
    case Code::Float:
      if (d.bits == 32) return kiln::DType::Float32;
      if (d.bits == 16) return kiln::DType::Float16;
      break;
    case Code::Bfloat:
      if (d.bits == 16) return kiln::DType::BFloat16;
      break;
    case Code::Int:
      if (d.bits == 64) return kiln::DType::Int64;
      if (d.bits == 32) return kiln::DType::Int32;
      break;
    case Code::UInt:
      if (d.bits == 8) return kiln::DType::UInt8;
      break;
    case Code::Bool:
      if (d.bits == 8) return kiln::DType::Bool;
      break;
    default:
      break;
  }
  return std::nullopt;
}

std::string dlpack_name(nb::dlpack::dtype d) {
  using Code = nb::dlpack::dtype_code;
  std::string bits = std::to_string(d.bits);
  switch (static_cast<Code>(d.code)) {
    case Code::Int: return "int" + bits;
    case Code::UInt: return "uint" + bits;
    case Code::Float: return "float" + bits;
    case Code::Bfloat: return "bfloat" + bits;
    case Code::Complex: return "complex" + bits;
    case Code::Bool: return "bool";
    default: return "dlpack type code " + std::to_string(d.code) + " with " + bits + " bits";  // float8 kinds, ...
  }
}

nb::dlpack::dtype to_dlpack(kiln::DType d) {
  switch (d) {
    case kiln::DType::Float32: return nb::dtype<float>();
    case kiln::DType::Float16: return {static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
    case kiln::DType::BFloat16: return {static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
    case kiln::DType::Int64: return nb::dtype<int64_t>();
    case kiln::DType::Int32: return nb::dtype<int32_t>();
    case kiln::DType::Bool: return nb::dtype<bool>();
    case kiln::DType::UInt8: return nb::dtype<uint8_t>();
  }
  return nb::dtype<float>();
}

const kiln::TensorSpec* find_spec(const kiln::Engine& e, const std::string& name) {
  for (const auto& s : e.inputs()) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

[[noreturn]] void input_error(const kiln::Engine& e, kiln::ErrorCode code, const std::string& what) {
  throw kiln::Error(code, "engine '" + e.name() + "': " + what);
}

// Borrows the array's memory: the caller's dict keeps the arrays alive during run().
kiln::Tensor borrow_input(const kiln::Engine& e, const std::string& name, nb::handle value,
                          std::vector<ArrayIn>& keep) {
  const kiln::TensorSpec* spec = find_spec(e, name);
  std::string expected = spec ? std::string(" (expected ") + kiln::dtype_name(spec->dtype) + " " +
                                    spec->shape_string() + ")"
                              : std::string();
  ArrayIn arr;
  if (!nb::try_cast(value, arr, /*convert=*/false)) {
    input_error(e, kiln::ErrorCode::InputValue,
                "input '" + name + "' is a " + nb::type_name(value.type()).c_str() +
                    ", not an array; pass a numpy array or a torch tensor (detached, on the CPU)" + expected);
  }
  if (arr.device_type() != nb::device::cpu::value) {
    input_error(e, kiln::ErrorCode::InputValue,
                "input '" + name + "' is not in CPU memory; move it to the CPU (tensor.cpu())" + expected);
  }
  auto dtype = to_kiln(arr.dtype());
  if (!dtype) {
    input_error(e, kiln::ErrorCode::InputDType,
                "input '" + name + "' has dtype " + dlpack_name(arr.dtype()) + ", which kiln does not take" +
                    (spec ? std::string("; expected ") + kiln::dtype_name(spec->dtype) + ", convert it (numpy: "
                            "x.astype(numpy." + kiln::dtype_name(spec->dtype) + "))"
                          : std::string()));
  }
  std::vector<int64_t> shape(arr.ndim());
  int64_t expected_stride = 1;
  bool contiguous = true;
  for (size_t i = arr.ndim(); i-- > 0;) {
    shape[i] = static_cast<int64_t>(arr.shape(i));
    if (shape[i] != 1 && arr.stride(i) != expected_stride) contiguous = false;
    expected_stride *= shape[i];
  }
  if (!contiguous && expected_stride > 1) {
    input_error(e, kiln::ErrorCode::InputValue,
                "input '" + name + "' is not C-contiguous (a transposed or sliced view); pass "
                "numpy.ascontiguousarray(x) or x.contiguous() (kiln.runtime.Engine does this for you)");
  }
  keep.push_back(arr);
  return kiln::Tensor::borrow(const_cast<void*>(arr.data()), *dtype, std::move(shape));
}

// numpy has no bfloat16: such outputs come back as float32 (a copy; bf16 -> f32 is exact).
kiln::Tensor numpy_compatible(const kiln::Tensor& t) {
  if (t.dtype() != kiln::DType::BFloat16) return t;
  kiln::Tensor f = kiln::Tensor::zeros(kiln::DType::Float32, t.shape());
  const uint16_t* src = static_cast<const uint16_t*>(t.data());
  float* dst = f.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    uint32_t bits = static_cast<uint32_t>(src[i]) << 16;
    std::memcpy(&dst[i], &bits, 4);
  }
  return f;
}

// Hands an output to numpy without a copy: the array's base is a capsule owning the Tensor.
nb::object to_numpy(const kiln::Tensor& out) {
  kiln::Tensor t = numpy_compatible(out);
  auto* owned = new kiln::Tensor(t);
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<kiln::Tensor*>(p); });
  std::vector<size_t> shape(t.shape().begin(), t.shape().end());
  nb::ndarray<nb::numpy> arr(t.data(), shape.size(), shape.data(), owner, nullptr, to_dlpack(t.dtype()));
  return arr.cast();
}

nb::list specs_to_python(const std::vector<kiln::TensorSpec>& specs) {
  nb::list out;
  for (const auto& s : specs) {
    nb::list shape;
    for (const auto& d : s.shape) {
      if (d.symbolic()) {
        shape.append(nb::str(d.symbol.c_str()));
      } else {
        shape.append(nb::int_(d.size));
      }
    }
    out.append(nb::make_tuple(nb::str(s.name.c_str()), nb::str(kiln::dtype_name(s.dtype)), shape));
  }
  return out;
}

std::map<std::string, kiln::Tensor> borrow_inputs(const kiln::Engine& e, const nb::dict& inputs,
                                                  std::vector<ArrayIn>& keep) {
  std::map<std::string, kiln::Tensor> tensors;
  for (auto [key, value] : inputs) {
    if (!nb::isinstance<nb::str>(key)) {
      input_error(e, kiln::ErrorCode::InputName,
                  "input names must be strings, got " + std::string(nb::repr(key).c_str()));
    }
    std::string name = nb::cast<std::string>(key);
    tensors.emplace(name, borrow_input(e, name, value, keep));
  }
  return tensors;
}

// Deletes a Python-side object from any thread: the generation loop runs without the GIL.
template <class T>
std::shared_ptr<T> gil_owned(T* p) {
  return std::shared_ptr<T>(p, [](T* q) {
    nb::gil_scoped_acquire gil;
    delete q;
  });
}

// A Python callable {name: numpy array} -> {name: array} as a kiln::RunFn. Inputs reach Python
// as numpy views of the loop's tensors; outputs are borrowed (kiln.Generator makes them
// C-contiguous numpy arrays first) and kept alive by the Tensors that hold them.
kiln::RunFn python_run_fn(nb::object fn, std::string what) {
  auto callable = gil_owned(new nb::object(std::move(fn)));
  return [callable, what](const std::map<std::string, kiln::Tensor>& inputs) {
    nb::gil_scoped_acquire gil;
    nb::dict args;
    for (const auto& [name, t] : inputs) args[name.c_str()] = to_numpy(t);
    nb::object result = (*callable)(args);
    if (!nb::isinstance<nb::dict>(result)) {
      throw kiln::Error(kiln::ErrorCode::Runtime, "the " + what + " function returned a " +
                                                      std::string(nb::type_name(result.type()).c_str()) +
                                                      ", expected a dict of arrays {output name: array}");
    }
    std::map<std::string, kiln::Tensor> out;
    for (auto [key, value] : nb::borrow<nb::dict>(result)) {
      std::string name = nb::cast<std::string>(nb::str(key));
      ArrayIn arr;
      if (!nb::try_cast(value, arr, /*convert=*/false) || arr.device_type() != nb::device::cpu::value) {
        throw kiln::Error(kiln::ErrorCode::Runtime, "the " + what + " function returned '" + name +
                                                        "' as a " + nb::type_name(value.type()).c_str() +
                                                        ", expected a numpy array on the CPU");
      }
      auto dtype = to_kiln(arr.dtype());
      std::vector<int64_t> shape(arr.ndim());
      int64_t stride = 1;
      bool contiguous = true;
      for (size_t i = arr.ndim(); i-- > 0;) {
        shape[i] = static_cast<int64_t>(arr.shape(i));
        if (shape[i] != 1 && arr.stride(i) != stride) contiguous = false;
        stride *= shape[i];
      }
      if (!dtype || (!contiguous && stride > 1)) {
        throw kiln::Error(kiln::ErrorCode::Runtime, "the " + what + " function returned '" + name +
                                                        "' as " + dlpack_name(arr.dtype()) +
                                                        (contiguous ? "" : " (not C-contiguous)") +
                                                        "; return C-contiguous float32 / int64 arrays");
      }
      auto keep = gil_owned(new ArrayIn(arr));
      out[name] = kiln::Tensor::borrow(const_cast<void*>(arr.data()), *dtype, std::move(shape), keep);
    }
    return out;
  };
}

// "numpy.float64", "torch.Tensor", "float": the module-qualified name of v's type (builtins bare).
std::string type_of(nb::handle v) {
  nb::handle t = v.type();
  std::string name = nb::cast<std::string>(nb::str(nb::getattr(t, "__qualname__", nb::str("?"))));
  std::string module = nb::cast<std::string>(nb::str(nb::getattr(t, "__module__", nb::str("builtins"))));
  return module == "builtins" ? name : module + "." + name;
}

std::string short_repr(nb::handle v) {
  std::string r = nb::repr(v).c_str();
  return r.size() > 40 ? r.substr(0, 37) + "..." : r;
}

// Prompts from any Python sequence of sequences of ints (lists, tuples, numpy arrays, ...).
// Token ids must be integers that fit int64: a float is refused (int() would truncate it
// silently), and so is an int of 2^63 or more (nanobind would raise a bare TypeError).
std::vector<std::vector<int64_t>> prompts_from_python(const kiln::Generator& g, nb::handle prompts) {
  auto bad = [&](kiln::ErrorCode code, const std::string& what) {
    throw kiln::Error(code, "generator '" + g.config().name + "': " + what);
  };
  if (PyUnicode_Check(prompts.ptr()) || PyBytes_Check(prompts.ptr()) || !PySequence_Check(prompts.ptr())) {
    bad(kiln::ErrorCode::InvalidArgument, "prompts must be a list of token-id lists, got a " + type_of(prompts));
  }
  std::vector<std::vector<int64_t>> out;
  const Py_ssize_t n = PySequence_Size(prompts.ptr());
  if (n < 0) throw nb::python_error();
  for (Py_ssize_t i = 0; i < n; ++i) {
    nb::object row = nb::steal(PySequence_GetItem(prompts.ptr(), i));
    if (!row.is_valid()) throw nb::python_error();
    const std::string which = "prompt " + std::to_string(i);
    if (PyUnicode_Check(row.ptr()) || PyBytes_Check(row.ptr()) || !PySequence_Check(row.ptr())) {
      bad(kiln::ErrorCode::InvalidArgument, which + " is a " + type_of(row) + " (" + short_repr(row) +
                                                "), not a list of token ids");
    }
    const Py_ssize_t len = PySequence_Size(row.ptr());
    if (len < 0) throw nb::python_error();
    std::vector<int64_t> ids;
    ids.reserve(static_cast<size_t>(len));
    for (Py_ssize_t k = 0; k < len; ++k) {
      nb::object v = nb::steal(PySequence_GetItem(row.ptr(), k));
      if (!v.is_valid()) throw nb::python_error();
      const std::string type = type_of(v);
      const std::string where = which + " has " + short_repr(v) + " (" + type + ") at position " + std::to_string(k);
      // bool is an int in Python, but True is no token id; floats and float arrays have no
      // __index__ (numpy float64, torch float tensors), ints and 0-d int tensors do.
      if (PyBool_Check(v.ptr()) || type == "numpy.bool_" || type == "numpy.bool" || !PyIndex_Check(v.ptr())) {
        bad(kiln::ErrorCode::InputValue, where + "; token ids are integers in [0, " +
                                             std::to_string(g.config().vocab_size) + ")");
      }
      nb::object index = nb::steal(PyNumber_Index(v.ptr()));
      if (!index.is_valid()) {
        PyErr_Clear();
        bad(kiln::ErrorCode::InputValue, where + "; token ids are integers in [0, " +
                                             std::to_string(g.config().vocab_size) + ")");
      }
      int overflow = 0;
      long long id = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
      if (overflow != 0) {
        bad(kiln::ErrorCode::InputValue, which + " has token id " + std::string(nb::str(index).c_str()) +
                                             " at position " + std::to_string(k) +
                                             ", which does not fit in 64 bits; token ids are in [0, " +
                                             std::to_string(g.config().vocab_size) + ")");
      }
      if (id == -1 && PyErr_Occurred()) throw nb::python_error();
      ids.push_back(static_cast<int64_t>(id));
    }
    out.push_back(std::move(ids));
  }
  return out;
}

// What on_tokens returned: True (or None) continues, False stops. Anything else is an error
// rather than its truthiness: returning a list or 0 by mistake should not stop (or go on)
// silently.
bool callback_says_continue(const std::string& generator, nb::handle r) {
  if (r.is_none()) return true;
  if (PyBool_Check(r.ptr())) return r.ptr() == Py_True;
  const std::string type = type_of(r);
  if (type == "numpy.bool_" || type == "numpy.bool") {
    int truth = PyObject_IsTrue(r.ptr());
    if (truth < 0) throw nb::python_error();
    return truth == 1;
  }
  throw kiln::Error(kiln::ErrorCode::InvalidArgument,
                    "generator '" + generator + "': the on_tokens callback returned a " + type + " (" +
                        short_repr(r) + "); return True (or None) to continue and False to stop");
}

nb::dict result_to_python(const kiln::GenerationResult& r) {
  nb::dict timings;
  timings["encoder_ms"] = r.timings.encoder_ms;
  timings["prefill_ms"] = r.timings.prefill_ms;
  timings["time_to_first_token_ms"] = r.timings.time_to_first_token_ms;
  timings["step_ms"] = nb::cast(r.timings.step_ms);
  timings["total_ms"] = r.timings.total_ms;
  nb::dict out;
  out["sequences"] = nb::cast(r.sequences);
  out["scores"] = nb::cast(r.scores);
  out["timings"] = timings;
  out["steps"] = r.steps;
  out["stopped"] = r.stopped;
  return out;
}

}  // namespace

NB_MODULE(_kiln, m) {
  m.doc() = "kiln's C++ runtime (libkiln). Use kiln.runtime for the Python face.";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const kiln::Error& e) {
      // The Python class for the code, so `except kiln.errors.InputShapeError` works. Messages
      // are valid UTF-8 (kiln::Error makes them so); decoding with "replace" keeps even a
      // foreign message from turning into a UnicodeDecodeError here.
      const char* what = e.what();
      nb::object message = nb::steal(PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "replace"));
      try {
        if (!message.is_valid()) throw nb::python_error();
        nb::object exc = nb::module_::import_("kiln.errors").attr("from_code")(static_cast<int>(e.code()), message);
        PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
      } catch (const nb::python_error&) {
        PyErr_Clear();
        PyErr_SetString(PyExc_RuntimeError, kiln::valid_utf8(what).c_str());
      }
    }
  });

  nb::class_<kiln::Engine>(m, "Engine")
      .def(nb::new_([](const std::string& path, const std::string& backend, int num_threads, bool verify_sha256,
                        const std::string& precision) {
             kiln::EngineOptions options;
             options.backend = backend;
             options.num_threads = num_threads;
             options.verify_sha256 = verify_sha256;
             options.precision = precision;
             nb::gil_scoped_release release;  // loading an artifact can take a while
             return kiln::Engine::open(path, options);
           }),
           "path"_a, "backend"_a = "auto", "num_threads"_a = 0, "verify_sha256"_a = true, "precision"_a = "auto",
           "Open an engine directory (manifest.json + artifacts) on a backend ('auto' picks the best).")
      .def_prop_ro("name", &kiln::Engine::name)
      .def_prop_ro("dir", &kiln::Engine::dir)
      .def_prop_ro("backend", &kiln::Engine::backend)
      .def_prop_ro("precision", &kiln::Engine::precision)
      .def_prop_ro("manifest_json", [](const kiln::Engine& e) { return e.manifest().json; })
      .def_prop_ro("inputs", [](const kiln::Engine& e) { return specs_to_python(e.inputs()); },
                   "[(name, dtype, shape)], symbolic dimensions as str")
      .def_prop_ro("outputs", [](const kiln::Engine& e) { return specs_to_python(e.outputs()); })
      .def("validate",
           [](const kiln::Engine& e, const nb::dict& inputs) {
             std::vector<ArrayIn> keep;
             e.validate(borrow_inputs(e, inputs, keep));
           },
           "inputs"_a, "Raise the error run() would raise for these inputs, without running.")
      .def("run",
           [](const kiln::Engine& e, const nb::dict& inputs) {
             std::vector<ArrayIn> keep;
             auto tensors = borrow_inputs(e, inputs, keep);
             std::map<std::string, kiln::Tensor> outputs;
             {
               nb::gil_scoped_release release;
               outputs = e.run(tensors);
             }
             nb::dict result;
             for (const auto& spec : e.outputs()) result[spec.name.c_str()] = to_numpy(outputs.at(spec.name));
             return result;
           },
           "inputs"_a,
           "Run on a dict of C-contiguous CPU arrays (numpy or torch, borrowed without a copy); returns a dict "
           "of numpy arrays that own the outputs (no copy). Releases the GIL while running.")
      .def("__repr__", [](const kiln::Engine& e) {
        return "<kiln._kiln.Engine '" + e.name() + "' backend=" + e.backend() + ">";
      });

  nb::enum_<kiln::EarlyStopping>(m, "EarlyStopping")
      .value("heuristic", kiln::EarlyStopping::Heuristic)
      .value("true", kiln::EarlyStopping::True)
      .value("never", kiln::EarlyStopping::Never);

  using Opts = kiln::GenerationOptions;
  nb::class_<Opts>(m, "GenerationOptions")
      .def(nb::init<>())
      .def_static("from_json", &Opts::from_json, "json_text"_a, "origin"_a = "generation")
      .def("copy", [](const Opts& o) { return Opts(o); })
      .def_rw("max_new_tokens", &Opts::max_new_tokens)
      .def_rw("max_length", &Opts::max_length)
      .def_rw("min_length", &Opts::min_length)
      .def_rw("min_new_tokens", &Opts::min_new_tokens)
      .def_rw("do_sample", &Opts::do_sample)
      .def_rw("temperature", &Opts::temperature)
      .def_rw("top_k", &Opts::top_k)
      .def_rw("top_p", &Opts::top_p)
      .def_rw("seed", &Opts::seed)
      .def_rw("num_beams", &Opts::num_beams)
      .def_rw("length_penalty", &Opts::length_penalty)
      .def_rw("early_stopping", &Opts::early_stopping)
      .def_rw("num_return_sequences", &Opts::num_return_sequences)
      .def_rw("no_repeat_ngram_size", &Opts::no_repeat_ngram_size)
      .def_rw("repetition_penalty", &Opts::repetition_penalty)
      .def_rw("eos_token_ids", &Opts::eos_token_ids)
      .def_rw("pad_token_id", &Opts::pad_token_id)
      .def_rw("bos_token_id", &Opts::bos_token_id)
      .def_rw("decoder_start_token_id", &Opts::decoder_start_token_id)
      .def_rw("forced_bos_token_id", &Opts::forced_bos_token_id)
      .def_rw("forced_eos_token_ids", &Opts::forced_eos_token_ids);

  nb::class_<kiln::Generator>(m, "Generator")
      .def(nb::new_([](const std::string& path, const std::string& backend, int num_threads, bool verify_sha256,
                        const std::string& precision) {
             kiln::EngineOptions options;
             options.backend = backend;
             options.num_threads = num_threads;
             options.verify_sha256 = verify_sha256;
             options.precision = precision;
             nb::gil_scoped_release release;
             return kiln::Generator::open(path, options);
           }),
           "path"_a, "backend"_a = "auto", "num_threads"_a = 0, "verify_sha256"_a = true, "precision"_a = "auto",
           "Open a generation engine directory (its graphs on one backend).")
      .def_static(
          "from_functions",
          [](nb::object decoder, nb::object encoder, const std::string& name, int64_t layers, int64_t heads,
             int64_t head_dim, int64_t vocab_size, int64_t max_positions, bool encoder_decoder, int64_t max_batch,
             const Opts& defaults) {
            kiln::GeneratorConfig c;
            c.name = name;
            c.layers = layers, c.heads = heads, c.head_dim = head_dim;
            c.vocab_size = vocab_size, c.max_positions = max_positions;
            c.encoder_decoder = encoder_decoder, c.max_batch = max_batch;
            c.defaults = defaults;
            return kiln::Generator::from_functions(python_run_fn(decoder, "decoder"),
                                                   encoder.is_none() ? kiln::RunFn() : python_run_fn(encoder, "encoder"),
                                                   std::move(c));
          },
          "decoder"_a, "encoder"_a.none(), "name"_a, "layers"_a, "heads"_a, "head_dim"_a, "vocab_size"_a,
          "max_positions"_a, "encoder_decoder"_a, "max_batch"_a, "defaults"_a)
      .def_prop_ro("defaults", [](const kiln::Generator& g) { return Opts(g.defaults()); },
                   "a copy of the engine's generation settings")
      .def_prop_ro("vocab_size", [](const kiln::Generator& g) { return g.config().vocab_size; })
      .def_prop_ro("max_positions", [](const kiln::Generator& g) { return g.config().max_positions; })
      .def_prop_ro("encoder_decoder", [](const kiln::Generator& g) { return g.config().encoder_decoder; })
      .def_prop_ro("max_batch", [](const kiln::Generator& g) { return g.config().max_batch; })
      .def_prop_ro("name", [](const kiln::Generator& g) { return g.config().name; })
      .def_prop_ro("backend", [](const kiln::Generator& g) {
        return g.decoder_engine() ? g.decoder_engine()->backend() : std::string("functions");
      })
      .def(
          "generate",
          [](const kiln::Generator& g, nb::handle prompts_in, const Opts& options, nb::object on_tokens) {
            std::vector<std::vector<int64_t>> prompts = prompts_from_python(g, prompts_in);
            kiln::StreamCallback cb;
            if (!on_tokens.is_none()) {
              auto fn = gil_owned(new nb::object(std::move(on_tokens)));
              cb = [fn, name = g.config().name](const std::vector<int64_t>& tokens) {
                nb::gil_scoped_acquire gil;
                nb::object r = (*fn)(nb::cast(tokens));
                return callback_says_continue(name, r);
              };
            }
            kiln::GenerationResult result;
            {
              nb::gil_scoped_release release;  // the graphs (and Python callables) take it back as needed
              result = g.generate(prompts, options, cb);
            }
            return result_to_python(result);
          },
          "prompts"_a, "options"_a, "on_tokens"_a.none() = nb::none(),
          "Generate from token-id prompts (sequences of ints); returns {sequences, scores, timings, steps, stopped}. "
          "on_tokens(tokens) must return True or None to continue, False to stop (anything else is an "
          "InvalidArgumentError).");

  m.def("available_backends", &kiln::available_backends,
        "Backends compiled into this build and usable on this machine, best first.");
}
