#pragma once
// Minimal .npy (format 1.0/2.0, little-endian, C order) reading and writing, for the
// kiln-run tool, the examples and the tests. Throws kiln::Error(InvalidArgument).
#include <string>

#include "kiln/tensor.h"

namespace kiln {

Tensor load_npy(const std::string& path);
void save_npy(const std::string& path, const Tensor& tensor);  // bfloat16 is refused: numpy has no such dtype

}  // namespace kiln
