#pragma once
// kiln::Engine: open an engine directory (manifest.json + artifacts), validate inputs
// against the manifest, run them on a backend. No libtorch type crosses this header.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/error.h"
#include "kiln/manifest.h"
#include "kiln/tensor.h"

namespace kiln {

struct EngineOptions {
  // "auto" (the best backend usable here that has an artifact: tensorrt on a GPU >
  // aoti > torchscript), or a backend name from available_backends().
  std::string backend = "auto";
  // Intra-op threads. 0 leaves the setting as it is. libtorch's thread pool is
  // process-wide, so this affects every engine in the process; AOTInductor kernels
  // use the thread count they were compiled with. Allowed: 0 .. max_num_threads() (4 x the
  // hardware threads); anything else is an InvalidArgument error at open, which states the
  // limit (a huge pool makes libgomp abort or the process crash).
  int num_threads = 0;
  // Check the artifact's sha256 against the manifest at open (its size is always checked).
  bool verify_sha256 = true;
  // Which artifact to run when the engine holds several precisions (TensorRT plans: fp32 / fp16 /
  // bf16; the CPU formats: fp32 / int8, built by `kiln build --precision int8`):
  // "auto" takes fp32 if the engine has it, else fp16, else bf16 (TensorRT), else int8 (CPU);
  // "fp32" | "fp16" | "bf16" | "int8" require that artifact (kiln::Error(Artifact) lists the ones
  // the engine has). With backend "auto", a precision asked for picks the first backend that has
  // an artifact of it. A precision the backend has no kind of (fp16 on the CPU, int8 on
  // TensorRT) is an InvalidArgument error.
  std::string precision = "auto";
};

class Engine {
 public:
  // Throws kiln::Error: Manifest, Artifact, BackendUnavailable, InvalidArgument.
  static std::unique_ptr<Engine> open(const std::string& dir, const EngineOptions& options = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const std::string& name() const noexcept;     // the directory's name, used in messages
  const std::string& dir() const noexcept;
  const std::string& backend() const noexcept;  // "torchscript" | "aoti" | ...
  const std::string& precision() const noexcept;  // the artifact's: "fp32", "fp16", "bf16", "int8"
  const Manifest& manifest() const noexcept;
  const std::vector<TensorSpec>& inputs() const noexcept;
  const std::vector<TensorSpec>& outputs() const noexcept;

  // Checks names, dtypes, ranks, fixed sizes, dimension ranges, that inputs agree on
  // shared symbolic dimensions, that derived dimensions equal the sum of their terms
  // (total = past + new) and that every element of an input with a value range lies in it
  // (token ids below the vocabulary size, ...). Throws kiln::Error (InputName, InputDType,
  // InputShape, InputValue) naming the engine, the input and what was expected.
  void validate(const std::map<std::string, Tensor>& inputs) const;

  // validate(), then run: no kernel sees an input that validate() refuses. Outputs are keyed
  // by the manifest's output names and own their memory. Safe to call from several threads
  // at once. Anything a backend throws becomes a kiln::Error (Runtime unless the backend
  // says more), with the backend's message.
  std::map<std::string, Tensor> run(const std::map<std::string, Tensor>& inputs) const;

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The backends compiled into this build and usable on this machine, best first.
std::vector<std::string> available_backends();

// The largest EngineOptions::num_threads accepted: 4 x std::thread::hardware_concurrency().
int max_num_threads();

}  // namespace kiln
