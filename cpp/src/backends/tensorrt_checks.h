#pragma once
// What the TensorRT backend decides before and around TensorRT, in plain C++ (no TensorRT,
// no CUDA header): reading the tensorrt artifact's manifest entry, comparing the TensorRT
// version and GPU it was built for with this machine's, and choosing an optimisation
// profile for a set of input shapes. Always compiled into libkiln, so the normal build's
// tests cover it on machines without a GPU (tests/cpp/test_tensorrt.cpp).
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kiln/manifest.h"

namespace kiln::detail::trt {

struct ShapeRange {
  std::vector<int64_t> min, opt, max;
};

// One optimisation profile: input name -> its min/opt/max shapes (the manifest's
// "profiles" entry, in the same order as the profiles were added to the builder).
using Profile = std::map<std::string, ShapeRange>;

struct PlanInfo {
  std::string file, precision;
  std::string tensorrt_version;    // "10.13.0" (major.minor.patch; a 4th build part is ignored)
  std::string compute_capability;  // "9.0"
  bool version_compatible = false; // built with kVERSION_COMPATIBLE (the lean runtime needs it)
  std::vector<Profile> profiles;
};

// The tensorrt artifact's entry of manifest.json, checked. Throws kiln::Error(Manifest)
// naming the field that is missing or malformed.
PlanInfo parse_plan_info(const Manifest& manifest, const ArtifactInfo& artifact, const std::string& engine);

// The artifact to run for EngineOptions::precision: for TensorRT, the plan of that precision
// ("auto": fp32, else fp16, else bf16, in that order of preference); for the CPU formats, fp32 or
// int8 ("auto": fp32, else int8: a quantised artifact runs only when asked for or when it is all
// the engine has). Throws kiln::Error: InvalidArgument for an unknown precision or one the
// format has no kind of (fp16 on a CPU backend, int8 on TensorRT), Artifact when the engine has
// no artifact of the wanted precision (the message lists the ones it has and how to build it).
const ArtifactInfo& choose_artifact(const Manifest& manifest, const std::string& format, const std::string& precision,
                                    const std::string& engine);

// "10.13.0" from getInferLibVersion()'s (major * 100 + minor) * 100 + patch.
std::string version_string(int32_t lib_version);

// Throws kiln::Error(Version) when the plan was built for another TensorRT (exact
// major.minor.patch; a version-compatible plan runs on the same major at an equal or later
// version), for another compute capability, or is not version-compatible while the runtime
// is the lean one (which runs only version-compatible plans). `device` names the GPU.
void check_compatible(const PlanInfo& plan, const std::string& runtime_version, const std::string& device_cc,
                      const std::string& device, const std::string& engine, bool lean_runtime = false);

// The index of the first profile whose [min, max] holds every input's shape (profiles are
// listed best first). Throws kiln::Error(InputShape) listing the profiles when none fits.
size_t choose_profile(const PlanInfo& plan, const std::map<std::string, std::vector<int64_t>>& shapes,
                      const std::string& engine);

// "[1, 1]..[32, 512] (opt [1, 128])" per input, for messages.
std::string describe_profile(const Profile& profile);

}  // namespace kiln::detail::trt
