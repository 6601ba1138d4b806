#include "kiln/npy.h"

#include <cstring>
#include <fstream>
#include <limits>
#include <optional>

#include "kiln/error.h"

namespace kiln {

namespace {

[[noreturn]] void fail(const std::string& origin, const std::string& what) {
  throw Error(ErrorCode::InvalidArgument, origin + ": " + what);
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

// Where the bytes come from: a file or memory.
class Source {
 public:
  virtual ~Source() = default;
  virtual bool read(void* dst, size_t n) = 0;
  virtual uint64_t remaining() = 0;
};

class FileSource final : public Source {
 public:
  explicit FileSource(std::ifstream& f) : f_(f) {
    f_.seekg(0, std::ios::end);
    std::streamoff end = f_.tellg();
    size_ = end > 0 ? static_cast<uint64_t>(end) : 0;  // -1: not seekable (a directory, a pipe)
    f_.seekg(0, std::ios::beg);
  }
  bool read(void* dst, size_t n) override {
    if (n > remaining()) return false;
    if (!f_.read(static_cast<char*>(dst), static_cast<std::streamsize>(n))) return false;
    pos_ += n;
    return true;
  }
  uint64_t remaining() override { return size_ - pos_; }

 private:
  std::ifstream& f_;
  uint64_t size_ = 0, pos_ = 0;
};

class MemorySource final : public Source {
 public:
  MemorySource(const void* data, size_t size) : p_(static_cast<const char*>(data)), size_(size) {}
  bool read(void* dst, size_t n) override {
    if (n > remaining()) return false;
    if (n) std::memcpy(dst, p_ + pos_, n);
    pos_ += n;
    return true;
  }
  uint64_t remaining() override { return size_ - pos_; }

 private:
  const char* p_;
  size_t size_, pos_ = 0;
};

// The header is "a Python literal expression of a dictionary" (numpy's format spec, NEP 1)
// with exactly the keys 'descr' (a string), 'fortran_order' (True/False) and 'shape' (a
// tuple of non-negative ints). This reads that subset of Python literal syntax.
struct Header {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
};

class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& origin) : s_(text), origin_(origin) {}

  Header parse() {
    Header h;
    bool has_descr = false, has_order = false, has_shape = false;
    skip();
    expect('{');
    skip();
    while (peek() != '}') {
      std::string key = string_literal();
      skip();
      expect(':');
      skip();
      if (key == "descr") {
        if (has_descr) bad("the key 'descr' appears twice");
        has_descr = true;
        h.descr = string_literal();
      } else if (key == "fortran_order") {
        if (has_order) bad("the key 'fortran_order' appears twice");
        has_order = true;
        h.fortran_order = boolean();
      } else if (key == "shape") {
        if (has_shape) bad("the key 'shape' appears twice");
        has_shape = true;
        h.shape = tuple();
      } else {
        bad("has the key '" + key + "'; a .npy header holds exactly 'descr', 'fortran_order' and 'shape'");
      }
      skip();
      if (peek() == ',') {
        ++i_;
        skip();
      } else if (peek() != '}') {
        bad(std::string("expected ',' or '}' at offset ") + std::to_string(i_) + ", found " + shown(peek()));
      }
    }
    ++i_;
    // numpy pads the header with spaces and ends it with a newline.
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
    if (i_ != s_.size()) bad("has bytes after the dictionary (offset " + std::to_string(i_) + ")");
    if (!has_descr || !has_order || !has_shape) {
      bad(std::string("lacks the key '") + (!has_descr ? "descr" : !has_order ? "fortran_order" : "shape") + "'");
    }
    return h;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const { fail(origin_, "the .npy header " + what); }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  static std::string shown(char c) {
    if (c == '\0') return "the end of the header";
    if (c >= 0x20 && c < 0x7f) return std::string("'") + c + "'";
    return "byte " + std::to_string(static_cast<unsigned char>(c));
  }
  void skip() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    if (peek() != c) bad(std::string("expected '") + c + "' at offset " + std::to_string(i_) + ", found " + shown(peek()));
    ++i_;
  }
  std::string string_literal() {
    char q = peek();
    if (q != '\'' && q != '"') bad("expected a quoted string at offset " + std::to_string(i_) + ", found " + shown(q));
    size_t end = s_.find(q, i_ + 1);
    if (end == std::string::npos) bad("has an unterminated string");
    std::string v = s_.substr(i_ + 1, end - i_ - 1);
    if (v.find('\\') != std::string::npos || v.find('\n') != std::string::npos) {
      bad("has a string with an escape or a newline, which no numpy header has");
    }
    i_ = end + 1;
    return v;
  }
  bool boolean() {
    if (s_.compare(i_, 4, "True") == 0) return i_ += 4, true;
    if (s_.compare(i_, 5, "False") == 0) return i_ += 5, false;
    bad("'fortran_order' must be True or False");
  }
  std::vector<int64_t> tuple() {
    if (peek() != '(') bad("'shape' must be a tuple such as (2, 3), found " + shown(peek()));
    ++i_;
    std::vector<int64_t> shape;
    bool trailing_comma = false;
    skip();
    while (peek() != ')') {
      shape.push_back(dimension());
      skip();
      trailing_comma = false;
      if (peek() == ',') {
        ++i_;
        trailing_comma = true;
        skip();
      } else if (peek() != ')') {
        bad("'shape' has " + shown(peek()) + " at offset " + std::to_string(i_) +
            "; its entries must be non-negative integers");
      }
    }
    ++i_;
    // (3) is the int 3 in Python, not a tuple: numpy writes (3,).
    if (shape.size() == 1 && !trailing_comma) bad("'shape' is (" + std::to_string(shape[0]) + "), not a tuple; numpy writes (n,)");
    return shape;
  }
  int64_t dimension() {
    size_t start = i_;
    if (peek() == '-' || peek() == '+') {
      bad("'shape' has the entry " + token(start) + "; shape entries must be non-negative integers");
    }
    int64_t v = 0;
    size_t digits = 0;
    while (peek() >= '0' && peek() <= '9') {
      if (__builtin_mul_overflow(v, int64_t{10}, &v) || __builtin_add_overflow(v, int64_t(peek() - '0'), &v)) {
        bad("'shape' has the entry " + token(start) + ", larger than a 64-bit integer");
      }
      ++i_, ++digits;
    }
    const char next = peek();
    if (digits == 0 || !(next == ',' || next == ')' || next == ' ' || next == '\t' || next == '\n' || next == 'L')) {
      bad("'shape' has the entry " + token(start) + "; shape entries must be non-negative integers");
    }
    if (digits > 1 && s_[start] == '0') bad("'shape' has the entry " + token(start) + " (a leading zero is not a Python int)");
    if (peek() == 'L') ++i_;  // Python 2 longs, as numpy's own reader accepts
    return v;
  }
  std::string token(size_t start) const {
    size_t end = start;
    while (end < s_.size() && s_[end] != ',' && s_[end] != ')' && s_[end] != ' ' && end - start < 24) ++end;
    return "'" + s_.substr(start, end - start) + "'";
  }

  const std::string& s_;
  const std::string& origin_;
  size_t i_ = 0;
};

// numpy refuses headers above 10000 bytes by default (numpy.lib.format, max_header_size)
// as a defence against hostile files; kiln does the same.
constexpr uint32_t kMaxHeader = 10000;

Tensor read_npy(Source& src, const std::string& origin) {
  unsigned char magic[8];
  if (!src.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) fail(origin, "is not a .npy file (no \\x93NUMPY magic)");
  const int major = magic[6], minor = magic[7];
  if (!((major == 1 || major == 2 || major == 3) && minor == 0)) {
    fail(origin, ".npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                     " is not one of 1.0, 2.0, 3.0");
  }
  unsigned char len_bytes[4] = {0, 0, 0, 0};
  if (!src.read(len_bytes, major == 1 ? 2 : 4)) fail(origin, "is truncated in its header length");
  uint32_t header_len = 0;
  for (int i = 3; i >= 0; --i) header_len = header_len << 8 | len_bytes[i];
  if (header_len > kMaxHeader) {
    fail(origin, "has a " + std::to_string(header_len) + "-byte header, more than the " + std::to_string(kMaxHeader) +
                     " bytes kiln (like numpy) reads");
  }
  std::string text(header_len, '\0');
  if (!src.read(text.data(), header_len)) {
    fail(origin, "is truncated: its header says " + std::to_string(header_len) + " bytes, the file has " +
                     std::to_string(src.remaining()));
  }
  Header h = HeaderParser(text, origin).parse();

  std::optional<DType> dtype;
  for (DType c : {DType::Float32, DType::Float16, DType::Int64, DType::Int32, DType::Bool, DType::UInt8}) {
    std::string want = descr(c);
    // '|' (not applicable) for byte-sized types, '<' or '=' (native, little-endian here) otherwise.
    const std::string& d = h.descr;
    bool byte_sized = want[0] == '|';
    if (d.size() == 3 && d.substr(1) == want.substr(1) &&
        (d[0] == '<' || d[0] == '=' || (byte_sized && (d[0] == '|' || d[0] == '>')))) {
      dtype = c;
    }
  }
  if (!dtype) {
    fail(origin, "dtype '" + h.descr + "' is not one kiln reads (float32, float16, int64, int32, bool, uint8; "
                 "little-endian: numpy.ascontiguousarray(x, x.dtype.newbyteorder('<')))");
  }
  if (h.fortran_order) fail(origin, "is in Fortran order; save a C-order array (numpy.ascontiguousarray)");

  // The data must be exactly the header's size: count x item size, checked for overflow.
  uint64_t count = 1, bytes = 0;
  bool overflow = false;
  for (int64_t d : h.shape) overflow = overflow || __builtin_mul_overflow(count, static_cast<uint64_t>(d), &count);
  overflow = overflow || __builtin_mul_overflow(count, static_cast<uint64_t>(dtype_size(*dtype)), &bytes);
  if (overflow) fail(origin, "shape " + shape_to_string(h.shape) + " has more elements than 64 bits can count");
  const uint64_t have = src.remaining();
  if (have != bytes) {
    fail(origin, "has " + std::to_string(have) + " bytes of data, but its header (" + dtype_name(*dtype) + " " +
                     shape_to_string(h.shape) + ") needs exactly " + std::to_string(bytes) +
                     (have < bytes ? ": the file is truncated" : ": the file has trailing bytes"));
  }
  Tensor t = Tensor::zeros(*dtype, h.shape);
  if (bytes && !src.read(t.data(), static_cast<size_t>(bytes))) fail(origin, "could not read its data");
  if (*dtype == DType::Bool) {
    // numpy's bool is one byte that is 0 or 1; anything else is not a bool kiln can pass on.
    const auto* b = static_cast<const unsigned char*>(t.data());
    for (uint64_t i = 0; i < bytes; ++i) {
      if (b[i] > 1) fail(origin, "holds a bool of byte value " + std::to_string(b[i]) + " at element " + std::to_string(i));
    }
  }
  return t;
}

}  // namespace

Tensor load_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot be opened");
  FileSource src(f);
  return read_npy(src, path);
}

Tensor load_npy_from_memory(const void* data, size_t size, const std::string& origin) {
  MemorySource src(data, size);
  return read_npy(src, origin);
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
