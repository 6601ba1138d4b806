#pragma once
// Small helpers shared by the core sources (not installed).
#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>
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

// Moves the whole 2 MiB pages inside these [address, bytes) ranges (merged where they touch or
// lie within 2 MiB of each other) onto transparent huge pages: madvise(MADV_HUGEPAGE), then
// MADV_COLLAPSE (Linux 6.1+), which copies the contents into a huge page in place. A decode
// step streams every weight once, and with 4 KiB pages each 4 KiB costs a TLB miss (README,
// "Decoders: weight layout and linear kernels"). Returns the bytes now on huge pages; 0 where
// the kernel refuses (THP "never", an older kernel, no free huge page), which changes nothing
// but speed. KILN_HUGE_PAGES=0 in the environment turns it off. Stops between pages once
// `stop` is set.
size_t weights_on_huge_pages(std::vector<std::pair<uintptr_t, size_t>> ranges,
                             const std::atomic<bool>* stop = nullptr);

// weights_on_huge_pages on a background thread of low priority, so that opening an engine does
// not wait for it: the copies took 0.2-1.4 s for GPT-2's 475 MB on the Intel Xeon of issue 15,
// the longer when the kernel first had to compact memory for free huge pages. The memory stays
// valid and readable throughout (the kernel swaps each page's mapping under its own locks).
// Destroy it before the memory it moves is freed: the destructor stops it between pages and joins.
class HugePagesInBackground {
 public:
  explicit HugePagesInBackground(std::vector<std::pair<uintptr_t, size_t>> ranges);
  ~HugePagesInBackground();
  HugePagesInBackground(const HugePagesInBackground&) = delete;
  HugePagesInBackground& operator=(const HugePagesInBackground&) = delete;
  // Waits for the thread; the bytes moved onto huge pages.
  size_t wait();

 private:
  std::atomic<bool> stop_{false};
  size_t done_ = 0;
  std::thread thread_;
};

}  // namespace kiln::detail
