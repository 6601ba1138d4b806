// The TensorRT backend's checks, without a GPU.
//   kiln_tensorrt_tests WORK_DIR CASE      CASE: checks | core_path | no_device | make_engine
// checks:      the version / GPU / profile logic (src/backends/tensorrt_checks.h), any build.
// core_path:   an engine dir with a tensorrt artifact opened through Engine::open with a stand-in
//              backend that runs the same checks against a pretend GPU: truncated plan,
//              TensorRT / GPU mismatch, no profile fits. Any build.
// no_device:   (KILN_WITH_TENSORRT builds, on a machine without a usable GPU) the real backend
//              refuses with a Device error instead of touching TensorRT.
// make_engine: writes WORK_DIR as an engine dir with a tensorrt artifact (for kiln-run).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend.h"
#include "backends/tensorrt_checks.h"
#include "check.h"
#include "kiln/kiln.h"
#include "util.h"

namespace fs = std::filesystem;
namespace trt = kiln::detail::trt;
using kiln::DType;
using kiln::ErrorCode;
using kiln::Tensor;

using kiln_test::checks;
using kiln_test::expect_error;
using kiln_test::failures;

namespace {

bool skipped = false;  // exit 77 (ctest SKIP_RETURN_CODE)

nlohmann::json plan_entry(const std::string& file, const std::string& bytes_of) {
  return {{"format", "tensorrt"},
          {"file", file},
          {"sha256", kiln::detail::sha256_hex(bytes_of.data(), bytes_of.size())},
          {"bytes", bytes_of.size()},
          {"precision", "fp16"},
          {"device", "cuda"},
          {"compute_capability", "9.0"},
          {"version_compatible", true},
          {"onnx_sha256", "0"},
          {"versions", {{"tensorrt", "11.4.0"}}},
          // two profiles: short sequences up to batch 8, long ones up to batch 2
          {"profiles",
           {{{"input_ids", {{"min", {1, 1}}, {"opt", {1, 16}}, {"max", {8, 32}}}}},
            {{"input_ids", {{"min", {1, 33}}, {"opt", {1, 64}}, {"max", {2, 64}}}}}}}};
}

nlohmann::json manifest_json(const nlohmann::json& artifact) {
  return {{"format_version", kiln::kManifestFormatVersion},
          {"name", "trt-fixture"},
          {"family", "bert"},
          {"task", "text-classification"},
          {"config", nlohmann::json::object()},
          {"dims", {{"batch", {{"min", 1}, {"opt", 1}, {"max", 8}}}, {"sequence", {{"min", 1}, {"opt", 16}, {"max", 64}}}}},
          {"inputs", {{{"name", "input_ids"}, {"dtype", "int64"}, {"shape", {"batch", "sequence"}}}}},
          {"outputs", {{{"name", "logits"}, {"dtype", "float32"}, {"shape", {"batch", 3}}}}},
          {"artifacts", {artifact}}};
}

const std::string kPlanBytes = "not a real TensorRT plan: only a GPU host can build or load one\n";
const std::string kPlanFile = "model.sm90.fp16.plan";

// An engine dir with a tensorrt artifact; `plan` is what the plan file holds (the manifest
// describes kPlanBytes, so anything else is a truncated or corrupt plan).
std::string write_engine(const fs::path& dir, const std::string& plan = kPlanBytes,
                         const std::function<void(nlohmann::json&)>& edit = nullptr) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  nlohmann::json art = plan_entry(kPlanFile, kPlanBytes);
  if (edit) edit(art);
  std::ofstream(dir / "manifest.json") << manifest_json(art).dump(2);
  std::ofstream(dir / kPlanFile, std::ios::binary) << plan;
  return dir.string();
}

Tensor ids(int64_t batch, int64_t seq) {
  return Tensor::from_vector<int64_t>(std::vector<int64_t>(batch * seq, 1), {batch, seq});
}

void test_checks(const std::string&) {
  kiln::Manifest m = kiln::Manifest::parse(manifest_json(plan_entry(kPlanFile, kPlanBytes)).dump(), "test");
  trt::PlanInfo plan = trt::parse_plan_info(m, *m.artifact("tensorrt"), "e");
  CHECK(plan.tensorrt_version == "11.4.0" && plan.compute_capability == "9.0" && plan.version_compatible);
  CHECK(plan.profiles.size() == 2 && plan.profiles[1].at("input_ids").max == (std::vector<int64_t>{2, 64}));
  CHECK(trt::version_string(110400) == "11.4.0" && trt::version_string(101300) == "10.13.0");

  // manifest fields
  auto parse_with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json art = plan_entry(kPlanFile, kPlanBytes);
    edit(art);
    kiln::Manifest mm = kiln::Manifest::parse(manifest_json(art).dump(), "test");
    trt::parse_plan_info(mm, *mm.artifact("tensorrt"), "e");
  };
  expect_error("no versions.tensorrt", ErrorCode::Manifest, {"versions.tensorrt"},
               [&] { parse_with([](auto& a) { a.erase("versions"); }); });
  expect_error("no compute_capability", ErrorCode::Manifest, {"compute_capability"},
               [&] { parse_with([](auto& a) { a.erase("compute_capability"); }); });
  expect_error("profile without an input", ErrorCode::Manifest, {"profiles[1]", "input_ids"},
               [&] { parse_with([](auto& a) { a["profiles"][1] = nlohmann::json::object(); }); });
  expect_error("profile of another rank", ErrorCode::Manifest, {"rank"},
               [&] { parse_with([](auto& a) { a["profiles"][0]["input_ids"]["min"] = {1}; }); });
  expect_error("profile min > max", ErrorCode::Manifest, {"min <= opt <= max"},
               [&] { parse_with([](auto& a) { a["profiles"][0]["input_ids"]["min"] = {9, 1}; }); });

  // versions and GPUs
  trt::check_compatible(plan, "11.4.0", "9.0", "H100", "e");
  trt::check_compatible(plan, "11.6.1", "9.0", "H100", "e", /*lean_runtime=*/true);  // version-compatible: later minor
  expect_error("older TensorRT than the plan's", ErrorCode::Version, {"11.4.0", "11.3.0", "rebuild"},
               [&] { trt::check_compatible(plan, "11.3.0", "9.0", "H100", "e"); });
  expect_error("other TensorRT major", ErrorCode::Version, {"TensorRT 12.0.0", "rebuild"},
               [&] { trt::check_compatible(plan, "12.0.0", "9.0", "H100", "e"); });
  trt::PlanInfo exact = plan;
  exact.version_compatible = false;
  expect_error("not version-compatible: exact version", ErrorCode::Version, {"only on the TensorRT version"},
               [&] { trt::check_compatible(exact, "11.4.1", "9.0", "H100", "e"); });
  expect_error("lean runtime, plan not version-compatible", ErrorCode::Version, {"lean runtime", "--version-compatible"},
               [&] { trt::check_compatible(exact, "11.4.0", "9.0", "H100", "e", true); });
  expect_error("other GPU", ErrorCode::Version, {"compute capability 9.0", "NVIDIA L4", "8.9", "this GPU/TensorRT"},
               [&] { trt::check_compatible(plan, "11.4.0", "8.9", "NVIDIA L4", "e"); });

  // profiles
  CHECK(trt::choose_profile(plan, {{"input_ids", {4, 20}}}, "e") == 0);
  CHECK(trt::choose_profile(plan, {{"input_ids", {1, 32}}}, "e") == 0);
  CHECK(trt::choose_profile(plan, {{"input_ids", {2, 40}}}, "e") == 1);
  expect_error("no profile fits", ErrorCode::InputShape,
               {"[4, 40]", "profile 0: input_ids [1, 1]..[8, 32]", "profile 1: input_ids [1, 33]..[2, 64]"},
               [&] { trt::choose_profile(plan, {{"input_ids", {4, 40}}}, "e"); });
}

// Stands in for the TensorRT backend on a machine without a GPU: the same manifest, version
// and profile checks, against a pretend H100 with TensorRT 11.4.0.
class StandIn final : public kiln::detail::Backend {
 public:
  explicit StandIn(const kiln::detail::BackendLoad& load)
      : plan_(trt::parse_plan_info(load.manifest, load.artifact, load.engine_name)), engine_(load.engine_name) {
    trt::check_compatible(plan_, "11.4.0", "9.0", "pretend H100", engine_, /*lean_runtime=*/true);
  }
  std::vector<Tensor> run(const std::vector<Tensor>& inputs) const override {
    trt::choose_profile(plan_, {{"input_ids", inputs[0].shape()}}, engine_);
    return {Tensor::zeros(DType::Float32, {inputs[0].shape()[0], 3})};
  }

 private:
  trt::PlanInfo plan_;
  std::string engine_;
};

void test_core_path(const std::string& work) {
  kiln::detail::register_backend(kiln::detail::BackendInfo{
      "tensorrt-standin", "tensorrt", /*priority=*/-100, nullptr,
      [](const kiln::detail::BackendLoad& load) -> std::unique_ptr<kiln::detail::Backend> {
        return std::make_unique<StandIn>(load);
      }});
  kiln::EngineOptions opt;
  opt.backend = "tensorrt-standin";
  fs::path base = fs::path(work) / "core_path";

  auto engine = kiln::Engine::open(write_engine(base / "good"), opt);
  CHECK(engine->run({{"input_ids", ids(4, 20)}}).at("logits").shape() == (std::vector<int64_t>{4, 3}));
  CHECK(engine->run({{"input_ids", ids(2, 64)}}).at("logits").shape() == (std::vector<int64_t>{2, 3}));
  expect_error("no profile fits (through Engine::run)", ErrorCode::InputShape, {"no optimisation profile", "profile 1"},
               [&] { engine->run({{"input_ids", ids(4, 40)}}); });

  std::string truncated = kPlanBytes.substr(0, kPlanBytes.size() / 2);
  expect_error("truncated plan", ErrorCode::Artifact, {kPlanFile, "truncated"},
               [&] { kiln::Engine::open(write_engine(base / "truncated", truncated), opt); });
  std::string corrupt = kPlanBytes;
  corrupt[3] ^= 1;
  expect_error("corrupt plan", ErrorCode::Artifact, {kPlanFile, "sha256"},
               [&] { kiln::Engine::open(write_engine(base / "corrupt", corrupt), opt); });
  expect_error("plan for another GPU", ErrorCode::Version, {"compute capability 8.6", "this GPU/TensorRT"}, [&] {
    kiln::Engine::open(write_engine(base / "sm86", kPlanBytes, [](auto& a) { a["compute_capability"] = "8.6"; }), opt);
  });
  // Several plans: EngineOptions::precision picks one ("auto": fp32 first).
  fs::path two = base / "two-plans";
  write_engine(two);
  {
    nlohmann::json m = nlohmann::json::parse(std::ifstream(two / "manifest.json"));
    nlohmann::json fp32 = plan_entry("model.sm90.fp32.plan", kPlanBytes);
    fp32["precision"] = "fp32";
    m["artifacts"].push_back(fp32);
    std::ofstream(two / "manifest.json") << m.dump(2);
    std::ofstream(two / "model.sm90.fp32.plan", std::ios::binary) << kPlanBytes;
  }
  CHECK(kiln::Engine::open(two.string(), opt)->precision() == "fp32");
  kiln::EngineOptions fp16 = opt;
  fp16.precision = "fp16";
  CHECK(kiln::Engine::open(two.string(), fp16)->precision() == "fp16");
  CHECK(kiln::Engine::open(write_engine(base / "fp16-only"), opt)->precision() == "fp16");  // auto: what there is
  kiln::EngineOptions bf16 = opt;
  bf16.precision = "bf16";
  expect_error("no plan of that precision", ErrorCode::Artifact,
               {"no bf16 TensorRT plan", "fp16 (model.sm90.fp16.plan)", "fp32 (model.sm90.fp32.plan)", "--precision bf16"},
               [&] { kiln::Engine::open(two.string(), bf16); });
  kiln::EngineOptions fp8 = opt;
  fp8.precision = "fp8";
  expect_error("unknown precision", ErrorCode::InvalidArgument, {"precision 'fp8'", "auto, fp32, fp16, bf16"},
               [&] { kiln::Engine::open(two.string(), fp8); });
  expect_error("plan for another TensorRT", ErrorCode::Version, {"TensorRT 10.13.0", "rebuild"}, [&] {
    kiln::Engine::open(write_engine(base / "trt10", kPlanBytes, [](auto& a) { a["versions"]["tensorrt"] = "10.13.0"; }),
                       opt);
  });
}

void test_no_device(const std::string& work) {
  std::string dir = write_engine(fs::path(work) / "no_device");
  auto names = kiln::available_backends();
  std::printf("available backends:");
  for (const auto& n : names) std::printf(" %s", n.c_str());
  std::printf("\n");
  if (std::find(names.begin(), names.end(), "tensorrt") != names.end()) {
    std::printf("a CUDA device is usable here: nothing to check without one\n");
    skipped = true;
    return;
  }
  for (std::string backend : {"tensorrt", "auto"}) {
    kiln::EngineOptions opt;
    opt.backend = backend;
    expect_error("open with backend " + backend + " without a GPU", ErrorCode::Device, {"tensorrt", "CUDA"},
                 [&] { kiln::Engine::open(dir, opt); });
  }
}

const std::map<std::string, std::function<void(const std::string&)>> kCases = {
    {"checks", test_checks},
    {"core_path", test_core_path},
    {"no_device", test_no_device},
    {"make_engine", [](const std::string& dir) { std::printf("wrote %s\n", write_engine(dir).c_str()); }},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || !kCases.count(argv[2])) {
    std::printf("usage: %s WORK_DIR checks|core_path|no_device|make_engine\n", argv[0]);
    return 2;
  }
  try {
    kCases.at(argv[2])(argv[1]);
  } catch (const std::exception& e) {
    ++failures;
    std::printf("FAILED: unexpected exception: %s\n", e.what());
  }
  std::printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : skipped ? 77 : 0;
}
