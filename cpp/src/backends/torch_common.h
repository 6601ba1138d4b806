#pragma once
// kiln::Tensor <-> at::Tensor without copies, shared by the libtorch backends.
// Only backend sources include this (it pulls in libtorch headers).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <memory>
#include <string>
#include <vector>

#include "../backend.h"

namespace kiln::detail::torch_backend {

inline at::ScalarType to_scalar_type(DType d) {
  switch (d) {
    case DType::Float32: return at::kFloat;
    case DType::Float16: return at::kHalf;
    case DType::BFloat16: return at::kBFloat16;
    case DType::Int64: return at::kLong;
    case DType::Int32: return at::kInt;
    case DType::Bool: return at::kBool;
    case DType::UInt8: return at::kByte;
  }
  return at::kFloat;
}

inline std::optional<DType> from_scalar_type(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    case at::kLong: return DType::Int64;
    case at::kInt: return DType::Int32;
    case at::kBool: return DType::Bool;
    case at::kByte: return DType::UInt8;
    default: return std::nullopt;
  }
}

// A view of the caller's memory: the at::Tensor does not own it, the caller of run() does.
inline at::Tensor borrow_as_at(const Tensor& t) {
  return at::from_blob(t.data(), t.shape(), at::TensorOptions().dtype(to_scalar_type(t.dtype())));
}

// Hands an output to kiln without a copy: the kiln::Tensor's owner holds the at::Tensor.
// An output that aliases an input (a model that returns a view of its input) is copied,
// since the input's memory belongs to the caller and may be freed after run() returns.
inline Tensor adopt_output(at::Tensor out, const std::vector<at::Tensor>& inputs, const TensorSpec& spec) {
  if (!out.defined()) return Tensor();
  if (!out.device().is_cpu()) out = out.cpu();
  for (const auto& in : inputs) {
    if (out.is_alias_of(in)) {
      out = out.clone(at::MemoryFormat::Contiguous);
      break;
    }
  }
  out = out.contiguous();
  auto dtype = from_scalar_type(out.scalar_type());
  if (!dtype) {
    throw std::runtime_error("output '" + spec.name + "' has dtype " + std::string(c10::toString(out.scalar_type())) +
                             ", which kiln does not support (manifest says " + dtype_name(spec.dtype) + ")");
  }
  void* data = out.data_ptr();
  std::vector<int64_t> shape(out.sizes().begin(), out.sizes().end());
  auto owner = std::make_shared<at::Tensor>(std::move(out));
  return Tensor::borrow(data, *dtype, std::move(shape), std::move(owner));
}

inline void apply_num_threads(const EngineOptions& options) {
  if (options.num_threads > 0 && at::get_num_threads() != options.num_threads) {
    at::set_num_threads(options.num_threads);
  }
}

// c10::Error::what() carries a C++ backtrace, and AOTInductor passes errors from its
// kernels on as text with the backtrace inside; users need the message.
inline std::string message_of(const std::exception& e) {
  auto* c10e = dynamic_cast<const c10::Error*>(&e);
  std::string msg = c10e ? c10e->what_without_backtrace() : e.what();
  auto trace = msg.find("\nException raised from ");
  return trace == std::string::npos ? msg : msg.substr(0, trace);
}

}  // namespace kiln::detail::torch_backend
