#include "kiln/tensor.h"

#include <cstdlib>
#include <cstring>

#include "kiln/error.h"

namespace kiln {

const char* dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int64: return "int64";
    case DType::Int32: return "int32";
    case DType::Bool: return "bool";
    case DType::UInt8: return "uint8";
  }
  return "?";
}

std::optional<DType> dtype_from_name(std::string_view name) noexcept {
  for (DType d : {DType::Float32, DType::Float16, DType::BFloat16, DType::Int64, DType::Int32,
                  DType::Bool, DType::UInt8}) {
    if (name == dtype_name(d)) return d;
  }
  return std::nullopt;
}

size_t dtype_size(DType dtype) noexcept {
  switch (dtype) {
    case DType::Float32: case DType::Int32: return 4;
    case DType::Float16: case DType::BFloat16: return 2;
    case DType::Int64: return 8;
    case DType::Bool: case DType::UInt8: return 1;
  }
  return 0;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

int64_t Tensor::numel() const noexcept {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;  // cannot overflow: checked when the tensor was made
  return n;
}

namespace {

// The largest tensor kiln makes or borrows, in bytes: what a signed 64-bit byte count (and
// ptrdiff_t) can address, less the allocator's alignment padding.
constexpr uint64_t kMaxTensorBytes = (uint64_t(1) << 62);

// Elements and bytes of a shape, refusing negative dimensions and any product that would
// overflow (a shape from a file or a command line can ask for anything).
size_t checked_nbytes(DType dtype, const std::vector<int64_t>& shape, const char* what) {
  for (int64_t d : shape) {
    if (d < 0) {
      throw Error(ErrorCode::InvalidArgument,
                  std::string(what) + ": tensor shape " + shape_to_string(shape) + " has a negative dimension");
    }
  }
  int64_t n = 1;
  bool overflow = false;
  for (int64_t d : shape) overflow = overflow || __builtin_mul_overflow(n, d, &n);
  uint64_t bytes = 0;
  overflow = overflow || __builtin_mul_overflow(static_cast<uint64_t>(n), static_cast<uint64_t>(dtype_size(dtype)), &bytes);
  if (overflow || bytes > kMaxTensorBytes) {
    throw Error(ErrorCode::InvalidArgument,
                std::string(what) + ": a " + dtype_name(dtype) + " tensor of shape " + shape_to_string(shape) +
                    " would need " + (overflow ? std::string("more than 2^64") : std::to_string(bytes)) +
                    " bytes, more than the 2^62 bytes a tensor may have; check the sizes");
  }
  return static_cast<size_t>(bytes);
}

}  // namespace

Tensor Tensor::zeros(DType dtype, std::vector<int64_t> shape) {
  const size_t nbytes = checked_nbytes(dtype, shape, "Tensor::zeros");
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.defined_ = true;
  // 64-byte alignment: what SIMD kernels and backends that borrow this memory prefer.
  // nbytes <= 2^62, so rounding up cannot overflow.
  constexpr size_t kAlign = 64;
  size_t bytes = (nbytes + kAlign - 1) / kAlign * kAlign;
  if (bytes == 0) bytes = kAlign;
  void* p = std::aligned_alloc(kAlign, bytes);
  if (!p) {
    throw Error(ErrorCode::InvalidArgument, "Tensor::zeros: cannot allocate " + std::to_string(bytes) +
                                                " bytes for a " + dtype_name(dtype) + " tensor of shape " +
                                                shape_to_string(t.shape_) + " (out of memory)");
  }
  std::memset(p, 0, bytes);
  t.owner_ = std::shared_ptr<void>(p, std::free);
  t.data_ = p;
  return t;
}

Tensor Tensor::borrow(void* data, DType dtype, std::vector<int64_t> shape,
                      std::shared_ptr<void> owner) {
  checked_nbytes(dtype, shape, "Tensor::borrow");
  Tensor t;
  t.data_ = data;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.owner_ = std::move(owner);
  t.defined_ = true;
  if (!data && t.numel() != 0) {
    throw Error(ErrorCode::InvalidArgument,
                "Tensor::borrow: null data for a tensor of shape " + shape_to_string(t.shape_));
  }
  return t;
}

void Tensor::check_dtype(DType wanted) const {
  if (!defined_) throw Error(ErrorCode::InvalidArgument, "the tensor is undefined (default-constructed)");
  if (wanted != dtype_) {
    throw Error(ErrorCode::InvalidArgument, std::string("tensor has dtype ") + dtype_name(dtype_) +
                                                ", accessed as " + dtype_name(wanted));
  }
}

void Tensor::check_size(size_t values) const {
  throw Error(ErrorCode::InvalidArgument,
              "Tensor::from_vector: " + std::to_string(values) + " values do not fill shape " +
                  shape_to_string(shape_) + " (" + std::to_string(numel()) + " elements)");
}

}  // namespace kiln
