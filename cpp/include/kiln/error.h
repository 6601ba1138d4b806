#pragma once
// kiln's one error type. Codes are shared with python/kiln/errors.py (ErrorCode).
#include <stdexcept>
#include <string>
#include <string_view>

namespace kiln {

enum class ErrorCode : int {
  InvalidArgument = 1,     // a bad option or argument (unknown backend name, bad value)
  InputName = 2,           // a missing, extra or misnamed input
  InputDType = 3,          // wrong dtype
  InputShape = 4,          // wrong rank or a dimension outside the range
  Manifest = 5,            // manifest missing, unreadable, other format version, missing fields
  Artifact = 6,            // artifact missing, truncated or corrupt
  BackendUnavailable = 7,  // backend not built in, or not usable on this machine
  Checkpoint = 8,          // checkpoint keys or shapes don't fit (Python side)
  InputValue = 9,          // an input's content is invalid
  Runtime = 10,            // the backend failed while running
  Device = 11,             // no usable CUDA device / driver
  Version = 12,            // artifact built for another version or GPU
};

const char* error_code_name(ErrorCode code) noexcept;

// `text` with every byte sequence that is not valid UTF-8 replaced by U+FFFD, so a message
// that quotes a file's bytes (a manifest, a path) can always become a Python str.
std::string valid_utf8(std::string_view text);

class Error : public std::runtime_error {
 public:
  // The message is stored as valid UTF-8 (see valid_utf8).
  Error(ErrorCode code, const std::string& message)
      : std::runtime_error(valid_utf8(message)), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace kiln
