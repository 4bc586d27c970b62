// Byte-level BPE in the format of Hugging Face `tokenizer.json` (as used by GPT-2 and many since).
//
// Encoding follows the tokenizers library: added tokens are split out of the text first (leftmost,
// then longest match), every other segment is cut by the GPT-2 pre-tokenizer (data/pretokenize.h),
// each piece's bytes become the GPT-2 byte-level characters, and merges are applied lowest rank
// first (ties: leftmost), exactly as the library's BPE model does. The supported subset of the file
// format is documented in docs/data.md; anything outside it is rejected with a TokenizerError.
#pragma once

#include <array>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "data/tokenizer.h"

namespace pt::data {

// GPT-2's bytes_to_unicode(): the printable byte values map to themselves, the rest (whitespace,
// control, a few Latin-1) to U+0100 onwards, so every byte is a visible character in the vocab.
std::string byte_level_encode(std::string_view bytes);
// The inverse on one token's string; nullopt if a character is not a byte-level character.
std::optional<std::string> byte_level_decode(std::string_view token);

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = true;
};

class BpeTokenizer final : public Tokenizer {
 public:
  struct Options {
    bool add_prefix_space = false;  // pre_tokenizer.add_prefix_space: prepend ' ' to each segment
    bool ignore_merges = false;     // model.ignore_merges: a piece that is in the vocab is one token
    std::optional<int32_t> unk_id;  // model.unk_token: stands for bytes missing from the vocab
    bool fuse_unk = false;
  };

  // vocab[id] is the token's byte-level string ("" for an unused id); merges are pairs of ids in
  // rank order, each of which must concatenate to a token of the vocab. `source` names the origin
  // in error messages.
  BpeTokenizer(std::vector<std::string> vocab, const std::vector<std::pair<int32_t, int32_t>>& merges,
               std::vector<AddedToken> added, Options options, const std::string& source);

  static BpeTokenizer load(const std::string& path);
  static BpeTokenizer from_json(const nlohmann::json& j, const std::string& source);
  // A complete tokenizer.json that the Hugging Face library loads.
  nlohmann::ordered_json to_json() const;
  void save(const std::string& path) const;

  std::vector<int32_t> encode(std::string_view text) const override;
  std::vector<int32_t> encode_ordinary(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(decoded_.size()); }
  std::optional<int32_t> special_token(std::string_view text) const override;
  std::string describe() const override;

  size_t num_merges() const { return merge_list_.size(); }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void encode_segment(std::string_view text, std::vector<int32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;

  std::string source_;
  std::vector<std::string> vocab_;               // id -> byte-level string
  std::vector<std::optional<std::string>> decoded_;  // id -> bytes it decodes to (nullopt: unused id)
  std::unordered_map<std::string, int32_t> ids_;  // byte-level string -> id
  std::array<int32_t, 256> byte_ids_{};          // byte -> id of its single-character token, or -1
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<std::pair<int32_t, int32_t>> merge_list_;
  std::vector<AddedToken> added_;                // longest content first (for leftmost-longest)
  Options options_;
};

}  // namespace pt::data
