#pragma once
// kiln::Tensor: a dense, C-contiguous CPU tensor whose memory is shared, not copied.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace kiln {

// The dtypes of manifest.json, spelled the same way by dtype_name().
enum class DType : uint8_t { Float32, Float16, BFloat16, Int64, Int32, Bool, UInt8 };

const char* dtype_name(DType dtype) noexcept;
std::optional<DType> dtype_from_name(std::string_view name) noexcept;
size_t dtype_size(DType dtype) noexcept;

template <class T> struct dtype_of;  // C++ type -> DType, for the typed accessors
template <> struct dtype_of<float> { static constexpr DType value = DType::Float32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::Int64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::Int32; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::Bool; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::UInt8; };

std::string shape_to_string(const std::vector<int64_t>& shape);  // "[2, 7]"

// Copies of a Tensor share its memory (like at::Tensor or a numpy view). `owner` keeps
// the memory alive, so a Tensor can borrow memory from numpy, torch or a backend's output
// without a copy; a Tensor without an owner borrows memory the caller keeps alive.
class Tensor {
 public:
  Tensor() = default;

  // A new zero-filled tensor that owns its memory. Throws kiln::Error(InvalidArgument) for a
  // negative dimension, a size whose element count x element size overflows or exceeds 2^62
  // bytes, or memory that cannot be allocated.
  static Tensor zeros(DType dtype, std::vector<int64_t> shape);
  // A view of `data` (C-contiguous, `dtype`, `shape`); `owner` is held as long as any copy
  // of the Tensor lives. Pass no owner when the caller keeps the memory alive. The shape is
  // checked as zeros() checks it.
  static Tensor borrow(void* data, DType dtype, std::vector<int64_t> shape,
                       std::shared_ptr<void> owner = nullptr);
  template <class T>
  static Tensor from_vector(std::vector<T> values, std::vector<int64_t> shape);

  bool defined() const noexcept { return defined_; }
  DType dtype() const noexcept { return dtype_; }
  const std::vector<int64_t>& shape() const noexcept { return shape_; }
  size_t ndim() const noexcept { return shape_.size(); }
  int64_t numel() const noexcept;
  size_t nbytes() const noexcept { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  void* data() const noexcept { return data_; }
  // Typed access; throws kiln::Error(InvalidArgument) when T does not match dtype().
  template <class T> T* data() const {
    check_dtype(dtype_of<T>::value);
    return static_cast<T*>(data_);
  }
  const std::shared_ptr<void>& owner() const noexcept { return owner_; }

 private:
  void check_dtype(DType wanted) const;
  [[noreturn]] void check_size(size_t values) const;  // throws: values != numel()

  void* data_ = nullptr;
  DType dtype_ = DType::Float32;
  std::vector<int64_t> shape_;
  std::shared_ptr<void> owner_;
  bool defined_ = false;
};

template <class T>
Tensor Tensor::from_vector(std::vector<T> values, std::vector<int64_t> shape) {
  static_assert(!std::is_same_v<T, bool>, "std::vector<bool> is packed: use uint8_t values and zeros(DType::Bool, ...)");
  auto owned = std::make_shared<std::vector<T>>(std::move(values));
  Tensor t = borrow(owned->data(), dtype_of<T>::value, std::move(shape), owned);
  if (static_cast<size_t>(t.numel()) != owned->size()) t.check_size(owned->size());
  return t;
}

}  // namespace kiln
