#pragma once
// .npy reading and writing (numpy's format, versions 1.0, 2.0 and 3.0; little-endian, C
// order), for the kiln-run tool, the examples and the tests. The reader follows numpy's
// specification strictly: the magic string, the version, the header length, a header that is
// a dict of exactly 'descr', 'fortran_order' and 'shape' (non-negative integers), and data
// whose length is exactly what the header describes. Throws kiln::Error(InvalidArgument)
// naming the file and what is wrong.
#include <cstddef>
#include <string>

#include "kiln/tensor.h"

namespace kiln {

Tensor load_npy(const std::string& path);
// The same reader over bytes in memory; `origin` names them in error messages.
Tensor load_npy_from_memory(const void* data, size_t size, const std::string& origin);
void save_npy(const std::string& path, const Tensor& tensor);  // bfloat16 is refused: numpy has no such dtype

}  // namespace kiln
