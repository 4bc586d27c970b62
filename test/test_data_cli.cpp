// The docs/data.md worked example through the built binary: text -> tokenizer -> shards -> training.
// Only in the CMake build, which defines PRETRAIN_BINARY.
#ifdef PRETRAIN_BINARY

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "data/bpe_tokenizer.h"
#include "data/loader.h"
#include "data/shard.h"
#include "test/catch.h"
#include "test/temp_dir.h"

namespace fs = std::filesystem;
using namespace pt::data;

using pt::test::TempDir;

namespace {

// Runs the binary with `args`; its output goes to log.txt in the temp dir.
int run(const TempDir& dir, const std::string& args) {
  return std::system(("\"" PRETRAIN_BINARY "\" " + args + " >> \"" + dir.file("log.txt") + "\" 2>&1").c_str());
}

}  // namespace

TEST_CASE("cli: text file to tokenizer to shards to a training run", "[data]") {
  TempDir dir;
  {
    std::ofstream corpus(dir.file("corpus.txt"));
    for (int i = 0; i < 400; ++i) {
      corpus << "Line " << i << ": the quick brown fox jumps over the lazy dog, again and again.\n";
    }
  }
  REQUIRE(run(dir, "tokenizer train --vocab-size 300 -o " + dir.file("tokenizer.json") + " " + dir.file("corpus.txt")) == 0);
  REQUIRE(run(dir, "tokenize --tokenizer " + dir.file("tokenizer.json") + " --format lines --val-fraction 0.1 -o " +
                       dir.file("shards") + " " + dir.file("corpus.txt")) == 0);
  const BpeTokenizer tok = BpeTokenizer::load(dir.file("tokenizer.json"));
  CHECK(tok.vocab_size() == 300);
  const auto train = read_shard(dir.file("shards/train_000000.bin"), 300);
  CHECK(tok.decode(train).starts_with("<|endoftext|>Line "));
  CHECK(read_shard_header(dir.file("shards/val_000000.bin")).vocab_size == 300);

  std::ofstream(dir.file("spec.json")) << nlohmann::json{
      {"name", "cli-test"},
      {"model", {{"vocab_size", 300}, {"seq_len", 16}, {"d_model", 16}, {"n_layers", 1}, {"n_heads", 2}}},
      {"data", {{"source", "shards"}, {"train", dir.file("shards/train_*.bin")}, {"val", dir.file("shards/val_*.bin")}}},
      {"training", {{"micro_batch", 2}, {"steps", 2}, {"eval_batches", 1}}}};
  CHECK(run(dir, "train " + dir.file("spec.json") + " --run-dir " + dir.file("run")) == 0);
}

#endif
