#pragma once
// kiln::Generator: the token generation loop (GPT-2, BART) over decoder (and encoder) graphs
// that take and return their KV cache as one tensor. Greedy, seeded sampling (temperature,
// top-k, top-p) and beam search, with transformers' logits processors and semantics.
// No libtorch or TensorRT type crosses this header; the loop runs any backend, or plain
// functions (tests, custom decoders).
//
// The graph contract (engines/README.md): the KV cache is one float32 tensor laid out
// (layers, 2, batch, heads, seq, head_dim), index 0 keys and 1 values.
//   decoder: input_ids, attention_mask (batch, past + new), position_ids,
//            [encoder_attention_mask], past_key_values (L, 2, batch, H, past, D),
//            [cross_key_values (L, 2, batch, H, source, D)]
//            -> logits (batch, new, vocab) or the last position's only (batch, 1, vocab),
//               present_key_values (L, 2, batch, H, past + new, D)
//   encoder: input_ids, attention_mask (batch, source) -> cross_key_values
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/engine.h"
#include "kiln/tensor.h"

namespace kiln {

// transformers' `early_stopping`: False (a heuristic decides when no running beam can beat
// the finished ones), True (stop once num_beams hypotheses are finished), "never" (the
// canonical beam search: stop only when no running beam can improve, using max_length).
enum class EarlyStopping : int { Heuristic = 0, True = 1, Never = 2 };

// Generation settings, with transformers' GenerationConfig names and semantics. Start from
// Generator::defaults() (the checkpoint's generation_config.json, kept in the manifest) and
// override fields.
struct GenerationOptions {
  // New tokens to generate at most. Unset: max_length - (prompt length) when max_length is
  // set, else 20 (transformers' default), capped at the model's positions.
  std::optional<int64_t> max_new_tokens;
  // Total length limit (decoder-only: prompt + new; encoder-decoder: decoder length
  // including the start token). Used only when max_new_tokens is unset.
  std::optional<int64_t> max_length;
  // EOS is suppressed while the length is below min_length (counted like max_length; for a
  // left-padded batch the padded prompt length counts, as in transformers).
  int64_t min_length = 0;
  // When set (> 0), overrides min_length with prompt length + min_new_tokens (transformers).
  int64_t min_new_tokens = 0;

  bool do_sample = false;
  double temperature = 1.0;  // sampling only; > 0
  int64_t top_k = 50;        // sampling only; 0 disables
  double top_p = 1.0;        // sampling only; in (0, 1], 1 disables
  // Seed of kiln's own random stream (std::mt19937_64): the same seed gives the same tokens
  // on every platform and backend; it does not reproduce torch's random numbers.
  uint64_t seed = 0;

  int64_t num_beams = 1;
  double length_penalty = 1.0;  // finished beam score = sum log p / (generated length ^ length_penalty)
  EarlyStopping early_stopping = EarlyStopping::Heuristic;
  int64_t num_return_sequences = 1;  // beam search: <= num_beams; sampling: samples per prompt

  int64_t no_repeat_ngram_size = 0;
  double repetition_penalty = 1.0;

  std::vector<int64_t> eos_token_ids;           // empty: generate until max_new_tokens
  std::optional<int64_t> pad_token_id;          // unset: the first eos id (transformers)
  std::optional<int64_t> bos_token_id;          // fallback decoder start token
  std::optional<int64_t> decoder_start_token_id;
  std::optional<int64_t> forced_bos_token_id;   // forced as the first generated token (BART)
  std::vector<int64_t> forced_eos_token_ids;    // forced as the last token at max length (BART)

  // Parses a generation_config.json object (absent or null keys keep the defaults above).
  // Throws kiln::Error(Manifest) naming a key with a wrong type; `origin` names the source.
  static GenerationOptions from_json(const std::string& json_text, const std::string& origin = "generation");
};

struct GenerationTimings {
  double encoder_ms = 0;              // encoder-decoder models
  double prefill_ms = 0;              // the prompt's decoder pass
  double time_to_first_token_ms = 0;  // from the call to the first chosen token
  std::vector<double> step_ms;        // each decode step (decoder run + token choice)
  double total_ms = 0;
};

struct GenerationResult {
  // New tokens only, EOS included when generated, no padding. One row per prompt, or
  // num_return_sequences rows per prompt (prompt-major) for beam search and sampling.
  std::vector<std::vector<int64_t>> sequences;
  // Beam search: each returned hypothesis's length-penalised score (transformers'
  // sequences_scores). Empty otherwise.
  std::vector<double> scores;
  GenerationTimings timings;
  int64_t steps = 0;     // decoder runs after the prefill
  bool stopped = false;  // the stream callback asked to stop
};

// Called after each step with the new token of each row (-1 for a row that had already
// finished). Beam search knows its sequences only at the end: it calls this once per
// position of the returned sequences after the search. Return false to stop generating.
using StreamCallback = std::function<bool(const std::vector<int64_t>& tokens)>;

// A graph as a function: inputs and outputs by name, as an Engine runs them.
using RunFn = std::function<std::map<std::string, Tensor>(const std::map<std::string, Tensor>&)>;

// What the loop needs to know about the graphs when they are plain functions.
struct GeneratorConfig {
  std::string name = "generator";  // used in error messages
  int64_t layers = 0, heads = 0, head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_positions = 0;  // longest decoder sequence (and encoder source) the model takes
  bool encoder_decoder = false;
  int64_t max_batch = 0;  // most rows the decoder takes at once (prompts x beams); 0: no limit
  GenerationOptions defaults;
};

class Generator {
 public:
  // Opens a generation engine directory (manifest.json with "kind": "generation" and its
  // graph subdirectories). Throws kiln::Error: Manifest, Artifact, BackendUnavailable, ...
  static std::unique_ptr<Generator> open(const std::string& dir, const EngineOptions& options = {});
  // A generator over plain functions: `encoder` is needed when config.encoder_decoder.
  // Throws kiln::Error(InvalidArgument) for a config that cannot work.
  static std::unique_ptr<Generator> from_functions(RunFn decoder, RunFn encoder, GeneratorConfig config);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  const GeneratorConfig& config() const noexcept;
  // The checkpoint's generation settings: copy, override fields, pass to generate().
  const GenerationOptions& defaults() const noexcept;
  // The engines, when opened from a directory (nullptr otherwise / for a decoder-only model).
  const Engine* decoder_engine() const noexcept;
  const Engine* encoder_engine() const noexcept;

  // prompts: token ids per row (the encoder input for encoder-decoder models). Checks every
  // input and option before running anything; throws kiln::Error (InputValue, InputShape,
  // InvalidArgument) naming what is wrong and what to do. Errors of the graphs propagate
  // unchanged. Safe to call from several threads when the graphs are (engines are).
  GenerationResult generate(const std::vector<std::vector<int64_t>>& prompts, const GenerationOptions& options,
                            const StreamCallback& on_tokens = {}) const;

 private:
  struct Impl;
  explicit Generator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln
