// C++ tests of kiln::Generator over fake decoders (no engine, no backend).
//   kiln_generate_tests CASE      CASE: see kCases below
// The fake cache (1, 2, rows, 1, seq, 2) records each row's tokens and positions ([0, 0])
// and attention mask ([0, 1]), so the decoder sees exactly the history the loop kept for a
// row: a wrong cache (reordering, padding, positions) changes the tokens.
#include <climits>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "check.h"
#include "kiln/kiln.h"

using kiln::DType;
using kiln::ErrorCode;
using kiln::GenerationOptions;
using kiln::Generator;
using kiln::GeneratorConfig;
using kiln::Tensor;
using Inputs = std::map<std::string, Tensor>;
using Ids = std::vector<int64_t>;

using kiln_test::checks;
using kiln_test::expect_error;
using kiln_test::failures;

namespace {

constexpr int64_t V = 32;

// Deterministic scores from the whole history (and the source for encoder-decoder).
std::vector<float> hash_scores(const Ids& history, const Ids& source) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t t : source) h = (h ^ static_cast<uint64_t>(t + 7)) * 1099511628211ull;
  for (int64_t t : history) h = (h ^ static_cast<uint64_t>(t + 1)) * 1099511628211ull;
  std::vector<float> s(V);
  for (int64_t v = 0; v < V; ++v) {
    s[v] = static_cast<float>(3.0 * std::sin(0.61 * v + static_cast<double>(h % 1000) * 0.013) +
                              0.5 * std::cos(static_cast<double>((h >> 20) % 97) * v));
  }
  return s;
}

struct Fake {
  std::function<std::vector<float>(const Ids&, const Ids&)> scores = hash_scores;
  std::vector<std::vector<Ids>> seen;     // per call, per row: the history behind the last logits
  std::vector<Ids> fed;                   // per call: the input_ids fed (decode steps: one per row)
  std::string problem;                    // the first inconsistency the decoder noticed
  int64_t calls = 0;
  bool last_only = false;                 // logits of the last new position only (a causal LM's)

  kiln::RunFn decoder() {
    return [this](const Inputs& in) { return run(in); };
  }
  static kiln::RunFn encoder() {
    return [](const Inputs& in) {
      const Tensor& ids = in.at("input_ids");
      const Tensor& mask = in.at("attention_mask");
      int64_t rows = ids.shape()[0], S = ids.shape()[1];
      Tensor cross = Tensor::zeros(DType::Float32, {1, 2, rows, 1, S, 2});
      float* c = cross.data<float>();
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t s = 0; s < S; ++s) {
          c[(r * S + s) * 2] = static_cast<float>(ids.data<int64_t>()[r * S + s]);
          c[(r * S + s) * 2 + 1] = static_cast<float>(mask.data<int64_t>()[r * S + s]);
        }
      }
      return Inputs{{"cross_key_values", cross}};
    };
  }

  Inputs run(const Inputs& in) {
    ++calls;
    const Tensor& ids = in.at("input_ids");
    const Tensor& mask = in.at("attention_mask");
    const Tensor& pos = in.at("position_ids");
    const Tensor& past = in.at("past_key_values");
    const int64_t rows = ids.shape()[0], n = ids.shape()[1], P = past.shape()[4], T = P + n;
    if (mask.shape() != std::vector<int64_t>{rows, T} && problem.empty()) problem = "mask shape";
    Tensor present = Tensor::zeros(DType::Float32, {1, 2, rows, 1, T, 2});
    float* pr = present.data<float>();
    const float* pa = past.data<float>();
    auto at = [&](float* base, int64_t k, int64_t r, int64_t t, int64_t len, int64_t rws) {
      return base + (((k * rws + r) * len + t) * 2);
    };
    Tensor logits = Tensor::zeros(DType::Float32, {rows, n, V});
    std::vector<Ids> histories;
    Ids fed_now;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t k = 0; k < 2; ++k) {
        for (int64_t t = 0; t < P; ++t) {
          at(pr, k, r, t, T, rows)[0] = at(const_cast<float*>(pa), k, r, t, P, rows)[0];
          at(pr, k, r, t, T, rows)[1] = at(const_cast<float*>(pa), k, r, t, P, rows)[1];
        }
      }
      Ids source;
      if (in.count("cross_key_values")) {
        const Tensor& cross = in.at("cross_key_values");
        const int64_t S = cross.shape()[4];
        for (int64_t s = 0; s < S; ++s) {
          const float* c = cross.data<float>() + (r * S + s) * 2;
          if (c[1] != 0) source.push_back(static_cast<int64_t>(c[0]));
          if (c[1] != static_cast<float>(in.at("encoder_attention_mask").data<int64_t>()[r * S + s]) && problem.empty()) {
            problem = "cross_key_values and encoder_attention_mask disagree";
          }
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        const int64_t t = P + j;
        const int64_t token = ids.data<int64_t>()[r * n + j];
        const int64_t m = mask.data<int64_t>()[r * T + t];
        at(pr, 0, r, t, T, rows)[0] = static_cast<float>(token);
        at(pr, 0, r, t, T, rows)[1] = static_cast<float>(pos.data<int64_t>()[r * n + j]);
        at(pr, 1, r, t, T, rows)[0] = static_cast<float>(m);
        fed_now.push_back(token);
        Ids history;
        int64_t real = 0;
        for (int64_t u = 0; u <= t; ++u) {
          if (at(pr, 1, r, u, T, rows)[0] == 0) continue;
          if (at(pr, 0, r, u, T, rows)[1] != static_cast<float>(real) && problem.empty()) {
            problem = "row " + std::to_string(r) + ": token at column " + std::to_string(u) + " has position " +
                      std::to_string(at(pr, 0, r, u, T, rows)[1]) + ", expected " + std::to_string(real);
          }
          history.push_back(static_cast<int64_t>(at(pr, 0, r, u, T, rows)[0]));
          ++real;
        }
        std::vector<float> s = scores(history, source);
        std::copy(s.begin(), s.end(), logits.data<float>() + (r * n + j) * V);
        if (j == n - 1) histories.push_back(history);
      }
    }
    seen.push_back(histories);
    fed.push_back(fed_now);
    if (last_only) {
      Tensor last = Tensor::zeros(DType::Float32, {rows, 1, V});
      for (int64_t r = 0; r < rows; ++r) {
        std::copy_n(logits.data<float>() + (r * n + n - 1) * V, V, last.data<float>() + r * V);
      }
      logits = last;
    }
    return {{"logits", logits}, {"present_key_values", present}};
  }
};

GeneratorConfig config(bool encoder_decoder = false) {
  GeneratorConfig c;
  c.name = "fake";
  c.layers = 1, c.heads = 1, c.head_dim = 2, c.vocab_size = V, c.max_positions = 64;
  c.encoder_decoder = encoder_decoder;
  return c;
}

GenerationOptions options(int64_t max_new) {
  GenerationOptions o;
  o.max_new_tokens = max_new;
  return o;
}

// An independent greedy reference over the same score function, with the processors the
// tests use (repetition penalty, no-repeat n-gram, min new tokens).
Ids reference_greedy(const Ids& prompt, const GenerationOptions& o, const Ids& source = {}, int64_t start = -1) {
  Ids history = start >= 0 ? Ids{start} : prompt, out;
  const Ids src = start >= 0 ? prompt : Ids{};
  for (int64_t step = 0; step < *o.max_new_tokens; ++step) {
    std::vector<float> s = hash_scores(history, src.empty() ? source : src);
    if (o.repetition_penalty != 1.0) {
      std::set<int64_t> uniq(history.begin(), history.end());
      for (int64_t t : uniq) s[t] = s[t] < 0 ? s[t] * float(o.repetition_penalty) : s[t] / float(o.repetition_penalty);
    }
    int64_t n = o.no_repeat_ngram_size;
    if (n > 0 && int64_t(history.size()) >= n) {
      for (size_t i = 0; i + n <= history.size(); ++i) {
        if (std::equal(history.end() - (n - 1), history.end(), history.begin() + i)) s[history[i + n - 1]] = -INFINITY;
      }
    }
    if (step < o.min_new_tokens) {
      for (int64_t e : o.eos_token_ids) s[e] = -INFINITY;
    }
    int64_t best = 0;
    for (int64_t v = 1; v < V; ++v) {
      if (s[v] > s[best]) best = v;
    }
    history.push_back(best);
    out.push_back(best);
    if (std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), best) != o.eos_token_ids.end()) break;
  }
  return out;
}

void test_greedy() {
  Fake fake;
  auto gen = Generator::from_functions(fake.decoder(), nullptr, config());
  auto o = options(20);
  auto r = gen->generate({{3, 5, 7}}, o);
  CHECK(r.sequences.size() == 1);
  CHECK(r.sequences[0] == reference_greedy({3, 5, 7}, o));
  CHECK(r.sequences[0].size() == 20);  // no eos: max_new_tokens
  CHECK(r.steps == 19);                // the last token is chosen, never fed
  CHECK(r.timings.step_ms.size() == 19);
  CHECK(r.scores.empty());
  CHECK(fake.problem.empty());
  if (!fake.problem.empty()) std::printf("decoder: %s\n", fake.problem.c_str());

  // A left-padded batch gives each row what it gets alone.
  Fake fake2;
  auto gen2 = Generator::from_functions(fake2.decoder(), nullptr, config());
  auto rb = gen2->generate({{3, 5, 7}, {9}, {1, 2, 3, 4, 5, 6}}, o);
  CHECK(rb.sequences.size() == 3);
  CHECK(rb.sequences[0] == reference_greedy({3, 5, 7}, o));
  CHECK(rb.sequences[1] == reference_greedy({9}, o));
  CHECK(rb.sequences[2] == reference_greedy({1, 2, 3, 4, 5, 6}, o));
  CHECK(fake2.problem.empty());
  if (!fake2.problem.empty()) std::printf("decoder: %s\n", fake2.problem.c_str());

  // A decoder that returns the last position's logits only (GPT-2's since 2026-12-01) generates
  // the same: greedy over a left-padded batch, and 4 beams.
  Fake fake3;
  fake3.last_only = true;
  auto gen3 = Generator::from_functions(fake3.decoder(), nullptr, config());
  CHECK(gen3->generate({{3, 5, 7}, {9}, {1, 2, 3, 4, 5, 6}}, o).sequences == rb.sequences);
  GenerationOptions beams = options(12);
  beams.num_beams = 4;
  Fake fake4;
  auto full = Generator::from_functions(fake4.decoder(), nullptr, config())->generate({{3, 5, 7}, {9, 1}}, beams);
  CHECK(gen3->generate({{3, 5, 7}, {9, 1}}, beams).sequences == full.sequences);
  CHECK(fake3.problem.empty());
  std::printf("ok     greedy (single and left-padded batch of 3; last-position logits too)\n");
}

void test_eos_and_pad() {
  GenerationOptions o = options(12);
  Ids free0 = reference_greedy({3, 5, 7}, o);
  o.eos_token_ids = {free0[2]};  // row 0 ends at its third token
  o.pad_token_id = 31;
  Ids ref0 = reference_greedy({3, 5, 7}, o), ref1 = reference_greedy({2, 2}, o);
  CHECK(ref0.size() == 3 && ref0.back() == free0[2]);
  Fake fake;
  auto gen = Generator::from_functions(fake.decoder(), nullptr, config());
  std::vector<Ids> streamed;
  auto r = gen->generate({{3, 5, 7}, {2, 2}}, o, [&](const Ids& t) {
    streamed.push_back(t);
    return true;
  });
  CHECK(r.sequences[0] == ref0);
  CHECK(r.sequences[1] == ref1);
  // fed[0] is the prompt, fed[k] the k-th chosen token: row 0's eos is fed (as transformers
  // does), then pads; it streams -1 after its eos.
  CHECK(fake.fed.size() >= 5);
  if (fake.fed.size() >= 5) CHECK(fake.fed[3][0] == free0[2] && fake.fed[4][0] == 31);
  CHECK(streamed.size() >= 4);
  if (streamed.size() >= 4) CHECK(streamed[2][0] == free0[2] && streamed[3][0] == -1);
  Ids concat;
  for (const auto& t : streamed) {
    if (t[1] >= 0) concat.push_back(t[1]);
  }
  CHECK(concat == ref1);

  // Stopping from the callback.
  auto stopped = gen->generate({{3, 5, 7}}, options(12), [](const Ids&) { return false; });
  CHECK(stopped.stopped && stopped.sequences[0].size() == 1);

  // Without an eos in reach every row runs to max_new_tokens; with all rows done it stops.
  GenerationOptions one = options(12);
  one.eos_token_ids = {free0[0]};
  auto r1 = gen->generate({{3, 5, 7}}, one);
  CHECK(r1.sequences[0] == Ids{free0[0]} && r1.steps == 0);
  std::printf("ok     eos, pad and streaming\n");
}

void test_min_length() {
  GenerationOptions o = options(10);
  Ids free0 = reference_greedy({4, 4}, o);
  o.eos_token_ids = {free0[0]};
  o.min_new_tokens = 4;
  Fake fake;
  auto gen = Generator::from_functions(fake.decoder(), nullptr, config());
  auto r = gen->generate({{4, 4}}, o);
  CHECK(r.sequences[0] == reference_greedy({4, 4}, o));
  CHECK(r.sequences[0].size() >= 4);
  for (size_t i = 0; i < 4 && i < r.sequences[0].size(); ++i) CHECK(r.sequences[0][i] != free0[0]);
  // min_length counts the prompt (decoder-only): 2 prompt tokens + 4 new = min_length 6.
  GenerationOptions o2 = options(10);
  o2.eos_token_ids = {free0[0]};
  o2.min_length = 6;
  CHECK(gen->generate({{4, 4}}, o2).sequences[0] == r.sequences[0]);
  std::printf("ok     min_new_tokens / min_length\n");
}

void test_processors() {
  Fake fake;
  auto gen = Generator::from_functions(fake.decoder(), nullptr, config());
  GenerationOptions o = options(30);
  o.repetition_penalty = 1.7;
  auto r = gen->generate({{3, 5, 7}}, o);
  CHECK(r.sequences[0] == reference_greedy({3, 5, 7}, o));
  CHECK(r.sequences[0] != reference_greedy({3, 5, 7}, options(30)));

  GenerationOptions n = options(40);
  n.no_repeat_ngram_size = 2;
  auto rn = gen->generate({{3, 5, 3}}, n);
  CHECK(rn.sequences[0] == reference_greedy({3, 5, 3}, n));
  Ids all{3, 5, 3};
  all.insert(all.end(), rn.sequences[0].begin(), rn.sequences[0].end());
  std::set<std::pair<int64_t, int64_t>> bigrams;
  bool repeated = false;
  for (size_t i = 0; i + 1 < all.size(); ++i) repeated |= !bigrams.insert({all[i], all[i + 1]}).second;
  CHECK(!repeated);
  std::printf("ok     repetition_penalty, no_repeat_ngram_size\n");
}

// A decoder whose best first token leads nowhere: greedy takes 1 (p .5) then .34; beam
// search finds 2 (p .4) then 1 (p .9).
std::vector<float> trap_scores(const Ids& h, const Ids&) {
  std::vector<float> p(V, 1e-6f);
  if (h.size() == 1) {
    p[1] = .5f, p[2] = .4f, p[3] = .1f;
  } else if (h.size() == 2 && h[1] == 2) {
    p[1] = .9f, p[4] = .1f;
  } else {
    p[5] = .34f, p[6] = .33f, p[7] = .33f;
  }
  std::vector<float> s(V);
  for (int64_t v = 0; v < V; ++v) s[v] = std::log(p[v]);
  return s;
}

void test_beam() {
  Fake fake;
  fake.scores = trap_scores;
  auto gen = Generator::from_functions(fake.decoder(), nullptr, config());
  GenerationOptions o = options(2);
  o.num_beams = 2;
  o.num_return_sequences = 2;
  auto r = gen->generate({{0}}, o);
  CHECK(r.sequences.size() == 2 && r.scores.size() == 2);
  CHECK(r.sequences[0] == (Ids{2, 1}));
  CHECK(r.sequences[1] == (Ids{1, 5}));
  // log-softmax of the scores above, summed, / generated length (length_penalty 1).
  auto lp = [](const Ids& h, int64_t t) {
    auto s = trap_scores(h, {});
    double z = 0;
    for (float x : s) z += std::exp(double(x));
    return double(s[t]) - std::log(z);
  };
  double want = (lp({0}, 2) + lp({0, 2}, 1)) / 2;
  CHECK(std::fabs(r.scores[0] - want) < 1e-5);
  auto g = gen->generate({{0}}, options(2));
  CHECK(g.sequences[0] == (Ids{1, 5}));

  // Cache reordering: every returned hypothesis's history was seen by the decoder, with the
  // cache of exactly that history (the fake rebuilds it from the cache).
  Fake fake2;
  auto gen2 = Generator::from_functions(fake2.decoder(), nullptr, config());
  GenerationOptions o2 = options(12);
  o2.num_beams = 4;
  o2.num_return_sequences = 3;
  std::vector<Ids> prompts{{3, 5, 7}, {9, 1}};
  auto r2 = gen2->generate(prompts, o2);
  CHECK(r2.sequences.size() == 6);
  CHECK(fake2.problem.empty());
  for (size_t i = 0; i < r2.sequences.size(); ++i) {
    Ids want_h = prompts[i / 3];
    want_h.insert(want_h.end(), r2.sequences[i].begin(), r2.sequences[i].end() - 1);
    bool found = false;
    for (const auto& call : fake2.seen) {
      for (const auto& h : call) found |= h == want_h;
    }
    CHECK(found);
  }
  for (size_t i = 0; i + 1 < 3; ++i) CHECK(r2.scores[i] >= r2.scores[i + 1]);
  // Beam search finds a sequence at least as likely as greedy's (same length, lp 1).
  std::printf("ok     beam search (trap, cache reordering)\n");
}

void test_encoder_decoder() {
  Fake fake;
  auto gen = Generator::from_functions(fake.decoder(), Fake::encoder(), config(true));
  GenerationOptions o = options(10);
  o.decoder_start_token_id = 2;
  auto r = gen->generate({{5, 6, 7}, {8}}, o);
  CHECK(r.sequences[0] == reference_greedy({5, 6, 7}, o, {}, 2));
  CHECK(r.sequences[1] == reference_greedy({8}, o, {}, 2));
  CHECK(fake.problem.empty());
  if (!fake.problem.empty()) std::printf("decoder: %s\n", fake.problem.c_str());
  GenerationOptions b = o;
  b.num_beams = 3;
  auto rb = gen->generate({{5, 6, 7}, {8}}, b);
  CHECK(rb.sequences.size() == 2 && fake.problem.empty());
  // forced BOS / EOS
  GenerationOptions f = o;
  f.forced_bos_token_id = 0;
  f.forced_eos_token_ids = {1};
  f.eos_token_ids = {1};
  auto rf = gen->generate({{5, 6, 7}}, f);
  CHECK(!rf.sequences[0].empty() && rf.sequences[0].front() == 0 && rf.sequences[0].back() == 1);
  CHECK(rf.sequences[0].size() <= 10);
  std::printf("ok     encoder-decoder (greedy, beams, forced bos/eos)\n");
}

void test_sampling() {
  Fake fake;
  auto gen = Generator::from_functions(fake.decoder(), nullptr, config());
  GenerationOptions o = options(24);
  o.do_sample = true;
  o.top_k = 10;
  o.top_p = 0.9;
  o.temperature = 0.8;
  o.seed = 42;
  auto a = gen->generate({{3, 5, 7}, {1}}, o);
  auto b = gen->generate({{3, 5, 7}, {1}}, o);
  CHECK(a.sequences == b.sequences);
  o.seed = 43;
  auto c = gen->generate({{3, 5, 7}, {1}}, o);
  CHECK(a.sequences != c.sequences);
  // top_k 1 is greedy.
  GenerationOptions k1 = options(10);
  k1.do_sample = true;
  k1.top_k = 1;
  CHECK(gen->generate({{3, 5, 7}}, k1).sequences[0] == reference_greedy({3, 5, 7}, options(10)));
  // samples per prompt
  GenerationOptions n = o;
  n.num_return_sequences = 3;
  auto rn = gen->generate({{3, 5, 7}}, n);
  CHECK(rn.sequences.size() == 3 && rn.sequences[0] != rn.sequences[1]);
  std::printf("ok     seeded sampling (same seed same tokens, other seed other tokens)\n");
}

void test_errors() {
  Fake fake;
  GeneratorConfig c = config();
  c.max_batch = 4;
  auto gen = Generator::from_functions(fake.decoder(), nullptr, c);
  auto o = options(5);
  auto with = [&](std::function<void(GenerationOptions&)> f) {
    GenerationOptions x = o;
    f(x);
    return x;
  };
  expect_error("no prompts", ErrorCode::InputValue, {"no prompts"}, [&] { gen->generate({}, o); });
  expect_error("empty prompt", ErrorCode::InputValue, {"prompt 1", "empty"}, [&] { gen->generate({{1}, {}}, o); });
  expect_error("token out of range", ErrorCode::InputValue, {"token id 32", "[0, 32)"}, [&] { gen->generate({{1, 32}}, o); });
  expect_error("negative token", ErrorCode::InputValue, {"token id -1"}, [&] { gen->generate({{-1}}, o); });
  expect_error("prompt too long", ErrorCode::InputShape, {"65 tokens", "64 positions"},
               [&] { gen->generate({Ids(65, 1)}, o); });
  expect_error("past max_positions", ErrorCode::InvalidArgument, {"max_new_tokens", "at most 4"},
               [&] { gen->generate({Ids(60, 1)}, o); });
  expect_error("max_new_tokens 0", ErrorCode::InvalidArgument, {"max_new_tokens is 0"},
               [&] { gen->generate({{1}}, with([](auto& x) { x.max_new_tokens = 0; })); });
  expect_error("num_beams 0", ErrorCode::InvalidArgument, {"num_beams is 0"},
               [&] { gen->generate({{1}}, with([](auto& x) { x.num_beams = 0; })); });
  expect_error("top_p 0", ErrorCode::InvalidArgument, {"top_p"},
               [&] { gen->generate({{1}}, with([](auto& x) { x.do_sample = true, x.top_p = 0; })); });
  expect_error("top_p 1.5", ErrorCode::InvalidArgument, {"top_p"},
               [&] { gen->generate({{1}}, with([](auto& x) { x.top_p = 1.5; })); });
  expect_error("temperature 0", ErrorCode::InvalidArgument, {"temperature"},
               [&] { gen->generate({{1}}, with([](auto& x) { x.do_sample = true, x.temperature = 0; })); });
  expect_error("top_k -1", ErrorCode::InvalidArgument, {"top_k is -1"},
               [&] { gen->generate({{1}}, with([](auto& x) { x.top_k = -1; })); });
  expect_error("num_return_sequences > beams", ErrorCode::InvalidArgument, {"num_return_sequences (3)", "num_beams (2)"},
               [&] { gen->generate({{1}}, with([](auto& x) { x.num_beams = 2, x.num_return_sequences = 3; })); });
  expect_error("batch too large", ErrorCode::InputShape, {"8 rows", "(4)"},
               [&] { gen->generate({{1}, {2}}, with([](auto& x) { x.num_beams = 4; })); });
  expect_error("eos out of range", ErrorCode::InvalidArgument, {"eos_token_id is 99"},
               [&] { gen->generate({{1}}, with([](auto& x) { x.eos_token_ids = {99}; })); });
  auto encdec = Generator::from_functions(fake.decoder(), Fake::encoder(), config(true));
  expect_error("no decoder start", ErrorCode::InvalidArgument, {"decoder_start_token_id"},
               [&] { encdec->generate({{1}}, o); });
  expect_error("no encoder", ErrorCode::InvalidArgument, {"encoder function"},
               [&] { Generator::from_functions(fake.decoder(), nullptr, config(true)); });
  // A decoder that breaks the contract is a Runtime error, not a crash.
  auto broken = Generator::from_functions([](const Inputs&) { return Inputs{}; }, nullptr, config());
  expect_error("decoder without logits", ErrorCode::Runtime, {"'logits'"}, [&] { broken->generate({{1}}, o); });
  auto wrong = Generator::from_functions(
      [](const Inputs& in) {
        int64_t rows = in.at("input_ids").shape()[0];
        return Inputs{{"logits", Tensor::zeros(DType::Float32, {rows, 1, V + 1})},  // prefill has 2 new
                      {"present_key_values", Tensor::zeros(DType::Float32, {1, 2, rows, 1, 1, 2})}};
      },
      nullptr, config());
  expect_error("wrong logits shape", ErrorCode::Runtime, {"logits", "[1, 1, 33]", "expected float32 [1, 2, 32] or [1, 1, 32]"},
               [&] { wrong->generate({{1, 2}}, o); });
  // Defaults from generation_config.json.
  auto d = GenerationOptions::from_json(
      R"({"eos_token_id": [2, 3], "num_beams": 4, "early_stopping": "never", "length_penalty": 2.0,
          "forced_eos_token_id": 2, "pad_token_id": null, "max_length": 142, "no_repeat_ngram_size": 3})");
  CHECK(d.eos_token_ids == (Ids{2, 3}) && d.num_beams == 4 && d.early_stopping == kiln::EarlyStopping::Never);
  CHECK(d.length_penalty == 2.0 && d.forced_eos_token_ids == Ids{2} && !d.pad_token_id && *d.max_length == 142);
  expect_error("bad generation json", ErrorCode::Manifest, {"'num_beams' must be an integer"},
               [&] { GenerationOptions::from_json(R"({"num_beams": "four"})"); });
}

// Options that would wrap around 64-bit arithmetic, or ask for more memory than exists, are
// named InvalidArgument errors before anything runs.
void test_overflow() {
  Fake fake;
  auto gen = Generator::from_functions(fake.decoder(), nullptr, config());  // max_batch 0: no engine limit
  auto with = [&](std::function<void(GenerationOptions&)> f) {
    GenerationOptions x = options(5);
    f(x);
    return x;
  };
  const int64_t big = INT64_MAX;
  expect_error("max_new_tokens 2^63-1", ErrorCode::InvalidArgument, {"max_new_tokens (9223372036854775807)", "at most 61"},
               [&] { gen->generate({{1, 2, 3}}, with([&](auto& x) { x.max_new_tokens = big; })); });
  expect_error("max_length INT64_MIN", ErrorCode::InvalidArgument, {"max_length is -9223372036854775808", "no room"},
               [&] { gen->generate({{1, 2, 3}}, with([&](auto& x) { x.max_new_tokens.reset(), x.max_length = INT64_MIN; })); });
  expect_error("min_new_tokens 2^63-1", ErrorCode::InvalidArgument, {"min_new_tokens is 9223372036854775807", "overflows"},
               [&] { gen->generate({{1, 2, 3}}, with([&](auto& x) { x.min_new_tokens = big; })); });
  expect_error("prompts x num_beams overflows", ErrorCode::InvalidArgument, {"3 prompt(s) x 4611686018427387904", "overflows"},
               [&] { gen->generate({{1}, {2}, {3}}, with([&](auto& x) { x.num_beams = INT64_C(1) << 62; })); });
  expect_error("num_beams near 2^62: memory", ErrorCode::InvalidArgument, {"rows of 32 logits", "more than this machine's memory"},
               [&] { gen->generate({{1}}, with([&](auto& x) { x.num_beams = INT64_C(1) << 40, x.num_return_sequences = 1; })); });
  expect_error("sampling: num_return_sequences x prompts", ErrorCode::InvalidArgument, {"overflows"}, [&] {
    gen->generate({{1}, {2}}, with([&](auto& x) { x.do_sample = true, x.num_return_sequences = big; }));
  });
  GeneratorConfig wide = config();
  wide.layers = INT64_C(1) << 40, wide.heads = INT64_C(1) << 40;
  auto huge = Generator::from_functions(fake.decoder(), nullptr, wide);
  expect_error("cache size overflows", ErrorCode::InvalidArgument, {"more than 2^64 bytes"},
               [&] { huge->generate({{1}}, options(5)); });
  CHECK(fake.calls == 0);  // nothing ran
  // more eos ids than the vocabulary: beam search asks for at most every candidate there is
  GenerationOptions many = options(4);
  many.num_beams = 2;
  for (int64_t i = 0; i < 40; ++i) many.eos_token_ids.push_back(i % V);
  auto r = gen->generate({{3}}, many);
  CHECK(r.sequences.size() == 1);
  std::printf("ok     planner arithmetic is overflow-checked\n");
}

// NaN logits are an error naming the row and the step, not token 0.
void test_nan_logits() {
  Fake fake;
  fake.scores = [](const Ids& h, const Ids& src) {
    std::vector<float> s = hash_scores(h, src);
    if (h.size() >= 4 && h[0] == 9) s[7] = NAN;  // row of prompt {9, ...} from its 4th token on
    return s;
  };
  auto gen = Generator::from_functions(fake.decoder(), nullptr, config());
  expect_error("NaN logits (greedy)", ErrorCode::Runtime, {"logits of row 1 at step 2 are NaN", "1 of 32", "generator 'fake'"},
               [&] { gen->generate({{3, 5}, {9, 1}}, options(8)); });
  expect_error("NaN logits in the prompt's pass", ErrorCode::Runtime, {"logits of row 0 at step 0 are NaN"},
               [&] { gen->generate({{9, 1, 2, 3}}, options(8)); });
  GenerationOptions beams = options(8);
  beams.num_beams = 2;
  expect_error("NaN logits (beam search)", ErrorCode::Runtime, {"at step 2 are NaN"},
               [&] { gen->generate({{9, 1}}, beams); });
  GenerationOptions sample = options(8);
  sample.do_sample = true;
  expect_error("NaN logits (sampling)", ErrorCode::Runtime, {"row 0 at step 2 are NaN"},
               [&] { gen->generate({{9, 1}}, sample); });
  std::printf("ok     NaN logits are refused\n");
}

// The stream callback's own errors (the Python bindings raise one for a callback that
// returns something other than True / False / None) stop generation and propagate as they are.
void test_callback() {
  Fake fake;
  auto gen = Generator::from_functions(fake.decoder(), nullptr, config());
  int calls = 0;
  expect_error("callback error propagates", ErrorCode::InvalidArgument, {"on_tokens returned a list"}, [&] {
    gen->generate({{3, 5}}, options(8), [&](const Ids&) -> bool {
      if (++calls == 2) throw kiln::Error(ErrorCode::InvalidArgument, "on_tokens returned a list");
      return true;
    });
  });
  CHECK(calls == 2);
  GenerationOptions beams = options(4);
  beams.num_beams = 2;
  expect_error("beam callback error propagates", ErrorCode::InvalidArgument, {"stop here"}, [&] {
    gen->generate({{3, 5}}, beams, [](const Ids&) -> bool { throw kiln::Error(ErrorCode::InvalidArgument, "stop here"); });
  });
  std::printf("ok     callback errors propagate\n");
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<void()>> cases = {
      {"greedy", test_greedy},         {"eos_pad", test_eos_and_pad},     {"min_length", test_min_length},
      {"processors", test_processors}, {"beam", test_beam},               {"encoder_decoder", test_encoder_decoder},
      {"sampling", test_sampling},     {"errors", test_errors},           {"overflow", test_overflow},
      {"nan_logits", test_nan_logits}, {"callback", test_callback},
  };
  std::vector<std::string> run;
  if (argc == 2 && cases.count(argv[1])) {
    run.push_back(argv[1]);
  } else if (argc == 1) {
    for (const auto& [name, f] : cases) run.push_back(name);
  } else {
    std::printf("usage: %s [CASE]\n", argv[0]);
    return 2;
  }
  for (const auto& name : run) {
    try {
      cases.at(name)();
    } catch (const std::exception& e) {
      ++failures;
      std::printf("FAILED %s: threw %s\n", name.c_str(), e.what());
    }
  }
  std::printf("%d checks, %d failed\n", checks, failures);
  return failures != 0;
}
