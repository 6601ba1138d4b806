#include "kiln/error.h"

#include <cstdint>

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

// UTF-8 as RFC 3629 defines it: no overlong forms, no surrogates, nothing above U+10FFFF.
// Each maximal invalid subsequence becomes one U+FFFD (the Unicode "substitution of maximal
// subparts" practice, which Python's errors="replace" follows too).
std::string valid_utf8(std::string_view text) {
  static const char kReplacement[] = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    }
    size_t good = 0;  // bytes of a valid prefix
    if (len > 0) {
      good = 1;
      while (good < len && i + good < n) {
        const unsigned char b = s[i + good];
        const bool ok = good == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
        if (!ok) break;
        ++good;
      }
    }
    if (len > 0 && good == len) {
      out.append(text.data() + i, len);
      i += len;
    } else {
      out += kReplacement;
      i += good > 0 ? good : 1;
    }
  }
  return out;
}

}  // namespace kiln
