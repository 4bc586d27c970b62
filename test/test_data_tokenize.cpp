// `pretrain tokenize` end to end: text / lines / JSONL files to train/val shards.
#include <filesystem>
#include <fstream>
#include <random>

#include "data/bpe_tokenizer.h"
#include "data/byte_tokenizer.h"
#include "data/shard.h"
#include "data/tokenize_pipeline.h"
#include "test/catch.h"
#include "test/temp_dir.h"

namespace fs = std::filesystem;
using namespace pt::data;

using pt::test::TempDir;

namespace {

// All tokens of the shards, in order.
std::vector<int32_t> concat(const std::vector<std::string>& shards) {
  std::vector<int32_t> all;
  for (const auto& s : shards) {
    const auto t = read_shard(s);
    all.insert(all.end(), t.begin(), t.end());
  }
  return all;
}

}  // namespace

TEST_CASE("tokenize text files into shards", "[data]") {
  TempDir dir;
  const std::string a = "First document.\nIt has two lines.\n";
  const std::string b = "Second document \xE2\x80\x94 with a dash.";
  ByteTokenizer tok;
  TokenizeOptions opt;
  opt.inputs = {dir.write("a.txt", a), dir.write("b.txt", b), dir.write("empty.txt", "")};
  opt.output_dir = dir.file("out");
  opt.shard_tokens = 16;
  opt.threads = 2;
  const TokenizeSummary sum = tokenize_to_shards(tok, opt);
  CHECK(sum.documents == 2);  // the empty file is no document
  CHECK(sum.train_tokens == static_cast<int64_t>(a.size() + b.size() + 2));
  CHECK(sum.text_bytes == static_cast<int64_t>(a.size() + b.size()));
  CHECK(sum.bytes_per_token() == 1.0);
  REQUIRE(sum.train_shards.size() == (a.size() + b.size() + 2 + 15) / 16);
  CHECK(sum.val_shards.empty());
  CHECK(fs::path(sum.train_shards[0]).filename() == "train_000000.bin");
  for (size_t i = 0; i + 1 < sum.train_shards.size(); ++i) CHECK(read_shard_header(sum.train_shards[i]).tokens == 16);
  // Each document is preceded by the separator, and documents run on across shard boundaries.
  std::vector<int32_t> expected = {256};
  for (unsigned char c : a) expected.push_back(c);
  expected.push_back(256);
  for (unsigned char c : b) expected.push_back(c);
  CHECK(concat(sum.train_shards) == expected);
  CHECK(read_shard_header(sum.train_shards[0]).vocab_size == 257);

  // Existing shards are not overwritten or mixed with new ones.
  REQUIRE_THROWS_AS(tokenize_to_shards(tok, opt), std::runtime_error);
}

TEST_CASE("tokenize JSONL with a validation split, any thread count gives the same shards", "[data]") {
  TempDir dir;
  const BpeTokenizer tok = BpeTokenizer::load(std::string(PRETRAIN_SOURCE_DIR) + "/test/data/tokenizer.json");
  std::string jsonl;
  std::vector<std::string> docs;
  for (int i = 0; i < 200; ++i) {
    docs.push_back("the lower inn number " + std::to_string(i) + (i % 7 == 0 ? "\n\xF0\x9F\x98\x80" : ""));
    jsonl += nlohmann::json{{"id", i}, {"body", docs.back()}}.dump() + "\n";
    if (i % 50 == 0) jsonl += "\n";  // blank lines are skipped
  }
  const std::string input = dir.write("docs.jsonl", jsonl);
  TokenizeSummary sums[2];
  for (int run = 0; run < 2; ++run) {
    TokenizeOptions opt;
    opt.inputs = {input};
    opt.output_dir = dir.file("out" + std::to_string(run));
    opt.format = TextFormat::kJsonl;
    opt.text_field = "body";
    opt.shard_tokens = 500;
    opt.val_fraction = 0.1;
    opt.threads = run == 0 ? 1 : 3;
    sums[run] = tokenize_to_shards(tok, opt);
  }
  const TokenizeSummary& s = sums[0];
  CHECK(s.documents == 200);
  CHECK(s.val_documents > 5);
  CHECK(s.val_documents < 40);
  CHECK(!s.val_shards.empty());
  CHECK(s.train_tokens + s.val_tokens == s.text_tokens + 200);
  CHECK(concat(sums[0].train_shards) == concat(sums[1].train_shards));
  CHECK(concat(sums[0].val_shards) == concat(sums[1].val_shards));
  CHECK(sums[0].val_documents == sums[1].val_documents);

  // Decoding the two splits gives back every document exactly once.
  std::string decoded = tok.decode(concat(s.train_shards)) + tok.decode(concat(s.val_shards));
  size_t found = 0;
  for (const std::string& d : docs) found += decoded.find("<|endoftext|>" + d + "<|endoftext|>") != std::string::npos ||
                                             decoded.ends_with("<|endoftext|>" + d);
  CHECK(found == docs.size());
  CHECK(decoded.size() == s.text_bytes + 200 * std::string("<|endoftext|>").size());
}

TEST_CASE("tokenize: long text is chunked without changing its tokens, and bad input is named", "[data]") {
  TempDir dir;
  const BpeTokenizer tok = BpeTokenizer::load(std::string(PRETRAIN_SOURCE_DIR) + "/test/data/tokenizer.json");
  std::string text;
  for (int i = 0; i < 60000; ++i) text += i % 13 == 0 ? "the end.\n\n" : "the lower  line " + std::to_string(i) + "\n";
  REQUIRE(text.size() > (size_t{1} << 20));  // more than one reader chunk
  TokenizeOptions opt;
  opt.inputs = {dir.write("big.txt", text)};
  opt.output_dir = dir.file("out");
  opt.threads = 2;
  const TokenizeSummary s = tokenize_to_shards(tok, opt);
  std::vector<int32_t> expected = {266};
  const auto ids = tok.encode_ordinary(text);
  expected.insert(expected.end(), ids.begin(), ids.end());
  CHECK(concat(s.train_shards) == expected);

  TokenizeOptions bad = opt;
  bad.inputs = {dir.write("bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": 1}\n")};
  bad.output_dir = dir.file("out2");
  bad.format = TextFormat::kJsonl;
  std::string msg;
  try {
    tokenize_to_shards(tok, bad);
  } catch (const std::runtime_error& e) {
    msg = e.what();
  }
  CHECK(msg.find("bad.jsonl:2: no string field \"text\"") != std::string::npos);

  bad.format = TextFormat::kText;
  bad.separator = "<|unknown|>";
  REQUIRE_THROWS_AS(tokenize_to_shards(tok, bad), std::invalid_argument);
}
