#include "kiln/engine.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <thread>

#include "backend.h"
#include "backends/tensorrt_checks.h"
#include "util.h"

namespace kiln {

namespace detail {

static std::vector<BackendInfo>& registry() {
  static std::vector<BackendInfo> backends;
  return backends;
}

void register_backend(BackendInfo info) {
  auto& r = registry();
  r.push_back(std::move(info));
  std::stable_sort(r.begin(), r.end(),
                   [](const BackendInfo& a, const BackendInfo& b) { return a.priority > b.priority; });
}

const std::vector<BackendInfo>& registered_backends() { return registry(); }

}  // namespace detail

namespace {

using detail::BackendInfo;
using detail::join;

// Backends kiln knows of, and why one may be missing from a build.
const std::map<std::string, std::string>& known_backends() {
  static const std::map<std::string, std::string> known = {
      {"torchscript", "this kiln was built without libtorch (CMake option KILN_WITH_TORCH=OFF)"},
      {"aoti", "this kiln was built without libtorch (CMake option KILN_WITH_TORCH=OFF)"},
      {"tensorrt", "this kiln was built without the TensorRT backend"},
      {"onnx", "ONNX artifacts run from Python only (onnxruntime); the C++ runtime has no ONNX Runtime"},
  };
  return known;
}

std::string usable_reason(const BackendInfo& b) {
  return b.unusable_reason ? b.unusable_reason() : std::string();
}

std::string artifact_list(const Manifest& m) {
  std::vector<std::string> items;
  for (const auto& a : m.artifacts) items.push_back(a.format + " (" + a.file + ")");
  return items.empty() ? "none" : join(items);
}

std::string spec_list(const std::vector<TensorSpec>& specs) {
  std::vector<std::string> items;
  for (const auto& s : specs) items.push_back(s.name + " " + dtype_name(s.dtype) + " " + s.shape_string());
  return join(items);
}

// Whether the engine has an artifact of this format in this precision ("auto": any; an
// artifact without a precision is fp32).
bool has_artifact(const Manifest& m, const std::string& format, const std::string& precision) {
  for (const auto& a : m.artifacts) {
    if (a.format == format &&
        (precision == "auto" || (a.precision.empty() ? std::string("fp32") : a.precision) == precision)) {
      return true;
    }
  }
  return false;
}

const BackendInfo& choose_backend(const std::string& engine, const Manifest& m, const std::string& wanted,
                                  const std::string& precision) {
  std::vector<std::string> runnable;  // usable here and with an artifact in this engine
  for (const auto& b : detail::registered_backends()) {
    if (usable_reason(b).empty() && m.artifact(b.format)) runnable.push_back(b.name);
  }
  std::string runnable_text = runnable.empty() ? "none" : join(runnable);

  if (wanted == "auto") {
    // The fixed order (a TensorRT plan first), except that among the CPU backends the one
    // `kiln build` measured fastest wins on a CPU of the model it was measured on. A precision
    // asked for (int8) picks the first usable backend that has an artifact of it; where none
    // has, the first usable backend is chosen and choose_artifact says what is missing.
    const BackendInfo* preferred = nullptr;
    if (!m.preferred_backend.empty() && m.preferred_cpu == detail::cpu_model_name()) {
      for (const auto& b : detail::registered_backends()) {
        if (b.name == m.preferred_backend && usable_reason(b).empty() && has_artifact(m, b.format, precision)) {
          preferred = &b;
        }
      }
    }
    for (const auto& b : detail::registered_backends()) {
      if (usable_reason(b).empty() && has_artifact(m, b.format, precision)) {
        return (preferred && b.format != "tensorrt") ? *preferred : b;
      }
    }
    for (const auto& b : detail::registered_backends()) {
      if (usable_reason(b).empty() && m.artifact(b.format)) return b;
    }
    // A backend compiled in with an artifact here but unusable on this machine (tensorrt
    // without a GPU) says why, with its own code (Device), rather than "no backend".
    for (const auto& b : detail::registered_backends()) {
      if (m.artifact(b.format)) {
        throw Error(b.unusable_code, "engine '" + engine + "': its artifacts [" + artifact_list(m) +
                                         "] can only be run by backend '" + b.name + "' in this kiln, which is "
                                         "not usable here: " + usable_reason(b));
      }
    }
    std::vector<std::string> here;
    for (const auto& b : detail::registered_backends()) {
      if (usable_reason(b).empty()) here.push_back(b.name == b.format ? b.name : b.name + " (" + b.format + ")");
    }
    if (here.empty()) {
      throw Error(ErrorCode::BackendUnavailable,
                  "engine '" + engine + "': this kiln has no backend that can run here, so none can run its "
                  "artifacts [" + artifact_list(m) + "]; build kiln with KILN_WITH_TORCH=ON");
    }
    throw Error(ErrorCode::BackendUnavailable,
                "engine '" + engine + "': no backend available here can run its artifacts [" +
                    artifact_list(m) + "]; backends available here: " + join(here) +
                    ". Rebuild the engine with one of those formats");
  }

  for (const auto& b : detail::registered_backends()) {
    if (b.name != wanted) continue;
    std::string why = usable_reason(b);
    if (!why.empty()) {
      throw Error(b.unusable_code, "engine '" + engine + "': backend '" + wanted +
                                       "' is not usable here: " + why +
                                       "; backends that can run this engine: " + runnable_text);
    }
    if (!m.artifact(b.format)) {
      throw Error(ErrorCode::BackendUnavailable,
                  "engine '" + engine + "' has no " + b.format + " artifact for backend '" + wanted +
                      "' (its artifacts: " + artifact_list(m) + "); use backend 'auto' or one of: " +
                      runnable_text + ", or rebuild the engine with that format");
    }
    return b;
  }
  std::vector<std::string> built;
  for (const auto& b : detail::registered_backends()) built.push_back(b.name);
  auto known = known_backends().find(wanted);
  if (known != known_backends().end()) {
    throw Error(ErrorCode::BackendUnavailable, "engine '" + engine + "': backend '" + wanted +
                                                   "' is not available: " + known->second +
                                                   "; backends that can run this engine: " + runnable_text);
  }
  throw Error(ErrorCode::InvalidArgument,
              "engine '" + engine + "': unknown backend '" + wanted + "'; use 'auto' or one of: " +
                  (built.empty() ? std::string("none (this kiln has no backend compiled in)") : join(built)));
}

void check_artifact(const std::string& engine, const std::string& path, const ArtifactInfo& a, bool sha) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw Error(ErrorCode::Artifact, "engine '" + engine + "': the " + a.format + " artifact " + path +
                                         " named by manifest.json is missing; rebuild the engine");
  }
  auto size = fs::file_size(path, ec);
  if (ec) {
    throw Error(ErrorCode::Artifact, "engine '" + engine + "': cannot read the size of " + path + ": " + ec.message());
  }
  if (static_cast<int64_t>(size) != a.bytes) {
    throw Error(ErrorCode::Artifact, "engine '" + engine + "': " + path + " is " + std::to_string(size) +
                                         " bytes, manifest.json says " + std::to_string(a.bytes) +
                                         ": the file is truncated or was replaced; rebuild the engine");
  }
  if (sha) {
    std::string digest = detail::sha256_file(path);
    std::string want = a.sha256;
    std::transform(want.begin(), want.end(), want.begin(), ::tolower);
    if (digest != want) {
      throw Error(ErrorCode::Artifact, "engine '" + engine + "': " + path + " has sha256 " + digest +
                                           ", manifest.json says " + a.sha256 +
                                           ": the file is corrupt or was replaced; rebuild the engine");
    }
  }
}

void check_num_threads(const std::string& engine, int n) {
  const int64_t limit = max_num_threads();
  if (n < 0 || n > limit) {
    throw Error(ErrorCode::InvalidArgument,
                "engine '" + engine + "': num_threads is " + std::to_string(n) + "; use 0 (leave as is) or 1.." +
                    std::to_string(limit) + " (at most 4 x the " + std::to_string(limit / 4) +
                    " hardware threads here)");
  }
}

}  // namespace

int max_num_threads() {
  unsigned hw = std::thread::hardware_concurrency();
  return 4 * static_cast<int>(hw == 0 ? 1 : std::min(hw, 1u << 20));
}

struct Engine::Impl {
  std::string dir, name, backend_name, precision;
  Manifest manifest;
  std::unique_ptr<detail::Backend> backend;

  // Validates and returns the size bound to each symbolic dimension.
  std::map<std::string, int64_t> bind(const std::map<std::string, Tensor>& inputs) const;
  void check_values(const TensorSpec& spec, size_t index, const Tensor& t) const;
  [[noreturn]] void fail(ErrorCode code, const std::string& what) const {
    throw Error(code, "engine '" + name + "': " + what);
  }
};

std::unique_ptr<Engine> Engine::open(const std::string& dir, const EngineOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->name = detail::engine_name(dir);
  check_num_threads(impl->name, options.num_threads);
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    throw Error(ErrorCode::Manifest, "engine '" + impl->name + "': " + dir +
                                         " is not a directory; pass an engine directory written by "
                                         "`kiln build` (engines/<name>/)");
  }
  impl->manifest = Manifest::load(dir);
  const BackendInfo& info = choose_backend(impl->name, impl->manifest, options.backend, options.precision);
  const ArtifactInfo& artifact = detail::trt::choose_artifact(impl->manifest, info.format, options.precision, impl->name);
  std::string path = (std::filesystem::path(dir) / artifact.file).string();
  check_artifact(impl->name, path, artifact, options.verify_sha256);
  detail::BackendLoad load{impl->manifest, artifact, path, impl->name, options};
  try {
    impl->backend = info.load(load);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::Artifact, "engine '" + impl->name + "': backend '" + info.name +
                                         "' could not load " + path + ": " + e.what() +
                                         "; rebuild the engine with this kiln's torch version");
  } catch (...) {
    throw Error(ErrorCode::Artifact, "engine '" + impl->name + "': backend '" + info.name + "' could not load " +
                                         path + " (it threw an exception that is not a std::exception); rebuild "
                                         "the engine with this kiln's torch version");
  }
  impl->backend_name = info.name;
  impl->precision = artifact.precision.empty() ? "fp32" : artifact.precision;
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

const std::string& Engine::name() const noexcept { return impl_->name; }
const std::string& Engine::dir() const noexcept { return impl_->dir; }
const std::string& Engine::backend() const noexcept { return impl_->backend_name; }
const std::string& Engine::precision() const noexcept { return impl_->precision; }
const Manifest& Engine::manifest() const noexcept { return impl_->manifest; }
const std::vector<TensorSpec>& Engine::inputs() const noexcept { return impl_->manifest.inputs; }
const std::vector<TensorSpec>& Engine::outputs() const noexcept { return impl_->manifest.outputs; }

std::map<std::string, int64_t> Engine::Impl::bind(const std::map<std::string, Tensor>& inputs) const {
  const auto& specs = manifest.inputs;
  auto is_spec = [&](const std::string& n) {
    return std::any_of(specs.begin(), specs.end(), [&](const TensorSpec& s) { return s.name == n; });
  };
  for (const auto& [given, tensor] : inputs) {
    if (is_spec(given)) continue;
    // A misnamed input: suggest the closest expected name that was not given.
    const TensorSpec* best = nullptr;
    size_t best_distance = std::max<size_t>(2, given.size() / 3) + 1;
    for (const auto& s : specs) {
      if (inputs.count(s.name)) continue;
      size_t d = detail::edit_distance(given, s.name);
      if (d < best_distance) best = &s, best_distance = d;
    }
    if (best) {
      fail(ErrorCode::InputName, "'" + given + "' is not an input of this engine; did you mean '" +
                                     best->name + "'? It takes: " + spec_list(specs));
    }
    fail(ErrorCode::InputName,
         "unexpected input '" + given + "'; remove it. The engine takes: " + spec_list(specs));
  }
  for (const auto& s : specs) {
    if (!inputs.count(s.name)) {
      fail(ErrorCode::InputName, "missing input '" + s.name + "' (" + dtype_name(s.dtype) + " " +
                                     s.shape_string() + "); the engine takes: " + spec_list(specs));
    }
  }

  struct Bound {
    int64_t size;
    std::string input;
    size_t axis;
  };
  std::map<std::string, Bound> bound;
  for (const auto& s : specs) {
    const Tensor& t = inputs.at(s.name);
    if (!t.defined()) fail(ErrorCode::InputValue, "input '" + s.name + "' is an undefined (empty) Tensor");
    if (t.dtype() != s.dtype) {
      fail(ErrorCode::InputDType, "input '" + s.name + "' has dtype " + dtype_name(t.dtype()) +
                                      ", expected " + dtype_name(s.dtype) + "; convert it to " +
                                      dtype_name(s.dtype));
    }
    const auto& shape = t.shape();
    if (shape.size() != s.shape.size()) {
      fail(ErrorCode::InputShape, "input '" + s.name + "' has shape " + shape_to_string(shape) + " (rank " +
                                      std::to_string(shape.size()) + "), expected rank " +
                                      std::to_string(s.shape.size()) + ": " + s.shape_string());
    }
    for (size_t i = 0; i < shape.size(); ++i) {
      const Dim& d = s.shape[i];
      std::string where = "input '" + s.name + "' has shape " + shape_to_string(shape) + ": dimension " +
                          std::to_string(i);
      if (!d.symbolic()) {
        if (shape[i] != d.size) {
          fail(ErrorCode::InputShape, where + " is " + std::to_string(shape[i]) + ", expected " +
                                          std::to_string(d.size) + " (shape " + s.shape_string() + ")");
        }
        continue;
      }
      const DimRange& r = manifest.dims.at(d.symbol);
      if (shape[i] < r.min || shape[i] > r.max) {
        fail(ErrorCode::InputShape, where + " ('" + d.symbol + "') is " + std::to_string(shape[i]) +
                                        ", outside the engine's range " + std::to_string(r.min) + ".." +
                                        std::to_string(r.max) + "; use a " + d.symbol + " in that range "
                                        "(or rebuild the engine with a larger range)");
      }
      if (shape[i] % r.multiple != 0) {
        const int64_t below = shape[i] / r.multiple * r.multiple;
        fail(ErrorCode::InputShape, where + " ('" + d.symbol + "') is " + std::to_string(shape[i]) +
                                        ", not a multiple of " + std::to_string(r.multiple) + "; the engine takes " +
                                        d.symbol + " in multiples of " + std::to_string(r.multiple) + " only (e.g. " +
                                        std::to_string(std::max(below, r.min)) + " or " +
                                        std::to_string(std::min(below + r.multiple, r.max)) + ")");
      }
      auto [it, fresh] = bound.emplace(d.symbol, Bound{shape[i], s.name, i});
      if (!fresh && it->second.size != shape[i]) {
        fail(ErrorCode::InputShape, where + " ('" + d.symbol + "') is " + std::to_string(shape[i]) +
                                        ", but input '" + it->second.input + "' has " + d.symbol + " = " +
                                        std::to_string(it->second.size) + "; all inputs must agree on '" +
                                        d.symbol + "'");
      }
    }
  }
  // Derived dimensions (total = past + new): the size bound from the inputs must be the sum
  // of its terms' sizes (checked when the inputs bind the dimension and all its terms).
  for (const auto& [symbol, range] : manifest.dims) {
    if (!range.derived()) continue;
    auto it = bound.find(symbol);
    if (it == bound.end()) continue;
    int64_t sum = 0;
    bool all = true, overflow = false;
    std::string names, values, sources;
    for (const auto& term : range.sum) {
      auto t = bound.find(term);
      if (t == bound.end()) {
        all = false;
        break;
      }
      overflow = overflow || __builtin_add_overflow(sum, t->second.size, &sum);
      names += (names.empty() ? "" : " + ") + term;
      values += (values.empty() ? "" : " + ") + std::to_string(t->second.size);
      sources += (sources.empty() ? "" : ", ") + term + " from input '" + t->second.input + "'";
    }
    if (!all || (!overflow && sum == it->second.size)) continue;
    const Bound& b = it->second;
    fail(ErrorCode::InputShape,
         "input " + b.input + " dim " + std::to_string(b.axis) + " (" + symbol + ") is " + std::to_string(b.size) +
             ", expected " + names + " = " + values + " = " + (overflow ? std::string("more than 2^63") : std::to_string(sum)) +
             " (" + sources + "); '" + symbol + "' is the sum of those dimensions: make the inputs agree (e.g. the "
             "attention mask covers the past and the new tokens)");
  }

  // Value ranges ("values" in the manifest): every element of an integer or bool input
  // within [min, max], before any kernel sees it. An index outside a table is undefined
  // behaviour in a compiled kernel, and AOTInductor's own bounds checks throw inside OpenMP
  // regions, which terminates the process (see cpp/README.md).
  for (size_t k = 0; k < specs.size(); ++k) {
    const TensorSpec& s = specs[k];
    if (!s.values) continue;
    check_values(s, k, inputs.at(s.name));
  }

  std::map<std::string, int64_t> sizes;
  for (const auto& [symbol, b] : bound) sizes[symbol] = b.size;
  return sizes;
}

namespace {

// Range test of one element without overflow: v in [lo, hi] <=> v - lo <= hi - lo (mod 2^64).
inline bool outside(uint64_t v, uint64_t lo, uint64_t span) { return v - lo > span; }

// Index of the first element outside [lo, hi], or -1. The common case (all inside) is one
// branch-free pass the compiler vectorises; only a failing input is scanned again.
template <class T>
int64_t first_outside(const T* p, int64_t n, int64_t lo, int64_t hi) {
  const uint64_t ulo = static_cast<uint64_t>(lo), span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
  bool any = false;
  for (int64_t i = 0; i < n; ++i) any |= outside(static_cast<uint64_t>(static_cast<int64_t>(p[i])), ulo, span);
  if (!any) return -1;
  for (int64_t i = 0; i < n; ++i) {
    if (outside(static_cast<uint64_t>(static_cast<int64_t>(p[i])), ulo, span)) return i;
  }
  return -1;
}

std::string position(int64_t flat, const std::vector<int64_t>& shape) {
  std::vector<int64_t> index(shape.size());
  for (size_t i = shape.size(); i-- > 0;) {
    index[i] = shape[i] ? flat % shape[i] : 0;
    flat = shape[i] ? flat / shape[i] : 0;
  }
  return shape_to_string(index);
}

}  // namespace

void Engine::Impl::check_values(const TensorSpec& s, size_t index, const Tensor& t) const {
  const ValueRange& r = *s.values;
  const int64_t n = t.numel();
  int64_t bad = -1, value = 0;
  switch (t.dtype()) {
    case DType::Int64: {
      const auto* p = static_cast<const int64_t*>(t.data());
      if ((bad = first_outside(p, n, r.min, r.max)) >= 0) value = p[bad];
      break;
    }
    case DType::Int32: {
      const auto* p = static_cast<const int32_t*>(t.data());
      if ((bad = first_outside(p, n, r.min, r.max)) >= 0) value = p[bad];
      break;
    }
    case DType::Bool:
    case DType::UInt8: {
      const auto* p = static_cast<const uint8_t*>(t.data());
      if ((bad = first_outside(p, n, r.min, r.max)) >= 0) value = p[bad];
      break;
    }
    default:
      return;  // the manifest parser refuses value ranges on float inputs
  }
  if (bad < 0) return;
  fail(ErrorCode::InputValue,
       "input '" + s.name + "' has the value " + std::to_string(value) + " at " + position(bad, t.shape()) +
           ", outside its allowed range [" + std::to_string(r.min) + ", " + std::to_string(r.max) +
           "] (manifest.json inputs[" + std::to_string(index) + "].values); pass values in that range (token ids "
           "from this model's tokenizer, below its vocabulary size; masks of 0 and 1; positions below the model's "
           "maximum)");
}

void Engine::validate(const std::map<std::string, Tensor>& inputs) const { impl_->bind(inputs); }

std::map<std::string, Tensor> Engine::run(const std::map<std::string, Tensor>& inputs) const {
  const Impl& im = *impl_;
  auto sizes = im.bind(inputs);
  std::vector<Tensor> ordered;
  ordered.reserve(im.manifest.inputs.size());
  for (const auto& s : im.manifest.inputs) ordered.push_back(inputs.at(s.name));

  // Whatever escapes a backend becomes a kiln::Error: callers (and the Python bindings)
  // handle one exception type.
  std::vector<Tensor> results;
  try {
    results = im.backend->run(ordered);
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    im.fail(ErrorCode::Runtime, "backend '" + im.backend_name + "' ran out of memory; use smaller inputs "
                                "(batch, sequence) or free memory");
  } catch (const std::exception& e) {
    im.fail(ErrorCode::Runtime, "backend '" + im.backend_name + "' failed: " + e.what());
  } catch (...) {
    im.fail(ErrorCode::Runtime, "backend '" + im.backend_name + "' failed with an exception that is not a "
                                "std::exception (no message)");
  }

  // The artifact and the manifest are written together; a disagreement means a stale or
  // mismatched engine directory, which must not pass silently.
  const auto& specs = im.manifest.outputs;
  if (results.size() != specs.size()) {
    im.fail(ErrorCode::Runtime, "backend '" + im.backend_name + "' returned " + std::to_string(results.size()) +
                                    " outputs, manifest.json lists " + std::to_string(specs.size()) + " (" +
                                    spec_list(specs) + "); rebuild the engine");
  }
  std::map<std::string, Tensor> out;
  for (size_t k = 0; k < specs.size(); ++k) {
    const TensorSpec& s = specs[k];
    const Tensor& t = results[k];
    bool ok = t.defined() && t.dtype() == s.dtype && t.ndim() == s.shape.size();
    for (size_t i = 0; ok && i < s.shape.size(); ++i) {
      const Dim& d = s.shape[i];
      if (!d.symbolic()) {
        ok = t.shape()[i] == d.size;
      } else if (auto it = sizes.find(d.symbol); it != sizes.end()) {
        ok = t.shape()[i] == it->second;
      }
    }
    if (!ok) {
      im.fail(ErrorCode::Runtime,
              "backend '" + im.backend_name + "' returned output '" + s.name + "' as " +
                  (t.defined() ? std::string(dtype_name(t.dtype())) + " " + shape_to_string(t.shape())
                               : std::string("an undefined tensor")) +
                  ", manifest.json says " + dtype_name(s.dtype) + " " + s.shape_string() +
                  "; the artifact and the manifest disagree, rebuild the engine");
    }
    out.emplace(s.name, t);
  }
  return out;
}

std::vector<std::string> available_backends() {
  std::vector<std::string> names;
  for (const auto& b : detail::registered_backends()) {
    if (usable_reason(b).empty()) names.push_back(b.name);
  }
  return names;
}

}  // namespace kiln
