#pragma once
// The small assertion kit of kiln's ctest programs: CHECK(cond) and expect_error(...) count
// checks and failures; main() returns failures != 0.
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "kiln/error.h"

namespace kiln_test {

inline int failures = 0;
inline int checks = 0;

#define CHECK(cond)                                                        \
  do {                                                                     \
    ++kiln_test::checks;                                                   \
    if (!(cond)) {                                                         \
      ++kiln_test::failures;                                               \
      std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);        \
    }                                                                      \
  } while (0)

// Runs f, which must throw kiln::Error with `code` and a message holding every needle.
inline void expect_error(const std::string& label, kiln::ErrorCode code, const std::vector<std::string>& needles,
                         const std::function<void()>& f) {
  ++checks;
  try {
    f();
  } catch (const kiln::Error& e) {
    std::string msg = e.what();
    bool ok = e.code() == code;
    std::string missing;
    for (const auto& n : needles) {
      if (msg.find(n) == std::string::npos) ok = false, missing += " '" + n + "'";
    }
    if (!ok) {
      ++failures;
      std::printf("FAILED %s: got %s error \"%s\", expected %s%s%s\n", label.c_str(), kiln::error_code_name(e.code()),
                  msg.c_str(), kiln::error_code_name(code), missing.empty() ? "" : " naming", missing.c_str());
    } else {
      std::printf("ok     %-40s %s: %s\n", label.c_str(), kiln::error_code_name(code), msg.c_str());
    }
    return;
  } catch (const std::exception& e) {
    ++failures;
    std::printf("FAILED %s: threw a non-kiln exception: %s\n", label.c_str(), e.what());
    return;
  }
  ++failures;
  std::printf("FAILED %s: no error, expected %s\n", label.c_str(), kiln::error_code_name(code));
}

}  // namespace kiln_test
