// libFuzzer: GenerationManifest::parse (the top level of a generation engine) must accept or
// refuse any bytes with a kiln::Error (Manifest), and what it accepts must be consistent.
#include <cstddef>
#include <cstdint>
#include <string>

#include "kiln/error.h"
#include "kiln/generate.h"
#include "kiln/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    kiln::GenerationManifest g = kiln::GenerationManifest::parse(text, "fuzz.json");
    if (!g.graphs.count("decoder") || g.encoder_decoder != (g.graphs.count("encoder") == 1)) __builtin_trap();
    if (g.cache.layers < 1 || g.cache.heads < 1 || g.cache.head_dim < 1 || g.vocab_size < 1) __builtin_trap();
    for (const auto& [name, sub] : g.graphs) {
      if (sub.empty() || sub[0] == '/' || sub.find("..") != std::string::npos) __builtin_trap();
    }
    (void)kiln::GenerationOptions::from_json(g.generation, "fuzz.json: generation");  // parse accepted it
  } catch (const kiln::Error& e) {
    if (e.code() != kiln::ErrorCode::Manifest) __builtin_trap();
    const std::string what = e.what();
    if (kiln::valid_utf8(what) != what) __builtin_trap();
  }
  return 0;
}
