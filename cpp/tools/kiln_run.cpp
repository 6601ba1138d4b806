// kiln-run: run an engine directory on .npy inputs or generated ones, print the outputs'
// statistics and the latency.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <unistd.h>

#include "kiln/kiln.h"

namespace {

const char* kUsage =
    "usage: kiln-run ENGINE_DIR [--backend B] [--precision P] [--input NAME=FILE.npy ...] [--batch N] [--seq N]\n"
    "                [--dim NAME=N ...] [--iters N] [--warmup N] [--threads N] [--seed N]\n"
    "                [--save-outputs DIR] [--no-verify]\n"
    "Inputs not given as .npy are generated: shapes from the dims' opt values (or --batch,\n"
    "--seq, --dim, or the sizes of the given inputs; a derived dim such as total = past + new\n"
    "is the sum of its terms), every size within its dim's range; integers within the input's\n"
    "manifest value range: token ids at random below the config's vocab_size, attention masks\n"
    "ones, token_type_ids zeros, position_ids the column index; floats N(0, 1).\n";

struct Args {
  std::string dir, backend = "auto", precision = "auto", save_dir;
  std::map<std::string, std::string> npy;
  std::map<std::string, int64_t> dims;
  int iters = 10, warmup = 1, threads = 0;
  uint64_t seed = 0;
  bool verify = true;
};

[[noreturn]] void usage_error(const std::string& what) {
  std::cerr << "kiln-run: " << what << "\n" << kUsage;
  std::exit(2);
}

int64_t to_int(const std::string& flag, const std::string& v) {
  try {
    size_t used = 0;
    long long n = std::stoll(v, &used);
    if (used == v.size() && n >= 0) return n;
  } catch (const std::exception&) {
  }
  usage_error(flag + " takes a non-negative integer, got '" + v + "'");
}

int to_small_int(const std::string& flag, const std::string& v) {
  int64_t n = to_int(flag, v);
  if (n > 1000000000) usage_error(flag + " is " + v + "; use at most 1000000000");
  return static_cast<int>(n);
}

std::pair<std::string, std::string> split_eq(const std::string& flag, const std::string& v) {
  auto eq = v.find('=');
  if (eq == std::string::npos || eq == 0) usage_error(flag + " takes NAME=VALUE, got '" + v + "'");
  return {v.substr(0, eq), v.substr(eq + 1)};
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--backend") {
      a.backend = value();
    } else if (arg == "--precision") {
      a.precision = value();  // which TensorRT plan: auto, fp32, fp16, bf16
    } else if (arg == "--input") {
      auto [name, file] = split_eq(arg, value());
      a.npy[name] = file;
    } else if (arg == "--batch") {
      a.dims["batch"] = to_int(arg, value());
    } else if (arg == "--seq") {
      a.dims["sequence"] = to_int(arg, value());
    } else if (arg == "--dim") {
      auto [name, n] = split_eq(arg, value());
      a.dims[name] = to_int(arg, n);
    } else if (arg == "--iters") {
      a.iters = to_small_int(arg, value());
    } else if (arg == "--warmup") {
      a.warmup = to_small_int(arg, value());
    } else if (arg == "--threads") {
      a.threads = to_small_int(arg, value());
    } else if (arg == "--seed") {
      a.seed = static_cast<uint64_t>(to_int(arg, value()));
    } else if (arg == "--save-outputs") {
      a.save_dir = value();
    } else if (arg == "--no-verify") {
      a.verify = false;
    } else if (!arg.empty() && arg[0] == '-') {
      usage_error("unknown option " + arg);
    } else if (a.dir.empty()) {
      a.dir = arg;
    } else {
      usage_error("one engine directory only, got '" + a.dir + "' and '" + arg + "'");
    }
  }
  if (a.dir.empty()) usage_error("missing ENGINE_DIR");
  if (a.iters < 1) usage_error("--iters must be at least 1");
  return a;
}

// IEEE half -> float, for printing statistics of float16 outputs.
float half_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float magnitude;
  if (exp == 0) {
    magnitude = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    magnitude = mant ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &magnitude, 4);
  bits |= sign;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {  // round-to-nearest is not needed for random test inputs
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint32_t sign = (bits >> 16) & 0x8000u;
  int exp = static_cast<int>((bits >> 23) & 0xff) - 127 + 15;
  uint32_t mant = (bits >> 13) & 0x3ff;
  if (exp <= 0) return static_cast<uint16_t>(sign);
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exp) << 10) | mant);
}

double element(const kiln::Tensor& t, int64_t i) {
  const void* p = t.data();
  switch (t.dtype()) {
    case kiln::DType::Float32: return static_cast<const float*>(p)[i];
    case kiln::DType::Float16: return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case kiln::DType::BFloat16: {
      uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    case kiln::DType::Int64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case kiln::DType::Int32: return static_cast<const int32_t*>(p)[i];
    case kiln::DType::Bool: return static_cast<const bool*>(p)[i];
    case kiln::DType::UInt8: return static_cast<const uint8_t*>(p)[i];
  }
  return 0;
}

int64_t config_int(const nlohmann::json& manifest, const char* key, int64_t fallback) {
  auto config = manifest.find("config");
  if (config == manifest.end() || !config->is_object()) return fallback;
  auto v = config->find(key);
  return v != config->end() && v->is_number_integer() && v->get<int64_t>() > 0 ? v->get<int64_t>() : fallback;
}

// Generated inputs respect the manifest: a "values" range bounds every element; within it,
// attention masks are ones, token types zeros, positions the column index, other ids uniform
// below the config's vocab_size.
kiln::Tensor generate(const kiln::TensorSpec& spec, const std::vector<int64_t>& shape,
                      const nlohmann::json& manifest, std::mt19937_64& rng) {
  kiln::Tensor t = kiln::Tensor::zeros(spec.dtype, shape);
  const int64_t n = t.numel();
  const std::string& name = spec.name;
  const bool integer = spec.dtype == kiln::DType::Int64 || spec.dtype == kiln::DType::Int32 ||
                       spec.dtype == kiln::DType::Bool || spec.dtype == kiln::DType::UInt8;
  if (integer) {
    // The dtype's own range, then the name's usual values, then the manifest's range.
    int64_t lo = 0, hi = 1;
    if (spec.dtype == kiln::DType::Int64) lo = INT64_MIN, hi = INT64_MAX;
    if (spec.dtype == kiln::DType::Int32) lo = INT32_MIN, hi = INT32_MAX;
    if (spec.dtype == kiln::DType::UInt8) lo = 0, hi = 255;
    const int64_t type_lo = lo, type_hi = hi;
    bool positions = false;
    if (name == "attention_mask" || name == "encoder_attention_mask" || spec.dtype == kiln::DType::Bool) {
      lo = hi = 1;
    } else if (name == "token_type_ids") {
      lo = hi = 0;
    } else if (name == "position_ids") {
      positions = true;
    } else if (name.size() >= 3 && name.compare(name.size() - 3, 3, "ids") == 0) {
      lo = 0, hi = config_int(manifest, "vocab_size", 100) - 1;
    } else if (spec.dtype != kiln::DType::UInt8) {
      lo = 0, hi = 1;
    }
    if (spec.values) {
      const int64_t vlo = std::max(spec.values->min, type_lo), vhi = std::min(spec.values->max, type_hi);
      if (std::max(lo, vlo) <= std::min(hi, vhi)) {
        lo = std::max(lo, vlo), hi = std::min(hi, vhi);
      } else {
        lo = vlo, hi = vhi;  // the usual values are outside the range: the range wins
      }
    }
    std::uniform_int_distribution<int64_t> dist(lo, hi);
    const int64_t columns = shape.empty() ? 1 : std::max<int64_t>(shape.back(), 1);
    for (int64_t i = 0; i < n; ++i) {
      int64_t v = positions ? std::clamp<int64_t>(i % columns, lo, hi) : (lo == hi ? lo : dist(rng));
      switch (spec.dtype) {
        case kiln::DType::Int64: t.data<int64_t>()[i] = v; break;
        case kiln::DType::Int32: t.data<int32_t>()[i] = static_cast<int32_t>(v); break;
        default: static_cast<uint8_t*>(t.data())[i] = static_cast<uint8_t>(v); break;
      }
    }
  } else {
    std::normal_distribution<float> dist(0.f, 1.f);
    for (int64_t i = 0; i < n; ++i) {
      float v = dist(rng);
      if (spec.dtype == kiln::DType::Float32) {
        t.data<float>()[i] = v;
      } else {
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        static_cast<uint16_t*>(t.data())[i] =
            spec.dtype == kiln::DType::Float16 ? float_to_half(v) : static_cast<uint16_t>(bits >> 16);
      }
    }
  }
  return t;
}

std::string kiln_detail_join(const std::vector<std::string>& items, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) s += (i ? sep : "") + items[i];
  return s;
}

double percentile(std::vector<double> v, double q) {  // nearest rank
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

int run(const Args& a) {
  kiln::EngineOptions options;
  options.backend = a.backend;
  options.num_threads = a.threads;
  options.verify_sha256 = a.verify;
  options.precision = a.precision;
  auto t0 = std::chrono::steady_clock::now();
  auto engine = kiln::Engine::open(a.dir, options);
  double open_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const kiln::Manifest& m = engine->manifest();
  auto manifest_json = nlohmann::json::parse(m.json);
  std::printf("engine %s (%s/%s) backend %s, opened in %.1f ms\n", engine->name().c_str(), m.family.c_str(),
              m.task.c_str(), engine->backend().c_str(), open_ms);

  for (const auto& [name, file] : a.npy) {
    if (std::none_of(engine->inputs().begin(), engine->inputs().end(),
                     [&](const kiln::TensorSpec& s) { return s.name == name; })) {
      // Let the engine say what it takes (and suggest a name).
      std::map<std::string, kiln::Tensor> probe{{name, kiln::load_npy(file)}};
      engine->validate(probe);
    }
  }
  for (const auto& [dim, size] : a.dims) {
    if (!m.dims.count(dim)) {
      std::string known;
      for (const auto& [d, r] : m.dims) known += (known.empty() ? "" : ", ") + d;
      usage_error("engine '" + engine->name() + "' has no dimension '" + dim + "' (it has: " + known + ")");
    }
  }

  // Sizes of symbolic dims: --batch/--seq/--dim, then the given .npy inputs, then opt; a
  // derived dimension (total = past + new) is the sum of its terms. Every size must lie in
  // its dimension's range before anything is allocated.
  std::map<std::string, kiln::Tensor> inputs;
  std::map<std::string, int64_t> sizes = a.dims;
  std::set<std::string> from_files;
  for (const auto& spec : engine->inputs()) {
    auto it = a.npy.find(spec.name);
    if (it == a.npy.end()) continue;
    kiln::Tensor t = kiln::load_npy(it->second);
    for (size_t i = 0; i < spec.shape.size() && i < t.ndim(); ++i) {
      if (spec.shape[i].symbolic() && sizes.emplace(spec.shape[i].symbol, t.shape()[i]).second) {
        from_files.insert(spec.shape[i].symbol);  // the engine's validation names the input
      }
    }
    inputs[spec.name] = t;
  }
  for (const auto& [dim, range] : m.dims) {
    if (sizes.count(dim)) continue;
    if (!range.derived()) {
      sizes[dim] = range.opt;
      continue;
    }
    int64_t sum = 0;
    bool overflow = false;
    for (const auto& term : range.sum) {
      int64_t v = sizes.count(term) ? sizes[term] : m.dims.at(term).opt;
      overflow = overflow || __builtin_add_overflow(sum, v, &sum);
    }
    if (overflow) sum = INT64_MAX;
    sizes[dim] = sum;
  }
  for (const auto& [dim, size] : sizes) {
    auto range = m.dims.find(dim);
    if (range == m.dims.end() || from_files.count(dim)) continue;
    if (size < range->second.min || size > range->second.max) {
      std::string from = dim == "batch" && a.dims.count(dim) ? "--batch"
                         : dim == "sequence" && a.dims.count(dim) ? "--seq"
                         : a.dims.count(dim) ? "--dim " + dim
                         : range->second.derived() ? "the sum " + kiln_detail_join(range->second.sum, " + ")
                                                   : "the manifest's opt";
      throw kiln::Error(kiln::ErrorCode::InputShape,
                        "engine '" + engine->name() + "': dimension '" + dim + "' is " + std::to_string(size) +
                            " (from " + from + "), outside the engine's range " + std::to_string(range->second.min) +
                            ".." + std::to_string(range->second.max) + "; choose a size in that range");
    }
    if (size % range->second.multiple != 0) {
      throw kiln::Error(kiln::ErrorCode::InputShape,
                        "engine '" + engine->name() + "': dimension '" + dim + "' is " + std::to_string(size) +
                            ", not a multiple of " + std::to_string(range->second.multiple) +
                            " (the manifest's dims." + dim + ".multiple); choose a multiple of it");
    }
  }
  std::mt19937_64 rng(a.seed);
  for (const auto& spec : engine->inputs()) {
    if (inputs.count(spec.name)) {
      std::printf("  input  %-16s %-8s %-14s from %s\n", spec.name.c_str(), kiln::dtype_name(inputs[spec.name].dtype()),
                  kiln::shape_to_string(inputs[spec.name].shape()).c_str(), a.npy.at(spec.name).c_str());
      continue;
    }
    std::vector<int64_t> shape;
    for (const auto& d : spec.shape) {
      shape.push_back(d.symbolic() ? sizes.at(d.symbol) : d.size);
    }
    inputs[spec.name] = generate(spec, shape, manifest_json, rng);
    std::printf("  input  %-16s %-8s %-14s generated\n", spec.name.c_str(), kiln::dtype_name(spec.dtype),
                kiln::shape_to_string(shape).c_str());
  }

  std::map<std::string, kiln::Tensor> outputs;
  for (int i = 0; i < a.warmup; ++i) outputs = engine->run(inputs);
  std::vector<double> ms;
  for (int i = 0; i < a.iters; ++i) {
    auto start = std::chrono::steady_clock::now();
    outputs = engine->run(inputs);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }

  for (const auto& spec : engine->outputs()) {
    const kiln::Tensor& t = outputs.at(spec.name);
    double lo = INFINITY, hi = -INFINITY, sum = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      double v = element(t, i);
      lo = std::min(lo, v), hi = std::max(hi, v), sum += v;
    }
    double mean = t.numel() ? sum / static_cast<double>(t.numel()) : NAN;
    std::printf("  output %-16s %-8s %-14s min %.6g max %.6g mean %.6g\n", spec.name.c_str(),
                kiln::dtype_name(t.dtype()), kiln::shape_to_string(t.shape()).c_str(), lo, hi, mean);
    if (!a.save_dir.empty()) {
      std::filesystem::create_directories(a.save_dir);
      kiln::save_npy((std::filesystem::path(a.save_dir) / (spec.name + ".npy")).string(), t);
    }
  }
  double mean_ms = 0;
  for (double v : ms) mean_ms += v / static_cast<double>(ms.size());
  std::printf("latency over %d iters: p50 %.3f ms  p90 %.3f ms  mean %.3f ms  min %.3f ms\n", a.iters,
              percentile(ms, 0.5), percentile(ms, 0.9), mean_ms, *std::min_element(ms.begin(), ms.end()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // OpenMP's threads spin 300,000 times before they sleep unless told otherwise, which beside
  // another busy process burns the CPU it needs (python/kiln/__init__.py has the numbers). libgomp
  // reads GOMP_SPINCOUNT once, when it loads, before main: so set kiln's default and start again.
  // glibc's malloc reads GLIBC_TUNABLES at start too: glibc.malloc.hugetlb=1 asks for transparent
  // huge pages on its large allocations (THP is "madvise" on most distributions), where the
  // weights live. A decode step streams every weight once; with 4 KiB pages that is ~120,000
  // TLB misses per GPT-2 step (README, "Decoders: weight layout and linear kernels").
  bool again = false;
  if (std::getenv("GOMP_SPINCOUNT") == nullptr && setenv("GOMP_SPINCOUNT", "3000", 0) == 0) again = true;
  const char* huge = std::getenv("KILN_HUGE_PAGES");  // "0": not asked for (the `kiln` command's switch too)
  if (std::getenv("GLIBC_TUNABLES") == nullptr && !(huge != nullptr && std::string(huge) == "0") &&
      setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1", 0) == 0) {
    again = true;
  }
  if (again) execv("/proc/self/exe", argv);  // returns only on failure: then go on as we are
  Args a = parse(argc, argv);
  try {
    return run(a);
  } catch (const kiln::Error& e) {
    std::fprintf(stderr, "kiln-run: %s error: %s\n", kiln::error_code_name(e.code()), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln-run: %s\n", e.what());
    return 1;
  }
}
