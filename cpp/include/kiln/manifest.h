#pragma once
// manifest.json, the contract between the exporters (Python) and the runtime (C++).
// See engines/README.md. Only the fields the runtime interprets are parsed into structs;
// the whole text stays available in Manifest::json for the rest (config, labels, ...).
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/tensor.h"

namespace kiln {

constexpr int kManifestFormatVersion = 2;

struct DimRange {
  int64_t min = 1, opt = 1, max = 1;
  // A derived dimension ("sum": ["past", "new"]): its size must equal the sum of these
  // dimensions' sizes (each a key of the same manifest's dims). Empty for an ordinary one.
  std::vector<std::string> sum;
  // Every size must be a multiple of this ("multiple": 32 for GLPN's height and width, the
  // encoder's total stride); min, opt and max are multiples of it. 1: any size.
  int64_t multiple = 1;
  bool derived() const noexcept { return !sum.empty(); }
};

// One entry of a spec's shape: a symbolic dimension (a key of Manifest::dims) or a fixed size.
struct Dim {
  std::string symbol;  // empty for a fixed size
  int64_t size = -1;   // the fixed size; -1 when symbolic
  bool symbolic() const noexcept { return !symbol.empty(); }
  std::string to_string() const;  // "batch" or "4"
};

// Inclusive bounds every element of an integer or bool input must satisfy
// ("values": {"min": 0, "max": 30521}): token ids below the vocabulary size, masks in {0, 1}.
struct ValueRange {
  int64_t min = 0, max = 0;
};

struct TensorSpec {
  std::string name;
  DType dtype = DType::Float32;
  std::vector<Dim> shape;
  std::optional<ValueRange> values;  // inputs of an integer or bool dtype only
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
  // "backend_choice": the CPU backend `kiln build` measured fastest on the machine it ran on
  // ({"backend", "cpu", "measured_ms"}); backend "auto" takes it on a CPU of that model name.
  std::string preferred_backend, preferred_cpu;
  std::string json;  // the whole manifest.json as read

  // The artifact of this format, or nullptr.
  const ArtifactInfo* artifact(std::string_view format) const noexcept;

  // Reads DIR/manifest.json. Throws kiln::Error(Manifest) naming the file and the problem.
  static Manifest load(const std::string& dir);
  // Parses manifest text; `origin` names it in error messages. A generation engine's
  // top-level manifest is refused with a message pointing to GenerationManifest / Generator.
  static Manifest parse(const std::string& text, const std::string& origin);
};

// The top-level manifest of a generation engine ("kind": "generation", engines/README.md
// "Generation engines"): it names the graph subdirectories (each an ordinary engine
// directory with its own Manifest) and what the generation loop needs to know.
struct GenerationManifest {
  struct Cache {
    int64_t layers = 0, heads = 0, head_dim = 0;
  };
  int format_version = 0;
  std::string name, family, task;
  std::map<std::string, std::string> graphs;  // graph name ("decoder", "encoder") -> subdirectory
  Cache cache;
  int64_t vocab_size = 0;
  int64_t max_positions = 0;
  bool encoder_decoder = false;
  std::string generation;  // the "generation" object as JSON text ("{}" when absent or null)
  std::string json;        // the whole manifest.json as read

  // Reads DIR/manifest.json. Throws kiln::Error(Manifest) naming the file and the field.
  static GenerationManifest load(const std::string& dir);
  // Parses manifest text; `origin` names it in error messages. An ordinary engine's
  // manifest is refused with a message pointing to Engine.
  static GenerationManifest parse(const std::string& text, const std::string& origin);
};

}  // namespace kiln
