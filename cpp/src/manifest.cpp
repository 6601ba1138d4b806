#include "kiln/manifest.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kiln/error.h"
#include "util.h"

namespace kiln {

using Json = nlohmann::json;

std::string Dim::to_string() const { return symbolic() ? symbol : std::to_string(size); }

std::string TensorSpec::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + shape[i].to_string();
  return s + "]";
}

const ArtifactInfo* Manifest::artifact(std::string_view format) const noexcept {
  for (const auto& a : artifacts) {
    if (a.format == format) return &a;
  }
  return nullptr;
}

namespace {

// Walks the JSON and throws Error(Manifest) naming the field path ("inputs[1].dtype").
class Reader {
 public:
  explicit Reader(std::string origin) : origin_(std::move(origin)) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorCode::Manifest,
                origin_ + ": " + what + "; rebuild the engine with `kiln build` (see engines/README.md)");
  }

  const Json& field(const Json& obj, const std::string& key, const std::string& path) const {
    auto it = obj.find(key);
    if (it == obj.end()) fail("field '" + path + key + "' is missing");
    return *it;
  }
  std::string str(const Json& obj, const std::string& key, const std::string& path) const {
    const Json& v = field(obj, key, path);
    if (!v.is_string()) fail("field '" + path + key + "' must be a string, got " + v.dump());
    return v.get<std::string>();
  }
  std::string opt_str(const Json& obj, const std::string& key, const std::string& path) const {
    return obj.contains(key) ? str(obj, key, path) : std::string();
  }
  int64_t integer(const Json& obj, const std::string& key, const std::string& path) const {
    const Json& v = field(obj, key, path);
    if (!v.is_number_integer()) fail("field '" + path + key + "' must be an integer, got " + v.dump());
    return v.get<int64_t>();
  }
  const Json& array(const Json& obj, const std::string& key, const std::string& path) const {
    const Json& v = field(obj, key, path);
    if (!v.is_array()) fail("field '" + path + key + "' must be a list, got " + v.dump());
    return v;
  }
  const Json& object(const Json& obj, const std::string& key, const std::string& path) const {
    const Json& v = field(obj, key, path);
    if (!v.is_object()) fail("field '" + path + key + "' must be an object, got " + v.dump());
    return v;
  }

  TensorSpec spec(const Json& j, const std::string& path, const Manifest& m, bool is_input) const {
    if (!j.is_object()) fail("'" + path + "' must be an object, got " + j.dump());
    TensorSpec s;
    s.name = str(j, "name", path + ".");
    std::string dt = str(j, "dtype", path + ".");
    auto dtype = dtype_from_name(dt);
    if (!dtype) {
      fail("field '" + path + ".dtype' is '" + dt +
           "', not one of float32, float16, bfloat16, int64, int32, bool, uint8");
    }
    s.dtype = *dtype;
    const Json& shape = array(j, "shape", path + ".");
    for (size_t i = 0; i < shape.size(); ++i) {
      const Json& d = shape[i];
      std::string where = path + ".shape[" + std::to_string(i) + "]";
      Dim dim;
      if (d.is_string()) {
        dim.symbol = d.get<std::string>();
        // An output may carry a dimension the inputs do not determine; an input's
        // symbolic dimension needs a range to be validated against.
        if (is_input && !m.dims.count(dim.symbol)) {
          fail("'" + where + "' is the symbolic dimension '" + dim.symbol +
               "', which is not listed in 'dims'");
        }
      } else if (d.is_number_integer() && d.get<int64_t>() >= 0) {
        dim.size = d.get<int64_t>();
      } else {
        fail("'" + where + "' must be a dimension name or a size >= 0, got " + d.dump());
      }
      s.shape.push_back(std::move(dim));
    }
    return s;
  }

 private:
  std::string origin_;
};

}  // namespace

Manifest Manifest::parse(const std::string& text, const std::string& origin) {
  Reader r(origin);
  Json j;
  try {
    j = Json::parse(text);
  } catch (const Json::parse_error& e) {
    r.fail(std::string("not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) r.fail("the top level must be a JSON object");

  Manifest m;
  m.json = text;
  const Json& version = r.field(j, "format_version", "");
  if (!version.is_number_integer() || version.get<int64_t>() != kManifestFormatVersion) {
    throw Error(ErrorCode::Manifest,
                origin + ": format_version is " + version.dump() + ", this runtime reads version " +
                    std::to_string(kManifestFormatVersion) +
                    "; rebuild the engine with this kiln, or use the kiln that built it");
  }
  m.format_version = kManifestFormatVersion;
  // A generation engine's top level only names its graphs: the loop (kiln::Generator) runs
  // them, and each graph subdirectory is an ordinary engine.
  if (auto kind = j.find("kind"); kind != j.end() && *kind == "generation") {
    std::vector<std::string> graphs;
    if (auto g = j.find("graphs"); g != j.end() && g->is_object()) {
      for (auto it = g->begin(); it != g->end(); ++it) {
        graphs.push_back(it.key() + (it->is_string() ? " (" + it->get<std::string>() + "/)" : std::string()));
      }
    }
    throw Error(ErrorCode::Manifest,
                origin + ": this is a generation engine with graphs [" + detail::join(graphs) +
                    "]; open it with kiln::Generator::open / kiln.Generator, or open a graph's subdirectory "
                    "(e.g. <dir>/decoder) with kiln::Engine for the raw graph");
  }
  m.name = r.str(j, "name", "");
  m.family = r.str(j, "family", "");
  m.task = r.str(j, "task", "");

  const Json& dims = r.object(j, "dims", "");
  for (auto it = dims.begin(); it != dims.end(); ++it) {
    std::string path = "dims." + it.key();
    if (!it->is_object()) r.fail("'" + path + "' must be an object {min, opt, max}");
    DimRange d{r.integer(*it, "min", path + "."), r.integer(*it, "opt", path + "."),
               r.integer(*it, "max", path + ".")};
    if (!(0 <= d.min && d.min <= d.opt && d.opt <= d.max)) {
      r.fail("'" + path + "' needs 0 <= min <= opt <= max, got min " + std::to_string(d.min) +
             ", opt " + std::to_string(d.opt) + ", max " + std::to_string(d.max));
    }
    m.dims[it.key()] = d;
  }

  for (bool is_input : {true, false}) {
    const char* key = is_input ? "inputs" : "outputs";
    const Json& specs = r.array(j, key, "");
    if (specs.empty()) r.fail(std::string("'") + key + "' is empty");
    auto& out = is_input ? m.inputs : m.outputs;
    for (size_t i = 0; i < specs.size(); ++i) {
      TensorSpec s = r.spec(specs[i], std::string(key) + "[" + std::to_string(i) + "]", m, is_input);
      for (const auto& prev : out) {
        if (prev.name == s.name) r.fail(std::string("two ") + key + " are named '" + s.name + "'");
      }
      out.push_back(std::move(s));
    }
  }

  const Json& artifacts = r.array(j, "artifacts", "");
  for (size_t i = 0; i < artifacts.size(); ++i) {
    std::string path = "artifacts[" + std::to_string(i) + "].";
    const Json& a = artifacts[i];
    if (!a.is_object()) r.fail("'" + path.substr(0, path.size() - 1) + "' must be an object");
    ArtifactInfo info;
    info.format = r.str(a, "format", path);
    info.file = r.str(a, "file", path);
    info.sha256 = r.str(a, "sha256", path);
    info.bytes = r.integer(a, "bytes", path);
    info.precision = r.opt_str(a, "precision", path);
    info.device = r.opt_str(a, "device", path);
    if (info.file.empty() || info.file.find("..") != std::string::npos || info.file[0] == '/') {
      r.fail("'" + path + "file' must be a file name inside the engine directory, got '" + info.file + "'");
    }
    m.artifacts.push_back(std::move(info));
  }
  return m;
}

Manifest Manifest::load(const std::string& dir) {
  std::string path = dir + "/manifest.json";
  std::string origin = "engine '" + detail::engine_name(dir) + "': " + path;
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    throw Error(ErrorCode::Manifest,
                origin + " cannot be read (missing?); an engine directory is written by `kiln build` "
                         "and holds manifest.json beside its artifacts");
  }
  std::stringstream ss;
  ss << f.rdbuf();
  return parse(ss.str(), origin);
}

}  // namespace kiln
