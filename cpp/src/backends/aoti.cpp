// AOTInductor backend: model.pt2 (torch.export + aoti_compile_and_package) run with
// torch::inductor::AOTIModelPackageLoader.
#include <c10/core/InferenceMode.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>

#include <ATen/ops/empty.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "torch_common.h"

namespace kiln::detail {
namespace {

namespace fs = std::filesystem;
using namespace torch_backend;

// Concurrency: AOTIModelPackageLoader::run goes to the model container's run(), which
// takes a model instance from a pool under a mutex, runs it and returns it (torch
// aoti_runtime/model_container.h). With one instance, concurrent calls are correct but
// wait for each other; each instance holds only its activations (the weights are shared
// by the container), so we give the container one per core, up to 8, and concurrent
// run() calls proceed in parallel. run_single_threaded=true would drop that locking and
// is not safe here.
size_t runner_count() {
  unsigned cores = std::thread::hardware_concurrency();
  return std::clamp<size_t>(cores, 1, 8);
}

// --- the extraction directory ------------------------------------------------------------
//
// Given a .pt2 file, AOTIModelPackageLoader extracts it into
// temp_directory_path()/aotinductor_XXXXXX and removes that in its destructor, so a process
// that crashes leaves the extracted package (the model's .so, with its weights in packages
// built that way: GBs for a large model) behind, under a name nothing can tell is stale. Given a directory (an
// unpacked package), it loads from there and never deletes it. So kiln unpacks the package
// itself into $TMPDIR/kiln-aoti-<pid>-XXXXXX, removes that when the engine closes, and at
// every open removes the kiln-aoti-<pid>-* directories whose process is gone.

constexpr const char* kPrefix = "kiln-aoti-";

fs::path temp_base() {
  std::error_code ec;
  fs::path base = fs::temp_directory_path(ec);  // $TMPDIR, else /tmp
  return ec ? fs::path("/tmp") : base;
}

// Whether a process exists and has not exited: a zombie (killed, not yet reaped by its
// parent) counts as gone. A process of another user counts as alive (EPERM).
bool alive(pid_t pid) {
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  size_t paren = line.rfind(')');  // "pid (comm) S ...": comm may hold spaces and parentheses
  return !(paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z');
}

// Removes kiln-aoti-<pid>-* directories of this user whose process no longer exists.
void sweep_stale(const fs::path& base) {
  std::error_code ec;
  for (fs::directory_iterator it(base, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.compare(0, std::strlen(kPrefix), kPrefix) != 0) continue;
    const char* digits = name.c_str() + std::strlen(kPrefix);
    char* stop = nullptr;
    errno = 0;
    long pid = std::strtol(digits, &stop, 10);
    if (errno || stop == digits || *stop != '-' || pid <= 0 || pid == static_cast<long>(getpid())) continue;
    struct stat st;
    if (lstat(it->path().c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) continue;
    if (alive(static_cast<pid_t>(pid))) continue;
    std::error_code rm;
    fs::remove_all(it->path(), rm);
  }
}

// A fresh private directory $TMPDIR/kiln-aoti-<pid>-XXXXXX.
fs::path make_extraction_dir(const std::string& engine) {
  fs::path base = temp_base();
  sweep_stale(base);
  std::string tmpl = (base / (std::string(kPrefix) + std::to_string(getpid()) + "-XXXXXX")).string();
  if (!mkdtemp(tmpl.data())) {
    throw Error(ErrorCode::Artifact, "engine '" + engine + "': cannot create a directory to unpack the AOTInductor "
                                     "package in " + base.string() + ": " + std::strerror(errno) +
                                     "; set TMPDIR to a writable directory with room for the model");
  }
  return fs::path(tmpl);
}

constexpr const char* kBlobSuffix = "_weights.blob";

bool is_weights_blob(const std::string& name) {
  const size_t n = std::strlen(kBlobSuffix);
  return name.size() > n && name.compare(name.size() - n, n, kBlobSuffix) == 0;
}

fs::path inside(const fs::path& dir, const std::string& name) {
  fs::path rel = fs::path(name).lexically_normal();
  if (name.empty() || rel.is_absolute() || rel.empty() || *rel.begin() == "..") {
    throw std::runtime_error("the package holds a file named '" + name + "' outside its own directory");
  }
  return dir / rel;
}

// Reads a record in chunks of 4 MiB: into memory (dst) or, with dst null, into out.
void copy_record(caffe2::serialize::PyTorchStreamReader& reader, const std::string& name, char* dst,
                 std::ofstream* out) {
  constexpr size_t kChunk = 4 << 20;
  std::vector<char> buf(dst ? 0 : kChunk);
  const size_t size = reader.getRecordSize(name);
  auto chunks = reader.createChunkReaderIter(name, size, kChunk);
  for (size_t done = 0; done < size;) {
    size_t n = chunks.next(dst ? dst + done : buf.data());
    if (n == 0) throw std::runtime_error("'" + name + "' ends early");
    if (!dst) out->write(buf.data(), static_cast<std::streamsize>(n));
    done += n;
  }
}

void write_record(caffe2::serialize::PyTorchStreamReader& reader, const std::string& name, const fs::path& dir) {
  fs::path out = inside(dir, name);
  fs::create_directories(out.parent_path());
  std::ofstream f(out, std::ios::binary);
  copy_record(reader, name, nullptr, &f);
  if (!f) throw std::runtime_error("cannot write " + out.string() + ": " + std::strerror(errno));
}

// Unpacks the .pt2 (a zip written by torch's PyTorchStreamWriter) with torch's own reader,
// all but the weights blob (kiln's packages keep the weights beside the model's .so, in
// <wrapper>_weights.blob: see "the weights" below). Returns the blob's record name, "" if none.
std::string unpack(caffe2::serialize::PyTorchStreamReader& reader, const fs::path& dir) {
  std::string blob;
  for (const std::string& name : reader.getAllRecords()) {
    if (is_weights_blob(name)) {
      if (!blob.empty()) throw std::runtime_error("the package holds two weight blobs, " + blob + " and " + name);
      blob = name;
      continue;
    }
    write_record(reader, name, dir);
  }
  return blob;
}

// --- what the compiled model takes ------------------------------------------------------
//
// AOTInductor writes, into the wrapper source it packages, a check per input
// (check_input_<i>: the expected dtype, fixed sizes, size bounds, strides, device) and an
// assert_size_stride(arg, {sizes}, {strides}) per input, both run only when the environment
// variable AOTI_RUNTIME_CHECK_INPUTS is set (read once per process). Kiln cannot use them
// at run time: the bounds are torch.export's specialised ones (a batch of 1 fails the
// ">= 2" check, yet runs correctly). Without them a dtype or rank that differs from what
// the model was compiled for is read as whatever it was compiled for: out-of-bounds reads,
// wrong sizes, an abort. So at open kiln reads the dtype, rank and fixed sizes from that
// source and compares them with the manifest's input specs.

struct CompiledInput {
  std::string dtype;        // aoti_torch_dtype_<name>: "int64", "float32", ...
  int64_t rank = -1;        // from assert_size_stride; -1 if not found
  int64_t min_rank = 0;     // the highest dimension index the checks read, + 1
  std::map<int64_t, int64_t> fixed;  // dimension -> size
};

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string identifier_at(const std::string& s, size_t i) {
  size_t j = i;
  while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
  return s.substr(i, j - i);
}

// Every index k in "<name>_size[k]" / "<name>_stride[k]" within [from, to).
int64_t highest_index(const std::string& s, size_t from, size_t to, const std::string& name) {
  int64_t best = -1;
  for (const char* what : {"_size[", "_stride["}) {
    const std::string needle = name + what;
    for (size_t i = s.find(needle, from); i != std::string::npos && i < to; i = s.find(needle, i + 1)) {
      best = std::max<int64_t>(best, std::atoll(s.c_str() + i + needle.size()));
    }
  }
  return best;
}

std::map<int64_t, CompiledInput> compiled_inputs(const fs::path& dir) {
  std::map<int64_t, CompiledInput> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() != ".cpp") continue;
    const std::string s = read_text(it->path());
    for (size_t at = s.find("static void check_input_"); at != std::string::npos;
         at = s.find("static void check_input_", at + 1)) {
      size_t body_end = s.find("\n}\n", at);
      if (body_end == std::string::npos) break;
      const std::string handle = "ConstantHandle(input_handles[";
      size_t h = s.find(handle, at);
      if (h == std::string::npos || h > body_end) continue;
      int64_t index = std::atoll(s.c_str() + h + handle.size());
      // "ConstantHandle argN_1 = ConstantHandle(input_handles[i]);"
      size_t decl = s.rfind("ConstantHandle ", h - 1);
      if (decl == std::string::npos || decl < at) continue;
      std::string name = identifier_at(s, decl + std::strlen("ConstantHandle "));
      CompiledInput in;
      const std::string dt = "_expected_dtype = aoti_torch_dtype_";
      if (size_t d = s.find(dt, at); d != std::string::npos && d < body_end) in.dtype = identifier_at(s, d + dt.size());
      in.min_rank = highest_index(s, at, body_end, name) + 1;
      // "if (4 != argN_1_size[1])": a fixed size
      const std::string fixed_tail = " != " + name + "_size[";
      for (size_t f = s.find(fixed_tail, at); f != std::string::npos && f < body_end; f = s.find(fixed_tail, f + 1)) {
        size_t open = s.rfind("if (", f);
        if (open == std::string::npos || open < at) continue;
        int64_t size = std::atoll(s.c_str() + open + 4);
        int64_t dim = std::atoll(s.c_str() + f + fixed_tail.size());
        in.fixed[dim] = size;
      }
      // "assert_size_stride(argN_1, {s0, 4L}, {4L, 1L}, ...)": the exact rank
      const std::string assert_call = "assert_size_stride(" + name + ", {";
      if (size_t a = s.find(assert_call); a != std::string::npos) {
        size_t open = a + assert_call.size(), close = s.find('}', open);
        if (close != std::string::npos) {
          std::string sizes = s.substr(open, close - open);
          in.rank = sizes.find_first_not_of(' ') == std::string::npos
                        ? 0
                        : static_cast<int64_t>(std::count(sizes.begin(), sizes.end(), ',')) + 1;
        }
      }
      out[index] = std::move(in);
    }
    if (!out.empty()) break;
  }
  return out;
}

void check_against_manifest(const BackendLoad& load, const fs::path& dir) {
  const auto compiled = compiled_inputs(dir);
  if (compiled.empty()) return;  // a package without its wrapper source: nothing to compare
  const auto& specs = load.manifest.inputs;
  const std::string who = "engine '" + load.engine_name + "': the AOTInductor artifact " + load.artifact.file;
  const std::string fix = "; the artifact and manifest.json disagree (an engine directory from two builds?), rebuild "
                          "the engine with `kiln build`";
  if (compiled.size() != specs.size() || compiled.rbegin()->first != static_cast<int64_t>(specs.size()) - 1) {
    throw Error(ErrorCode::Artifact, who + " takes " + std::to_string(compiled.size()) + " inputs, manifest.json lists " +
                                         std::to_string(specs.size()) + fix);
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& s = specs[i];
    const CompiledInput& c = compiled.at(static_cast<int64_t>(i));
    const int64_t rank = static_cast<int64_t>(s.shape.size());
    std::string got;
    if (!c.dtype.empty() && c.dtype != dtype_name(s.dtype)) {
      got = "as " + c.dtype;
    } else if (c.rank >= 0 ? c.rank != rank : c.min_rank > rank) {
      got = "with rank " + (c.rank >= 0 ? std::to_string(c.rank) : "at least " + std::to_string(c.min_rank));
    } else {
      for (const auto& [dim, size] : c.fixed) {
        if (dim < rank && !s.shape[dim].symbolic() && s.shape[dim].size != size) {
          got = "with dimension " + std::to_string(dim) + " of size " + std::to_string(size);
          break;
        }
      }
    }
    if (!got.empty()) {
      throw Error(ErrorCode::Artifact, who + " was compiled for input " + std::to_string(i) + " ('" + s.name + "') " +
                                           got + ", manifest.json says " + dtype_name(s.dtype) + " " +
                                           s.shape_string() + fix);
    }
  }
}

// --- the weights ----------------------------------------------------------------------------
//
// kiln builds its packages with the weights beside the model's .so (Inductor's
// package_constants_in_so=False, package_constants_on_disk_format="binary_blob"): one blob of
// every constant in the order of the model's constant table, each padded to 64 bytes. Left
// to torch, the loader maps that blob and copies it into a buffer of its own; with the
// weights inside the .so, the container copies them out of the mapped library. Either way
// the mapped pages and the copy are resident together while it loads: a peak of twice the
// weights. So kiln reads the blob itself, once, from the package into one buffer (the
// process's allocator: huge pages where the `kiln` command set glibc's tunable), makes a
// tensor per constant from the table the wrapper source declares (constants_info_[i]: name,
// dtype, shape, stride, offset, data_size; oneDNN's prepacked weights also carry their opaque
// memory descriptor) through torch's own shim, as the container would, and hands them to the
// container as user-managed constants, which it uses in place. Constants folded at run time
// are not in the blob: a package with any goes the torch way.

struct Constant {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape, stride;
  int64_t offset = 0;  // storage offset, in elements
  size_t data_size = 0;
  bool mkldnn = false;            // oneDNN's prepacked layout: its descriptor is opaque_metadata
  std::vector<uint8_t> opaque_metadata;
};

std::optional<at::ScalarType> scalar_type_named(const std::string& s) {
  static const std::map<std::string, at::ScalarType> names{
      {"float32", at::kFloat}, {"float16", at::kHalf},  {"bfloat16", at::kBFloat16}, {"float64", at::kDouble},
      {"int8", at::kChar},     {"uint8", at::kByte},    {"int16", at::kShort},       {"int32", at::kInt},
      {"int64", at::kLong},    {"bool", at::kBool}};
  auto it = names.find(s);
  if (it == names.end()) return std::nullopt;
  return it->second;
}

// A non-negative integer, as the wrapper writes them ("768", "128L").
int64_t parse_int(const std::string& v, const std::string& what) {
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (end != v.c_str() && *end == 'L') ++end;
  if (errno || end == v.c_str() || *end != '\0' || x < 0) throw std::runtime_error(what + " is '" + v + "'");
  return x;
}

std::vector<int64_t> parse_ints(const std::string& v, const std::string& what, size_t most) {
  if (v.size() < 2 || v.front() != '{' || v.back() != '}') throw std::runtime_error(what + " is '" + v + "'");
  std::vector<int64_t> out;
  std::stringstream ss(v.substr(1, v.size() - 2));
  for (std::string item; std::getline(ss, item, ',');) {
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    out.push_back(parse_int(item, what));
    if (out.size() > most) throw std::runtime_error(what + " has more than " + std::to_string(most) + " entries");
  }
  return out;
}

size_t padded(size_t n, const std::string& what) {
  constexpr size_t kAlign = 64;  // AOTInductor's constant alignment
  if (n > std::numeric_limits<size_t>::max() - kAlign) throw std::runtime_error(what + " is too large");
  return (n + kAlign - 1) / kAlign * kAlign;
}

// The constants the wrapper declares, in order; nullopt where kiln cannot place them itself.
std::optional<std::vector<Constant>> constant_table(const std::string& src) {
  std::map<size_t, std::map<std::string, std::string>> fields;
  const std::string key = "constants_info_[";
  for (size_t at = src.find(key); at != std::string::npos; at = src.find(key, at + 1)) {
    size_t close = src.find("].", at);
    size_t eq = src.find(" = ", at);
    size_t end = src.find(";\n", at);
    if (close == std::string::npos || eq == std::string::npos || end == std::string::npos || !(close < eq && eq < end))
      continue;  // a use of the table, not an assignment
    const std::string index = src.substr(at + key.size(), close - at - key.size());
    if (index.empty() || index.find_first_not_of("0123456789") != std::string::npos || index.size() > 9) continue;
    fields[std::stoul(index)][src.substr(close + 2, eq - close - 2)] = src.substr(eq + 3, end - eq - 3);
  }
  std::vector<Constant> table;
  std::set<std::string> names;
  for (const auto& [index, f] : fields) {
    const std::string what = "constant " + std::to_string(index);
    if (index != table.size()) throw std::runtime_error("the constant table skips " + what);
    auto get = [&](const char* name) -> const std::string& {
      auto it = f.find(name);
      if (it == f.end()) throw std::runtime_error(what + " has no " + name);
      return it->second;
    };
    const std::string& layout = get("layout");
    const bool mkldnn = layout == "static_cast<int32_t>(cached_torch_layout__mkldnn)";
    if (get("from_folded") != "false" || get("device_type") != "cached_torch_device_type_cpu" ||
        (!mkldnn && layout != "static_cast<int32_t>(cached_torch_layout_strided)")) {
      return std::nullopt;
    }
    const std::string& dt = get("dtype");
    const std::string dt_prefix = "cached_torch_dtype_";
    auto dtype = dt.rfind(dt_prefix, 0) == 0 ? scalar_type_named(dt.substr(dt_prefix.size())) : std::nullopt;
    if (!dtype) return std::nullopt;
    Constant c;
    const std::string& name = get("name");
    if (name.size() < 3 || name.front() != '"' || name.back() != '"' ||
        name.find_first_of("\"\\", 1) != name.size() - 1) {
      throw std::runtime_error(what + " is named " + name);
    }
    c.name = name.substr(1, name.size() - 2);
    if (!names.insert(c.name).second) throw std::runtime_error("two constants are named " + c.name);
    c.dtype = *dtype;
    c.shape = parse_ints(get("shape"), c.name + "'s shape", 64);
    c.stride = parse_ints(get("stride"), c.name + "'s stride", 64);
    c.offset = parse_int(get("offset"), c.name + "'s offset");
    c.data_size = static_cast<size_t>(parse_int(get("data_size"), c.name + "'s data_size"));
    c.mkldnn = mkldnn;
    if (c.shape.size() != c.stride.size()) throw std::runtime_error(c.name + "'s shape and stride differ in rank");
    if (mkldnn) {
      // oneDNN reads the weight by its descriptor (checked by oneDNN, as in torch's loader)
      for (int64_t b : parse_ints(get("opaque_metadata"), c.name + "'s opaque_metadata", 1 << 20)) {
        if (b > 255) throw std::runtime_error(c.name + "'s opaque_metadata holds " + std::to_string(b));
        c.opaque_metadata.push_back(static_cast<uint8_t>(b));
      }
    }
    // The last element a strided tensor reads must lie within its data (overflow-safe).
    bool empty = std::any_of(c.shape.begin(), c.shape.end(), [](int64_t d) { return d == 0; });
    if (!empty && !mkldnn) {
      uint64_t last = static_cast<uint64_t>(c.offset);
      for (size_t d = 0; d < c.shape.size(); ++d) {
        uint64_t step = 0;
        if (__builtin_mul_overflow(static_cast<uint64_t>(c.shape[d] - 1), static_cast<uint64_t>(c.stride[d]), &step) ||
            __builtin_add_overflow(last, step, &last)) {
          throw std::runtime_error(c.name + "'s shape and stride overflow");
        }
      }
      uint64_t bytes = 0;
      if (__builtin_add_overflow(last, uint64_t{1}, &bytes) ||
          __builtin_mul_overflow(bytes, static_cast<uint64_t>(c10::elementSize(c.dtype)), &bytes) ||
          bytes > c.data_size) {
        throw std::runtime_error(c.name + "'s shape and stride reach past its " + std::to_string(c.data_size) +
                                 " bytes");
      }
    }
    table.push_back(std::move(c));
  }
  return table;
}

// Reads the blob into one buffer and makes the constants' tensors over it.
std::vector<at::Tensor> place_constants(caffe2::serialize::PyTorchStreamReader& reader, const std::string& blob,
                                        const std::vector<Constant>& table, at::Tensor& buffer) {
  const size_t blob_size = reader.getRecordSize(blob);
  size_t total = 0;
  std::vector<size_t> starts;
  for (const Constant& c : table) {
    starts.push_back(total);
    if (__builtin_add_overflow(total, padded(c.data_size, c.name + "'s data_size"), &total)) {
      throw std::runtime_error("the constants' sizes overflow");
    }
  }
  if (total != blob_size) {
    throw std::runtime_error("the wrapper's " + std::to_string(table.size()) + " constants take " +
                             std::to_string(total) + " bytes, the weights blob holds " + std::to_string(blob_size));
  }
  buffer = at::empty({static_cast<int64_t>(blob_size)}, at::TensorOptions().dtype(at::kByte));
  auto* base = static_cast<char*>(buffer.data_ptr());
  copy_record(reader, blob, base, nullptr);
  std::vector<at::Tensor> out;
  out.reserve(table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    const Constant& c = table[i];
    AtenTensorHandle handle = nullptr;
    if (aoti_torch_create_tensor_from_blob_v2(
            c.data_size ? base + starts[i] : nullptr, static_cast<int64_t>(c.shape.size()), c.shape.data(),
            c.stride.data(), c.offset, static_cast<int32_t>(c.dtype), aoti_torch_device_type_cpu(), 0, &handle,
            c.mkldnn ? aoti_torch_layout__mkldnn() : aoti_torch_layout_strided(),
            c.opaque_metadata.empty() ? nullptr : c.opaque_metadata.data(),
            static_cast<int64_t>(c.opaque_metadata.size())) != AOTI_TORCH_SUCCESS ||
        !handle) {
      throw std::runtime_error("torch cannot make constant " + c.name + " from its bytes");
    }
    out.push_back(*torch::aot_inductor::tensor_handle_to_tensor_pointer(handle));
    aoti_torch_delete_tensor_object(handle);
  }
  return out;
}

class AotiBackend final : public Backend {
 public:
  explicit AotiBackend(const BackendLoad& load) : engine_(load.engine_name), outputs_(load.manifest.outputs) {
    dir_ = make_extraction_dir(engine_);
    const std::string who = "engine '" + engine_ + "': AOTInductor could not load " + load.artifact_path;
    try {
      std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
      std::string blob;
      try {
        reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(load.artifact_path);
        blob = unpack(*reader, dir_);
      } catch (const std::exception& e) {
        throw Error(ErrorCode::Artifact, who + ": unpacking it into " + dir_.string() + " failed: " + message_of(e) +
                                             "; rebuild the engine (or free space in TMPDIR)");
      }
      check_against_manifest(load, dir_);
      std::optional<std::vector<Constant>> table;
      try {
        if (!blob.empty()) {
          const std::string wrapper = blob.substr(0, blob.size() - std::strlen(kBlobSuffix)) + ".cpp";
          if (!reader->hasRecord(wrapper)) throw std::runtime_error("its weights blob has no " + wrapper + " beside it");
          auto [data, size] = reader->getRecord(wrapper);
          table = constant_table(std::string(static_cast<const char*>(data.get()), size));
          if (!table) write_record(*reader, blob, dir_);  // opaque constants: torch loads them
        }
      } catch (const std::exception& e) {
        throw Error(ErrorCode::Artifact, who + ": its weights do not match the model: " + message_of(e) +
                                             "; rebuild the engine with `kiln build`");
      }
      try {
        loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
            dir_.string(), "model", /*run_single_threaded=*/false, runner_count(), /*device_index=*/-1);
      } catch (const std::exception& e) {
        throw Error(ErrorCode::Artifact, who + ": " + message_of(e) + "; rebuild the engine with this torch version");
      }
      if (table) {
        try {
          constants_ = place_constants(*reader, blob, *table, weights_);
          torch::inductor::TensorConstantMap map;
          for (size_t i = 0; i < table->size(); ++i) map[(*table)[i].name] = &constants_[i];
          loader_->get_runner()->update_constant_buffer(map, /*use_inactive=*/false, /*check_full_update=*/true,
                                                        /*user_managed=*/true);
        } catch (const std::exception& e) {
          loader_.reset();
          throw Error(ErrorCode::Artifact, who + ": its weights do not match the model: " + message_of(e) +
                                               "; rebuild the engine with `kiln build`");
        }
      }
      apply_num_threads(load.options);
    } catch (...) {
      remove_dir();
      throw;
    }
  }

  ~AotiBackend() override {
    loader_.reset();  // unloads the model's .so before its directory goes
    remove_dir();
  }

  std::vector<Tensor> run(const std::vector<Tensor>& inputs) const override {
    try {
      c10::InferenceMode guard;
      std::vector<at::Tensor> borrowed;
      for (const auto& t : inputs) borrowed.push_back(borrow_as_at(t));
      std::vector<at::Tensor> flat = loader_->run(borrowed);
      std::vector<Tensor> out;
      for (size_t i = 0; i < flat.size(); ++i) {
        out.push_back(i < outputs_.size() ? adopt_output(flat[i], borrowed, outputs_[i]) : Tensor());
      }
      return out;
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(ErrorCode::Runtime, "engine '" + engine_ + "': AOTInductor failed while running: " + message_of(e));
    }
  }

 private:
  void remove_dir() noexcept {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  std::string engine_;
  std::vector<TensorSpec> outputs_;
  fs::path dir_;
  at::Tensor weights_;                 // the blob, read once: the constants' memory
  std::vector<at::Tensor> constants_;  // views of it; the container holds pointers to these
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

const BackendRegistrar registrar(BackendInfo{
    "aoti", "aoti", /*priority=*/20, nullptr,
    [](const BackendLoad& load) -> std::unique_ptr<Backend> { return std::make_unique<AotiBackend>(load); }});

}  // namespace
}  // namespace kiln::detail
