#pragma once
// manifest.json, the contract between the exporters (Python) and the runtime (C++).
// See engines/README.md. Only the fields the runtime interprets are parsed into structs;
// the whole text stays available in Manifest::json for the rest (config, labels, ...).
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/tensor.h"

namespace kiln {

struct DimRange {
  int64_t min = 1, opt = 1, max = 1;
};

// One entry of a spec's shape: a symbolic dimension (a key of Manifest::dims) or a fixed size.
struct Dim {
  std::string symbol;  // empty for a fixed size
  int64_t size = -1;   // the fixed size; -1 when symbolic
  bool symbolic() const noexcept { return !symbol.empty(); }
  std::string to_string() const;  // "batch" or "4"
};

struct TensorSpec {
  std::string name;
  DType dtype = DType::Float32;
  std::vector<Dim> shape;
  std::string shape_string() const;  // "[batch, 4]"
};

struct ArtifactInfo {
  std::string format;  // "torchscript" | "aoti" | "onnx" | "tensorrt"
  std::string file;    // relative to the engine directory
  std::string sha256;  // lowercase hex
  int64_t bytes = 0;
  std::string precision;  // "fp32", ... (empty if not given)
  std::string device;     // "cpu", "cuda", ... (empty if not given)
};

struct Manifest {
  int format_version = 0;
  std::string name, family, task;
  std::map<std::string, DimRange> dims;
  std::vector<TensorSpec> inputs, outputs;
  std::vector<ArtifactInfo> artifacts;
  std::string json;  // the whole manifest.json as read

  // The artifact of this format, or nullptr.
  const ArtifactInfo* artifact(std::string_view format) const noexcept;

  // Reads DIR/manifest.json. Throws kiln::Error(Manifest) naming the file and the problem.
  static Manifest load(const std::string& dir);
  // Parses manifest text; `origin` names it in error messages.
  static Manifest parse(const std::string& text, const std::string& origin);
};

constexpr int kManifestFormatVersion = 1;

}  // namespace kiln
