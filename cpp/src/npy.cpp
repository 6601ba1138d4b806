#include "kiln/npy.h"

#include <cstring>
#include <fstream>
#include <regex>

#include "kiln/error.h"

namespace kiln {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(ErrorCode::InvalidArgument, path + ": " + what);
}

// numpy's descr strings for the dtypes kiln has ('<' little-endian, '|' byte-sized).
const char* descr(DType d) {
  switch (d) {
    case DType::Float32: return "<f4";
    case DType::Float16: return "<f2";
    case DType::Int64: return "<i8";
    case DType::Int32: return "<i4";
    case DType::Bool: return "|b1";
    case DType::UInt8: return "|u1";
    case DType::BFloat16: return nullptr;
  }
  return nullptr;
}

}  // namespace

Tensor load_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot be opened");
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) fail(path, "is not a .npy file");
  int major = static_cast<unsigned char>(magic[6]);
  uint32_t header_len = 0;
  unsigned char len_bytes[4] = {0, 0, 0, 0};
  if (major == 1) {
    f.read(reinterpret_cast<char*>(len_bytes), 2);
  } else if (major == 2 || major == 3) {
    f.read(reinterpret_cast<char*>(len_bytes), 4);
  } else {
    fail(path, ".npy format version " + std::to_string(major) + " is not supported");
  }
  for (int i = 3; i >= 0; --i) header_len = header_len << 8 | len_bytes[i];
  std::string header(header_len, '\0');
  if (!f.read(header.data(), header_len)) fail(path, "truncated header");

  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr'\\s*:\\s*'([^']*)'"))) fail(path, "header has no descr");
  std::string d = m[1];
  std::optional<DType> dtype;
  for (DType c : {DType::Float32, DType::Float16, DType::Int64, DType::Int32, DType::Bool, DType::UInt8}) {
    std::string want = descr(c);
    // '|' (not applicable) for byte-sized types, '<' or '=' (native, little-endian here) otherwise.
    if (d.size() == 3 && (d[0] == '<' || d[0] == '=' || d[0] == '|') && d.substr(1) == want.substr(1)) {
      dtype = c;
    }
  }
  if (!dtype) fail(path, "dtype '" + d + "' is not one kiln reads (float32, float16, int64, int32, bool, uint8; little-endian)");
  if (!std::regex_search(header, m, std::regex("'fortran_order'\\s*:\\s*(True|False)"))) {
    fail(path, "header has no fortran_order");
  }
  if (m[1] == "True") fail(path, "is in Fortran order; save a C-order array (numpy.ascontiguousarray)");
  if (!std::regex_search(header, m, std::regex("'shape'\\s*:\\s*\\(([^)]*)\\)"))) fail(path, "header has no shape");
  std::vector<int64_t> shape;
  std::string dims = m[1];
  std::regex num("\\d+");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), num); it != std::sregex_iterator(); ++it) {
    shape.push_back(std::stoll(it->str()));
  }
  Tensor t = Tensor::zeros(*dtype, shape);
  if (!f.read(static_cast<char*>(t.data()), static_cast<std::streamsize>(t.nbytes()))) {
    fail(path, "data is truncated: expected " + std::to_string(t.nbytes()) + " bytes for shape " +
                   shape_to_string(shape));
  }
  return t;
}

void save_npy(const std::string& path, const Tensor& t) {
  if (!t.defined()) fail(path, "cannot save an undefined tensor");
  const char* d = descr(t.dtype());
  if (!d) fail(path, std::string("numpy has no ") + dtype_name(t.dtype()) + " dtype");
  std::string shape = "(";
  for (size_t i = 0; i < t.ndim(); ++i) shape += (i ? ", " : "") + std::to_string(t.shape()[i]);
  shape += t.ndim() == 1 ? ",)" : ")";
  std::string header = std::string("{'descr': '") + d + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // The data starts at a multiple of 64 bytes; the header ends with a newline.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot be written");
  uint16_t len = static_cast<uint16_t>(header.size());
  char preamble[10] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<char>(len & 0xff),
                       static_cast<char>(len >> 8)};
  f.write(preamble, 10);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(static_cast<const char*>(t.data()), static_cast<std::streamsize>(t.nbytes()));
  if (!f) fail(path, "write failed");
}

}  // namespace kiln
