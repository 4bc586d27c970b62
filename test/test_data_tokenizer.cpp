// Tokenizers: byte-level, the GPT-2 pre-tokenizer, BPE (Hugging Face tokenizer.json) and training.
#include <filesystem>
#include <random>

#include "data/bpe_tokenizer.h"
#include "data/bpe_trainer.h"
#include "data/byte_tokenizer.h"
#include "data/pretokenize.h"
#include "test/catch.h"

namespace fs = std::filesystem;
using namespace pt::data;

namespace {

const std::string kFixture = std::string(PRETRAIN_SOURCE_DIR) + "/test/data/tokenizer.json";

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : pretokenize(text)) out.emplace_back(p);
  return out;
}

// Texts that exercise every class: ASCII, Latin with combining marks, CJK, emoji with skin-tone
// modifiers and ZWJ sequences, Unicode spaces and numbers, contractions, control characters.
const std::vector<std::string> kSamples = {
    "",
    "Hello, world! It's 2024 and we're testing they'll've.",
    "  leading and trailing spaces  \n\n\tand tabs\r\n",
    "caf\xC3\xA9 vs cafe\xCC\x81 (combining acute)",
    "\xE4\xB8\xAD\xE6\x96\x87\xE6\xB5\x8B\xE8\xAF\x95 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",
    "emoji \xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",
    "nbsp\xC2\xA0here \xE3\x80\x80ideographic space, arabic \xD9\xA3\xD9\xA4 and roman \xE2\x85\xAB",
    "<|endoftext|> inside text",
    std::string("nul\0byte and \x01\x7f", 16),
};

}  // namespace

TEST_CASE("byte tokenizer round trip", "[data]") {
  ByteTokenizer tok;
  CHECK(tok.vocab_size() == 257);
  CHECK(tok.special_token("<|endoftext|>") == 256);
  for (const std::string& s : kSamples) CHECK(tok.decode(tok.encode_ordinary(s)) == s);
  const std::string invalid = "\xFF\xC3(\x80\xED\xA0\x80";
  CHECK(tok.decode(tok.encode_ordinary(invalid)) == invalid);
  CHECK(tok.encode("a<|endoftext|>b") == std::vector<int32_t>{97, 256, 98});
  CHECK(tok.encode_ordinary("a<|").size() == 3);
  REQUIRE_THROWS_AS(tok.decode(std::vector<int32_t>{257}), std::out_of_range);
}

TEST_CASE("GPT-2 pre-tokenizer splits like its regex", "[data]") {
  using V = std::vector<std::string>;
  CHECK(pieces("Hello world") == V{"Hello", " world"});
  CHECK(pieces("I'm here, they're") == V{"I", "'m", " here", ",", " they", "'re"});
  CHECK(pieces("a  b") == V{"a", " ", " b"});            // \s+(?!\S) leaves the last space to " b"
  CHECK(pieces("a \n b") == V{"a", " \n", " b"});
  CHECK(pieces("x\n\ny") == V{"x", "\n", "\n", "y"});    // a lone \n before a letter is \s+ on its own
  CHECK(pieces("end  ") == V{"end", "  "});
  CHECK(pieces("abc123 45") == V{"abc", "123", " 45"});
  CHECK(pieces("hi!!! ?") == V{"hi", "!!!", " ?"});
  CHECK(pieces("'S 'll") == V{"'", "S", " '", "ll"});    // contractions are lower-case only
  CHECK(pieces("caf\xC3\xA9") == V{"caf\xC3\xA9"});       // é is a letter
  CHECK(pieces("\xE2\x85\xAB\xC2\xBD") == V{"\xE2\x85\xAB\xC2\xBD"});  // Ⅻ½ are numbers
  CHECK(pieces("a\xC2\xA0" "b") == V{"a", "\xC2\xA0", "b"});           // NBSP is \s but not the optional ' '
  CHECK(pieces("ab\xFF" "cd") == V{"ab", "\xFF", "cd"});               // an invalid byte is [^\s\p{L}\p{N}]
  SECTION("pieces concatenate to the input and safe cuts change nothing") {
    std::mt19937 rng(7);
    const std::vector<std::string> parts = {"a", "Z", "1", " ", "  ", "\n", "\t", "'", "'s", ".", "\xC3\xA9", "\xE4\xB8\xAD", "\xF0\x9F\x98\x80", "\xFF", "\xC2\xA0"};
    for (int iter = 0; iter < 2000; ++iter) {
      std::string s;
      for (int i = 0, n = rng() % 20; i < n; ++i) s += parts[rng() % parts.size()];
      std::string joined;
      for (const auto& p : pieces(s)) joined += p;
      REQUIRE(joined == s);
      for (size_t cut = 1; cut < s.size(); ++cut) {
        if (!is_safe_cut(s, cut)) continue;
        std::vector<std::string> split = pieces(s.substr(0, cut));
        for (const auto& p : pieces(s.substr(cut))) split.push_back(p);
        REQUIRE(split == pieces(s));
      }
    }
  }
}

// test/data/tokenizer.json: the 256 byte-level characters in GPT-2's order (so ids 0..255 are
// GPT-2's: printable ASCII byte b is b - 33; ' ' is 'Ġ' = 220; 0xC3 is 127, 0xA9 is 102), then the
// hand-written merges, each giving the next id:
//   rank 0 "Ġ t" -> 256   rank 1 "h e" -> 257    rank 2 "Ġt he" -> 258   rank 3 "i n" -> 259
//   rank 4 "l o" -> 260   rank 5 "lo w" -> 261   rank 6 "e r" -> 262     rank 7 "low er" -> 263
//   rank 8 "Ġ low" -> 264 rank 9 "a a" -> 265    and the added token <|endoftext|> = 266.
TEST_CASE("BPE encodes a tokenizer.json as Hugging Face tokenizers does", "[data]") {
  const BpeTokenizer tok = BpeTokenizer::load(kFixture);
  CHECK(tok.vocab_size() == 267);
  CHECK(tok.special_token("<|endoftext|>") == 266);
  using V = std::vector<int32_t>;
  // "the": t(83) h(71) e(68); only (h,e) merges (rank 1): [t, he].
  CHECK(tok.encode("the") == V{83, 257});
  // " the": (Ġ,t) rank 0 first -> Ġt; then (h,e) rank 1 -> he; then (Ġt,he) rank 2 -> Ġthe.
  CHECK(tok.encode(" the") == V{258});
  // " lower": candidates (l,o) r4 and (e,r) r6. r4 -> lo, which makes (lo,w) r5 -> low, which makes
  // (Ġ,low) r8. Next lowest is (e,r) r6 -> er, making (low,er) r7, which beats r8 -> lower. The r8
  // candidate is then stale (Ġ's neighbour is "lower") and no merge is left: [Ġ, lower]. A left-to-
  // right greedy merger would have produced Ġlow + er instead.
  CHECK(tok.encode(" lower") == V{220, 263});
  // Special tokens are split out first; "aaa": the two (a,a) candidates tie on rank, the leftmost wins.
  CHECK(tok.encode("the lower in<|endoftext|>aaa") == V{83, 257, 220, 263, 220, 259, 266, 265, 64});
  CHECK(tok.encode_ordinary("<|e") == V{27, 91, 68});
  // "é" is bytes C3 A9, which have no merge.
  CHECK(tok.encode("\xC3\xA9") == V{127, 102});
  CHECK(tok.encode("Hello world") == V{39, 68, 75, 260, 220, 86, 78, 81, 75, 67});
  CHECK(tok.decode(V{83, 257, 220, 263, 266}) == "the lower<|endoftext|>");
  REQUIRE_THROWS_AS(tok.decode(V{267}), std::out_of_range);
}

TEST_CASE("BPE decode(encode(x)) == x for any bytes", "[data]") {
  const BpeTokenizer tok = BpeTokenizer::load(kFixture);
  for (const std::string& s : kSamples) CHECK(tok.decode(tok.encode_ordinary(s)) == s);
  // Invalid UTF-8 (stray continuation, truncated sequence, overlong, surrogate, 0xFF) is encoded
  // byte by byte like any other bytes, so it round-trips exactly.
  const std::string invalid = "ok\x80\xC3 \xE2\x82 \xC0\xAF \xED\xA0\x80 \xFF the end\xF0\x9F";
  CHECK(tok.decode(tok.encode(invalid)) == invalid);
  std::mt19937 rng(3);
  for (int iter = 0; iter < 200; ++iter) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    REQUIRE(tok.decode(tok.encode_ordinary(s)) == s);
  }
}

TEST_CASE("BPE rejects unsupported or broken tokenizer.json with the file named", "[data]") {
  const auto error = [](const nlohmann::json& j) -> std::string {
    try {
      BpeTokenizer::from_json(j, "my/tokenizer.json");
    } catch (const TokenizerError& e) {
      return e.what();
    }
    return "(no error)";
  };
  const nlohmann::json base = {{"pre_tokenizer", {{"type", "ByteLevel"}}},
                               {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", {"a b"}}}}};
  REQUIRE_NOTHROW(BpeTokenizer::from_json(base, "x"));
  auto j = base;
  j["model"]["type"] = "WordPiece";
  CHECK(error(j).find("my/tokenizer.json: model type 'WordPiece' is not supported") != std::string::npos);
  j = base;
  j["normalizer"] = {{"type", "NFC"}};
  CHECK(error(j).find("normalizer 'NFC'") != std::string::npos);
  j = base;
  j["model"]["merges"] = {"a c"};
  CHECK(error(j).find("merge 0 uses 'c'") != std::string::npos);
  j = base;
  j["model"]["merges"] = nlohmann::json::array({nlohmann::json::array({"a", "b"})});  // the newer pair form
  REQUIRE_NOTHROW(BpeTokenizer::from_json(j, "x"));
  j = base;
  j["model"]["vocab"].erase("ab");
  CHECK(error(j).find("which is not in the vocab") != std::string::npos);
  j = base;
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  CHECK(error(j).find("pre_tokenizer must be ByteLevel") != std::string::npos);
  CHECK(std::string([] {
          try {
            BpeTokenizer::load("/nonexistent/tokenizer.json");
          } catch (const TokenizerError& e) {
            return std::string(e.what());
          }
          return std::string();
        }()).find("/nonexistent/tokenizer.json") != std::string::npos);
}

TEST_CASE("BPE train, save, load gives the same tokenizer", "[data]") {
  PieceCounts counts;
  for (int i = 0; i < 20; ++i) {
    count_pieces("the quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away! ", counts);
    count_pieces("\xE4\xB8\xAD\xE6\x96\x87 text and \xF0\x9F\x98\x80 emoji, numbers 12345 67890\n", counts);
  }
  const BpeTokenizer trained = train_bpe(counts, {300, {"<|endoftext|>"}, false});
  CHECK(trained.vocab_size() == 300);
  CHECK(trained.num_merges() == 43);
  CHECK(trained.special_token("<|endoftext|>") == 299);
  // Training is deterministic.
  CHECK(train_bpe(counts, {300, {"<|endoftext|>"}, false}).to_json() == trained.to_json());

  const fs::path path = fs::temp_directory_path() / ("pt_data_tok_" + std::to_string(std::random_device{}()) + ".json");
  trained.save(path.string());
  const BpeTokenizer loaded = BpeTokenizer::load(path.string());
  fs::remove(path);
  CHECK(loaded.vocab_size() == trained.vocab_size());
  for (const std::string& s : kSamples) {
    CHECK(loaded.encode(s) == trained.encode(s));
    CHECK(loaded.decode(loaded.encode(s)) == s);
  }
  const std::string text = "the quick brown fox jumps over the lazy dog";
  CHECK(trained.encode(text).size() < text.size() / 2);  // the merges compress the training text
  REQUIRE_THROWS_AS(train_bpe(counts, {200, {"<|endoftext|>"}, false}), std::invalid_argument);
}
