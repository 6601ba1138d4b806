// C++ tests of libkiln against the fixture engine (make_fixture_engine.py).
//   kiln_tests FIXTURE_DIR CASE            CASE: see kCases below
//   kiln_tests FIXTURE_DIR compare OUT_DIR REFERENCE_DIR
// Plain checks, no framework: every failed check prints where and why; exit 1 if any failed.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "check.h"
#include "kiln/kiln.h"
#include "util.h"  // sha256 (internal)

namespace fs = std::filesystem;
using kiln::DType;
using kiln::Engine;
using kiln::ErrorCode;
using kiln::Tensor;
using Inputs = std::map<std::string, Tensor>;

using kiln_test::checks;
using kiln_test::expect_error;
using kiln_test::failures;

namespace {

double max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.dtype() != DType::Float32 || b.dtype() != DType::Float32 || a.shape() != b.shape()) return INFINITY;
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, double(std::fabs(a.data<float>()[i] - b.data<float>()[i])));
  return m;
}

struct Case {
  std::string name;
  Inputs inputs;
  std::map<std::string, Tensor> expected;
};

std::vector<Case> reference_cases(const std::string& fixture) {
  std::vector<Case> cases;
  for (const char* name : {"b2s7", "b1s1", "b3s5", "b8s64", "example"}) {
    fs::path dir = fs::path(fixture) / "reference" / name;
    Case c{name, {}, {}};
    for (const char* in : {"input_ids", "attention_mask", "features"}) c.inputs[in] = kiln::load_npy(dir / (std::string(in) + ".npy"));
    for (const char* out : {"logits", "hidden"}) c.expected[out] = kiln::load_npy(dir / (std::string(out) + ".npy"));
    cases.push_back(std::move(c));
  }
  return cases;
}

Tensor ids(std::vector<int64_t> shape, int64_t value = 1) {
  Tensor t = Tensor::zeros(DType::Int64, shape);
  std::fill_n(t.data<int64_t>(), t.numel(), value);
  return t;
}
Tensor floats(std::vector<int64_t> shape, float value = 0.5f) {
  Tensor t = Tensor::zeros(DType::Float32, shape);
  std::fill_n(t.data<float>(), t.numel(), value);
  return t;
}
Inputs good_inputs(int64_t batch = 2, int64_t seq = 5) {
  return {{"input_ids", ids({batch, seq}, 3)}, {"attention_mask", ids({batch, seq}, 1)}, {"features", floats({batch, 4})}};
}

// A scratch copy of the fixture engine that a test may break.
struct ScratchEngine {
  fs::path dir;
  nlohmann::json manifest;
  ScratchEngine(const std::string& fixture, const std::string& name) {
    dir = fs::temp_directory_path() / ("kiln-test-" + std::to_string(getpid())) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const char* f : {"manifest.json", "model.ts", "model.pt2"}) fs::copy_file(fs::path(fixture) / f, dir / f);
    std::ifstream in(dir / "manifest.json");
    manifest = nlohmann::json::parse(in);
  }
  ~ScratchEngine() { fs::remove_all(dir.parent_path()); }
  void save() const { std::ofstream(dir / "manifest.json") << manifest.dump(2); }
  void write(const std::string& file, const std::string& bytes) const { std::ofstream(dir / file, std::ios::binary) << bytes; }
  void drop_artifact(const std::string& format) {
    auto& a = manifest["artifacts"];
    for (auto it = a.begin(); it != a.end(); ++it) {
      if ((*it)["format"] == format) {
        a.erase(it);
        break;
      }
    }
  }
  // Replaces an artifact's content and makes the manifest agree with it.
  void replace_artifact(const std::string& file, const std::string& bytes) {
    write(file, bytes);
    for (auto& a : manifest["artifacts"]) {
      if (a["file"] == file) {
        a["bytes"] = bytes.size();
        a["sha256"] = kiln::detail::sha256_hex(bytes.data(), bytes.size());
      }
    }
    save();
  }
  std::string path() const { return dir.string(); }
};

std::unique_ptr<Engine> open_with(const std::string& dir, const std::string& backend) {
  kiln::EngineOptions o;
  o.backend = backend;
  return Engine::open(dir, o);
}

// ---------------------------------------------------------------------------------------

void test_core(const std::string&) {
  // dtypes
  for (DType d : {DType::Float32, DType::Float16, DType::BFloat16, DType::Int64, DType::Int32, DType::Bool, DType::UInt8}) {
    CHECK(kiln::dtype_from_name(kiln::dtype_name(d)) == d);
  }
  CHECK(!kiln::dtype_from_name("float64"));
  CHECK(kiln::dtype_size(DType::BFloat16) == 2 && kiln::dtype_size(DType::Int64) == 8);

  // tensors share memory and keep their owner alive
  auto owner = std::make_shared<std::vector<float>>(6, 1.5f);
  std::weak_ptr<std::vector<float>> watch = owner;
  Tensor t = Tensor::borrow(owner->data(), DType::Float32, {2, 3}, owner);
  owner.reset();
  CHECK(!watch.expired());
  Tensor copy = t;
  copy.data<float>()[5] = 7.f;
  CHECK(t.data<float>()[5] == 7.f && t.numel() == 6 && t.nbytes() == 24);
  t = Tensor();
  copy = Tensor();
  CHECK(watch.expired());
  expect_error("typed access with the wrong type", ErrorCode::InvalidArgument, {"float32", "int64"},
               [] { Tensor::zeros(DType::Float32, {2}).data<int64_t>(); });
  expect_error("from_vector size mismatch", ErrorCode::InvalidArgument, {"[2, 2]"},
               [] { Tensor::from_vector<float>({1, 2, 3}, {2, 2}); });
  expect_error("negative dimension", ErrorCode::InvalidArgument, {"negative"},
               [] { Tensor::zeros(DType::Float32, {2, -1}); });
  Tensor z = Tensor::zeros(DType::Int32, {3});
  CHECK(z.data<int32_t>()[0] == 0 && z.data<int32_t>()[2] == 0 && reinterpret_cast<uintptr_t>(z.data()) % 64 == 0);

  // .npy round trips for every dtype numpy has, including 0-d and 1-d shapes
  fs::path tmp = fs::temp_directory_path() / ("kiln-test-npy-" + std::to_string(getpid()));
  fs::create_directories(tmp);
  int k = 0;
  for (DType d : {DType::Float32, DType::Float16, DType::Int64, DType::Int32, DType::Bool, DType::UInt8}) {
    for (std::vector<int64_t> shape : {std::vector<int64_t>{}, {5}, {2, 3, 4}, {0, 3}}) {
      Tensor a = Tensor::zeros(d, shape);
      auto* bytes = static_cast<uint8_t*>(a.data());
      for (size_t i = 0; i < a.nbytes(); ++i) bytes[i] = static_cast<uint8_t>(d == DType::Bool ? (i % 2) : (i * 37 + k));
      std::string file = (tmp / ("t" + std::to_string(k++) + ".npy")).string();
      kiln::save_npy(file, a);
      Tensor b = kiln::load_npy(file);
      CHECK(b.dtype() == d && b.shape() == shape && std::memcmp(a.data(), b.data(), a.nbytes()) == 0);
    }
  }
  expect_error("bfloat16 to .npy", ErrorCode::InvalidArgument, {"bfloat16"},
               [&] { kiln::save_npy((tmp / "bf.npy").string(), Tensor::zeros(DType::BFloat16, {2})); });
  std::ofstream(tmp / "junk.npy") << "not numpy";
  expect_error("load a non-.npy file", ErrorCode::InvalidArgument, {"junk.npy"},
               [&] { kiln::load_npy((tmp / "junk.npy").string()); });
  fs::remove_all(tmp);

  // sha256: FIPS 180-4 test vectors, and the SHA-NI path (when the CPU has it) equals the
  // portable one at every length around the 64-byte block and the padding boundary.
  CHECK(kiln::detail::sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(kiln::detail::sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  std::string million(1000000, 'a');
  CHECK(kiln::detail::sha256_hex(million.data(), million.size(), false) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  CHECK(kiln::detail::sha256_hex(million.data(), million.size(), true) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  std::mt19937 rng(1);
  std::string data(1000, '\0');
  for (auto& c : data) c = static_cast<char>(rng());
  bool same = true;
  for (size_t n = 0; n < data.size(); n += (n < 200 ? 1 : 97)) {
    same &= kiln::detail::sha256_hex(data.data(), n, true) == kiln::detail::sha256_hex(data.data(), n, false);
  }
  CHECK(same);

  // "did you mean" distances
  CHECK(kiln::detail::edit_distance("input_id", "input_ids") == 1);
  CHECK(kiln::detail::edit_distance("kitten", "sitting") == 3);
  CHECK(kiln::detail::engine_name("/a/b/minilm/") == "minilm");
}

void test_manifest(const std::string& fixture) {
  std::ifstream in(fs::path(fixture) / "manifest.json");
  const nlohmann::json good = nlohmann::json::parse(in);
  kiln::Manifest m = kiln::Manifest::parse(good.dump(), "test");
  CHECK(m.format_version == 2 && m.inputs.size() == 3 && m.outputs.size() == 2 && m.artifacts.size() == 2);
  CHECK(m.inputs[0].values && m.inputs[0].values->max == 49 && m.inputs[1].values->max == 1 && !m.inputs[2].values);
  CHECK(m.dims.at("sequence").max == 64 && m.dims.at("batch").opt == 2);
  CHECK(m.inputs[2].name == "features" && m.inputs[2].dtype == DType::Float32 && m.inputs[2].shape_string() == "[batch, 4]");
  CHECK(m.inputs[2].shape[1].size == 4 && m.inputs[0].shape[1].symbol == "sequence");
  CHECK(m.artifact("aoti") && m.artifact("aoti")->file == "model.pt2" && m.artifact("aoti")->bytes > 0 && !m.artifact("onnx"));

  auto broken = [&](const std::string& label, const std::function<void(nlohmann::json&)>& edit,
                    const std::vector<std::string>& needles) {
    nlohmann::json j = good;
    edit(j);
    expect_error("manifest: " + label, ErrorCode::Manifest, needles, [&] { kiln::Manifest::parse(j.dump(), "m.json"); });
  };
  expect_error("manifest: bad JSON", ErrorCode::Manifest, {"m.json", "not valid JSON"},
               [] { kiln::Manifest::parse("{\"format_version\": 1,", "m.json"); });
  broken("format_version 1", [](auto& j) { j["format_version"] = 1; },
         {"format_version 1, this runtime reads version 2", "kiln build"});
  broken("no format_version", [](auto& j) { j.erase("format_version"); }, {"'format_version' is missing"});
  broken("no inputs", [](auto& j) { j.erase("inputs"); }, {"'inputs' is missing"});
  broken("no name", [](auto& j) { j.erase("name"); }, {"'name' is missing"});
  broken("no artifact bytes", [](auto& j) { j["artifacts"][1].erase("bytes"); }, {"'artifacts[1].bytes' is missing"});
  broken("input without dtype", [](auto& j) { j["inputs"][1].erase("dtype"); }, {"'inputs[1].dtype' is missing"});
  broken("unknown dtype", [](auto& j) { j["inputs"][0]["dtype"] = "float64"; }, {"float64"});
  broken("undeclared dim", [](auto& j) { j["inputs"][0]["shape"][1] = "tokens"; }, {"'tokens'", "dims"});
  broken("bad range", [](auto& j) { j["dims"]["batch"]["min"] = 9; }, {"dims.batch", "min <= opt <= max"});
  broken("duplicate input", [](auto& j) { j["inputs"][1]["name"] = "input_ids"; }, {"two inputs are named 'input_ids'"});
  broken("artifact outside dir", [](auto& j) { j["artifacts"][0]["file"] = "../x.ts"; }, {"../x.ts"});
}

void test_parity(const std::string& fixture, const std::string& backend) {
  auto engine = open_with(fixture, backend);
  CHECK(engine->backend() == backend);
  double worst = 0;
  for (const Case& c : reference_cases(fixture)) {
    auto out = engine->run(c.inputs);
    for (const auto& [name, want] : c.expected) {
      double d = max_abs_diff(out.at(name), want);
      worst = std::max(worst, d);
      CHECK(d <= 1e-5);
      std::printf("%-12s %-8s %-7s shape %-12s max abs diff %.3g\n", backend.c_str(), c.name.c_str(), name.c_str(),
                  kiln::shape_to_string(out.at(name).shape()).c_str(), d);
    }
  }
  std::printf("%s parity: worst max abs diff %.3g (tolerance 1e-5)\n", backend.c_str(), worst);
}

void test_backend_choice(const std::string& fixture) {
  auto backends = kiln::available_backends();
  CHECK((backends == std::vector<std::string>{"aoti", "torchscript"}));
  CHECK(Engine::open(fixture)->backend() == "aoti");

  {
    ScratchEngine s(fixture, "ts-only");
    s.drop_artifact("aoti");
    s.save();
    CHECK(Engine::open(s.path())->backend() == "torchscript");
    expect_error("explicit backend without its artifact", ErrorCode::BackendUnavailable,
                 {"'ts-only'", "no aoti artifact", "torchscript"}, [&] { open_with(s.path(), "aoti"); });
  }
  {
    ScratchEngine s(fixture, "onnx-only");
    s.manifest["artifacts"] = nlohmann::json::array(
        {{{"format", "onnx"}, {"file", "model.onnx"}, {"sha256", "00"}, {"bytes", 4}}});
    s.save();
    expect_error("auto with only an onnx artifact", ErrorCode::BackendUnavailable, {"'onnx-only'", "onnx (model.onnx)", "aoti"},
                 [&] { Engine::open(s.path()); });
  }
  expect_error("unknown backend name", ErrorCode::InvalidArgument, {"'tensorflow'", "aoti, torchscript"},
               [&] { open_with(fixture, "tensorflow"); });
  expect_error("onnx backend", ErrorCode::BackendUnavailable, {"Python only"}, [&] { open_with(fixture, "onnx"); });
  expect_error("tensorrt not built", ErrorCode::BackendUnavailable, {"'tensorrt'", "aoti, torchscript"},
               [&] { open_with(fixture, "tensorrt"); });
  kiln::EngineOptions bad;
  bad.num_threads = -1;
  expect_error("negative num_threads", ErrorCode::InvalidArgument, {"num_threads"}, [&] { Engine::open(fixture, bad); });
}

void test_validation(const std::string& fixture) {
  for (const char* backend : {"torchscript", "aoti"}) {
    auto engine = open_with(fixture, backend);
    const std::string who = "engine '" + engine->name() + "'";
    std::string b = std::string(backend) + ": ";
    auto run = [&](Inputs in) { return [&engine, in] { engine->run(in); }; };

    CHECK(engine->run(good_inputs()).at("hidden").shape() == (std::vector<int64_t>{2, 5, 8}));
    Inputs in = good_inputs();
    in.erase("features");
    expect_error(b + "missing input", ErrorCode::InputName, {who, "missing input 'features'", "float32 [batch, 4]"}, run(in));
    in = good_inputs();
    in["token_type_ids"] = ids({2, 5});
    expect_error(b + "extra input", ErrorCode::InputName, {who, "unexpected input 'token_type_ids'", "input_ids"}, run(in));
    in = good_inputs();
    in["input_id"] = in["input_ids"];
    in.erase("input_ids");
    expect_error(b + "misnamed input", ErrorCode::InputName, {who, "'input_id'", "did you mean 'input_ids'"}, run(in));
    in = good_inputs();
    in["features"] = ids({2, 4});
    expect_error(b + "wrong dtype", ErrorCode::InputDType, {who, "'features'", "int64", "expected float32"}, run(in));
    in = good_inputs();
    in["input_ids"] = ids({10});
    expect_error(b + "wrong rank", ErrorCode::InputShape, {who, "'input_ids'", "[10]", "rank 2", "[batch, sequence]"}, run(in));
    in = good_inputs(2, 65);
    expect_error(b + "sequence above max", ErrorCode::InputShape, {who, "'input_ids'", "'sequence'", "65", "1..64"}, run(in));
    in = good_inputs(9, 5);
    expect_error(b + "batch above max", ErrorCode::InputShape, {who, "'input_ids'", "'batch'", "9", "1..8"}, run(in));
    in = good_inputs(2, 0);
    expect_error(b + "empty sequence", ErrorCode::InputShape, {who, "'sequence') is 0", "1..64"}, run(in));
    in = good_inputs();
    in["features"] = floats({2, 5});
    expect_error(b + "fixed dim mismatch", ErrorCode::InputShape, {who, "'features'", "dimension 1 is 5", "expected 4"}, run(in));
    in = good_inputs();
    in["features"] = floats({3, 4});
    expect_error(b + "batch disagreement", ErrorCode::InputShape,
                 {who, "'features'", "'batch') is 3", "input 'input_ids' has batch = 2"}, run(in));
    in = good_inputs();
    in["attention_mask"] = ids({2, 6});
    expect_error(b + "sequence disagreement", ErrorCode::InputShape,
                 {who, "'attention_mask'", "input 'input_ids' has sequence = 5"}, run(in));
    in = good_inputs();
    in["features"] = Tensor();
    expect_error(b + "undefined tensor", ErrorCode::InputValue, {who, "'features'"}, run(in));
    // validate() alone raises the same error without running
    in = good_inputs();
    in["features"] = floats({2, 5});
    expect_error(b + "validate() without running", ErrorCode::InputShape, {who, "'features'"}, [&] { engine->validate(in); });
    // Value ranges (manifest "values"): refused before any kernel runs.
    in = good_inputs();
    in["input_ids"].data<int64_t>()[7] = 1000;
    expect_error(b + "token id past the vocabulary", ErrorCode::InputValue,
                 {who, "'input_ids' has the value 1000 at [1, 2]", "allowed range [0, 49]"}, run(in));
    in = good_inputs(8, 64);
    in["input_ids"].data<int64_t>()[8 * 64 - 1] = 50;
    expect_error(b + "token id = vocab size, last element", ErrorCode::InputValue, {"value 50 at [7, 63]"}, run(in));
    in = good_inputs();
    in["attention_mask"].data<int64_t>()[0] = -1;
    expect_error(b + "mask of -1", ErrorCode::InputValue, {"'attention_mask' has the value -1 at [0, 0]", "[0, 1]"}, run(in));
  }
  // Without value ranges in the manifest, a backend failure while running is a Runtime error
  // with the backend's message.
  ScratchEngine s(fixture, "no-values");
  for (auto& spec : s.manifest["inputs"]) spec.erase("values");
  s.save();
  for (const char* backend : {"torchscript", "aoti"}) {
    auto engine = open_with(s.path(), backend);
    Inputs in = good_inputs();
    in["input_ids"] = ids({2, 5}, 1000);
    if (std::string(backend) == "torchscript") {
      expect_error("torchscript: backend failure", ErrorCode::Runtime, {"'no-values'", "TorchScript", "index out of range"},
                   [&] { engine->run(in); });
    } else {
      expect_error("aoti: backend failure", ErrorCode::Runtime, {"'no-values'", "AOTInductor", "index out of bounds"},
                   [&] { engine->run(in); });
    }
  }
}

// AOTInductor's package goes into $TMPDIR/kiln-aoti-<pid>-XXXXXX, which goes when the engine
// closes; directories of processes that are gone are swept at the next open.
void test_aoti_extraction(const std::string& fixture) {
  fs::path tmp = fs::temp_directory_path() / ("kiln-test-tmpdir-" + std::to_string(getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  const char* old_tmpdir = std::getenv("TMPDIR");
  std::string saved = old_tmpdir ? old_tmpdir : "";
  setenv("TMPDIR", tmp.c_str(), 1);
  auto listing = [&] {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(tmp)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  // a stale directory: its process has exited (and been reaped)
  pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  fs::path stale = tmp / ("kiln-aoti-" + std::to_string(child) + "-AbCdEf");
  fs::create_directories(stale / "model" / "data");
  std::ofstream(stale / "model" / "data" / "big.so") << std::string(4096, 'x');
  // a directory of a live process (this test's parent) and an unrelated one stay
  fs::path live = tmp / ("kiln-aoti-" + std::to_string(getppid()) + "-GhIjKl");
  fs::create_directories(live);
  fs::create_directories(tmp / "aotinductor_other");
  {
    auto engine = open_with(fixture, "aoti");
    auto names = listing();
    std::string mine = "kiln-aoti-" + std::to_string(getpid()) + "-";
    size_t ours = std::count_if(names.begin(), names.end(), [&](const std::string& n) { return n.rfind(mine, 0) == 0; });
    CHECK(ours == 1);
    CHECK(!fs::exists(stale));
    CHECK(fs::exists(live) && fs::exists(tmp / "aotinductor_other"));
    CHECK(engine->run(good_inputs()).count("logits"));
    // torch's own extraction directory (aotinductor_*) is not used
    CHECK(std::none_of(names.begin(), names.end(), [](const std::string& n) { return n.rfind("aotinductor_", 0) == 0 && n != "aotinductor_other"; }));
    std::printf("while open: %s\n", kiln::detail::join(names).c_str());
  }
  auto after = listing();
  CHECK((after == std::vector<std::string>{"aotinductor_other", live.filename().string()}));
  std::printf("after close: %s\n", kiln::detail::join(after).c_str());
  if (old_tmpdir) {
    setenv("TMPDIR", saved.c_str(), 1);
  } else {
    unsetenv("TMPDIR");
  }
  fs::remove_all(tmp);
}

// A manifest whose input dtype, rank or fixed size is not what the AOTInductor artifact was
// compiled for is refused at open (the compiled model would read the memory as what it
// expects: wrong results or an abort).
void test_aoti_mismatch(const std::string& fixture) {
  auto mismatch = [&](const std::string& label, const std::function<void(nlohmann::json&)>& edit,
                      const std::vector<std::string>& needles) {
    ScratchEngine s(fixture, "mismatch");
    edit(s.manifest);
    s.save();
    expect_error("aoti: " + label, ErrorCode::Artifact, needles, [&] { open_with(s.path(), "aoti"); });
    CHECK(open_with(s.path(), "torchscript") != nullptr);  // TorchScript checks at run time
  };
  mismatch("dtype", [](auto& m) { m["inputs"][0]["dtype"] = "int32"; m["inputs"][0].erase("values"); },
           {"'mismatch'", "model.pt2", "input 0 ('input_ids') as int64", "manifest.json says int32 [batch, sequence]",
            "rebuild"});
  mismatch("rank", [](auto& m) { m["inputs"][1]["shape"] = {"batch"}; }, {"input 1 ('attention_mask') with rank 2", "[batch]"});
  mismatch("rank 3", [](auto& m) { m["inputs"][2]["shape"] = {"batch", 4, 1}; }, {"input 2 ('features') with rank 2"});
  mismatch("fixed size", [](auto& m) { m["inputs"][2]["shape"][1] = 5; }, {"'features') with dimension 1 of size 4", "[batch, 5]"});
  mismatch("input count", [](auto& m) { m["inputs"].erase(2); }, {"takes 3 inputs, manifest.json lists 2"});
}

// The tiny generation engine (fixture/generation): GenerationManifest, Generator::open, the
// loop through Engine::run with the decoder's value ranges and total = past + new checked on
// every call.
void test_generation(const std::string& fixture) {
  const std::string dir = (fs::path(fixture) / "generation").string();
  auto gm = kiln::GenerationManifest::load(dir);
  CHECK(gm.name == "fixture-generation" && gm.graphs.at("decoder") == "decoder" && gm.vocab_size == 64);
  auto gen = kiln::Generator::open(dir);
  CHECK(gen->config().max_batch == 4 && gen->config().max_positions == 32 && gen->defaults().pad_token_id == 0);
  kiln::GenerationOptions o = gen->defaults();
  o.eos_token_ids.clear();
  auto r = gen->generate({{5, 6, 7}, {9}}, o);
  CHECK(r.sequences.size() == 2 && r.sequences[0].size() == 8 && r.sequences[1].size() == 8);
  o.num_beams = 2;
  CHECK(gen->generate({{5, 6, 7}, {9}}, o).sequences.size() == 2);
  expect_error("generator: token id past the vocabulary", ErrorCode::InputValue, {"token id 64", "[0, 64)"},
               [&] { gen->generate({{64}}, o); });
  // The decoder engine itself refuses a mask longer than past + new.
  const kiln::Engine& dec = *gen->decoder_engine();
  Inputs in{{"input_ids", ids({1, 2}, 1)}, {"attention_mask", ids({1, 5}, 1)}, {"position_ids", ids({1, 2}, 0)},
            {"past_key_values", floats({1, 2, 1, 2, 2, 4})}};
  expect_error("decoder: total != past + new", ErrorCode::InputShape,
               {"attention_mask dim 1 (total) is 5, expected past + new = 2 + 2 = 4"}, [&] { dec.run(in); });
  in["attention_mask"] = ids({1, 4}, 1);
  in["position_ids"] = ids({1, 2}, 32);
  expect_error("decoder: position past the model's", ErrorCode::InputValue, {"'position_ids' has the value 32", "[0, 31]"},
               [&] { dec.run(in); });
  // A broken top-level manifest names the field.
  fs::path broken = fs::temp_directory_path() / ("kiln-test-gen-" + std::to_string(getpid()));
  fs::remove_all(broken);
  fs::copy(dir, broken, fs::copy_options::recursive);
  std::ifstream f(broken / "manifest.json");
  nlohmann::json top = nlohmann::json::parse(f);
  top["cache"]["heads"] = 0;
  std::ofstream(broken / "manifest.json") << top.dump();
  expect_error("generator: cache.heads 0", ErrorCode::Manifest, {"'cache.heads' must be a positive integer"},
               [&] { kiln::Generator::open(broken.string()); });
  top["cache"]["heads"] = 2;
  top["graphs"]["decoder"] = "nowhere";
  std::ofstream(broken / "manifest.json") << top.dump();
  expect_error("generator: graph dir missing", ErrorCode::Manifest, {"'nowhere'", "not a directory"},
               [&] { kiln::Generator::open(broken.string()); });
  fs::remove_all(broken);
}

void test_artifacts(const std::string& fixture) {
  expect_error("not a directory", ErrorCode::Manifest, {"'nowhere'", "not a directory"},
               [] { Engine::open("/nonexistent/nowhere"); });
  {
    ScratchEngine s(fixture, "no-manifest");
    fs::remove(s.dir / "manifest.json");
    expect_error("manifest missing", ErrorCode::Manifest, {"'no-manifest'", "manifest.json"}, [&] { Engine::open(s.path()); });
  }
  {
    ScratchEngine s(fixture, "bad-json");
    s.write("manifest.json", "{\"format_version\": 1, \"name\": ");
    expect_error("manifest bad JSON", ErrorCode::Manifest, {"'bad-json'", "not valid JSON"}, [&] { Engine::open(s.path()); });
  }
  {
    ScratchEngine s(fixture, "version-1");
    s.manifest["format_version"] = 1;
    s.save();
    expect_error("manifest format_version 1", ErrorCode::Manifest,
                 {"'version-1'", "format_version 1, this runtime reads version 2; rebuild the engine with `kiln build`"},
                 [&] { Engine::open(s.path()); });
  }
  {
    ScratchEngine s(fixture, "no-outputs");
    s.manifest.erase("outputs");
    s.save();
    expect_error("manifest without outputs", ErrorCode::Manifest, {"'no-outputs'", "'outputs' is missing"},
                 [&] { Engine::open(s.path()); });
  }
  {
    ScratchEngine s(fixture, "missing-artifact");
    fs::remove(s.dir / "model.pt2");
    expect_error("artifact missing", ErrorCode::Artifact, {"'missing-artifact'", "model.pt2", "missing"},
                 [&] { Engine::open(s.path()); });
  }
  {
    ScratchEngine s(fixture, "truncated");
    fs::resize_file(s.dir / "model.ts", fs::file_size(s.dir / "model.ts") - 100);
    expect_error("artifact truncated", ErrorCode::Artifact, {"'truncated'", "model.ts", "bytes"},
                 [&] { open_with(s.path(), "torchscript"); });
  }
  {
    ScratchEngine s(fixture, "flipped");
    std::fstream f(s.dir / "model.pt2", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(1000);
    char c = 0;
    f.get(c);
    f.seekp(1000);
    f.put(static_cast<char>(c ^ 0x5a));
    f.close();
    expect_error("artifact corrupt (sha256)", ErrorCode::Artifact, {"'flipped'", "model.pt2", "sha256"},
                 [&] { Engine::open(s.path()); });
  }
  for (const char* backend : {"torchscript", "aoti"}) {
    ScratchEngine s(fixture, std::string("garbage-") + backend);
    s.replace_artifact(backend == std::string("aoti") ? "model.pt2" : "model.ts", "this is not a model file");
    expect_error(std::string("backend cannot load (") + backend + ")", ErrorCode::Artifact,
                 {"'garbage-" + std::string(backend) + "'", "could not load"}, [&] { open_with(s.path(), backend); });
  }
}

void test_threads(const std::string& fixture) {
  auto cases = reference_cases(fixture);
  for (const char* backend : {"torchscript", "aoti"}) {
    auto engine = open_with(fixture, backend);
    std::vector<std::map<std::string, Tensor>> single;
    for (const auto& c : cases) single.push_back(engine->run(c.inputs));
    std::atomic<int> mismatches{0}, errors{0};
    std::atomic<long> runs{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 50; ++i) {
          size_t k = static_cast<size_t>(t + i) % cases.size();  // threads run different shapes at once
          try {
            auto out = engine->run(cases[k].inputs);
            for (const auto& [name, want] : single[k]) {
              if (max_abs_diff(out.at(name), want) != 0.0) ++mismatches;
            }
            ++runs;
          } catch (const std::exception& e) {
            std::printf("thread %d: %s\n", t, e.what());
            ++errors;
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    std::printf("%s: %ld concurrent runs from 4 threads, %d outputs differ from the single-thread run, %d errors\n",
                backend, runs.load(), mismatches.load(), errors.load());
    CHECK(runs == 200 && mismatches == 0 && errors == 0);
  }
}

// Compares the .npy outputs a tool wrote (OUT_DIR) with the fixture's reference.
void compare_outputs(const std::string& fixture, const std::string& out_dir, const std::string& ref_dir) {
  auto engine = Engine::open(fixture);
  for (const auto& spec : engine->outputs()) {
    Tensor got = kiln::load_npy((fs::path(out_dir) / (spec.name + ".npy")).string());
    Tensor want = kiln::load_npy((fs::path(ref_dir) / (spec.name + ".npy")).string());
    double d = max_abs_diff(got, want);
    std::printf("%-8s %s vs reference: max abs diff %.3g\n", spec.name.c_str(), kiln::shape_to_string(got.shape()).c_str(), d);
    CHECK(d <= 1e-5);
  }
}

const std::map<std::string, std::function<void(const std::string&)>> kCases = {
    {"core", test_core},
    {"manifest", test_manifest},
    {"parity_torchscript", [](const std::string& f) { test_parity(f, "torchscript"); }},
    {"parity_aoti", [](const std::string& f) { test_parity(f, "aoti"); }},
    {"backend_choice", test_backend_choice},
    {"validation", test_validation},
    {"aoti_extraction", test_aoti_extraction},
    {"aoti_mismatch", test_aoti_mismatch},
    {"generation", test_generation},
    {"artifacts", test_artifacts},
    {"threads", test_threads},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 5 && std::string(argv[2]) == "compare") {
    try {
      compare_outputs(argv[1], argv[3], argv[4]);
    } catch (const std::exception& e) {
      std::printf("FAILED: %s\n", e.what());
      return 1;
    }
  } else if (argc == 3 && kCases.count(argv[2])) {
    try {
      kCases.at(argv[2])(argv[1]);
    } catch (const std::exception& e) {
      ++failures;
      std::printf("FAILED: unexpected exception: %s\n", e.what());
    }
  } else {
    std::printf("usage: %s FIXTURE_DIR CASE | FIXTURE_DIR compare OUT_DIR REFERENCE_DIR\ncases:", argv[0]);
    for (const auto& [name, f] : kCases) std::printf(" %s", name.c_str());
    std::printf("\n");
    return 2;
  }
  std::printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
