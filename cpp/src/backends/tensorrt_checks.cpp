#include <algorithm>
#include "tensorrt_checks.h"

#include <nlohmann/json.hpp>

#include <sstream>

#include "kiln/error.h"
#include "../util.h"

namespace kiln::detail::trt {
namespace {

using Json = nlohmann::json;

[[noreturn]] void manifest_error(const std::string& engine, const std::string& what) {
  throw Error(ErrorCode::Manifest, "engine '" + engine + "': manifest.json: " + what +
                                       "; rebuild the engine with `kiln build --formats tensorrt`");
}

std::vector<int64_t> int_list(const Json& j, const std::string& where, const std::string& engine) {
  if (!j.is_array()) manifest_error(engine, where + " is not a list of integers");
  std::vector<int64_t> out;
  for (const auto& v : j) {
    if (!v.is_number_integer()) manifest_error(engine, where + " holds a non-integer");
    out.push_back(v.get<int64_t>());
  }
  return out;
}

// major.minor.patch as integers; missing parts are 0, a build part is ignored.
std::vector<int> version_parts(const std::string& v) {
  std::vector<int> parts;
  std::stringstream ss(v);
  std::string item;
  while (parts.size() < 3 && std::getline(ss, item, '.')) {
    try {
      parts.push_back(std::stoi(item));
    } catch (const std::exception&) {
      parts.push_back(-1);
    }
  }
  parts.resize(3, 0);
  return parts;
}

std::string shape_text(const std::vector<int64_t>& s) { return shape_to_string(s); }

}  // namespace

PlanInfo parse_plan_info(const Manifest& manifest, const ArtifactInfo& artifact, const std::string& engine) {
  Json root = Json::parse(manifest.json, nullptr, /*allow_exceptions=*/false);
  if (!root.is_object() || !root.contains("artifacts") || !root["artifacts"].is_array()) {
    manifest_error(engine, "no artifacts list");
  }
  const Json* entry = nullptr;
  for (const auto& a : root["artifacts"]) {
    if (a.is_object() && a.value("format", "") == artifact.format && a.value("file", "") == artifact.file) {
      entry = &a;
      break;
    }
  }
  if (!entry) manifest_error(engine, "no tensorrt artifact for " + artifact.file);
  const Json& a = *entry;
  std::string where = "the tensorrt artifact " + artifact.file;

  PlanInfo plan;
  plan.file = artifact.file;
  plan.precision = artifact.precision;
  if (!a.contains("versions") || !a["versions"].is_object() || !a["versions"].contains("tensorrt") ||
      !a["versions"]["tensorrt"].is_string()) {
    manifest_error(engine, where + " has no versions.tensorrt (the TensorRT version it was built with)");
  }
  plan.tensorrt_version = a["versions"]["tensorrt"].get<std::string>();
  if (!a.contains("compute_capability") || !a["compute_capability"].is_string()) {
    manifest_error(engine, where + " has no compute_capability (e.g. \"9.0\", the GPU it was built for)");
  }
  plan.compute_capability = a["compute_capability"].get<std::string>();
  if (a.contains("version_compatible")) {
    if (!a["version_compatible"].is_boolean()) manifest_error(engine, where + ": version_compatible is not a boolean");
    plan.version_compatible = a["version_compatible"].get<bool>();
  }
  if (!a.contains("profiles") || !a["profiles"].is_array() || a["profiles"].empty()) {
    manifest_error(engine, where + " has no profiles (one {input: {min, opt, max}} object per optimisation profile)");
  }
  const auto& profiles = a["profiles"];
  for (size_t p = 0; p < profiles.size(); ++p) {
    std::string pw = where + ": profiles[" + std::to_string(p) + "]";
    if (!profiles[p].is_object()) manifest_error(engine, pw + " is not an object");
    Profile profile;
    for (const auto& spec : manifest.inputs) {
      if (!profiles[p].contains(spec.name)) manifest_error(engine, pw + " has no range for input '" + spec.name + "'");
      const Json& r = profiles[p][spec.name];
      std::string rw = pw + "." + spec.name;
      if (!r.is_object() || !r.contains("min") || !r.contains("opt") || !r.contains("max")) {
        manifest_error(engine, rw + " needs min, opt and max shapes");
      }
      ShapeRange range{int_list(r["min"], rw + ".min", engine), int_list(r["opt"], rw + ".opt", engine),
                       int_list(r["max"], rw + ".max", engine)};
      if (range.min.size() != spec.shape.size() || range.opt.size() != spec.shape.size() ||
          range.max.size() != spec.shape.size()) {
        manifest_error(engine, rw + " has another rank than the input " + spec.shape_string());
      }
      for (size_t i = 0; i < range.min.size(); ++i) {
        if (!(range.min[i] <= range.opt[i] && range.opt[i] <= range.max[i])) {
          manifest_error(engine, rw + ": min <= opt <= max does not hold in dimension " + std::to_string(i));
        }
      }
      profile.emplace(spec.name, std::move(range));
    }
    plan.profiles.push_back(std::move(profile));
  }
  return plan;
}

const ArtifactInfo& choose_artifact(const Manifest& manifest, const std::string& format, const std::string& precision,
                                    const std::string& engine) {
  // TensorRT plans come in fp32 / fp16 / bf16; the CPU formats in fp32 and int8 (kiln build
  // --precision int8). "auto" prefers full precision: a reduced one runs only when asked for,
  // or when it is all the engine has.
  static const std::vector<std::string> known{"fp32", "fp16", "bf16", "int8"};
  const std::vector<std::string> order = format == "tensorrt" ? std::vector<std::string>{"fp32", "fp16", "bf16"}
                                                              : std::vector<std::string>{"fp32", "int8"};
  if (precision != "auto" && std::find(known.begin(), known.end(), precision) == known.end()) {
    throw Error(ErrorCode::InvalidArgument, "engine '" + engine + "': precision '" + precision +
                                                "' is not one of auto, fp32, fp16, bf16, int8");
  }
  std::vector<const ArtifactInfo*> found;
  for (const auto& a : manifest.artifacts) {
    if (a.format == format) found.push_back(&a);
  }
  if (found.empty()) {
    throw Error(ErrorCode::Artifact, "engine '" + engine + "' has no " + format + " artifact");
  }
  if (precision != "auto" && std::find(order.begin(), order.end(), precision) == order.end()) {
    throw Error(ErrorCode::InvalidArgument,
                "engine '" + engine + "': precision '" + precision + "' does not exist for the " + format +
                    " backend, which runs " + join(order) +
                    (format == "tensorrt" ? std::string(" (int8 engines run on the CPU backends)")
                                          : std::string(" (fp16 / bf16 are TensorRT plans: backend tensorrt on a GPU host)")));
  }
  auto of = [&](const std::string& p) -> const ArtifactInfo* {
    for (const ArtifactInfo* a : found) {
      if ((a->precision.empty() ? std::string("fp32") : a->precision) == p) return a;
    }
    return nullptr;
  };
  if (precision == "auto") {
    for (const auto& p : order) {
      if (const ArtifactInfo* a = of(p)) return *a;
    }
  } else if (const ArtifactInfo* a = of(precision)) {
    return *a;
  }
  std::string have;
  for (const ArtifactInfo* a : found) {
    have += (have.empty() ? "" : ", ") + (a->precision.empty() ? std::string("fp32") : a->precision) + " (" + a->file + ")";
  }
  if (format != "tensorrt") {
    throw Error(ErrorCode::Artifact, "engine '" + engine + "' has no " + precision + " " + format + " artifact (its " +
                                         format + " artifacts: " + have + "); build it with `kiln build RECIPE "
                                         "--formats " + format + " --precision " + precision + "`");
  }
  throw Error(ErrorCode::Artifact, "engine '" + engine + "' has no " + precision + " TensorRT plan (its plans: " +
                                       have + "); build it with `kiln build RECIPE --formats tensorrt --precision " +
                                       precision + "` on the GPU host");
}

std::string version_string(int32_t lib_version) {
  return std::to_string(lib_version / 10000) + "." + std::to_string(lib_version / 100 % 100) + "." +
         std::to_string(lib_version % 100);
}

void check_compatible(const PlanInfo& plan, const std::string& runtime_version, const std::string& device_cc,
                      const std::string& device, const std::string& engine, bool lean_runtime) {
  auto built = version_parts(plan.tensorrt_version), here = version_parts(runtime_version);
  bool version_ok = plan.version_compatible ? (built[0] == here[0] && here >= built) : built == here;
  std::string rebuild = "; rebuild the plan for this GPU/TensorRT on this machine (`kiln build RECIPE --formats tensorrt`)";
  if (lean_runtime && !plan.version_compatible) {
    throw Error(ErrorCode::Version, "engine '" + engine + "': " + plan.file + " is not version-compatible, and "
                                        "this kiln runs plans with the TensorRT lean runtime " + runtime_version +
                                        ", which loads only version-compatible plans; rebuild the plan with "
                                        "version compatibility (`kiln build RECIPE --formats tensorrt "
                                        "--version-compatible`) or build kiln with KILN_TENSORRT_RUNTIME=full");
  }
  if (!version_ok) {
    std::string rule = plan.version_compatible
                           ? " (a version-compatible plan runs on TensorRT " + std::to_string(built[0]) + ".x at " +
                                 plan.tensorrt_version + " or later)"
                           : " (a plan runs only on the TensorRT version that built it)";
    throw Error(ErrorCode::Version, "engine '" + engine + "': " + plan.file + " was built with TensorRT " +
                                        plan.tensorrt_version + ", this runtime is TensorRT " + runtime_version +
                                        rule + rebuild);
  }
  if (plan.compute_capability != device_cc) {
    throw Error(ErrorCode::Version, "engine '" + engine + "': " + plan.file + " was built for compute capability " +
                                        plan.compute_capability + ", this GPU (" + device +
                                        ") has compute capability " + device_cc + rebuild);
  }
}

std::string describe_profile(const Profile& profile) {
  std::vector<std::string> items;
  for (const auto& [name, r] : profile) {
    items.push_back(name + " " + shape_text(r.min) + ".." + shape_text(r.max) + " (opt " + shape_text(r.opt) + ")");
  }
  return join(items);
}

size_t choose_profile(const PlanInfo& plan, const std::map<std::string, std::vector<int64_t>>& shapes,
                      const std::string& engine) {
  for (size_t p = 0; p < plan.profiles.size(); ++p) {
    bool fits = true;
    for (const auto& [name, shape] : shapes) {
      auto it = plan.profiles[p].find(name);
      if (it == plan.profiles[p].end()) continue;  // an input the plan has no profile range for
      const ShapeRange& r = it->second;
      if (shape.size() != r.min.size()) {
        fits = false;
        break;
      }
      for (size_t i = 0; fits && i < shape.size(); ++i) fits = r.min[i] <= shape[i] && shape[i] <= r.max[i];
      if (!fits) break;
    }
    if (fits) return p;
  }
  std::vector<std::string> given, listed;
  for (const auto& [name, shape] : shapes) given.push_back(name + " " + shape_text(shape));
  for (size_t p = 0; p < plan.profiles.size(); ++p) {
    listed.push_back("profile " + std::to_string(p) + ": " + describe_profile(plan.profiles[p]));
  }
  throw Error(ErrorCode::InputShape, "engine '" + engine + "': no optimisation profile of " + plan.file +
                                         " fits the input shapes " + join(given) + "; its profiles are " +
                                         join(listed, "; ") +
                                         ". Use shapes inside one profile, or rebuild the plan with a profile "
                                         "that covers them");
}

}  // namespace kiln::detail::trt
