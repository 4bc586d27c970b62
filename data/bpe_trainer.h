// Training a byte-level BPE tokenizer on text.
//
// The corpus is cut into GPT-2 pre-tokenizer pieces and counted; merges are then learnt greedily:
// each step merges the most frequent adjacent pair of tokens within the pieces (ties: the pair of
// smaller ids), until the vocabulary is full or no pair is left. The ids are laid out as in GPT-2:
// 0..255 the single bytes (ordered by their byte-level character), then one id per merge, then the
// special tokens. Training is deterministic: the same corpus gives the same tokenizer.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "data/bpe_tokenizer.h"
#include "data/text_reader.h"

namespace pt::data {

using PieceCounts = std::unordered_map<std::string, int64_t>;

// Adds the pre-tokenizer pieces of `text` to `counts`.
void count_pieces(std::string_view text, PieceCounts& counts);
// Counts the pieces of every document of the reader on `threads` threads (0 = all cores).
PieceCounts count_pieces(DocumentReader& reader, int threads, bool progress);

struct BpeTrainOptions {
  int64_t vocab_size = 0;  // in all: 256 bytes + merges + special tokens
  std::vector<std::string> special_tokens{std::string(kEndOfText)};
  bool progress = false;
};

BpeTokenizer train_bpe(const PieceCounts& counts, const BpeTrainOptions& options);

}  // namespace pt::data
