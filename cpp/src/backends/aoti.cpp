// AOTInductor backend: model.pt2 (torch.export + aoti_compile_and_package) run with
// torch::inductor::AOTIModelPackageLoader.
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <thread>

#include "torch_common.h"

namespace kiln::detail {
namespace {

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

class AotiBackend final : public Backend {
 public:
  explicit AotiBackend(const BackendLoad& load) : engine_(load.engine_name), outputs_(load.manifest.outputs) {
    try {
      loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          load.artifact_path, "model", /*run_single_threaded=*/false, runner_count(), /*device_index=*/-1);
    } catch (const std::exception& e) {
      throw Error(ErrorCode::Artifact, "engine '" + engine_ + "': AOTInductor could not load " + load.artifact_path +
                                           ": " + message_of(e) + "; rebuild the engine with this torch version");
    }
    apply_num_threads(load.options);
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
  std::string engine_;
  std::vector<TensorSpec> outputs_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

const BackendRegistrar registrar(BackendInfo{
    "aoti", "aoti", /*priority=*/20, nullptr,
    [](const BackendLoad& load) -> std::unique_ptr<Backend> { return std::make_unique<AotiBackend>(load); }});

}  // namespace
}  // namespace kiln::detail
