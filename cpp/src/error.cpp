#include "kiln/error.h"

namespace kiln {

const char* error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::InvalidArgument: return "InvalidArgument";
    case ErrorCode::InputName: return "InputName";
    case ErrorCode::InputDType: return "InputDType";
    case ErrorCode::InputShape: return "InputShape";
    case ErrorCode::Manifest: return "Manifest";
    case ErrorCode::Artifact: return "Artifact";
    case ErrorCode::BackendUnavailable: return "BackendUnavailable";
    case ErrorCode::Checkpoint: return "Checkpoint";
    case ErrorCode::InputValue: return "InputValue";
    case ErrorCode::Runtime: return "Runtime";
    case ErrorCode::Device: return "Device";
    case ErrorCode::Version: return "Version";
  }
  return "Unknown";
}

}  // namespace kiln
