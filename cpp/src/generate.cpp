#include "kiln/generate.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>

#include <nlohmann/json.hpp>

#include "kiln/error.h"
#include "kiln/manifest.h"
#include "util.h"

namespace kiln {

using Json = nlohmann::json;

// ---------------------------------------------------------------------------------------
// GenerationOptions from generation_config.json

GenerationOptions GenerationOptions::from_json(const std::string& json_text, const std::string& origin) {
  Json j;
  try {
    j = json_text.empty() ? Json::object() : Json::parse(json_text);
  } catch (const Json::exception& e) {  // parse_error, or out_of_range for 1e400
    throw Error(ErrorCode::Manifest, origin + ": not valid JSON (" + e.what() + ")");
  }
  auto shown = [](const Json& v) {  // never recursive: see manifest.cpp, brief()
    if (v.is_array()) return "a list of " + std::to_string(v.size()) + " items";
    if (v.is_object()) return "an object with " + std::to_string(v.size()) + " keys";
    std::string t = v.dump(-1, ' ', false, Json::error_handler_t::replace);
    return t.size() > 80 ? t.substr(0, 77) + "..." : t;
  };
  if (j.is_null()) j = Json::object();
  if (!j.is_object()) throw Error(ErrorCode::Manifest, origin + ": must be a JSON object, got " + shown(j));
  auto bad = [&](const std::string& key, const std::string& want) {
    throw Error(ErrorCode::Manifest, origin + ": '" + key + "' must be " + want + ", got " + shown(j[key]) +
                                         "; fix the generation settings (generation_config.json)");
  };
  auto present = [&](const char* key) { return j.contains(key) && !j[key].is_null(); };
  auto fits = [](const Json& v) {  // an integer JSON value that fits int64
    return v.is_number_integer() &&
           !(v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  };
  auto integer = [&](const char* key) -> std::optional<int64_t> {
    if (!present(key)) return std::nullopt;
    if (!fits(j[key])) bad(key, j[key].is_number_integer() ? "an integer that fits 64 bits" : "an integer");
    return j[key].get<int64_t>();
  };
  auto number = [&](const char* key) -> std::optional<double> {
    if (!present(key)) return std::nullopt;
    if (!j[key].is_number()) bad(key, "a number");
    return j[key].get<double>();
  };
  auto boolean = [&](const char* key) -> std::optional<bool> {
    if (!present(key)) return std::nullopt;
    if (!j[key].is_boolean()) bad(key, "true or false");
    return j[key].get<bool>();
  };
  auto ids = [&](const char* key) -> std::optional<std::vector<int64_t>> {
    if (!present(key)) return std::nullopt;
    const Json& v = j[key];
    if (fits(v)) return std::vector<int64_t>{v.get<int64_t>()};
    if (!v.is_array()) bad(key, "an integer or a list of integers");
    std::vector<int64_t> out;
    for (const auto& x : v) {
      if (!fits(x)) bad(key, "an integer or a list of integers");
      out.push_back(x.get<int64_t>());
    }
    return out;
  };

  GenerationOptions o;
  o.max_new_tokens = integer("max_new_tokens");
  o.max_length = integer("max_length");
  if (auto v = integer("min_length")) o.min_length = *v;
  if (auto v = integer("min_new_tokens")) o.min_new_tokens = *v;
  if (auto v = boolean("do_sample")) o.do_sample = *v;
  if (auto v = number("temperature")) o.temperature = *v;
  if (auto v = integer("top_k")) o.top_k = *v;
  if (auto v = number("top_p")) o.top_p = *v;
  if (present("seed")) {
    const Json& v = j["seed"];
    if (v.is_number_unsigned()) {
      o.seed = v.get<uint64_t>();
    } else if (v.is_number_integer()) {
      o.seed = static_cast<uint64_t>(v.get<int64_t>());
    } else {
      bad("seed", "an integer");
    }
  }
  if (auto v = integer("num_beams")) o.num_beams = *v;
  if (auto v = number("length_penalty")) o.length_penalty = *v;
  if (present("early_stopping")) {
    const Json& v = j["early_stopping"];
    if (v.is_boolean()) {
      o.early_stopping = v.get<bool>() ? EarlyStopping::True : EarlyStopping::Heuristic;
    } else if (v.is_string() && v.get<std::string>() == "never") {
      o.early_stopping = EarlyStopping::Never;
    } else {
      bad("early_stopping", "true, false or \"never\"");
    }
  }
  if (auto v = integer("num_return_sequences")) o.num_return_sequences = *v;
  if (auto v = integer("no_repeat_ngram_size")) o.no_repeat_ngram_size = *v;
  if (auto v = number("repetition_penalty")) o.repetition_penalty = *v;
  if (auto v = ids("eos_token_id")) o.eos_token_ids = *v;
  o.pad_token_id = integer("pad_token_id");
  o.bos_token_id = integer("bos_token_id");
  o.decoder_start_token_id = integer("decoder_start_token_id");
  o.forced_bos_token_id = integer("forced_bos_token_id");
  if (auto v = ids("forced_eos_token_id")) o.forced_eos_token_ids = *v;
  return o;
}

// ---------------------------------------------------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// transformers' beam search marks impossible candidates by adding -1e9 (in float32); the
// same constant keeps its comparisons (and so its choices) identical.
constexpr float kBig = 1.0e9f;

std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

// Copies rows of `t` along `axis` (rows[i] -> output row i): expands a tensor per beam once,
// and reorders the KV cache after each beam step.
Tensor gather_rows(const Tensor& t, size_t axis, const std::vector<int64_t>& rows) {
  std::vector<int64_t> shape = t.shape();
  int64_t outer = 1, inner = 1;
  for (size_t i = 0; i < axis; ++i) outer *= shape[i];
  for (size_t i = axis + 1; i < shape.size(); ++i) inner *= shape[i];
  const int64_t in_rows = shape[axis];
  shape[axis] = static_cast<int64_t>(rows.size());
  // uninitialised: every byte is copied below (a zero fill first would double the traffic)
  size_t total = dtype_size(t.dtype());
  for (int64_t d : shape) total *= static_cast<size_t>(d);
  std::shared_ptr<char[]> memory(new char[std::max<size_t>(total, 1)]);
  Tensor out = Tensor::borrow(memory.get(), t.dtype(), shape, memory);
  const size_t bytes = static_cast<size_t>(inner) * dtype_size(t.dtype());
  const char* src = static_cast<const char*>(t.data());
  char* dst = static_cast<char*>(out.data());
  if (bytes == 0) return out;
  for (int64_t o = 0; o < outer; ++o) {
    for (size_t r = 0; r < rows.size(); ++r) {
      std::memcpy(dst + (o * static_cast<int64_t>(rows.size()) + static_cast<int64_t>(r)) * bytes,
                  src + (o * in_rows + rows[r]) * bytes, bytes);
    }
  }
  return out;
}

bool is_identity(const std::vector<int64_t>& rows) {
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] != static_cast<int64_t>(i)) return false;
  }
  return true;
}

// uint64 -> [0, 1) with 53 random bits: the same double on every platform (unlike
// std::uniform_real_distribution, whose algorithm is implementation-defined).
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// First index of the maximum, like torch.argmax.
int64_t argmax(const float* s, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (s[i] > s[best]) best = i;
  }
  return best;
}

// Draws from softmax(s) (entries at -inf have probability 0).
int64_t draw(const float* s, int64_t n, std::mt19937_64& rng) {
  float m = s[argmax(s, n)];
  if (!std::isfinite(m)) return argmax(s, n);
  std::vector<double> p(static_cast<size_t>(n));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += (p[i] = std::exp(static_cast<double>(s[i]) - m));
  double target = uniform01(rng) * sum, acc = 0;
  int64_t last = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] <= 0) continue;
    acc += p[i];
    last = i;
    if (acc > target) return i;
  }
  return last >= 0 ? last : argmax(s, n);
}

void log_softmax(float* s, int64_t n) {
  float m = s[argmax(s, n)];
  if (!std::isfinite(m)) return;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(s[i] - m));
  float lse = static_cast<float>(std::log(sum));
  for (int64_t i = 0; i < n; ++i) s[i] = (s[i] - m) - lse;
}

// Options resolved against the prompts and the model.
struct Plan {
  GenerationOptions o;
  int64_t prompts = 0;    // B
  int64_t expand = 1;     // rows per prompt: beams, or samples per prompt
  int64_t rows = 0;       // B * expand
  int64_t start_len = 0;  // decoder length before the first new token (padded prompt, or 1)
  int64_t max_new = 0;
  int64_t max_length = 0;  // start_len + max_new, transformers' max_length
  int64_t min_length = 0;
  int64_t pad = 0;
  int64_t decoder_start = 0;
  int64_t longest = 0;  // longest prompt (decoder-only: the padded length; encoder: source)
  bool beam = false;
};

// transformers' logits processors, in the order GenerationMixin._get_logits_processor adds them.
class Processors {
 public:
  Processors(const Plan& p, int64_t vocab) : p_(p), vocab_(vocab) {}

  bool is_eos(int64_t t) const {
    return std::find(p_.o.eos_token_ids.begin(), p_.o.eos_token_ids.end(), t) != p_.o.eos_token_ids.end();
  }

  // `history`: the row's token ids so far (decoder-only: the prompt without padding and the
  // generated tokens; encoder-decoder: the start token and the generated tokens).
  // `cur_len`: transformers' input_ids length (padded prompt + generated, or 1 + generated).
  void apply(float* s, const std::vector<int64_t>& history, int64_t cur_len) const {
    const GenerationOptions& o = p_.o;
    if (o.repetition_penalty != 1.0) {
      // Each distinct token once: transformers gathers the scores, then scatters them back.
      std::vector<int64_t> seen(history);
      std::sort(seen.begin(), seen.end());
      seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
      const float pen = static_cast<float>(o.repetition_penalty);
      for (int64_t t : seen) {
        if (t < 0 || t >= vocab_) continue;
        s[t] = s[t] < 0 ? s[t] * pen : s[t] / pen;
      }
    }
    const int64_t n = o.no_repeat_ngram_size;
    const int64_t len = static_cast<int64_t>(history.size());
    if (n > 0 && len >= n) {
      // Ban every token that would complete an n-gram already in the history.
      const int64_t* prefix = history.data() + len - (n - 1);
      for (int64_t i = 0; i + n <= len; ++i) {
        if (std::equal(prefix, prefix + (n - 1), history.data() + i)) {
          int64_t t = history[i + n - 1];
          if (t >= 0 && t < vocab_) s[t] = kNegInf;
        }
      }
    }
    if (cur_len < p_.min_length) {
      for (int64_t t : o.eos_token_ids) s[t] = kNegInf;
    }
    if (o.forced_bos_token_id && cur_len == 1) force(s, {*o.forced_bos_token_id});
    if (!o.forced_eos_token_ids.empty() && cur_len == p_.max_length - 1) force(s, o.forced_eos_token_ids);
  }

  // The sampling warpers: temperature, top-k, top-p (min_tokens_to_keep = 1).
  void warp(float* s) const {
    const GenerationOptions& o = p_.o;
    if (o.temperature != 1.0) {
      const float t = static_cast<float>(o.temperature);
      for (int64_t i = 0; i < vocab_; ++i) s[i] = s[i] / t;
    }
    if (o.top_k > 0) {
      int64_t k = std::min(o.top_k, vocab_);
      std::vector<float> sorted(s, s + vocab_);
      std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<float>());
      float kth = sorted[k - 1];
      for (int64_t i = 0; i < vocab_; ++i) {
        if (s[i] < kth) s[i] = kNegInf;
      }
    }
    if (o.top_p < 1.0) {
      // Ascending order; drop the low tail whose cumulative probability is <= 1 - top_p,
      // always keeping the most likely token.
      std::vector<int64_t> order(static_cast<size_t>(vocab_));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] < s[b]; });
      float m = s[order.back()];
      std::vector<double> p(static_cast<size_t>(vocab_));
      double sum = 0;
      for (int64_t i = 0; i < vocab_; ++i) sum += (p[i] = std::exp(static_cast<double>(s[order[i]]) - m));
      double cum = 0;
      for (int64_t i = 0; i + 1 < vocab_; ++i) {
        cum += p[i] / sum;
        if (cum <= 1.0 - o.top_p) s[order[i]] = kNegInf;
      }
    }
  }

 private:
  void force(float* s, const std::vector<int64_t>& tokens) const {
    std::fill(s, s + vocab_, kNegInf);
    for (int64_t t : tokens) s[t] = 0;
  }
  const Plan& p_;
  int64_t vocab_;
};

// The decoder's state between steps: the KV cache and, per row, the attention mask and the
// next position.
struct DecoderState {
  int64_t rows = 0;
  Tensor past;                             // (L, 2, rows, H, past, D)
  Tensor cross, encoder_mask;              // encoder-decoder: per row
  std::vector<std::vector<int64_t>> mask;  // per row, past + new
  std::vector<int64_t> next_position;      // per row
  int64_t group = 1;                       // consecutive rows sharing one encoder input

  // Row i continues row src[i]; afterwards every `new_group` consecutive rows share an
  // encoder input. The cross keys/values (tens of MB for a long source) are copied only when
  // a row moves to another encoder input: beams reorder within their prompt's group.
  void select(const std::vector<int64_t>& src, int64_t new_group) {
    if (static_cast<int64_t>(src.size()) == rows && is_identity(src)) return;
    past = gather_rows(past, 2, src);
    if (cross.defined()) {
      bool same_inputs = new_group == group;
      for (size_t i = 0; same_inputs && i < src.size(); ++i) {
        same_inputs = src[i] / group == static_cast<int64_t>(i) / new_group;
      }
      if (!same_inputs) {
        cross = gather_rows(cross, 2, src);
        encoder_mask = gather_rows(encoder_mask, 0, src);
      }
    }
    group = new_group;
    std::vector<std::vector<int64_t>> m;
    std::vector<int64_t> pos;
    for (int64_t r : src) m.push_back(mask[r]), pos.push_back(next_position[r]);
    mask = std::move(m);
    next_position = std::move(pos);
    rows = static_cast<int64_t>(src.size());
  }
};

std::optional<DimRange> input_range(const Engine& e, const std::string& input, size_t axis) {
  for (const auto& s : e.inputs()) {
    if (s.name != input || axis >= s.shape.size()) continue;
    const Dim& d = s.shape[axis];
    if (!d.symbolic()) return DimRange{d.size, d.size, d.size, {}};
    auto it = e.manifest().dims.find(d.symbol);
    if (it != e.manifest().dims.end()) return it->second;
  }
  return std::nullopt;
}

}  // namespace

// ---------------------------------------------------------------------------------------

struct Generator::Impl {
  GeneratorConfig cfg;
  RunFn decoder, encoder;
  std::unique_ptr<Engine> decoder_engine, encoder_engine;
  // The engines' dimension ranges (0: no limit beyond max_positions).
  int64_t max_prefill = 0, max_total = 0, max_source = 0;

  [[noreturn]] void fail(ErrorCode code, const std::string& what) const {
    throw Error(code, "generator '" + cfg.name + "': " + what);
  }

  Plan plan(const std::vector<std::vector<int64_t>>& prompts, const GenerationOptions& options) const;
  // `step`: 0 for the prompt's pass, k for the k-th decode step (named in errors).
  std::vector<float> run_decoder(DecoderState& st, const std::vector<int64_t>& ids, int64_t new_len,
                                 const std::vector<int64_t>& positions, int64_t step) const;
  DecoderState prefill(const Plan& p, const std::vector<std::vector<int64_t>>& prompts, std::vector<float>& logits,
                       GenerationTimings& t) const;
  void sample_loop(const Plan& p, const std::vector<std::vector<int64_t>>& prompts, GenerationResult& res,
                   const StreamCallback& cb, Clock::time_point t0) const;
  void beam_loop(const Plan& p, const std::vector<std::vector<int64_t>>& prompts, GenerationResult& res,
                 const StreamCallback& cb, Clock::time_point t0) const;
};

Plan Generator::Impl::plan(const std::vector<std::vector<int64_t>>& prompts, const GenerationOptions& options) const {
  const int64_t V = cfg.vocab_size;
  Plan p;
  p.o = options;
  const GenerationOptions& o = p.o;
  auto bad = [&](const std::string& what) { fail(ErrorCode::InvalidArgument, what); };

  if (prompts.empty()) {
    fail(ErrorCode::InputValue, "no prompts were given; pass at least one prompt (a list of token ids)");
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) {
      fail(ErrorCode::InputValue, "prompt " + std::to_string(i) +
                                      " is empty; give at least one token id (e.g. the BOS token)");
    }
    for (size_t k = 0; k < prompts[i].size(); ++k) {
      int64_t t = prompts[i][k];
      if (t < 0 || t >= V) {
        fail(ErrorCode::InputValue, "prompt " + std::to_string(i) + " has token id " + std::to_string(t) +
                                        " at position " + std::to_string(k) + ", outside the vocabulary [0, " +
                                        std::to_string(V) + "); tokenize with this model's tokenizer");
      }
    }
    p.longest = std::max<int64_t>(p.longest, static_cast<int64_t>(prompts[i].size()));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    int64_t len = static_cast<int64_t>(prompts[i].size());
    if (len > cfg.max_positions) {
      fail(ErrorCode::InputShape, "prompt " + std::to_string(i) + " has " + std::to_string(len) +
                                      " tokens, more than the model's " + std::to_string(cfg.max_positions) +
                                      " positions; shorten (truncate) it");
    }
    int64_t limit = cfg.encoder_decoder ? max_source : max_prefill;
    if (limit > 0 && len > limit) {
      fail(ErrorCode::InputShape, "prompt " + std::to_string(i) + " has " + std::to_string(len) +
                                      " tokens, more than the engine's range allows (" + std::to_string(limit) +
                                      "); shorten it or rebuild the engine with a larger sequence range");
    }
  }

  if (o.num_beams < 1) bad("num_beams is " + std::to_string(o.num_beams) + "; use 1 (greedy/sampling) or more (beam search)");
  p.beam = o.num_beams > 1;
  if (p.beam && o.do_sample) {
    bad("beam sampling (do_sample with num_beams " + std::to_string(o.num_beams) +
        ") is not supported; use do_sample with num_beams 1, or beam search without do_sample");
  }
  if (o.num_return_sequences < 1) {
    bad("num_return_sequences is " + std::to_string(o.num_return_sequences) + "; use 1 or more");
  }
  if (p.beam && o.num_return_sequences > o.num_beams) {
    bad("num_return_sequences (" + std::to_string(o.num_return_sequences) + ") is larger than num_beams (" +
        std::to_string(o.num_beams) + "); beam search returns at most num_beams sequences");
  }
  if (!p.beam && !o.do_sample && o.num_return_sequences > 1) {
    bad("num_return_sequences is " + std::to_string(o.num_return_sequences) +
        " with greedy search, which has one answer per prompt; use num_beams >= num_return_sequences or "
        "do_sample");
  }
  if (o.do_sample && !(o.temperature > 0 && std::isfinite(o.temperature))) {
    bad("temperature is " + num(o.temperature) + " with sampling; use a value > 0 (1 leaves the "
        "distribution as it is), or greedy search (do_sample false)");
  }
  if (o.top_k < 0) bad("top_k is " + std::to_string(o.top_k) + "; use 0 (off) or a positive count");
  if (!(o.top_p > 0 && o.top_p <= 1)) bad("top_p is " + num(o.top_p) + "; use a value in (0, 1] (1 is off)");
  if (!(o.repetition_penalty > 0 && std::isfinite(o.repetition_penalty))) {
    bad("repetition_penalty is " + num(o.repetition_penalty) + "; use a value > 0 (1 is off)");
  }
  if (!std::isfinite(o.length_penalty)) bad("length_penalty must be a finite number");
  if (o.no_repeat_ngram_size < 0) {
    bad("no_repeat_ngram_size is " + std::to_string(o.no_repeat_ngram_size) + "; use 0 (off) or a positive size");
  }
  if (o.min_length < 0 || o.min_new_tokens < 0) bad("min_length and min_new_tokens must be >= 0");
  auto check_id = [&](const std::string& what, int64_t t) {
    if (t < 0 || t >= V) {
      bad(what + " is " + std::to_string(t) + ", outside the vocabulary [0, " + std::to_string(V) + ")");
    }
  };
  for (int64_t t : o.eos_token_ids) check_id("eos_token_id", t);
  for (int64_t t : o.forced_eos_token_ids) check_id("forced_eos_token_id", t);
  if (o.forced_bos_token_id) check_id("forced_bos_token_id", *o.forced_bos_token_id);
  p.pad = o.pad_token_id ? *o.pad_token_id : (o.eos_token_ids.empty() ? 0 : o.eos_token_ids[0]);
  check_id("pad_token_id", p.pad);
  if (cfg.encoder_decoder) {
    auto start = o.decoder_start_token_id ? o.decoder_start_token_id : o.bos_token_id;
    if (!start) {
      bad("this encoder-decoder model has no decoder_start_token_id (nor bos_token_id); set "
          "decoder_start_token_id in the options");
    }
    check_id("decoder_start_token_id", *start);
    p.decoder_start = *start;
  }

  p.start_len = cfg.encoder_decoder ? 1 : p.longest;
  if (o.max_new_tokens) {
    p.max_new = *o.max_new_tokens;
  } else if (o.max_length) {
    if (__builtin_sub_overflow(*o.max_length, p.start_len, &p.max_new)) p.max_new = 0;
    if (p.max_new < 1) {
      bad("max_length is " + std::to_string(*o.max_length) + ", which leaves no room after the " +
          std::to_string(p.start_len) + "-token " + (cfg.encoder_decoder ? "decoder start" : "prompt") +
          "; set max_new_tokens");
    }
  } else {
    p.max_new = std::min<int64_t>(20, cfg.max_positions - p.start_len);  // transformers' default
  }
  if (p.max_new < 1) {
    bad("max_new_tokens is " + std::to_string(p.max_new) + "; use 1 or more");
  }
  // Written as differences: max_new_tokens may be anything up to 2^63 - 1, and the sums
  // would wrap around. start_len <= max_positions (prompts were checked above).
  if (p.max_new > cfg.max_positions - p.start_len) {
    bad("the " + std::string(cfg.encoder_decoder ? "decoder start token" : "longest prompt") + " (" +
        std::to_string(p.start_len) + " tokens) + max_new_tokens (" + std::to_string(p.max_new) +
        ") is more than the model's " + std::to_string(cfg.max_positions) +
        " positions; lower max_new_tokens to at most " + std::to_string(cfg.max_positions - p.start_len) +
        " or shorten the prompt");
  }
  // The longest sequence the decoder is fed is start_len + max_new - 1 (the last token is
  // chosen, never fed).
  if (max_total > 0 && p.max_new - 1 > max_total - p.start_len) {
    bad("the " + std::string(cfg.encoder_decoder ? "decoder start token" : "longest prompt") + " (" +
        std::to_string(p.start_len) + " tokens) + max_new_tokens (" + std::to_string(p.max_new) +
        ") - 1 is more than the decoder engine's sequence range allows (" + std::to_string(max_total) +
        "); lower max_new_tokens to at most " + std::to_string(max_total + 1 - p.start_len) +
        " or rebuild the engine with a larger range");
  }
  p.max_length = p.start_len + p.max_new;  // <= max_positions
  if (o.min_new_tokens > 0) {
    if (__builtin_add_overflow(p.start_len, o.min_new_tokens, &p.min_length)) {
      bad("min_new_tokens is " + std::to_string(o.min_new_tokens) + ", which with the " +
          std::to_string(p.start_len) + "-token start overflows a 64-bit length; use at most max_new_tokens (" +
          std::to_string(p.max_new) + ")");
    }
  } else {
    p.min_length = o.min_length;
  }

  p.prompts = static_cast<int64_t>(prompts.size());
  p.expand = p.beam ? o.num_beams : (o.do_sample ? o.num_return_sequences : 1);
  const std::string rows_text = std::to_string(p.prompts) + " prompt(s) x " + std::to_string(p.expand) +
                                " (num_beams or num_return_sequences)";
  if (__builtin_mul_overflow(p.prompts, p.expand, &p.rows)) {
    bad(rows_text + " overflows a 64-bit row count; use fewer beams / return sequences");
  }
  if (cfg.max_batch > 0 && p.rows > cfg.max_batch) {
    fail(ErrorCode::InputShape,
         rows_text + " = " + std::to_string(p.rows) + " rows, more than the decoder takes at once (" +
         std::to_string(cfg.max_batch) + "); pass fewer prompts per call or rebuild the engine with a larger batch "
         "range");
  }
  // What the loop holds at once, at the longest: the logits of every row (twice for beam
  // search's scores), and the cache going in and coming out of the decoder. Refused when it
  // overflows or exceeds this machine's memory, instead of wrapping around or dying of
  // std::bad_alloc (or the OOM killer) half-way.
  uint64_t logits = 0, cache = 0, total = 0;
  bool overflow = __builtin_mul_overflow(static_cast<uint64_t>(p.rows), static_cast<uint64_t>(V) * 8u, &logits);
  uint64_t per_row = 2 * 4 * 2;  // keys and values, float32, past + present
  for (int64_t f : {cfg.layers, cfg.heads, cfg.head_dim, p.max_length}) {
    overflow = overflow || __builtin_mul_overflow(per_row, static_cast<uint64_t>(f), &per_row);
  }
  overflow = overflow || __builtin_mul_overflow(per_row, static_cast<uint64_t>(p.rows), &cache);
  overflow = overflow || __builtin_add_overflow(logits, cache, &total);
  const uint64_t memory = detail::physical_memory_bytes();
  if (overflow || (memory > 0 && total > memory)) {
    bad(rows_text + " = " + std::to_string(p.rows) + " rows of " + std::to_string(V) + " logits and a " +
        std::to_string(p.max_length) + "-token cache would need " +
        (overflow ? std::string("more than 2^64 bytes") : std::to_string(total >> 20) + " MiB") +
        ", more than this machine's memory (" + std::to_string(memory >> 20) + " MiB); use fewer prompts, beams, "
        "return sequences or new tokens");
  }
  return p;
}

std::vector<float> Generator::Impl::run_decoder(DecoderState& st, const std::vector<int64_t>& ids, int64_t new_len,
                                                const std::vector<int64_t>& positions, int64_t step) const {
  const int64_t rows = st.rows;
  const int64_t total = static_cast<int64_t>(st.mask[0].size());
  std::vector<int64_t> mask;
  mask.reserve(static_cast<size_t>(rows * total));
  for (const auto& m : st.mask) mask.insert(mask.end(), m.begin(), m.end());
  std::map<std::string, Tensor> in;
  in["input_ids"] = Tensor::from_vector(ids, {rows, new_len});
  in["attention_mask"] = Tensor::from_vector(std::move(mask), {rows, total});
  in["position_ids"] = Tensor::from_vector(positions, {rows, new_len});
  in["past_key_values"] = st.past;
  if (cfg.encoder_decoder) {
    in["encoder_attention_mask"] = st.encoder_mask;
    in["cross_key_values"] = st.cross;
  }
  std::map<std::string, Tensor> out = decoder(in);

  const int64_t V = cfg.vocab_size;
  // `alternative`: a second shape the output may have instead (logits: the last position's only).
  auto check = [&](const char* name, const std::vector<int64_t>& want,
                   const std::vector<int64_t>& alternative = {}) -> const Tensor& {
    auto it = out.find(name);
    if (it == out.end()) {
      fail(ErrorCode::Runtime, std::string("the decoder returned no '") + name + "' output; a generation decoder "
                               "returns logits and present_key_values (see kiln/generate.h)");
    }
    const Tensor& t = it->second;
    const bool shaped = t.defined() && (t.shape() == want || (!alternative.empty() && t.shape() == alternative));
    if (!shaped || t.dtype() != DType::Float32) {
      const bool two = !alternative.empty() && alternative != want;
      fail(ErrorCode::Runtime, std::string("the decoder returned '") + name + "' as " +
                                   (t.defined() ? std::string(dtype_name(t.dtype())) + " " + shape_to_string(t.shape())
                                                : std::string("an undefined tensor")) +
                                   ", expected float32 " + shape_to_string(want) +
                                   (two ? " or " + shape_to_string(alternative) : std::string()) +
                                   "; the graph does not follow kiln's generation contract, rebuild the engine");
    }
    return t;
  };
  // Every new position's logits, or (a causal LM's decoder) the last position's only: both end in
  // the row the next token is chosen from.
  const Tensor& logits = check("logits", {rows, new_len, V}, {rows, 1, V});
  const int64_t positions_out = logits.shape()[1];
  st.past = check("present_key_values", {cfg.layers, 2, rows, cfg.heads, total, cfg.head_dim});
  std::vector<float> last(static_cast<size_t>(rows * V));
  const float* src = logits.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = src + (r * positions_out + positions_out - 1) * V;
    // A NaN would make argmax pick token 0 (every comparison with NaN is false) and
    // sampling draw garbage, silently; say so instead.
    bool nan = false;
    for (int64_t v = 0; v < V; ++v) nan |= std::isnan(row[v]);
    if (nan) {
      int64_t count = 0;
      for (int64_t v = 0; v < V; ++v) count += std::isnan(row[v]) ? 1 : 0;
      fail(ErrorCode::Runtime, "the decoder's logits of row " + std::to_string(r) + " at step " + std::to_string(step) +
                                   " are NaN (" + std::to_string(count) + " of " + std::to_string(V) +
                                   "; step 0 is the prompt's pass): the model computed NaN, e.g. an fp16/bf16 "
                                   "overflow or NaN weights; check the engine with `kiln parity`");
    }
    std::memcpy(&last[r * V], row, static_cast<size_t>(V) * sizeof(float));
  }
  return last;
}

// Runs the encoder (encoder-decoder) and the prompt's decoder pass on one row per prompt,
// then repeats rows, cache and logits `expand` times: beams of one prompt start equal.
DecoderState Generator::Impl::prefill(const Plan& p, const std::vector<std::vector<int64_t>>& prompts,
                                      std::vector<float>& logits, GenerationTimings& t) const {
  const int64_t U = p.prompts, V = cfg.vocab_size;
  DecoderState st;
  st.rows = U;
  std::vector<int64_t> ids, positions;
  int64_t new_len = 0;
  if (cfg.encoder_decoder) {
    // Encoder input right-padded (the tokenizer's side for BART); the mask hides the pads.
    const int64_t S = p.longest;
    std::vector<int64_t> enc_ids, enc_mask;
    for (const auto& prompt : prompts) {
      for (int64_t k = 0; k < S; ++k) {
        bool real = k < static_cast<int64_t>(prompt.size());
        enc_ids.push_back(real ? prompt[k] : p.pad);
        enc_mask.push_back(real ? 1 : 0);
      }
    }
    auto t_enc = Clock::now();
    std::map<std::string, Tensor> in;
    in["input_ids"] = Tensor::from_vector(enc_ids, {U, S});
    in["attention_mask"] = Tensor::from_vector(enc_mask, {U, S});
    st.encoder_mask = in["attention_mask"];
    auto out = encoder(in);
    auto it = out.find("cross_key_values");
    std::vector<int64_t> want{cfg.layers, 2, U, cfg.heads, S, cfg.head_dim};
    if (it == out.end() || !it->second.defined() || it->second.dtype() != DType::Float32 ||
        it->second.shape() != want) {
      fail(ErrorCode::Runtime, "the encoder did not return 'cross_key_values' as float32 " + shape_to_string(want) +
                                   "; the graph does not follow kiln's generation contract, rebuild the engine");
    }
    st.cross = it->second;
    t.encoder_ms = ms_since(t_enc);
    new_len = 1;
    ids.assign(static_cast<size_t>(U), p.decoder_start);
    positions.assign(static_cast<size_t>(U), 0);
    st.mask.assign(static_cast<size_t>(U), std::vector<int64_t>{1});
    st.next_position.assign(static_cast<size_t>(U), 1);
  } else {
    // Left padding, so every row's next token is at the same column; positions count real
    // tokens only (cumsum(mask) - 1, 0 at the pads), as transformers' generate does.
    new_len = p.longest;
    for (const auto& prompt : prompts) {
      const int64_t pads = new_len - static_cast<int64_t>(prompt.size());
      std::vector<int64_t> m(static_cast<size_t>(new_len), 0);
      for (int64_t k = 0; k < new_len; ++k) {
        bool real = k >= pads;
        ids.push_back(real ? prompt[k - pads] : p.pad);
        positions.push_back(real ? k - pads : 0);
        m[k] = real ? 1 : 0;
      }
      st.mask.push_back(std::move(m));
      st.next_position.push_back(static_cast<int64_t>(prompt.size()));
    }
  }
  st.past = Tensor::zeros(DType::Float32, {cfg.layers, 2, U, cfg.heads, 0, cfg.head_dim});
  auto t_pre = Clock::now();
  std::vector<float> first = run_decoder(st, ids, new_len, positions, 0);
  t.prefill_ms = ms_since(t_pre);

  if (p.expand == 1) {
    logits = std::move(first);
    return st;
  }
  std::vector<int64_t> src;
  for (int64_t u = 0; u < U; ++u) {
    for (int64_t e = 0; e < p.expand; ++e) src.push_back(u);
  }
  st.select(src, p.expand);
  logits.resize(static_cast<size_t>(p.rows * V));
  for (int64_t r = 0; r < p.rows; ++r) std::memcpy(&logits[r * V], &first[src[r] * V], sizeof(float) * V);
  return st;
}

void Generator::Impl::sample_loop(const Plan& p, const std::vector<std::vector<int64_t>>& prompts,
                                  GenerationResult& res, const StreamCallback& cb, Clock::time_point t0) const {
  const int64_t V = cfg.vocab_size, R = p.rows;
  Processors proc(p, V);
  std::vector<float> logits;
  DecoderState st = prefill(p, prompts, logits, res.timings);

  std::vector<std::vector<int64_t>> history(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    if (cfg.encoder_decoder) {
      history[r] = {p.decoder_start};
    } else {
      history[r] = prompts[r / p.expand];
    }
  }
  res.sequences.assign(static_cast<size_t>(R), {});
  std::vector<bool> running(static_cast<size_t>(R), true);
  std::mt19937_64 rng(p.o.seed);

  Clock::time_point t_run;
  for (int64_t step = 0;; ++step) {
    const int64_t cur_len = p.start_len + step;
    std::vector<int64_t> tokens(static_cast<size_t>(R)), streamed(static_cast<size_t>(R), -1);
    for (int64_t r = 0; r < R; ++r) {
      float* s = &logits[r * V];
      proc.apply(s, history[r], cur_len);
      int64_t t;
      if (p.o.do_sample) {
        proc.warp(s);
        t = draw(s, V, rng);  // finished rows draw too, so a row's stream does not depend on the others
      } else {
        t = argmax(s, V);
      }
      if (!running[r]) t = p.pad;  // finished rows are fed pads until the batch is done
      tokens[r] = t;
      history[r].push_back(t);
      if (running[r]) {
        res.sequences[r].push_back(t);
        streamed[r] = t;
        if (proc.is_eos(t)) running[r] = false;
      }
    }
    if (step == 0) {
      res.timings.time_to_first_token_ms = ms_since(t0);
    } else {
      res.timings.step_ms.push_back(ms_since(t_run));  // decoder run + token choice
    }
    if (cb && !cb(streamed)) {
      res.stopped = true;
      break;
    }
    bool any = std::find(running.begin(), running.end(), true) != running.end();
    if (!any || step + 1 >= p.max_new) break;

    t_run = Clock::now();
    std::vector<int64_t> positions(static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) {
      positions[r] = st.next_position[r]++;
      st.mask[r].push_back(1);
    }
    logits = run_decoder(st, tokens, 1, positions, step + 1);
    ++res.steps;
  }
}

void Generator::Impl::beam_loop(const Plan& p, const std::vector<std::vector<int64_t>>& prompts,
                                GenerationResult& res, const StreamCallback& cb, Clock::time_point t0) const {
  // transformers 5.x GenerationMixin._beam_search (the vectorised version), step by step.
  const int64_t V = cfg.vocab_size, B = p.prompts, NB = p.o.num_beams;
  const GenerationOptions& o = p.o;
  Processors proc(p, V);
  std::vector<float> logits;
  DecoderState st = prefill(p, prompts, logits, res.timings);

  // Keep (eos ids + 1) x beams candidates (at least 2 x beams), so that num_beams of them
  // can continue even when the best ones all end.
  // (At most every token of every beam: a list of more eos ids than the vocabulary has
  // cannot ask for more candidates than exist.)
  const int64_t n_eos = std::min<int64_t>(static_cast<int64_t>(o.eos_token_ids.size()), V);
  const int64_t K = std::min(std::max<int64_t>(2, 1 + n_eos) * NB, NB * V);

  struct Hyp {
    std::vector<int64_t> tokens;  // generated tokens
    float score = 0;
  };
  // Running beams: the first starts at 0, the others at -1e9, so the first step picks
  // continuations of one beam only. Finished slots start empty at -1e9.
  std::vector<std::vector<Hyp>> running(static_cast<size_t>(B), std::vector<Hyp>(static_cast<size_t>(NB)));
  std::vector<std::vector<Hyp>> finished(static_cast<size_t>(B), std::vector<Hyp>(static_cast<size_t>(NB)));
  std::vector<std::vector<bool>> is_finished(static_cast<size_t>(B), std::vector<bool>(static_cast<size_t>(NB), false));
  std::vector<bool> improvable(static_cast<size_t>(B), true);  // is_early_stop_heuristic_unsatisfied
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < NB; ++j) {
      running[b][j].score = j == 0 ? 0.f : -kBig;
      finished[b][j].score = -kBig;
    }
  }
  auto history = [&](int64_t b, const std::vector<int64_t>& tokens) {
    std::vector<int64_t> h = cfg.encoder_decoder ? std::vector<int64_t>{p.decoder_start} : prompts[b];
    h.insert(h.end(), tokens.begin(), tokens.end());
    return h;
  };
  // torch.topk order: larger first; equal values by lower index (torch leaves ties
  // unspecified; they arise only among impossible (-inf / -1e9) candidates).
  auto top = [](const std::vector<float>& v, int64_t k) {
    std::vector<int64_t> idx(v.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) {
      return v[a] > v[b] || (v[a] == v[b] && a < b);
    });
    idx.resize(static_cast<size_t>(k));
    return idx;
  };

  int64_t cur_len = p.start_len;
  Clock::time_point t_run;
  for (int64_t step = 0;; ++step) {
    std::vector<int64_t> src_rows(static_cast<size_t>(B * NB));
    bool all_hit = true;
    const float denom = static_cast<float>(std::pow(static_cast<double>(cur_len + 1 - p.start_len), o.length_penalty));
    for (int64_t b = 0; b < B; ++b) {
      std::vector<float> acc(static_cast<size_t>(NB * V));
      for (int64_t j = 0; j < NB; ++j) {
        float* s = &logits[(b * NB + j) * V];
        log_softmax(s, V);
        proc.apply(s, history(b, running[b][j].tokens), cur_len);
        for (int64_t v = 0; v < V; ++v) acc[j * V + v] = s[v] + running[b][j].score;
      }
      std::vector<int64_t> cand = top(acc, K);
      std::vector<float> cand_logp(static_cast<size_t>(K)), cand_running(static_cast<size_t>(K));
      std::vector<bool> hits(static_cast<size_t>(K));
      std::vector<std::vector<int64_t>> cand_tokens(static_cast<size_t>(K));
      std::vector<int64_t> cand_beam(static_cast<size_t>(K));
      for (int64_t c = 0; c < K; ++c) {
        const int64_t beam = cand[c] / V, token = cand[c] % V;
        cand_beam[c] = beam;
        cand_logp[c] = acc[cand[c]];
        cand_tokens[c] = running[b][beam].tokens;
        cand_tokens[c].push_back(token);
        hits[c] = proc.is_eos(token) || cur_len + 1 >= p.max_length;
        all_hit = all_hit && hits[c];
        cand_running[c] = cand_logp[c] + (hits[c] ? -kBig : 0.f);
      }

      // Finished hypotheses: only the top num_beams candidates may end; scores are divided
      // by (generated length) ^ length_penalty.
      const bool full = o.early_stopping == EarlyStopping::True &&
                        std::all_of(is_finished[b].begin(), is_finished[b].end(), [](bool x) { return x; });
      std::vector<float> merged(static_cast<size_t>(NB + K));
      std::vector<bool> done_now(static_cast<size_t>(K));
      for (int64_t j = 0; j < NB; ++j) merged[j] = finished[b][j].score;
      for (int64_t c = 0; c < K; ++c) {
        done_now[c] = hits[c] && c < NB;
        float s = cand_logp[c] / denom;
        s += full ? -kBig : 0.f;
        s += improvable[b] ? 0.f : -kBig;
        s += done_now[c] ? 0.f : -kBig;
        merged[NB + c] = s;
      }
      std::vector<int64_t> keep = top(merged, NB);
      std::vector<Hyp> fin(static_cast<size_t>(NB));
      std::vector<bool> fin_flag(static_cast<size_t>(NB));
      for (int64_t j = 0; j < NB; ++j) {
        int64_t m = keep[j];
        if (m < NB) {
          fin[j] = finished[b][m];
          fin_flag[j] = is_finished[b][m];
        } else {
          fin[j] = Hyp{cand_tokens[m - NB], merged[m]};
          fin_flag[j] = done_now[m - NB];
        }
      }
      finished[b] = std::move(fin);
      is_finished[b] = std::move(fin_flag);

      // The best num_beams candidates that did not end keep running.
      std::vector<int64_t> next = top(cand_running, NB);
      std::vector<Hyp> run(static_cast<size_t>(NB));
      for (int64_t j = 0; j < NB; ++j) {
        run[j] = Hyp{std::move(cand_tokens[next[j]]), cand_running[next[j]]};
        src_rows[b * NB + j] = b * NB + cand_beam[next[j]];
      }
      running[b] = std::move(run);
    }
    // The cache follows the beams: row b*NB + j now continues row src_rows[...].
    st.select(src_rows, NB);
    ++cur_len;

    // Can a running beam still beat the worst finished one? With length_penalty > 0 and
    // "never", assume it could grow to max_length; otherwise to its current length.
    const int64_t hyp_len =
        (o.early_stopping == EarlyStopping::Never && o.length_penalty > 0) ? p.max_length - p.start_len : cur_len - p.start_len;
    const float hyp_denom = static_cast<float>(std::pow(static_cast<double>(hyp_len), o.length_penalty));
    bool any_improvable = false, all_full = true;
    for (int64_t b = 0; b < B; ++b) {
      const float best = running[b][0].score / hyp_denom;
      float worst = finished[b][0].score;
      for (const auto& h : finished[b]) worst = std::min(worst, h.score);
      bool better = false;
      for (int64_t j = 0; j < NB; ++j) better = better || best > (is_finished[b][j] ? worst : -kBig);
      improvable[b] = improvable[b] && better;
      any_improvable = any_improvable || improvable[b];
      for (bool f : is_finished[b]) all_full = all_full && f;
    }
    const bool open_beam = !(all_full && o.early_stopping == EarlyStopping::True);
    if (step == 0) {
      res.timings.time_to_first_token_ms = ms_since(t0);
    } else {
      res.timings.step_ms.push_back(ms_since(t_run));  // decoder run + beam update
    }
    if (!(any_improvable && open_beam && !all_hit)) break;

    t_run = Clock::now();
    std::vector<int64_t> ids(static_cast<size_t>(B * NB)), positions(static_cast<size_t>(B * NB));
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < NB; ++j) {
        const int64_t r = b * NB + j;
        ids[r] = running[b][j].tokens.back();
        positions[r] = st.next_position[r]++;
        st.mask[r].push_back(1);
      }
    }
    logits = run_decoder(st, ids, 1, positions, step + 1);
    ++res.steps;
  }

  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < o.num_return_sequences; ++j) {
      res.sequences.push_back(finished[b][j].tokens);
      res.scores.push_back(finished[b][j].score);
    }
  }
  if (cb) {
    size_t longest = 0;
    for (const auto& s : res.sequences) longest = std::max(longest, s.size());
    for (size_t k = 0; k < longest; ++k) {
      std::vector<int64_t> tokens;
      for (const auto& s : res.sequences) tokens.push_back(k < s.size() ? s[k] : -1);
      if (!cb(tokens)) {
        res.stopped = true;
        break;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------

Generator::Generator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Generator::~Generator() = default;

const GeneratorConfig& Generator::config() const noexcept { return impl_->cfg; }
const GenerationOptions& Generator::defaults() const noexcept { return impl_->cfg.defaults; }
const Engine* Generator::decoder_engine() const noexcept { return impl_->decoder_engine.get(); }
const Engine* Generator::encoder_engine() const noexcept { return impl_->encoder_engine.get(); }

std::unique_ptr<Generator> Generator::from_functions(RunFn decoder, RunFn encoder, GeneratorConfig config) {
  auto impl = std::make_unique<Impl>();
  auto bad = [&](const std::string& what) {
    throw Error(ErrorCode::InvalidArgument, "generator '" + config.name + "': " + what);
  };
  if (!decoder) bad("no decoder function was given");
  if (config.encoder_decoder && !encoder) bad("an encoder-decoder generator needs an encoder function");
  if (config.layers < 1 || config.heads < 1 || config.head_dim < 1) {
    bad("the cache layout (layers " + std::to_string(config.layers) + ", heads " + std::to_string(config.heads) +
        ", head_dim " + std::to_string(config.head_dim) + ") must be positive");
  }
  if (config.vocab_size < 1) bad("vocab_size must be positive, got " + std::to_string(config.vocab_size));
  if (config.max_positions < 2) bad("max_positions must be at least 2, got " + std::to_string(config.max_positions));
  if (config.max_batch < 0) bad("max_batch must be >= 0 (0: no limit)");
  impl->cfg = std::move(config);
  impl->decoder = std::move(decoder);
  impl->encoder = std::move(encoder);
  return std::unique_ptr<Generator>(new Generator(std::move(impl)));
}

std::unique_ptr<Generator> Generator::open(const std::string& dir, const EngineOptions& options) {
  namespace fs = std::filesystem;
  const std::string name = detail::engine_name(dir);
  const std::string path = (fs::path(dir) / "manifest.json").string();
  const GenerationManifest gm = GenerationManifest::load(dir);
  auto fail = [&](const std::string& what) -> void {
    throw Error(ErrorCode::Manifest, "generator '" + name + "': " + path + ": " + what +
                                         "; rebuild the engine with `kiln build` (see engines/README.md)");
  };

  GeneratorConfig cfg;
  cfg.name = name;
  cfg.layers = gm.cache.layers;
  cfg.heads = gm.cache.heads;
  cfg.head_dim = gm.cache.head_dim;
  cfg.vocab_size = gm.vocab_size;
  cfg.max_positions = gm.max_positions;
  cfg.encoder_decoder = gm.encoder_decoder;
  cfg.defaults = GenerationOptions::from_json(gm.generation, "generator '" + name + "': " + path + ": generation");

  auto impl = std::make_unique<Impl>();
  auto sub = [&](const std::string& graph) { return (fs::path(dir) / gm.graphs.at(graph)).string(); };
  impl->decoder_engine = Engine::open(sub("decoder"), options);
  if (cfg.encoder_decoder) impl->encoder_engine = Engine::open(sub("encoder"), options);

  const Engine& dec = *impl->decoder_engine;
  std::vector<std::string> want{"input_ids", "attention_mask", "position_ids", "past_key_values"};
  if (cfg.encoder_decoder) want.insert(want.end(), {"encoder_attention_mask", "cross_key_values"});
  for (const auto& w : want) {
    if (!input_range(dec, w, 0)) {
      fail("the decoder graph '" + dec.name() + "' has no input '" + w + "'; a generation decoder takes " +
           detail::join(want));
    }
  }
  if (auto r = input_range(dec, "input_ids", 0)) cfg.max_batch = r->max;
  if (auto r = input_range(dec, "input_ids", 1)) impl->max_prefill = r->max;
  if (auto r = input_range(dec, "attention_mask", 1)) impl->max_total = r->max;
  if (impl->encoder_engine) {
    if (auto r = input_range(*impl->encoder_engine, "input_ids", 1)) impl->max_source = r->max;
  }
  if (cfg.max_positions < 2) fail("field 'max_positions' must be at least 2, got " + std::to_string(cfg.max_positions));
  impl->cfg = std::move(cfg);
  impl->decoder = [e = impl->decoder_engine.get()](const std::map<std::string, Tensor>& in) { return e->run(in); };
  if (impl->encoder_engine) {
    impl->encoder = [e = impl->encoder_engine.get()](const std::map<std::string, Tensor>& in) { return e->run(in); };
  }
  return std::unique_ptr<Generator>(new Generator(std::move(impl)));
}

GenerationResult Generator::generate(const std::vector<std::vector<int64_t>>& prompts,
                                     const GenerationOptions& options, const StreamCallback& on_tokens) const {
  auto t0 = Clock::now();
  Plan p = impl_->plan(prompts, options);
  GenerationResult res;
  try {
    if (p.beam) {
      impl_->beam_loop(p, prompts, res, on_tokens, t0);
    } else {
      impl_->sample_loop(p, prompts, res, on_tokens, t0);
    }
  } catch (const std::bad_alloc&) {
    impl_->fail(ErrorCode::Runtime, "out of memory while generating " + std::to_string(p.rows) + " rows of up to " +
                                        std::to_string(p.max_length) + " tokens; use fewer prompts, beams or new tokens");
  }
  res.timings.total_ms = ms_since(t0);
  return res;
}

}  // namespace kiln
