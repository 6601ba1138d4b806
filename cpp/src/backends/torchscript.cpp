// TorchScript backend: model.ts (torch.jit.trace) run with torch::jit.
#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/serialization/import.h>

#include "torch_common.h"

namespace kiln::detail {
namespace {

using namespace torch_backend;

class TorchScriptBackend final : public Backend {
 public:
  explicit TorchScriptBackend(const BackendLoad& load) : engine_(load.engine_name), outputs_(load.manifest.outputs) {
    try {
      module_ = torch::jit::load(load.artifact_path, c10::Device(c10::kCPU));
      module_.eval();
    } catch (const std::exception& e) {
      throw Error(ErrorCode::Artifact, "engine '" + engine_ + "': TorchScript could not load " + load.artifact_path +
                                           ": " + message_of(e) + "; rebuild the engine (kiln build)");
    }
    apply_num_threads(load.options);
  }

  // Module::forward may run from several threads at once: the graph executor guards its
  // own state (plan caching on the first calls) and the module is not mutated here.
  // InferenceMode skips autograd bookkeeping, and is thread-local, hence set per call.
  std::vector<Tensor> run(const std::vector<Tensor>& inputs) const override {
    try {
      c10::InferenceMode guard;
      std::vector<at::Tensor> borrowed;
      std::vector<c10::IValue> args;
      for (const auto& t : inputs) {
        borrowed.push_back(borrow_as_at(t));
        args.emplace_back(borrowed.back());
      }
      c10::IValue result = module_.forward(std::move(args));
      std::vector<at::Tensor> flat = flatten(result);
      std::vector<Tensor> out;
      for (size_t i = 0; i < flat.size(); ++i) {
        out.push_back(i < outputs_.size() ? adopt_output(flat[i], borrowed, outputs_[i]) : Tensor());
      }
      if (flat.size() > outputs_.size()) out.resize(flat.size());  // the engine reports the count
      return out;
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(ErrorCode::Runtime, "engine '" + engine_ + "': TorchScript failed while running: " + message_of(e));
    }
  }

 private:
  // Traced models return a tensor, a tuple (NamedTuple) or a list of tensors; a dict is
  // matched to the manifest's output names.
  std::vector<at::Tensor> flatten(const c10::IValue& v) const {
    std::vector<at::Tensor> out;
    if (v.isGenericDict()) {
      auto dict = v.toGenericDict();
      for (const auto& spec : outputs_) {
        auto it = dict.find(c10::IValue(spec.name));
        if (it == dict.end()) {
          throw Error(ErrorCode::Runtime, "engine '" + engine_ + "': the TorchScript model returned a dict without '" +
                                              spec.name + "'; the artifact and the manifest disagree, rebuild the engine");
        }
        out.push_back(it->value().toTensor());
      }
      return out;
    }
    append(v, out);
    return out;
  }

  void append(const c10::IValue& v, std::vector<at::Tensor>& out) const {
    if (v.isTensor()) {
      out.push_back(v.toTensor());
    } else if (v.isTuple()) {
      for (const auto& e : v.toTupleRef().elements()) append(e, out);
    } else if (v.isList()) {
      for (const c10::IValue& e : v.toListRef()) append(e, out);
    } else {
      throw Error(ErrorCode::Runtime, "engine '" + engine_ + "': the TorchScript model returned a " + v.tagKind() +
                                          ", expected tensors");
    }
  }

  std::string engine_;
  std::vector<TensorSpec> outputs_;
  // forward() is not const in libtorch; it does not change the module (see run()).
  mutable torch::jit::Module module_;
};

const BackendRegistrar registrar(BackendInfo{
    "torchscript", "torchscript", /*priority=*/10, nullptr,
    [](const BackendLoad& load) -> std::unique_ptr<Backend> { return std::make_unique<TorchScriptBackend>(load); }});

}  // namespace
}  // namespace kiln::detail
