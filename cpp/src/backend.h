#pragma once
// The backend registry. Backends (src/backends/*.cpp, each behind a CMake option) register
// themselves from a static initializer, so the core never names a backend library and a
// build carries exactly the backends that were compiled in. This relies on libkiln being a
// shared library: every object file in it is loaded, so every registrar runs.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/engine.h"

namespace kiln::detail {

class Backend {
 public:
  virtual ~Backend() = default;
  // `inputs` are validated and in the manifest's input order; returns the outputs in the
  // manifest's output order, owning their memory. Must be safe to call concurrently.
  // May throw kiln::Error; other exceptions are reported as Runtime errors.
  virtual std::vector<Tensor> run(const std::vector<Tensor>& inputs) const = 0;
};

struct BackendLoad {
  const Manifest& manifest;
  const ArtifactInfo& artifact;
  std::string artifact_path;
  std::string engine_name;
  const EngineOptions& options;
};

struct BackendInfo {
  std::string name;    // what EngineOptions::backend names
  std::string format;  // the artifact format it runs
  int priority = 0;    // "auto" takes the highest-priority usable backend with an artifact
  // Empty when usable on this machine, else why not (e.g. "no CUDA device").
  std::function<std::string()> unusable_reason;
  // Throws kiln::Error(Artifact) when the artifact cannot be loaded.
  std::function<std::unique_ptr<Backend>(const BackendLoad&)> load;
  // The error code when this backend is asked for (or is the only one with an artifact)
  // but unusable here: e.g. Device for tensorrt without a CUDA device.
  ErrorCode unusable_code = ErrorCode::BackendUnavailable;
};

void register_backend(BackendInfo info);
const std::vector<BackendInfo>& registered_backends();  // by priority, best first

struct BackendRegistrar {
  explicit BackendRegistrar(BackendInfo info) { register_backend(std::move(info)); }
};

}  // namespace kiln::detail
