#include "kiln/manifest.h"

#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kiln/error.h"
#include "kiln/generate.h"
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

// A value as an error message quotes it: scalars as JSON (at most 80 characters), lists and
// objects by their size. Never recursive, so a deeply nested document cannot exhaust the
// stack while its error is being written.
std::string brief(const Json& v) {
  if (v.is_array()) return "a list of " + std::to_string(v.size()) + " items";
  if (v.is_object()) return "an object with " + std::to_string(v.size()) + " keys";
  std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

bool is_integer_dtype(DType d) {
  return d == DType::Int64 || d == DType::Int32 || d == DType::Bool || d == DType::UInt8;
}

// Walks the JSON and throws Error(Manifest) naming the field path ("inputs[1].dtype").
class Reader {
 public:
  explicit Reader(std::string origin) : origin_(std::move(origin)) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorCode::Manifest,
                origin_ + ": " + what + "; rebuild the engine with `kiln build` (see engines/README.md)");
  }

  Json parse(const std::string& text) const {
    try {
      Json j = Json::parse(text);
      if (!j.is_object()) fail("the top level must be a JSON object, got " + brief(j));
      return j;
    } catch (const Json::exception& e) {
      // parse_error, and out_of_range for a number JSON allows but a double cannot hold
      // (1e400): found by fuzzing (make fuzz-cpp).
      fail(std::string("not valid JSON (") + e.what() + ")");
    }
  }

  // format_version must be this runtime's; the message says which version the file has.
  int version(const Json& j) const {
    const Json& v = field(j, "format_version", "");
    if (!v.is_number_integer() || !v.is_number_unsigned() ||
        v.get<uint64_t>() != static_cast<uint64_t>(kManifestFormatVersion)) {
      throw Error(ErrorCode::Manifest, origin_ + ": format_version " + brief(v) + ", this runtime reads version " +
                                           std::to_string(kManifestFormatVersion) +
                                           "; rebuild the engine with `kiln build`");
    }
    return kManifestFormatVersion;
  }

  const Json& field(const Json& obj, const std::string& key, const std::string& path) const {
    auto it = obj.find(key);
    if (it == obj.end()) fail("field '" + path + key + "' is missing");
    return *it;
  }
  std::string str(const Json& obj, const std::string& key, const std::string& path) const {
    const Json& v = field(obj, key, path);
    if (!v.is_string()) fail("field '" + path + key + "' must be a string, got " + brief(v));
    return v.get<std::string>();
  }
  std::string opt_str(const Json& obj, const std::string& key, const std::string& path) const {
    return obj.contains(key) ? str(obj, key, path) : std::string();
  }
  int64_t integer(const Json& v, const std::string& where) const {
    if (!v.is_number_integer()) fail("field '" + where + "' must be an integer, got " + brief(v));
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail("field '" + where + "' is " + brief(v) + ", more than the largest 64-bit signed integer");
    }
    return v.get<int64_t>();
  }
  int64_t integer(const Json& obj, const std::string& key, const std::string& path) const {
    return integer(field(obj, key, path), path + key);
  }
  int64_t positive(const Json& obj, const std::string& key, const std::string& path) const {
    int64_t n = integer(obj, key, path);
    if (n < 1) fail("field '" + path + key + "' must be a positive integer, got " + std::to_string(n));
    return n;
  }
  const Json& array(const Json& obj, const std::string& key, const std::string& path) const {
    const Json& v = field(obj, key, path);
    if (!v.is_array()) fail("field '" + path + key + "' must be a list, got " + brief(v));
    return v;
  }
  const Json& object(const Json& obj, const std::string& key, const std::string& path) const {
    const Json& v = field(obj, key, path);
    if (!v.is_object()) fail("field '" + path + key + "' must be an object, got " + brief(v));
    return v;
  }

  // "dims": {name: {min, opt, max[, sum]}}
  std::map<std::string, DimRange> dims(const Json& j) const {
    std::map<std::string, DimRange> out;
    const Json& dims = object(j, "dims", "");
    for (auto it = dims.begin(); it != dims.end(); ++it) {
      std::string path = "dims." + it.key();
      if (it.key().empty()) fail("'dims' has a dimension with an empty name");
      if (!it->is_object()) fail("'" + path + "' must be an object {min, opt, max}, got " + brief(*it));
      DimRange d;
      d.min = integer(*it, "min", path + ".");
      d.opt = integer(*it, "opt", path + ".");
      d.max = integer(*it, "max", path + ".");
      if (!(0 <= d.min && d.min <= d.opt && d.opt <= d.max)) {
        fail("'" + path + "' needs 0 <= min <= opt <= max, got min " + std::to_string(d.min) + ", opt " +
             std::to_string(d.opt) + ", max " + std::to_string(d.max));
      }
      // "multiple": every size a multiple of it (GLPN's H and W: 32); min, opt and max too
      if (it->contains("multiple")) {
        d.multiple = positive(*it, "multiple", path + ".");
        if (it->contains("sum")) fail("field '" + path + ".multiple' is set on a derived dimension (sum); drop one");
        const std::pair<const char*, int64_t> bounds[] = {{"min", d.min}, {"opt", d.opt}, {"max", d.max}};
        for (const auto& [name, v] : bounds) {
          if (v % d.multiple != 0) {
            fail("field '" + path + "." + name + "' is " + std::to_string(v) + ", not a multiple of '" + path +
                 ".multiple' (" + std::to_string(d.multiple) + ")");
          }
        }
      }
      out[it.key()] = d;
    }
    // "sum": the terms of a derived dimension (total = past + new), each an ordinary
    // dimension of this manifest.
    for (auto it = dims.begin(); it != dims.end(); ++it) {
      auto s = it->find("sum");
      if (s == it->end()) continue;
      std::string path = "dims." + it.key() + ".sum";
      if (!s->is_array() || s->empty()) {
        fail("field '" + path + "' must be a non-empty list of dimension names, got " + brief(*s));
      }
      std::vector<std::string> terms;
      for (size_t k = 0; k < s->size(); ++k) {
        const Json& t = (*s)[k];
        std::string where = path + "[" + std::to_string(k) + "]";
        if (!t.is_string()) fail("field '" + where + "' must be a dimension name, got " + brief(t));
        std::string name = t.get<std::string>();
        if (name == it.key()) fail("field '" + where + "' is '" + name + "' itself; a dimension cannot be a term of its own sum");
        if (!out.count(name)) {
          fail("field '" + where + "' is '" + name + "', which is not a dimension of this manifest (its dims: " +
               dim_names(out) + ")");
        }
        const Json& term = dims.at(name);
        if (term.contains("sum")) {
          fail("field '" + where + "' is '" + name + "', itself a derived dimension; a sum's terms must be ordinary dimensions");
        }
        terms.push_back(std::move(name));
      }
      out[it.key()].sum = std::move(terms);
    }
    return out;
  }

  TensorSpec spec(const Json& j, const std::string& path, const std::map<std::string, DimRange>& dims,
                  bool is_input) const {
    if (!j.is_object()) fail("'" + path + "' must be an object, got " + brief(j));
    TensorSpec s;
    s.name = str(j, "name", path + ".");
    if (s.name.empty()) fail("field '" + path + ".name' is empty");
    std::string dt = str(j, "dtype", path + ".");
    auto dtype = dtype_from_name(dt);
    if (!dtype) {
      fail("field '" + path + ".dtype' is '" + dt + "', not one of float32, float16, bfloat16, int64, int32, bool, uint8");
    }
    s.dtype = *dtype;
    const Json& shape = array(j, "shape", path + ".");
    for (size_t i = 0; i < shape.size(); ++i) {
      const Json& d = shape[i];
      std::string where = path + ".shape[" + std::to_string(i) + "]";
      Dim dim;
      if (d.is_string()) {
        dim.symbol = d.get<std::string>();
        if (dim.symbol.empty()) fail("'" + where + "' is an empty dimension name");
        // An output may carry a dimension the inputs do not determine; an input's
        // symbolic dimension needs a range to be validated against.
        if (is_input && !dims.count(dim.symbol)) {
          fail("'" + where + "' is the symbolic dimension '" + dim.symbol + "', which is not listed in 'dims'");
        }
      } else if (d.is_number_integer() && !(d.is_number_unsigned() && d.get<uint64_t>() > uint64_t(INT64_MAX)) &&
                 d.get<int64_t>() >= 0) {
        dim.size = d.get<int64_t>();
      } else {
        fail("'" + where + "' must be a dimension name or a size >= 0, got " + brief(d));
      }
      s.shape.push_back(std::move(dim));
    }
    if (auto v = j.find("values"); v != j.end()) {
      std::string where = path + ".values";
      if (!is_input) fail("field '" + where + "': value ranges are checked on inputs only; remove it from the output");
      if (!is_integer_dtype(s.dtype)) {
        fail("field '" + where + "' is given for a " + dt + " input; value ranges apply to integer and bool inputs only");
      }
      if (!v->is_object()) fail("field '" + where + "' must be an object {min, max}, got " + brief(*v));
      ValueRange r{integer(*v, "min", where + "."), integer(*v, "max", where + ".")};
      if (r.min > r.max) {
        fail("field '" + where + "' has min " + std::to_string(r.min) + " > max " + std::to_string(r.max) +
             "; the bounds are inclusive, min <= max");
      }
      s.values = r;
    }
    return s;
  }

  static std::string dim_names(const std::map<std::string, DimRange>& dims) {
    std::vector<std::string> names;
    for (const auto& [n, d] : dims) names.push_back(n);
    return names.empty() ? "none" : detail::join(names);
  }

  const std::string& origin() const { return origin_; }

 private:
  std::string origin_;
};

std::string read_manifest_file(const std::string& path, const std::string& origin, const std::string& what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(ErrorCode::Manifest, origin + " cannot be read (missing?); " + what);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

Manifest Manifest::parse(const std::string& text, const std::string& origin) {
  Reader r(origin);
  Json j = r.parse(text);

  Manifest m;
  m.json = text;
  m.format_version = r.version(j);
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
  m.dims = r.dims(j);

  for (bool is_input : {true, false}) {
    const char* key = is_input ? "inputs" : "outputs";
    const Json& specs = r.array(j, key, "");
    if (specs.empty()) r.fail(std::string("'") + key + "' is empty");
    auto& out = is_input ? m.inputs : m.outputs;
    for (size_t i = 0; i < specs.size(); ++i) {
      TensorSpec s = r.spec(specs[i], std::string(key) + "[" + std::to_string(i) + "]", m.dims, is_input);
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
    if (!a.is_object()) r.fail("'" + path.substr(0, path.size() - 1) + "' must be an object, got " + brief(a));
    ArtifactInfo info;
    info.format = r.str(a, "format", path);
    info.file = r.str(a, "file", path);
    info.sha256 = r.str(a, "sha256", path);
    info.bytes = r.integer(a, "bytes", path);
    if (info.bytes < 0) r.fail("field '" + path + "bytes' is negative (" + std::to_string(info.bytes) + ")");
    info.precision = r.opt_str(a, "precision", path);
    info.device = r.opt_str(a, "device", path);
    if (info.file.empty() || info.file.find("..") != std::string::npos || info.file[0] == '/' ||
        info.file.find('\0') != std::string::npos) {
      r.fail("'" + path + "file' must be a file name inside the engine directory, got '" + info.file + "'");
    }
    m.artifacts.push_back(std::move(info));
  }
  if (auto c = j.find("backend_choice"); c != j.end() && !c->is_null()) {
    const Json& choice = r.object(j, "backend_choice", "");
    m.preferred_backend = r.str(choice, "backend", "backend_choice.");
    m.preferred_cpu = r.str(choice, "cpu", "backend_choice.");
    if (!m.artifact(m.preferred_backend)) {
      r.fail("'backend_choice.backend' is '" + m.preferred_backend + "', a format with no artifact in this engine");
    }
  }
  return m;
}

Manifest Manifest::load(const std::string& dir) {
  std::string path = dir + "/manifest.json";
  std::string origin = "engine '" + detail::engine_name(dir) + "': " + path;
  return parse(read_manifest_file(path, origin,
                                  "an engine directory is written by `kiln build` and holds manifest.json beside its "
                                  "artifacts"),
               origin);
}

GenerationManifest GenerationManifest::parse(const std::string& text, const std::string& origin) {
  Reader r(origin);
  Json j = r.parse(text);

  GenerationManifest g;
  g.json = text;
  g.format_version = r.version(j);
  auto kind = j.find("kind");
  if (kind == j.end() || *kind != "generation") {
    throw Error(ErrorCode::Manifest,
                origin + " is not a generation engine (" +
                    (kind == j.end() ? std::string("no \"kind\": \"generation\"") : "\"kind\" is " + brief(*kind)) +
                    "); open it with kiln::Engine / kiln.Engine, or pass a generation engine directory");
  }
  g.name = r.str(j, "name", "");
  g.family = r.str(j, "family", "");
  g.task = r.str(j, "task", "");

  const Json& graphs = r.object(j, "graphs", "");
  for (auto it = graphs.begin(); it != graphs.end(); ++it) {
    const std::string where = "graphs." + it.key();
    if (it.key() != "decoder" && it.key() != "encoder") {
      r.fail("field '" + where + "' names an unknown graph; a generation engine has a \"decoder\" and, "
             "for encoder-decoder models, an \"encoder\"");
    }
    if (!it->is_string()) r.fail("field '" + where + "' must be a subdirectory name, got " + brief(*it));
    std::string sub = it->get<std::string>();
    if (sub.empty() || sub.find("..") != std::string::npos || sub[0] == '/' || sub.find('\0') != std::string::npos) {
      r.fail("field '" + where + "' must name a subdirectory of the engine, got '" + sub + "'");
    }
    g.graphs[it.key()] = std::move(sub);
  }
  if (!g.graphs.count("decoder")) {
    std::vector<std::string> names;
    for (const auto& [name, sub] : g.graphs) names.push_back(name);
    r.fail("field 'graphs' must name at least the \"decoder\" subdirectory, got [" + detail::join(names) + "]");
  }

  const Json& cache = r.object(j, "cache", "");
  g.cache.layers = r.positive(cache, "layers", "cache.");
  g.cache.heads = r.positive(cache, "heads", "cache.");
  g.cache.head_dim = r.positive(cache, "head_dim", "cache.");
  g.vocab_size = r.positive(j, "vocab_size", "");
  g.max_positions = r.positive(j, "max_positions", "");

  const bool has_encoder = g.graphs.count("encoder") > 0;
  g.encoder_decoder = has_encoder;
  if (auto e = j.find("encoder_decoder"); e != j.end()) {
    if (!e->is_boolean()) r.fail("field 'encoder_decoder' must be true or false, got " + brief(*e));
    if (e->get<bool>() != has_encoder) {
      r.fail(std::string("field 'encoder_decoder' is ") + (e->get<bool>() ? "true" : "false") + " but 'graphs' " +
             (has_encoder ? "has" : "has no") + " \"encoder\"; the two must agree");
    }
  }

  g.generation = "{}";
  if (auto gen = j.find("generation"); gen != j.end() && !gen->is_null()) {
    if (!gen->is_object()) r.fail("field 'generation' must be an object (generation_config.json), got " + brief(*gen));
    g.generation = gen->dump(-1, ' ', false, Json::error_handler_t::replace);
    // Its keys' types are checked here, so a bad manifest fails at open, not at generate().
    GenerationOptions::from_json(g.generation, origin + ": field 'generation'");
  }
  return g;
}

GenerationManifest GenerationManifest::load(const std::string& dir) {
  std::string path = dir + "/manifest.json";
  std::string origin = "generator '" + detail::engine_name(dir) + "': " + path;
  return parse(read_manifest_file(path, origin,
                                  "pass a generation engine directory written by `kiln build` (engines/<name>/)"),
               origin);
}

}  // namespace kiln
