// libFuzzer: the .npy reader must accept or refuse any bytes with a kiln::Error
// (InvalidArgument): no other exception, no crash, no allocation the data cannot back.
#include <cstddef>
#include <cstdint>
#include <string>

#include "kiln/error.h"
#include "kiln/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    kiln::Tensor t = kiln::load_npy_from_memory(data, size, "fuzz.npy");
    // Accepted: the data was exactly the header's size, so the tensor is no larger than the input.
    if (t.nbytes() > size) __builtin_trap();
  } catch (const kiln::Error& e) {
    if (e.code() != kiln::ErrorCode::InvalidArgument) __builtin_trap();
  }
  return 0;
}
