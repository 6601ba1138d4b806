// Minimal program embedding libkiln: open an engine, build inputs, run, print the outputs.
//   kiln-example-embed ENGINE_DIR [OUT_DIR]     (OUT_DIR: also save each output as .npy)
// Inputs are deterministic so a test can recompute them: each symbolic dimension at its
// "opt" size; attention_mask = 1, token_type_ids = 0, other integer inputs i % 10 and
// float inputs 0.1 * (i % 7) - 0.3, with i the element's flat index.
#include <cstdio>
#include <filesystem>
#include <string>

#include "kiln/kiln.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s ENGINE_DIR [OUT_DIR]\n", argv[0]);
    return 2;
  }
  try {
    auto engine = kiln::Engine::open(argv[1]);  // backend "auto"
    std::printf("engine %s on %s\n", engine->name().c_str(), engine->backend().c_str());

    std::map<std::string, kiln::Tensor> inputs;
    for (const kiln::TensorSpec& spec : engine->inputs()) {
      std::vector<int64_t> shape;
      for (const kiln::Dim& d : spec.shape) {
        shape.push_back(d.symbolic() ? engine->manifest().dims.at(d.symbol).opt : d.size);
      }
      kiln::Tensor t = kiln::Tensor::zeros(spec.dtype, shape);
      for (int64_t i = 0; i < t.numel(); ++i) {
        if (spec.dtype == kiln::DType::Int64) {
          t.data<int64_t>()[i] = spec.name == "attention_mask" ? 1 : spec.name == "token_type_ids" ? 0 : i % 10;
        } else if (spec.dtype == kiln::DType::Float32) {
          t.data<float>()[i] = 0.1f * static_cast<float>(i % 7) - 0.3f;
        } else {
          std::fprintf(stderr, "this example fills int64 and float32 inputs only (%s is %s)\n", spec.name.c_str(),
                       kiln::dtype_name(spec.dtype));
          return 2;
        }
      }
      inputs[spec.name] = t;
    }

    std::map<std::string, kiln::Tensor> outputs = engine->run(inputs);
    if (argc > 2) std::filesystem::create_directories(argv[2]);
    for (const kiln::TensorSpec& spec : engine->outputs()) {
      const kiln::Tensor& out = outputs.at(spec.name);
      std::printf("%s %s %s", spec.name.c_str(), kiln::dtype_name(out.dtype()), kiln::shape_to_string(out.shape()).c_str());
      if (out.dtype() == kiln::DType::Float32) {
        const float* v = out.data<float>();
        for (int64_t i = 0; i < out.numel() && i < 4; ++i) std::printf(" %.5f", v[i]);
        if (out.numel() > 4) std::printf(" ...");
      }
      std::printf("\n");
      if (argc > 2) kiln::save_npy(std::string(argv[2]) + "/" + spec.name + ".npy", out);
    }
    return 0;
  } catch (const kiln::Error& e) {
    std::fprintf(stderr, "%s error: %s\n", kiln::error_code_name(e.code()), e.what());
    return 1;
  }
}
