// kiln._kiln: the C++ runtime seen from Python. Conversions only; the logic lives in libkiln.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <cstring>

#include "kiln/engine.h"

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

}  // namespace

NB_MODULE(_kiln, m) {
  m.doc() = "kiln's C++ runtime (libkiln). Use kiln.runtime for the Python face.";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const kiln::Error& e) {
      // The Python class for the code, so `except kiln.errors.InputShapeError` works.
      try {
        nb::object exc = nb::module_::import_("kiln.errors").attr("from_code")(static_cast<int>(e.code()), e.what());
        PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
      } catch (const nb::python_error&) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
      }
    }
  });

  nb::class_<kiln::Engine>(m, "Engine")
      .def(nb::new_([](const std::string& path, const std::string& backend, int num_threads, bool verify_sha256) {
             kiln::EngineOptions options;
             options.backend = backend;
             options.num_threads = num_threads;
             options.verify_sha256 = verify_sha256;
             nb::gil_scoped_release release;  // loading an artifact can take a while
             return kiln::Engine::open(path, options);
           }),
           "path"_a, "backend"_a = "auto", "num_threads"_a = 0, "verify_sha256"_a = true,
           "Open an engine directory (manifest.json + artifacts) on a backend ('auto' picks the best).")
      .def_prop_ro("name", &kiln::Engine::name)
      .def_prop_ro("dir", &kiln::Engine::dir)
      .def_prop_ro("backend", &kiln::Engine::backend)
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

  m.def("available_backends", &kiln::available_backends,
        "Backends compiled into this build and usable on this machine, best first.");
}
