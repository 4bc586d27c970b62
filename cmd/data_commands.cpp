// `pretrain tokenize` and `pretrain tokenizer {train,encode}`: text to shards, and BPE training.
#include <cstdio>
#include <memory>
#include <vector>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "cmd/commands.h"
#include "data/bpe_trainer.h"
#include "data/progress.h"
#include "data/tokenize_pipeline.h"
#include "data/tokenizer.h"

namespace pt::cmd {
namespace {

void register_tokenize(CLI::App& app) {
  struct Args {
    std::vector<std::string> inputs;
    std::string output_dir, tokenizer = "byte", format = "text", text_field = "text", eot = std::string(data::kEndOfText);
    int64_t shard_tokens = 100'000'000;
    double val_fraction = 0.0;
    int threads = 0;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand("tokenize", "Tokenize text or JSONL files into train/val token shards");
  sub->add_option("inputs", args->inputs, "Input files")->required()->check(CLI::ExistingFile);
  sub->add_option("-o,--output-dir", args->output_dir, "Directory for train_NNNNNN.bin / val_NNNNNN.bin")->required();
  sub->add_option("--tokenizer", args->tokenizer, "A Hugging Face tokenizer.json, or \"byte\"")->capture_default_str();
  sub->add_option("--format", args->format, "text (a file is a document) | lines (a line is a document) | jsonl")
      ->check(CLI::IsMember({"text", "lines", "jsonl"}))
      ->capture_default_str();
  sub->add_option("--text-field", args->text_field, "jsonl: the field that holds the text")->capture_default_str();
  sub->add_option("--shard-tokens", args->shard_tokens, "Tokens per shard")->capture_default_str();
  sub->add_option("--val-fraction", args->val_fraction, "Fraction of documents for the validation split")
      ->check(CLI::Range(0.0, 0.999999))
      ->capture_default_str();
  sub->add_option("--threads", args->threads, "Encoding threads (0 = all cores)")->capture_default_str();
  sub->add_option("--eot", args->eot, "Special token put before every document (\"none\": no separator)")
      ->capture_default_str();
  sub->callback([args] {
    const auto tokenizer = data::load_tokenizer(args->tokenizer);
    data::TokenizeOptions opt;
    opt.inputs = args->inputs;
    opt.output_dir = args->output_dir;
    opt.format = data::parse_text_format(args->format);
    opt.text_field = args->text_field;
    opt.shard_tokens = args->shard_tokens;
    opt.val_fraction = args->val_fraction;
    opt.threads = args->threads;
    opt.separator = args->eot == "none" ? "" : args->eot;
    opt.progress = data::stderr_is_terminal();
    spdlog::info("tokenizing {} file(s) with the {}", opt.inputs.size(), tokenizer->describe());
    const data::TokenizeSummary sum = data::tokenize_to_shards(*tokenizer, opt);
    std::printf("%s\n", sum.to_string().c_str());
    if (!sum.train_shards.empty()) std::printf("train glob:  %s/train_*.bin\n", opt.output_dir.c_str());
    if (!sum.val_shards.empty()) std::printf("val glob:    %s/val_*.bin\n", opt.output_dir.c_str());
  });
}

void register_tokenizer(CLI::App& app) {
  auto* tok = app.add_subcommand("tokenizer", "Train or try a byte-level BPE tokenizer");
  tok->require_subcommand(1);

  struct TrainArgs {
    std::vector<std::string> inputs;
    std::string output, format = "text", text_field = "text";
    int64_t vocab_size = 0;
    int threads = 0;
    std::vector<std::string> special{std::string(data::kEndOfText)};
  };
  auto targs = std::make_shared<TrainArgs>();
  auto* train = tok->add_subcommand("train", "Train a byte-level BPE tokenizer and save it as tokenizer.json");
  train->add_option("inputs", targs->inputs, "Training text files")->required()->check(CLI::ExistingFile);
  train->add_option("--vocab-size", targs->vocab_size, "Vocabulary size: 256 bytes + merges + special tokens")->required();
  train->add_option("-o,--output", targs->output, "Where to write tokenizer.json")->required();
  train->add_option("--format", targs->format, "text | lines | jsonl")
      ->check(CLI::IsMember({"text", "lines", "jsonl"}))
      ->capture_default_str();
  train->add_option("--text-field", targs->text_field, "jsonl: the field that holds the text")->capture_default_str();
  train->add_option("--threads", targs->threads, "Counting threads (0 = all cores)")->capture_default_str();
  train->add_option("--special", targs->special, "Special tokens, given the last ids")->capture_default_str();
  train->callback([targs] {
    data::DocumentReader reader(targs->inputs, data::parse_text_format(targs->format), targs->text_field);
    const bool progress = data::stderr_is_terminal();
    const data::PieceCounts counts = data::count_pieces(reader, targs->threads, progress);
    spdlog::info("{} distinct pre-tokenizer pieces in {} bytes", counts.size(), reader.bytes_read());
    const data::BpeTokenizer bpe = data::train_bpe(counts, {targs->vocab_size, targs->special, progress});
    bpe.save(targs->output);
    std::printf("wrote %s: vocab %lld (%zu merges)\n", targs->output.c_str(), static_cast<long long>(bpe.vocab_size()),
                bpe.num_merges());
    if (bpe.vocab_size() < targs->vocab_size) {
      spdlog::warn("the corpus ran out of pairs to merge: the vocab is {} rather than {}", bpe.vocab_size(), targs->vocab_size);
    }
  });

  struct EncodeArgs {
    std::string tokenizer = "byte", text;
  };
  auto eargs = std::make_shared<EncodeArgs>();
  auto* encode = tok->add_subcommand("encode", "Print the token ids of a text (special tokens in it are recognised)");
  encode->add_option("--tokenizer", eargs->tokenizer, "A tokenizer.json, or \"byte\"")->capture_default_str();
  encode->add_option("text", eargs->text, "The text")->required();
  encode->callback([eargs] {
    const auto tokenizer = data::load_tokenizer(eargs->tokenizer);
    const std::vector<int32_t> ids = tokenizer->encode(eargs->text);
    for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
    std::printf("\n");
  });
}

}  // namespace

void register_data_commands(CLI::App& app) {
  register_tokenize(app);
  register_tokenizer(app);
}

}  // namespace pt::cmd
