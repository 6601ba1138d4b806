// Minimal program generating text with libkiln: open a generation engine (GPT-2, BART), run
// kiln::Generator on a prompt of token ids, print the new ids as they arrive.
//   kiln-example-generate ENGINE_DIR [--max-new-tokens N] [--num-beams K] ID [ID ...]
// Token ids in and out: tokenisation is the engine's tokenizer.json (kiln.processing.bpe in
// Python, or the `tokenizers` library in C++ programs that link it).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kiln/kiln.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s ENGINE_DIR [--max-new-tokens N] [--num-beams K] ID [ID ...]\n", argv[0]);
    return 2;
  }
  try {
    auto generator = kiln::Generator::open(argv[1]);  // backend "auto"
    kiln::GenerationOptions options = generator->defaults();  // the engine's generation_config
    std::vector<int64_t> prompt;
    for (int i = 2; i < argc; ++i) {
      std::string arg = argv[i];
      if ((arg == "--max-new-tokens" || arg == "--num-beams") && i + 1 < argc) {
        int64_t value = std::strtoll(argv[++i], nullptr, 10);
        if (arg == "--max-new-tokens") options.max_new_tokens = value;
        else options.num_beams = value;
      } else {
        prompt.push_back(std::strtoll(arg.c_str(), nullptr, 10));
      }
    }
    std::printf("generator %s on %s\n", argv[1], generator->decoder_engine()->backend().c_str());
    auto on_tokens = [](const std::vector<int64_t>& tokens) {
      if (tokens[0] >= 0) std::printf("%lld ", static_cast<long long>(tokens[0]));
      std::fflush(stdout);
      return true;
    };
    kiln::GenerationResult result = generator->generate({prompt}, options, on_tokens);
    std::printf("\n%zu tokens, first after %.1f ms, %.1f ms in all\n", result.sequences[0].size(),
                result.timings.time_to_first_token_ms, result.timings.total_ms);
    return 0;
  } catch (const kiln::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
