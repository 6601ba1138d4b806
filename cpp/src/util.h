#pragma once
// Small helpers shared by the core sources (not installed).
#include <cstdint>
#include <string>
#include <vector>

namespace kiln::detail {

// The last path component, ignoring trailing slashes: "engines/minilm/" -> "minilm".
std::string base_name(const std::string& path);
// How messages name the engine at `dir`: its directory name, also for "." or "a/b/".
std::string engine_name(const std::string& dir);
std::string join(const std::vector<std::string>& items, const std::string& sep = ", ");
// Levenshtein distance, for "did you mean" suggestions.
size_t edit_distance(const std::string& a, const std::string& b);
// Lowercase hex SHA-256 of a file; throws kiln::Error(Artifact) when it cannot be read.
std::string sha256_file(const std::string& path);
// allow_sha_ni=false forces the portable code (the tests compare both).
std::string sha256_hex(const void* data, size_t size, bool allow_sha_ni = true);
// This machine's physical memory in bytes (0 if unknown).
uint64_t physical_memory_bytes();
// The CPU's model name as /proc/cpuinfo gives it ("" if unknown): what `kiln build` records
// beside the backend it measured fastest (Python reads the same line).
const std::string& cpu_model_name();

}  // namespace kiln::detail
