// AOTInductor backend: model.pt2 (torch.export + aoti_compile_and_package) run with
// torch::inductor::AOTIModelPackageLoader.
#include <c10/core/InferenceMode.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

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
#include <map>
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
// that crashes leaves the extracted package (the model's .so with its weights: GBs for a
// large model) behind, under a name nothing can tell is stale. Given a directory (an
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

// Unpacks the .pt2 (a zip written by torch's PyTorchStreamWriter) with torch's own reader.
void unpack(const std::string& package, const fs::path& dir) {
  caffe2::serialize::PyTorchStreamReader reader(package);
  constexpr size_t kChunk = 4 << 20;
  std::vector<char> buf(kChunk);
  for (const std::string& name : reader.getAllRecords()) {
    fs::path rel = fs::path(name).lexically_normal();
    if (name.empty() || rel.is_absolute() || rel.empty() || *rel.begin() == "..") {
      throw std::runtime_error("the package holds a file named '" + name + "' outside its own directory");
    }
    fs::path out = dir / rel;
    fs::create_directories(out.parent_path());
    std::ofstream f(out, std::ios::binary);
    size_t size = reader.getRecordSize(name);
    auto chunks = reader.createChunkReaderIter(name, size, kChunk);
    for (size_t done = 0; done < size;) {
      size_t n = chunks.next(buf.data());
      if (n == 0) throw std::runtime_error("'" + name + "' ends early");
      f.write(buf.data(), static_cast<std::streamsize>(n));
      done += n;
    }
    if (!f) throw std::runtime_error("cannot write " + out.string() + ": " + std::strerror(errno));
  }
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

class AotiBackend final : public Backend {
 public:
  explicit AotiBackend(const BackendLoad& load) : engine_(load.engine_name), outputs_(load.manifest.outputs) {
    dir_ = make_extraction_dir(engine_);
    try {
      try {
        unpack(load.artifact_path, dir_);
      } catch (const std::exception& e) {
        throw Error(ErrorCode::Artifact, "engine '" + engine_ + "': AOTInductor could not load " + load.artifact_path +
                                             ": unpacking it into " + dir_.string() + " failed: " + message_of(e) +
                                             "; rebuild the engine (or free space in TMPDIR)");
      }
      check_against_manifest(load, dir_);
      try {
        loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
            dir_.string(), "model", /*run_single_threaded=*/false, runner_count(), /*device_index=*/-1);
      } catch (const std::exception& e) {
        throw Error(ErrorCode::Artifact, "engine '" + engine_ + "': AOTInductor could not load " +
                                             load.artifact_path + ": " + message_of(e) +
                                             "; rebuild the engine with this torch version");
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
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

const BackendRegistrar registrar(BackendInfo{
    "aoti", "aoti", /*priority=*/20, nullptr,
    [](const BackendLoad& load) -> std::unique_ptr<Backend> { return std::make_unique<AotiBackend>(load); }});

}  // namespace
}  // namespace kiln::detail
