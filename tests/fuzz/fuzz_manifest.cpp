// libFuzzer: Manifest::parse must accept or refuse any bytes with a kiln::Error (Manifest) —
// no other exception, no crash, no undefined behaviour — and what it accepts must be usable.
#include <cstddef>
#include <cstdint>
#include <string>

#include "kiln/error.h"
#include "kiln/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    kiln::Manifest m = kiln::Manifest::parse(text, "fuzz.json");
    // What the runtime does with an accepted manifest: specs, dims, artifacts.
    for (const auto& s : m.inputs) {
      (void)s.shape_string();
      for (const auto& d : s.shape) {
        if (d.symbolic() && !m.dims.count(d.symbol)) __builtin_trap();  // inputs' dims are declared
      }
      if (s.values && s.values->min > s.values->max) __builtin_trap();
    }
    for (const auto& [name, d] : m.dims) {
      if (!(0 <= d.min && d.min <= d.opt && d.opt <= d.max)) __builtin_trap();
      for (const auto& term : d.sum) {
        if (!m.dims.count(term) || m.dims.at(term).derived()) __builtin_trap();
      }
    }
    for (const auto& a : m.artifacts) (void)m.artifact(a.format);
  } catch (const kiln::Error& e) {
    if (e.code() != kiln::ErrorCode::Manifest) __builtin_trap();
    const std::string what = e.what();
    if (kiln::valid_utf8(what) != what) __builtin_trap();  // messages are valid UTF-8
  }
  return 0;
}
