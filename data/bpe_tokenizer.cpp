#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <fstream>
#include <queue>

#include <spdlog/spdlog.h>

#include "data/pretokenize.h"
#include "data/unicode.h"

namespace pt::data {
namespace {

struct ByteLevelTables {
  std::array<uint32_t, 256> to_char{};            // byte -> code point
  std::unordered_map<uint32_t, uint8_t> to_byte;  // code point -> byte
  std::array<std::string, 256> utf8;              // byte -> UTF-8 of its character

  ByteLevelTables() {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      to_char[b] = printable ? b : next++;
      to_byte[to_char[b]] = static_cast<uint8_t>(b);
      append_utf8(utf8[b], to_char[b]);
    }
  }
};

const ByteLevelTables& tables() {
  static const ByteLevelTables t;
  return t;
}

[[noreturn]] void fail(const std::string& source, const std::string& what) {
  throw TokenizerError(source + ": " + what);
}

// The library's Option<String> fields: absent, null or "" all mean unset.
std::string optional_string(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return "";
  return j[key].get<std::string>();
}

}  // namespace

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += tables().utf8[b];
  return out;
}

std::optional<std::string> byte_level_decode(std::string_view token) {
  std::string out;
  for (size_t pos = 0; pos < token.size();) {
    const Utf8Char c = decode_utf8(token, pos);
    auto it = c.cp < 0 ? tables().to_byte.end() : tables().to_byte.find(static_cast<uint32_t>(c.cp));
    if (it == tables().to_byte.end()) return std::nullopt;
    out += static_cast<char>(it->second);
    pos += c.len;
  }
  return out;
}

BpeTokenizer::BpeTokenizer(std::vector<std::string> vocab, const std::vector<std::pair<int32_t, int32_t>>& merges,
                           std::vector<AddedToken> added, Options options, const std::string& source)
    : source_(source), vocab_(std::move(vocab)), added_(std::move(added)), options_(options) {
  int64_t size = static_cast<int64_t>(vocab_.size());
  for (const AddedToken& t : added_) {
    if (t.id < 0) fail(source_, "added token '" + t.content + "' has a negative id");
    if (t.content.empty()) fail(source_, "added token " + std::to_string(t.id) + " is empty");
    size = std::max<int64_t>(size, int64_t{t.id} + 1);
  }
  decoded_.resize(size);
  for (size_t id = 0; id < vocab_.size(); ++id) {
    const std::string& tok = vocab_[id];
    if (tok.empty()) continue;
    if (!ids_.emplace(tok, static_cast<int32_t>(id)).second) fail(source_, "token '" + tok + "' appears twice in the vocab");
    // As the library's ByteLevel decoder: a token that is not all byte-level characters stands for its own UTF-8.
    decoded_[id] = byte_level_decode(tok).value_or(tok);
  }
  for (const AddedToken& t : added_) decoded_[t.id] = t.content;
  // Longest first, so that scanning the list finds the longest match at a position.
  std::stable_sort(added_.begin(), added_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });

  for (int b = 0; b < 256; ++b) {
    auto it = ids_.find(tables().utf8[b]);
    byte_ids_[b] = it == ids_.end() ? -1 : it->second;
  }
  if (options_.unk_id && (*options_.unk_id < 0 || *options_.unk_id >= size)) fail(source_, "unk_token is not in the vocab");

  merge_list_ = merges;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto [a, b] = merges[rank];
    const auto valid = [&](int32_t id) { return id >= 0 && id < static_cast<int32_t>(vocab_.size()) && !vocab_[id].empty(); };
    if (!valid(a) || !valid(b)) fail(source_, "merge " + std::to_string(rank) + " refers to a token outside the vocab");
    auto it = ids_.find(vocab_[a] + vocab_[b]);
    if (it == ids_.end()) {
      fail(source_, "merge " + std::to_string(rank) + " ('" + vocab_[a] + "' '" + vocab_[b] + "') gives '" + vocab_[a] +
                        vocab_[b] + "', which is not in the vocab");
    }
    // A repeated pair keeps its first (lowest) rank, as in the library.
    merges_.emplace(pair_key(a, b), Merge{static_cast<int32_t>(rank), it->second});
  }
}

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw TokenizerError(path + ": cannot open tokenizer file");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    throw TokenizerError(path + ": not valid JSON: " + e.what());
  }
  return from_json(j, path);
}

BpeTokenizer BpeTokenizer::from_json(const nlohmann::json& j, const std::string& source) {
  try {
    if (!j.is_object() || !j.contains("model")) fail(source, "not a tokenizer.json (no \"model\")");
    const auto& model = j.at("model");
    if (model.value("type", std::string("BPE")) != "BPE") {
      fail(source, "model type '" + model.value("type", std::string()) + "' is not supported (only BPE)");
    }
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      fail(source, "normalizer '" + j["normalizer"].value("type", std::string("?")) + "' is not supported (only null)");
    }
    const auto& pre = j.value("pre_tokenizer", nlohmann::json());
    if (!pre.is_object() || pre.value("type", std::string()) != "ByteLevel" || !pre.value("use_regex", true)) {
      fail(source, "pre_tokenizer must be ByteLevel with use_regex (the GPT-2 split)");
    }
    if (!optional_string(model, "continuing_subword_prefix").empty() || !optional_string(model, "end_of_word_suffix").empty()) {
      fail(source, "continuing_subword_prefix / end_of_word_suffix are not supported");
    }
    if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0) {
      fail(source, "BPE dropout is not supported");
    }

    std::vector<std::string> vocab;
    for (const auto& [tok, id_json] : model.at("vocab").items()) {
      const int64_t id = id_json.get<int64_t>();
      if (id < 0 || id >= (int64_t{1} << 31)) fail(source, "vocab id " + std::to_string(id) + " of '" + tok + "' is out of range");
      if (static_cast<size_t>(id) >= vocab.size()) vocab.resize(id + 1);
      if (!vocab[id].empty()) fail(source, "vocab id " + std::to_string(id) + " is used twice");
      if (tok.empty()) fail(source, "the vocab has an empty token");
      vocab[id] = tok;
    }
    std::unordered_map<std::string, int32_t> ids;
    for (size_t id = 0; id < vocab.size(); ++id) {
      if (!vocab[id].empty()) ids[vocab[id]] = static_cast<int32_t>(id);
    }
    const auto id_of = [&](const std::string& tok, size_t rank) {
      auto it = ids.find(tok);
      if (it == ids.end()) fail(source, "merge " + std::to_string(rank) + " uses '" + tok + "', which is not in the vocab");
      return it->second;
    };
    // Merges are "a b" strings (older files) or ["a", "b"] pairs (tokenizers >= 0.20).
    std::vector<std::pair<int32_t, int32_t>> merges;
    const auto& merges_json = model.value("merges", nlohmann::json::array());
    for (size_t rank = 0; rank < merges_json.size(); ++rank) {
      const auto& m = merges_json[rank];
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          fail(source, "merge " + std::to_string(rank) + " '" + s + "' is not two tokens separated by one space");
        }
        a = s.substr(0, space), b = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2) {
        a = m[0].get<std::string>(), b = m[1].get<std::string>();
      } else {
        fail(source, "merge " + std::to_string(rank) + " is neither \"a b\" nor [\"a\", \"b\"]");
      }
      merges.emplace_back(id_of(a, rank), id_of(b, rank));
    }

    Options options;
    options.add_prefix_space = pre.value("add_prefix_space", false);
    options.ignore_merges = model.value("ignore_merges", false);
    options.fuse_unk = model.value("fuse_unk", false);
    if (const std::string unk = optional_string(model, "unk_token"); !unk.empty()) {
      auto it = ids.find(unk);
      if (it == ids.end()) fail(source, "unk_token '" + unk + "' is not in the vocab");
      options.unk_id = it->second;
    }

    std::vector<AddedToken> added;
    for (const auto& t : j.value("added_tokens", nlohmann::json::array())) {
      AddedToken a{t.at("id").get<int32_t>(), t.at("content").get<std::string>(), t.value("special", false)};
      if (t.value("lstrip", false) || t.value("rstrip", false) || t.value("single_word", false)) {
        spdlog::warn("{}: added token '{}': lstrip/rstrip/single_word are ignored", source, a.content);
      }
      added.push_back(std::move(a));
    }
    BpeTokenizer tok(std::move(vocab), merges, std::move(added), options, source);
    const bool all_bytes = std::find(tok.byte_ids_.begin(), tok.byte_ids_.end(), -1) == tok.byte_ids_.end();
    if (model.value("byte_fallback", false) && !all_bytes) {
      fail(source, "byte_fallback is not supported (and the vocab lacks some of the 256 byte characters)");
    }
    return tok;
  } catch (const nlohmann::json::exception& e) {
    throw TokenizerError(source + ": malformed tokenizer.json: " + e.what());
  }
}

nlohmann::ordered_json BpeTokenizer::to_json() const {
  using oj = nlohmann::ordered_json;
  oj added = oj::array();
  std::vector<AddedToken> by_id = added_;
  std::sort(by_id.begin(), by_id.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  for (const AddedToken& t : by_id) {
    added.push_back({{"id", t.id}, {"content", t.content}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", t.special}});
  }
  oj vocab = oj::object();
  for (size_t id = 0; id < vocab_.size(); ++id) {
    if (!vocab_[id].empty()) vocab[vocab_[id]] = id;
  }
  oj merges = oj::array();
  for (const auto& [a, b] : merge_list_) merges.push_back(vocab_[a] + " " + vocab_[b]);
  const oj byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", options_.add_prefix_space},
                         {"trim_offsets", true}, {"use_regex", true}};
  oj unk = options_.unk_id ? oj(vocab_[*options_.unk_id]) : oj(nullptr);
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", byte_level},
          {"post_processor", byte_level},
          {"decoder", byte_level},
          {"model",
           {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", unk}, {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr}, {"fuse_unk", options_.fuse_unk}, {"byte_fallback", false},
            {"ignore_merges", options_.ignore_merges}, {"vocab", vocab}, {"merges", merges}}}};
}

void BpeTokenizer::save(const std::string& path) const {
  std::ofstream out(path);
  if (!out) throw TokenizerError(path + ": cannot write tokenizer file");
  out << to_json().dump(2) << "\n";
  if (!out) throw TokenizerError(path + ": write failed");
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  size_t start = 0;  // start of the text not yet encoded
  for (size_t pos = 0; pos < text.size(); ++pos) {
    for (const AddedToken& t : added_) {
      if (text.compare(pos, t.content.size(), t.content) == 0) {
        encode_segment(text.substr(start, pos - start), ids);
        ids.push_back(t.id);
        start = pos + t.content.size();
        pos = start - 1;
        break;
      }
    }
  }
  encode_segment(text.substr(start), ids);
  return ids;
}

std::vector<int32_t> BpeTokenizer::encode_ordinary(std::string_view text) const {
  std::vector<int32_t> ids;
  encode_segment(text, ids);
  return ids;
}

void BpeTokenizer::encode_segment(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  if (options_.add_prefix_space && text.front() != ' ') {
    std::string prefixed(1, ' ');
    prefixed += text;
    for (std::string_view piece : pretokenize(prefixed)) encode_piece(piece, out);
  } else {
    for (std::string_view piece : pretokenize(text)) encode_piece(piece, out);
  }
}

// The library's Word::merge_all: a queue of candidate merges ordered by (rank, position); a popped
// merge whose pair no longer exists there is stale and skipped; each merge queues the new pairs it
// forms with its neighbours.
void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (options_.ignore_merges) {
    if (auto it = ids_.find(byte_level_encode(piece)); it != ids_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // indices of the neighbours, -1 at the ends
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(piece.size());
  for (unsigned char b : piece) {
    int32_t id = byte_ids_[b];
    if (id < 0) {  // a byte missing from the vocab: unk if there is one, else dropped (as the library does)
      if (!options_.unk_id) continue;
      if (options_.fuse_unk && !sym.empty() && sym.back().id == *options_.unk_id) continue;
      id = *options_.unk_id;
    }
    const auto n = static_cast<int32_t>(sym.size());
    sym.push_back({id, n - 1, n + 1, true});
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto consider = [&](int32_t pos) {
    const int32_t next = sym[pos].next;
    if (next < 0) return;
    if (auto it = merges_.find(pair_key(sym[pos].id, sym[next].id)); it != merges_.end()) {
      queue.push({it->second.rank, pos, it->second.new_id});
    }
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    auto it = merges_.find(pair_key(left.id, sym[left.next].id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    Symbol& right = sym[left.next];
    left.id = top.new_id;
    left.next = right.next;
    right.alive = false;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (const Symbol& s : sym) {
    if (s.alive) out.push_back(s.id);
  }
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || !decoded_[id]) {
      throw std::out_of_range(source_ + ": id " + std::to_string(id) + " is not in the vocabulary");
    }
    out += *decoded_[id];
  }
  return out;
}

std::optional<int32_t> BpeTokenizer::special_token(std::string_view text) const {
  for (const AddedToken& t : added_) {
    if (t.content == text) return t.id;
  }
  return std::nullopt;
}

std::string BpeTokenizer::describe() const {
  return "byte-level BPE " + source_ + " (vocab " + std::to_string(vocab_size()) + ", " +
         std::to_string(merge_list_.size()) + " merges)";
}

}  // namespace pt::data
