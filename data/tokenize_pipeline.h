// `pretrain tokenize`: text files to train/val shards.
//
// Documents (data/text_reader.h) are encoded in parallel, in input order, with encode_ordinary (so a
// literal "<|endoftext|>" in the text is plain text). Each document is preceded by the separator
// token, as in llm.c, so every shard starts at a document boundary's separator and the model learns
// to predict a document's first token from it. A document goes to the validation split when a hash
// of its index (its position in the input, counting from 0) falls below val_fraction: the split is
// deterministic and independent of the thread count. Shards are filled to shard_tokens each (a
// document may continue in the next shard), named <output_dir>/{train,val}_NNNNNN.bin.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/text_reader.h"
#include "data/tokenizer.h"

namespace pt::data {

struct TokenizeOptions {
  std::vector<std::string> inputs;
  std::string output_dir;
  TextFormat format = TextFormat::kText;
  std::string text_field = "text";          // jsonl
  int64_t shard_tokens = 100'000'000;
  double val_fraction = 0.0;
  int threads = 0;                          // 0 = all cores
  std::string separator = std::string(kEndOfText);  // a special token of the tokenizer; "" = none
  bool progress = false;
};

struct TokenizeSummary {
  int64_t documents = 0, val_documents = 0;
  int64_t train_tokens = 0, val_tokens = 0;  // including separators
  int64_t text_bytes = 0, text_tokens = 0;   // of the documents' text, separators excluded
  std::vector<std::string> train_shards, val_shards;
  int64_t vocab_size = 0;
  double bytes_per_token() const { return text_tokens ? static_cast<double>(text_bytes) / text_tokens : 0.0; }
  std::string to_string() const;  // a few lines for the console
};

// Refuses an output directory that already holds train_*/val_* shards (a glob would mix old and new).
TokenizeSummary tokenize_to_shards(const Tokenizer& tokenizer, const TokenizeOptions& options);

}  // namespace pt::data
