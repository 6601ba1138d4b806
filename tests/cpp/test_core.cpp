// C++ tests of libkiln's core that need no backend library: manifest v2 (value ranges,
// derived dims, generation manifests), Engine::validate over a stand-in backend, overflow
// checks (tensors, .npy), thread bounds, UTF-8 messages. They run in every build, including
// the sanitizer build (make sanitize).
//   kiln_core_tests CASE      CASE: see kCases below
#include <unistd.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend.h"
#include "check.h"
#include "kiln/kiln.h"
#include "util.h"

namespace fs = std::filesystem;
using kiln::DType;
using kiln::Engine;
using kiln::ErrorCode;
using kiln::Tensor;
using Json = nlohmann::json;
using Inputs = std::map<std::string, Tensor>;

using kiln_test::checks;
using kiln_test::expect_error;
using kiln_test::failures;

namespace {

// --- a stand-in backend ------------------------------------------------------------------
// "fake" runs artifacts of format "fake": what it does is set by the test (fake_run).

std::function<std::vector<Tensor>(const std::vector<Tensor>&)> fake_run;
int fake_runs = 0;

class FakeBackend final : public kiln::detail::Backend {
 public:
  std::vector<Tensor> run(const std::vector<Tensor>& inputs) const override {
    ++fake_runs;
    return fake_run(inputs);
  }
};

const kiln::detail::BackendRegistrar registrar(kiln::detail::BackendInfo{
    "fake", "fake", /*priority=*/1, nullptr,
    [](const kiln::detail::BackendLoad&) -> std::unique_ptr<kiln::detail::Backend> {
      return std::make_unique<FakeBackend>();
    }});

// A decoder-shaped manifest: input_ids (batch, new), attention_mask (batch, total = past + new),
// position_ids (batch, new), past_key_values (1, 2, batch, 1, past, 2), token_type_ids as int32,
// a bool flag; logits (batch, new, 5).
Json decoder_manifest() {
  return Json::parse(R"({
    "format_version": 2, "name": "fake-decoder", "family": "test", "task": "text-generation",
    "config": {"vocab_size": 5},
    "dims": {"batch": {"min": 1, "opt": 1, "max": 4},
             "new": {"min": 1, "opt": 2, "max": 8},
             "past": {"min": 0, "opt": 3, "max": 16},
             "total": {"min": 1, "opt": 5, "max": 24, "sum": ["past", "new"]}},
    "inputs": [
      {"name": "input_ids", "dtype": "int64", "shape": ["batch", "new"], "values": {"min": 0, "max": 4}},
      {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "total"], "values": {"min": 0, "max": 1}},
      {"name": "position_ids", "dtype": "int32", "shape": ["batch", "new"], "values": {"min": 0, "max": 23}},
      {"name": "flags", "dtype": "bool", "shape": ["batch"], "values": {"min": 0, "max": 1}},
      {"name": "past_key_values", "dtype": "float32", "shape": [1, 2, "batch", 1, "past", 2]}
    ],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", "new", 5]}],
    "artifacts": [{"format": "fake", "file": "model.fake", "sha256": "", "bytes": 0}]
  })");
}

struct EngineDir {
  fs::path dir;
  explicit EngineDir(const std::string& name, const Json& manifest = decoder_manifest()) {
    dir = fs::temp_directory_path() / ("kiln-core-test-" + std::to_string(getpid())) / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string bytes = "fake model\n";
    std::ofstream(dir / "model.fake", std::ios::binary) << bytes;
    Json m = manifest;
    m["artifacts"][0]["bytes"] = bytes.size();
    m["artifacts"][0]["sha256"] = kiln::detail::sha256_hex(bytes.data(), bytes.size());
    std::ofstream(dir / "manifest.json") << m.dump(2);
  }
  ~EngineDir() { fs::remove_all(dir.parent_path()); }
  std::string path() const { return dir.string(); }
};

template <class T>
Tensor filled(DType d, std::vector<int64_t> shape, T value) {
  Tensor t = Tensor::zeros(d, shape);
  for (int64_t i = 0; i < t.numel(); ++i) static_cast<T*>(t.data())[i] = value;
  return t;
}

Inputs decoder_inputs(int64_t batch, int64_t past, int64_t fresh) {
  return {{"input_ids", filled<int64_t>(DType::Int64, {batch, fresh}, 2)},
          {"attention_mask", filled<int64_t>(DType::Int64, {batch, past + fresh}, 1)},
          {"position_ids", filled<int32_t>(DType::Int32, {batch, fresh}, 3)},
          {"flags", filled<uint8_t>(DType::Bool, {batch}, 1)},
          {"past_key_values", Tensor::zeros(DType::Float32, {1, 2, batch, 1, past, 2})}};
}

std::vector<Tensor> logits_for(const std::vector<Tensor>& in) {
  return {Tensor::zeros(DType::Float32, {in[0].shape()[0], in[0].shape()[1], 5})};
}

// --- cases -------------------------------------------------------------------------------

void test_manifest_v2() {
  const Json good = decoder_manifest();
  kiln::Manifest m = kiln::Manifest::parse(good.dump(), "m.json");
  CHECK(m.format_version == 2 && kiln::kManifestFormatVersion == 2);
  CHECK(m.inputs[0].values && m.inputs[0].values->min == 0 && m.inputs[0].values->max == 4);
  CHECK(m.inputs[3].values && m.inputs[3].dtype == DType::Bool);
  CHECK(!m.inputs[4].values);
  CHECK(m.dims.at("total").derived() && m.dims.at("total").sum == (std::vector<std::string>{"past", "new"}));
  CHECK(!m.dims.at("past").derived() && m.dims.at("past").min == 0);

  auto broken = [&](const std::string& label, const std::function<void(Json&)>& edit,
                    const std::vector<std::string>& needles) {
    Json j = good;
    edit(j);
    expect_error("manifest: " + label, ErrorCode::Manifest, needles, [&] { kiln::Manifest::parse(j.dump(), "m.json"); });
  };
  broken("format_version 1", [](Json& j) { j["format_version"] = 1; },
         {"m.json", "format_version 1, this runtime reads version 2; rebuild the engine with `kiln build`"});
  broken("format_version 3", [](Json& j) { j["format_version"] = 3; }, {"format_version 3, this runtime reads version 2"});
  broken("format_version a string", [](Json& j) { j["format_version"] = "2"; }, {"format_version \"2\""});
  broken("no format_version", [](Json& j) { j.erase("format_version"); }, {"'format_version' is missing"});
  broken("values on a float input", [](Json& j) { j["inputs"][4]["values"] = {{"min", 0}, {"max", 1}}; },
         {"'inputs[4].values'", "float32 input", "integer and bool inputs only"});
  broken("values min > max", [](Json& j) { j["inputs"][0]["values"] = {{"min", 5}, {"max", 4}}; },
         {"'inputs[0].values'", "min 5 > max 4"});
  broken("values without max", [](Json& j) { j["inputs"][0]["values"] = {{"min", 0}}; }, {"'inputs[0].values.max' is missing"});
  broken("values max a float", [](Json& j) { j["inputs"][0]["values"]["max"] = 4.5; },
         {"'inputs[0].values.max' must be an integer", "4.5"});
  broken("values max past int64", [](Json& j) { j["inputs"][0]["values"]["max"] = 18446744073709551615ull; },
         {"'inputs[0].values.max'", "largest 64-bit"});
  broken("values not an object", [](Json& j) { j["inputs"][0]["values"] = Json::array({0, 4}); },
         {"'inputs[0].values' must be an object", "a list of 2 items"});
  broken("values on an output", [](Json& j) { j["outputs"][0]["values"] = {{"min", 0}, {"max", 1}}; },
         {"'outputs[0].values'", "inputs only"});
  broken("sum term not a dim", [](Json& j) { j["dims"]["total"]["sum"] = {"past", "fresh"}; },
         {"'dims.total.sum[1]'", "'fresh'", "not a dimension of this manifest", "batch, new, past, total"});
  broken("sum of itself", [](Json& j) { j["dims"]["total"]["sum"] = {"total", "new"}; }, {"'dims.total.sum[0]'", "itself"});
  broken("sum of a sum", [](Json& j) { j["dims"]["both"] = {{"min", 1}, {"opt", 1}, {"max", 9}, {"sum", {"total", "new"}}}; },
         {"'dims.both.sum[0]'", "derived"});
  broken("sum empty", [](Json& j) { j["dims"]["total"]["sum"] = Json::array(); }, {"'dims.total.sum'", "non-empty list"});
  broken("sum a string", [](Json& j) { j["dims"]["total"]["sum"] = "past+new"; }, {"'dims.total.sum'", "\"past+new\""});
  broken("sum term a number", [](Json& j) { j["dims"]["total"]["sum"] = {"past", 3}; }, {"'dims.total.sum[1]'", "dimension name"});
  broken("negative fixed size", [](Json& j) { j["inputs"][4]["shape"][0] = -1; }, {"'inputs[4].shape[0]'", "-1"});
  broken("negative artifact bytes", [](Json& j) { j["artifacts"][0]["bytes"] = -5; }, {"'artifacts[0].bytes'", "negative"});
  broken("top level a list", [](Json& j) { j = Json::array({1, 2}); }, {"top level must be a JSON object"});
  // A number JSON allows but a double cannot hold (found by fuzzing: it escaped as
  // nlohmann's out_of_range).
  expect_error("manifest: number overflow", ErrorCode::Manifest, {"m.json", "not valid JSON", "1e4003"},
               [] { kiln::Manifest::parse("{\"format_version\": 2, \"config\": {\"x\": 1e4003}}", "m.json"); });
  expect_error("generation options: number overflow", ErrorCode::Manifest, {"not valid JSON"},
               [] { kiln::GenerationOptions::from_json("{\"temperature\": -1e999}"); });
  // A deeply nested value in an error message is described, not printed (no recursion).
  std::string deep = "{\"format_version\": 2, \"name\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  expect_error("manifest: deeply nested name", ErrorCode::Manifest, {"'name' must be a string", "a list of 1 items"},
               [&] { kiln::Manifest::parse(deep, "m.json"); });
  // Invalid UTF-8 in the file: the message is valid UTF-8 (bad bytes replaced by U+FFFD).
  try {
    kiln::Manifest::parse("{\"format_version\": 2, \"name\": \"\xff\xfe\"}", "m\xc3.json");
    CHECK(false);
  } catch (const kiln::Error& e) {
    CHECK(e.code() == ErrorCode::Manifest);
    CHECK(kiln::valid_utf8(e.what()) == e.what());
    CHECK(std::string(e.what()).find("m\xEF\xBF\xBD.json") != std::string::npos);
  }
  // a generation manifest is not an engine's
  expect_error("manifest: generation top level", ErrorCode::Manifest, {"generation engine with graphs [decoder (decoder/)]", "Generator"},
               [] {
                 kiln::Manifest::parse(R"({"format_version": 2, "kind": "generation", "graphs": {"decoder": "decoder"}})", "m.json");
               });
  std::printf("ok     manifest v2 (values, sum dims, field-path errors)\n");
}

void test_utf8() {
  CHECK(kiln::valid_utf8("plain ascii") == "plain ascii");
  CHECK(kiln::valid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  const std::string r = "\xEF\xBF\xBD";
  CHECK(kiln::valid_utf8("a\xff" "b") == "a" + r + "b");
  CHECK(kiln::valid_utf8("\xc0\xaf") == r + r);              // overlong
  CHECK(kiln::valid_utf8("\xed\xa0\x80") == r + r + r);      // surrogate
  CHECK(kiln::valid_utf8("\xf4\x90\x80\x80") == r + r + r + r);  // above U+10FFFF
  CHECK(kiln::valid_utf8("\xe2\x82") == r);                  // truncated: one replacement
  CHECK(kiln::valid_utf8(std::string("a\0b", 3)) == std::string("a\0b", 3));
  kiln::Error e(ErrorCode::InputValue, "bad \xff byte");
  CHECK(std::string(e.what()) == "bad " + r + " byte");
  std::printf("ok     messages are valid UTF-8\n");
}

void test_generation_manifest() {
  const Json good = Json::parse(R"({
    "format_version": 2, "kind": "generation", "name": "g", "family": "gpt2", "task": "text-generation",
    "graphs": {"decoder": "decoder"}, "cache": {"layers": 2, "heads": 4, "head_dim": 8},
    "vocab_size": 100, "max_positions": 64, "encoder_decoder": false,
    "generation": {"eos_token_id": 7, "num_beams": 1}
  })");
  kiln::GenerationManifest g = kiln::GenerationManifest::parse(good.dump(), "g.json");
  CHECK(g.format_version == 2 && g.name == "g" && g.family == "gpt2" && g.task == "text-generation");
  CHECK(g.graphs.size() == 1 && g.graphs.at("decoder") == "decoder" && !g.encoder_decoder);
  CHECK(g.cache.layers == 2 && g.cache.heads == 4 && g.cache.head_dim == 8 && g.vocab_size == 100 && g.max_positions == 64);
  CHECK(kiln::GenerationOptions::from_json(g.generation).eos_token_ids == std::vector<int64_t>{7});
  Json bart = good;
  bart["graphs"]["encoder"] = "enc";
  bart["encoder_decoder"] = true;
  bart.erase("generation");
  g = kiln::GenerationManifest::parse(bart.dump(), "g.json");
  CHECK(g.encoder_decoder && g.graphs.at("encoder") == "enc" && g.generation == "{}");

  auto broken = [&](const std::string& label, const std::function<void(Json&)>& edit,
                    const std::vector<std::string>& needles) {
    Json j = good;
    edit(j);
    expect_error("generation manifest: " + label, ErrorCode::Manifest, needles,
                 [&] { kiln::GenerationManifest::parse(j.dump(), "g.json"); });
  };
  expect_error("generation manifest: bad JSON", ErrorCode::Manifest, {"g.json", "not valid JSON"},
               [] { kiln::GenerationManifest::parse("{\"kind\": ", "g.json"); });
  broken("format_version 1", [](Json& j) { j["format_version"] = 1; }, {"format_version 1, this runtime reads version 2"});
  broken("not a generation engine", [](Json& j) { j.erase("kind"); }, {"not a generation engine", "kiln::Engine"});
  broken("other kind", [](Json& j) { j["kind"] = "engine"; }, {"\"kind\" is \"engine\""});
  broken("no graphs", [](Json& j) { j.erase("graphs"); }, {"'graphs' is missing"});
  broken("no decoder", [](Json& j) { j["graphs"] = {{"encoder", "encoder"}}; }, {"'graphs'", "\"decoder\"", "[encoder]"});
  broken("unknown graph", [](Json& j) { j["graphs"]["critic"] = "critic"; }, {"'graphs.critic'", "unknown graph"});
  broken("graph outside", [](Json& j) { j["graphs"]["decoder"] = "../x"; }, {"'graphs.decoder'", "../x"});
  broken("graph not a string", [](Json& j) { j["graphs"]["decoder"] = 1; }, {"'graphs.decoder'", "subdirectory name"});
  broken("no cache", [](Json& j) { j.erase("cache"); }, {"'cache' is missing"});
  broken("cache heads 0", [](Json& j) { j["cache"]["heads"] = 0; }, {"'cache.heads' must be a positive integer", "0"});
  broken("cache layers a string", [](Json& j) { j["cache"]["layers"] = "2"; }, {"'cache.layers' must be an integer"});
  broken("no vocab_size", [](Json& j) { j.erase("vocab_size"); }, {"'vocab_size' is missing"});
  broken("max_positions negative", [](Json& j) { j["max_positions"] = -3; }, {"'max_positions' must be a positive integer"});
  broken("encoder_decoder disagrees", [](Json& j) { j["encoder_decoder"] = true; },
         {"'encoder_decoder' is true", "has no \"encoder\""});
  broken("encoder_decoder not bool", [](Json& j) { j["encoder_decoder"] = 1; }, {"'encoder_decoder' must be true or false"});
  broken("generation not an object", [](Json& j) { j["generation"] = Json::array(); }, {"'generation' must be an object"});
  broken("generation key of a wrong type", [](Json& j) { j["generation"]["num_beams"] = "four"; },
         {"field 'generation'", "'num_beams' must be an integer", "\"four\""});
  broken("name missing", [](Json& j) { j.erase("name"); }, {"'name' is missing"});
  // Engine manifests are refused with a pointer to Engine.
  expect_error("generation manifest: an engine's", ErrorCode::Manifest, {"not a generation engine", "kiln::Engine"},
               [] { kiln::GenerationManifest::parse(decoder_manifest().dump(), "m.json"); });
  // Generator::open reads it (errors before any graph is opened).
  EngineDir d("gen-top", decoder_manifest());
  Json top = good;
  top["cache"]["head_dim"] = -1;
  std::ofstream(d.dir / "manifest.json") << top.dump();
  expect_error("Generator::open: bad cache", ErrorCode::Manifest, {"generator 'gen-top'", "'cache.head_dim'"},
               [&] { kiln::Generator::open(d.path()); });
  std::printf("ok     generation manifests\n");
}

void test_validation() {
  EngineDir d("validation");
  auto engine = Engine::open(d.path());
  CHECK(engine->backend() == "fake");
  fake_run = logits_for;
  CHECK(engine->run(decoder_inputs(2, 3, 2)).at("logits").shape() == (std::vector<int64_t>{2, 2, 5}));
  CHECK(engine->run(decoder_inputs(1, 0, 4)).count("logits"));  // prefill: past 0
  const std::string who = "engine 'validation'";
  auto refused = [&](const std::string& label, ErrorCode code, const std::vector<std::string>& needles, Inputs in) {
    int before = fake_runs;
    expect_error(label, code, needles, [&] { engine->run(in); });
    CHECK(fake_runs == before);  // refused before the backend ran
    expect_error(label + " (validate)", code, needles, [&] { engine->validate(in); });
  };

  // value ranges: the value, its position, the range, the manifest field
  Inputs in = decoder_inputs(2, 3, 2);
  in["input_ids"].data<int64_t>()[3] = 5;
  refused("token id = vocab size", ErrorCode::InputValue,
          {who, "input 'input_ids' has the value 5 at [1, 1]", "allowed range [0, 4]", "inputs[0].values", "tokenizer"}, in);
  in = decoder_inputs(2, 3, 2);
  in["input_ids"].data<int64_t>()[0] = -1;
  refused("negative token id", ErrorCode::InputValue, {"value -1 at [0, 0]"}, in);
  in = decoder_inputs(2, 3, 2);
  in["input_ids"].data<int64_t>()[2] = INT64_MIN;
  refused("int64 min", ErrorCode::InputValue, {"value -9223372036854775808 at [1, 0]"}, in);
  in = decoder_inputs(2, 3, 2);
  in["attention_mask"].data<int64_t>()[9] = 2;
  refused("mask of 2", ErrorCode::InputValue, {"input 'attention_mask' has the value 2 at [1, 4]", "[0, 1]"}, in);
  in = decoder_inputs(2, 3, 2);
  in["position_ids"].data<int32_t>()[1] = 24;
  refused("int32 position past the max", ErrorCode::InputValue, {"'position_ids' has the value 24 at [0, 1]", "[0, 23]"}, in);
  in = decoder_inputs(2, 3, 2);
  static_cast<uint8_t*>(in["flags"].data())[1] = 7;
  refused("bool byte of 7", ErrorCode::InputValue, {"'flags' has the value 7 at [1]"}, in);

  // derived dims: total = past + new
  in = decoder_inputs(2, 3, 2);
  in["attention_mask"] = filled<int64_t>(DType::Int64, {2, 4}, 1);
  refused("total != past + new", ErrorCode::InputShape,
          {who, "attention_mask dim 1 (total) is 4, expected past + new = 3 + 2 = 5",
           "past from input 'past_key_values'", "new from input 'input_ids'"},
          in);
  in = decoder_inputs(1, 16, 8);  // total 24 = max: fine
  CHECK(engine->run(in).count("logits"));
  in = decoder_inputs(1, 16, 8);
  in["attention_mask"] = filled<int64_t>(DType::Int64, {1, 25}, 1);
  refused("total above its range", ErrorCode::InputShape, {"'total') is 25", "1..24"}, in);
  std::printf("ok     value ranges and derived dims, checked before the backend runs\n");

  // whatever a backend throws arrives as a kiln::Error
  in = decoder_inputs(1, 2, 1);
  fake_run = [](const std::vector<Tensor>&) -> std::vector<Tensor> { throw std::runtime_error("kernel exploded"); };
  expect_error("backend std::exception", ErrorCode::Runtime, {who, "backend 'fake' failed: kernel exploded"},
               [&] { engine->run(in); });
  fake_run = [](const std::vector<Tensor>&) -> std::vector<Tensor> { throw 42; };
  expect_error("backend throws an int", ErrorCode::Runtime, {who, "not a std::exception"}, [&] { engine->run(in); });
  fake_run = [](const std::vector<Tensor>&) -> std::vector<Tensor> { throw std::bad_alloc(); };
  expect_error("backend out of memory", ErrorCode::Runtime, {who, "out of memory"}, [&] { engine->run(in); });
  fake_run = [](const std::vector<Tensor>&) -> std::vector<Tensor> {
    throw kiln::Error(ErrorCode::InputShape, "backend's own code");
  };
  expect_error("backend kiln::Error kept", ErrorCode::InputShape, {"backend's own code"}, [&] { engine->run(in); });
  fake_run = [](const std::vector<Tensor>&) { return std::vector<Tensor>{Tensor::zeros(DType::Int64, {1, 1, 5})}; };
  expect_error("backend output dtype", ErrorCode::Runtime, {"returned output 'logits' as int64"}, [&] { engine->run(in); });
  std::printf("ok     backend exceptions become kiln::Error\n");
}

void test_threads_bound() {
  EngineDir d("threads");
  const int limit = kiln::max_num_threads();
  unsigned hw = std::thread::hardware_concurrency();
  CHECK(limit == 4 * static_cast<int>(hw ? hw : 1));
  for (int n : {-1, limit + 1, 20000, 100000, INT_MAX}) {
    kiln::EngineOptions o;
    o.num_threads = n;
    expect_error("num_threads " + std::to_string(n), ErrorCode::InvalidArgument,
                 {"num_threads is " + std::to_string(n), "1.." + std::to_string(limit), "hardware threads"},
                 [&] { Engine::open(d.path(), o); });
  }
  for (int n : {0, 1, limit}) {
    kiln::EngineOptions o;
    o.num_threads = n;
    CHECK(Engine::open(d.path(), o) != nullptr);
  }
  std::printf("ok     num_threads bounded to 0..%d\n", limit);
}

void test_tensor_overflow() {
  expect_error("zeros: negative dim", ErrorCode::InvalidArgument, {"Tensor::zeros", "[2, -1]", "negative"},
               [] { Tensor::zeros(DType::Float32, {2, -1}); });
  expect_error("zeros: element count overflows", ErrorCode::InvalidArgument, {"Tensor::zeros", "more than 2^64", "2^62"},
               [] { Tensor::zeros(DType::Int64, {INT64_MAX, 3}); });
  expect_error("zeros: bytes overflow", ErrorCode::InvalidArgument, {"[2305843009213693953]", "more than 2^64"},
               [] { Tensor::zeros(DType::Int64, {(INT64_C(1) << 61) + 1}); });  // x 8 bytes wraps to 8
  expect_error("zeros: past 2^62 bytes", ErrorCode::InvalidArgument, {"4611686018427387908 bytes"},
               [] { Tensor::zeros(DType::Float32, {(INT64_C(1) << 60) + 1}); });
  expect_error("zeros: more than memory", ErrorCode::InvalidArgument, {"cannot allocate", "out of memory"},
               [] { Tensor::zeros(DType::UInt8, {INT64_C(1) << 61}); });
  expect_error("borrow: overflow", ErrorCode::InvalidArgument, {"Tensor::borrow", "more than 2^64"}, [] {
    static int64_t x = 0;
    Tensor::borrow(&x, DType::Int64, {INT64_C(1) << 32, INT64_C(1) << 32});
  });
  expect_error("from_vector: negative", ErrorCode::InvalidArgument, {"negative"},
               [] { Tensor::from_vector<float>({1.f}, {-1}); });
  CHECK(Tensor::zeros(DType::Float32, {0, INT64_MAX}).numel() == 0);  // empty: no bytes, no overflow
  std::printf("ok     tensor sizes are overflow-checked\n");
}

std::string npy(const std::string& header, const std::string& data = "", int major = 1, int minor = 0) {
  std::string h = header;
  size_t pre = major == 1 ? 10 : 12;
  size_t total = pre + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += static_cast<char>(minor);
  uint32_t len = static_cast<uint32_t>(h.size());
  for (size_t i = 0; i < (major == 1 ? 2u : 4u); ++i) out += static_cast<char>((len >> (8 * i)) & 0xff);
  return out + h + data;
}

void test_npy() {
  auto load = [](const std::string& bytes) { return kiln::load_npy_from_memory(bytes.data(), bytes.size(), "t.npy"); };
  std::string eight(8, '\1');
  Tensor t = load(npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", eight));
  CHECK(t.dtype() == DType::Int64 && t.shape() == std::vector<int64_t>{1} && t.data<int64_t>()[0] == 0x0101010101010101);
  CHECK(load(npy("{\"descr\": \"<f4\", \"shape\": (2, 0), \"fortran_order\": False}")).shape() == (std::vector<int64_t>{2, 0}));
  CHECK(load(npy("{'descr': '|u1', 'fortran_order': False, 'shape': ()}", "x")).ndim() == 0);
  CHECK(load(npy("{'descr': '<i4', 'fortran_order': False, 'shape': (1L,)}", "abcd", 2)).numel() == 1);  // v2, Python 2 long
  CHECK(load(npy("{'descr': '<f2', 'fortran_order': False, 'shape': (1,)}", "ab", 3)).dtype() == DType::Float16);
  auto bad = [&](const std::string& label, const std::string& bytes, const std::vector<std::string>& needles) {
    std::vector<std::string> n = needles;
    n.insert(n.begin(), "t.npy");
    expect_error("npy: " + label, ErrorCode::InvalidArgument, n, [&] { load(bytes); });
  };
  bad("no magic", "NUMPY not", {"not a .npy file"});
  bad("empty", "", {"not a .npy file"});
  bad("version 4", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,)}", eight, 4), {"format version 4.0"});
  bad("version 1.1", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,)}", eight, 1, 1), {"1.1"});
  bad("negative dim", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (-1, 4)}"), {"'-1'", "non-negative integers"});
  bad("float dim", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (2.5,)}"), {"'2.5'", "non-negative integers"});
  bad("dim past int64", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (99999999999999999999,)}"), {"larger than a 64-bit"});
  bad("shape not a tuple", npy("{'descr': '<i8', 'fortran_order': False, 'shape': [1]}"), {"must be a tuple"});
  bad("shape (3) is an int", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (3)}"), {"not a tuple"});
  bad("missing shape", npy("{'descr': '<i8', 'fortran_order': False}"), {"lacks the key 'shape'"});
  bad("extra key", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), 'x': 1}", eight), {"the key 'x'"});
  bad("duplicate key", npy("{'descr': '<i8', 'descr': '<i8', 'fortran_order': False, 'shape': (1,)}", eight), {"twice"});
  bad("not a dict", npy("('descr', '<i8')"), {"expected '{'"});
  bad("trailing garbage", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,)} x", eight), {"bytes after the dictionary"});
  bad("fortran order", npy("{'descr': '<i8', 'fortran_order': True, 'shape': (1,)}", eight), {"Fortran order"});
  bad("big-endian", npy("{'descr': '>i8', 'fortran_order': False, 'shape': (1,)}", eight), {"'>i8'", "little-endian"});
  bad("float64", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,)}", eight), {"'<f8'"});
  bad("truncated data", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (2,)}", eight),
      {"8 bytes of data", "needs exactly 16", "truncated"});
  bad("trailing data", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,)}", eight + "x"), {"trailing bytes"});
  bad("huge shape, tiny file", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (4294967296, 4294967296)}"),
      {"more elements than 64 bits"});
  bad("huge shape within 64 bits", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1000000000, 1000)}"),
      {"needs exactly 8000000000000"});
  bad("truncated header", std::string("\x93NUMPY\x01\x00\x40\x00{'descr'", 18), {"truncated"});
  bad("header above 10000 bytes", std::string("\x93NUMPY\x02\x00\xff\xff\x00\x00", 12), {"65535-byte header"});
  bad("bool byte 2", npy("{'descr': '|b1', 'fortran_order': False, 'shape': (2,)}", std::string("\1\2", 2)), {"byte value 2"});
  bad("unterminated string", npy("{'descr"), {"unterminated string"});

  // files: the reader names the file
  fs::path dir = fs::temp_directory_path() / ("kiln-core-npy-" + std::to_string(getpid()));
  fs::create_directories(dir);
  expect_error("npy: a directory", ErrorCode::InvalidArgument, {dir.string()}, [&] { kiln::load_npy(dir.string()); });
  std::ofstream(dir / "neg.npy", std::ios::binary) << npy("{'descr': '<i8', 'fortran_order': False, 'shape': (-1,4)}");
  expect_error("npy file: (-1,4)", ErrorCode::InvalidArgument, {"neg.npy", "'-1'"},
               [&] { kiln::load_npy((dir / "neg.npy").string()); });
  Tensor a = Tensor::from_vector<int32_t>({1, 2, 3, 4, 5, 6}, {2, 3});
  kiln::save_npy((dir / "a.npy").string(), a);
  Tensor b = kiln::load_npy((dir / "a.npy").string());
  CHECK(b.shape() == a.shape() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0);
  fs::remove_all(dir);
  std::printf("ok     .npy reader follows numpy's format spec\n");
}

// An image-shaped manifest: pixel_values (batch, 3, height, width), height and width in
// multiples of 32 (GLPN's encoder strides total 32), predicted_depth (batch, height, width).
Json depth_manifest() {
  return Json::parse(R"({
    "format_version": 2, "name": "fake-depth", "family": "test", "task": "depth-estimation", "config": {},
    "dims": {"batch": {"min": 1, "opt": 1, "max": 4},
             "height": {"min": 64, "opt": 480, "max": 1024, "multiple": 32},
             "width": {"min": 64, "opt": 640, "max": 1344, "multiple": 32}},
    "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
    "outputs": [{"name": "predicted_depth", "dtype": "float32", "shape": ["batch", "height", "width"]}],
    "artifacts": [{"format": "fake", "file": "model.fake", "sha256": "", "bytes": 0}]
  })");
}

void test_dim_multiple() {
  const Json good = depth_manifest();
  kiln::Manifest m = kiln::Manifest::parse(good.dump(), "m.json");
  CHECK(m.dims.at("height").multiple == 32 && m.dims.at("width").multiple == 32);
  CHECK(m.dims.at("batch").multiple == 1);  // absent: any size
  auto broken = [&](const std::string& label, const std::function<void(Json&)>& edit,
                    const std::vector<std::string>& needles) {
    Json j = good;
    edit(j);
    expect_error("manifest: " + label, ErrorCode::Manifest, needles, [&] { kiln::Manifest::parse(j.dump(), "m.json"); });
  };
  broken("multiple 0", [](Json& j) { j["dims"]["height"]["multiple"] = 0; },
         {"m.json", "'dims.height.multiple' must be a positive integer", "0"});
  broken("multiple negative", [](Json& j) { j["dims"]["width"]["multiple"] = -32; }, {"'dims.width.multiple'", "-32"});
  broken("multiple a string", [](Json& j) { j["dims"]["height"]["multiple"] = "32"; },
         {"'dims.height.multiple' must be an integer", "\"32\""});
  broken("multiple a float", [](Json& j) { j["dims"]["height"]["multiple"] = 32.5; }, {"'dims.height.multiple'", "32.5"});
  broken("min not a multiple", [](Json& j) { j["dims"]["height"]["min"] = 48; },
         {"'dims.height.min' is 48, not a multiple of 'dims.height.multiple' (32)"});
  broken("opt not a multiple", [](Json& j) { j["dims"]["width"]["opt"] = 600; }, {"'dims.width.opt' is 600"});
  broken("max not a multiple", [](Json& j) { j["dims"]["width"]["max"] = 1333; }, {"'dims.width.max' is 1333"});
  broken("multiple on a derived dim", [](Json& j) {
    j["dims"]["both"] = {{"min", 128}, {"opt", 128}, {"max", 2048}, {"sum", {"height", "width"}}, {"multiple", 32}};
  }, {"'dims.both.multiple'", "derived"});

  EngineDir d("multiple", good);
  auto engine = Engine::open(d.path());
  int64_t seen_h = 0;
  fake_run = [&](const std::vector<Tensor>& in) {
    seen_h = in[0].shape()[2];
    return std::vector<Tensor>{Tensor::zeros(DType::Float32, {in[0].shape()[0], in[0].shape()[2], in[0].shape()[3]})};
  };
  auto pixels = [](int64_t b, int64_t h, int64_t w) {
    return Inputs{{"pixel_values", Tensor::zeros(DType::Float32, {b, 3, h, w})}};
  };
  CHECK(engine->run(pixels(2, 96, 128)).at("predicted_depth").shape() == (std::vector<int64_t>{2, 96, 128}));
  CHECK(seen_h == 96);
  CHECK(engine->run(pixels(1, 64, 1344)).count("predicted_depth"));  // the range's ends
  const std::string who = "engine 'multiple'";
  auto refused = [&](const std::string& label, const std::vector<std::string>& needles, Inputs in) {
    int before = fake_runs;
    expect_error(label, ErrorCode::InputShape, needles, [&] { engine->run(in); });
    CHECK(fake_runs == before);  // refused before the backend ran
    expect_error(label + " (validate)", ErrorCode::InputShape, needles, [&] { engine->validate(in); });
  };
  refused("height 100", {who, "input 'pixel_values' has shape [1, 3, 100, 128]", "dimension 2 ('height') is 100",
                         "not a multiple of 32", "e.g. 96 or 128"}, pixels(1, 100, 128));
  refused("width 650", {"dimension 3 ('width') is 650, not a multiple of 32", "e.g. 640 or 672"}, pixels(1, 64, 650));
  refused("height 1 (below the range)", {"('height') is 1, outside the engine's range 64..1024"}, pixels(1, 1, 64));
  refused("width 1376 (a multiple above the range)", {"('width') is 1376, outside the engine's range 64..1344"},
          pixels(1, 64, 1376));
  refused("width 1345", {"('width') is 1345, outside the engine's range"}, pixels(1, 64, 1345));
  std::printf("ok     dims of multiples (manifest field, checked before the backend runs)\n");
}

const std::map<std::string, std::function<void()>> kCases = {
    {"dim_multiple", test_dim_multiple},
    {"manifest_v2", test_manifest_v2},     {"utf8", test_utf8},
    {"generation_manifest", test_generation_manifest},
    {"validation", test_validation},       {"threads_bound", test_threads_bound},
    {"tensor_overflow", test_tensor_overflow}, {"npy", test_npy},
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> run;
  if (argc == 2 && kCases.count(argv[1])) {
    run.push_back(argv[1]);
  } else if (argc == 1) {
    for (const auto& [name, f] : kCases) run.push_back(name);
  } else {
    std::printf("usage: %s [CASE]\ncases:", argv[0]);
    for (const auto& [name, f] : kCases) std::printf(" %s", name.c_str());
    std::printf("\n");
    return 2;
  }
  for (const auto& name : run) {
    try {
      kCases.at(name)();
    } catch (const std::exception& e) {
      ++failures;
      std::printf("FAILED %s: unexpected exception: %s\n", name.c_str(), e.what());
    }
  }
  std::printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
