#include "data/bpe_trainer.h"

#include <algorithm>
#include <queue>
#include <stdexcept>

#include "data/parallel.h"
#include "data/pretokenize.h"
#include "data/progress.h"
#include "data/unicode.h"

namespace pt::data {
namespace {

using Pair = std::pair<int32_t, int32_t>;

uint64_t key(Pair p) { return (static_cast<uint64_t>(p.first) << 32) | static_cast<uint32_t>(p.second); }
Pair unkey(uint64_t k) { return {static_cast<int32_t>(k >> 32), static_cast<int32_t>(k & 0xFFFFFFFFu)}; }

struct Candidate {
  int64_t count;
  Pair pair;
  // Max-heap order: larger count first, then the smaller pair.
  bool operator<(const Candidate& o) const { return count != o.count ? count < o.count : pair > o.pair; }
};

}  // namespace

void count_pieces(std::string_view text, PieceCounts& counts) {
  for (std::string_view piece : pretokenize(text)) ++counts[std::string(piece)];
}

PieceCounts count_pieces(DocumentReader& reader, int threads, bool progress) {
  const int n_threads = resolve_threads(threads);
  std::vector<PieceCounts> partial(n_threads);
  ProgressBar bar("counting", reader.total_bytes(), "B", progress);
  std::vector<TextChunk> round;
  for (bool more = true; more;) {
    // A round of about 4 MB per thread, counted in parallel into one map per thread slot.
    round.clear();
    size_t bytes = 0;
    TextChunk chunk;
    while (bytes < size_t{4 << 20} * n_threads && (more = reader.next(chunk))) {
      bytes += chunk.text.size();
      round.push_back(std::move(chunk));
    }
    const size_t per = (round.size() + n_threads - 1) / n_threads;
    parallel_for(n_threads, n_threads, [&](size_t t) {
      for (size_t i = t * per; i < std::min(round.size(), (t + 1) * per); ++i) count_pieces(round[i].text, partial[t]);
    });
    bar.update(reader.bytes_read());
  }
  bar.finish();
  PieceCounts total = std::move(partial[0]);
  for (int t = 1; t < n_threads; ++t) {
    for (auto& [piece, n] : partial[t]) total[piece] += n;
  }
  return total;
}

BpeTokenizer train_bpe(const PieceCounts& counts, const BpeTrainOptions& options) {
  const int64_t n_special = static_cast<int64_t>(options.special_tokens.size());
  if (options.vocab_size < 256 + n_special) {
    throw std::invalid_argument("vocab size " + std::to_string(options.vocab_size) + " is below the " +
                                std::to_string(256 + n_special) + " of the 256 bytes and the special tokens");
  }

  // Ids 0..255: the bytes, ordered by their byte-level character (GPT-2's order).
  std::vector<std::string> vocab;
  std::array<int32_t, 256> byte_id{};
  {
    std::vector<std::pair<std::string, int>> chars;
    for (int b = 0; b < 256; ++b) chars.emplace_back(byte_level_encode(std::string(1, static_cast<char>(b))), b);
    std::sort(chars.begin(), chars.end(), [](const auto& x, const auto& y) {
      return decode_utf8(x.first, 0).cp < decode_utf8(y.first, 0).cp;
    });
    for (const auto& [s, b] : chars) {
      byte_id[b] = static_cast<int32_t>(vocab.size());
      vocab.push_back(s);
    }
  }

  // The pieces as id sequences, sorted so that training does not depend on hash order.
  std::vector<std::pair<std::string_view, int64_t>> sorted(counts.begin(), counts.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::vector<int32_t>> words(sorted.size());
  std::vector<int64_t> freq(sorted.size());
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;  // pair -> words that contain (or contained) it
  for (size_t w = 0; w < sorted.size(); ++w) {
    for (unsigned char b : sorted[w].first) words[w].push_back(byte_id[b]);
    freq[w] = sorted[w].second;
    for (size_t i = 0; i + 1 < words[w].size(); ++i) {
      const uint64_t k = key({words[w][i], words[w][i + 1]});
      pair_count[k] += freq[w];
      where[k].push_back(static_cast<uint32_t>(w));
    }
  }
  std::priority_queue<Candidate> queue;
  for (const auto& [k, n] : pair_count) queue.push({n, unkey(k)});

  const int64_t max_merges = options.vocab_size - 256 - n_special;
  std::vector<Pair> merges;
  std::vector<uint64_t> seen(words.size(), UINT64_MAX);  // merge step that last visited a word
  std::vector<uint64_t> touched;
  ProgressBar bar("merging", static_cast<uint64_t>(max_merges), "merges", options.progress);
  while (static_cast<int64_t>(merges.size()) < max_merges && !queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    const uint64_t top_key = key(top.pair);
    auto it = pair_count.find(top_key);
    const int64_t current = it == pair_count.end() ? 0 : it->second;
    if (current != top.count) {  // stale entry: requeue with the current count
      if (current > 0) queue.push({current, top.pair});
      continue;
    }
    const auto new_id = static_cast<int32_t>(vocab.size());
    vocab.push_back(vocab[top.pair.first] + vocab[top.pair.second]);
    merges.push_back(top.pair);

    // Re-count the words that contain the pair: remove their pairs, merge, add their new pairs.
    touched.clear();
    const std::vector<uint32_t> holders = std::move(where[top_key]);
    where.erase(top_key);
    for (uint32_t w : holders) {
      if (seen[w] == merges.size()) continue;
      seen[w] = merges.size();
      std::vector<int32_t>& word = words[w];
      std::vector<int32_t> merged;
      merged.reserve(word.size());
      for (size_t i = 0; i < word.size(); ++i) {
        if (i + 1 < word.size() && word[i] == top.pair.first && word[i + 1] == top.pair.second) {
          merged.push_back(new_id);
          ++i;
        } else {
          merged.push_back(word[i]);
        }
      }
      if (merged.size() == word.size()) continue;  // a stale holder
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        const uint64_t k = key({word[i], word[i + 1]});
        pair_count[k] -= freq[w];
        touched.push_back(k);
      }
      for (size_t i = 0; i + 1 < merged.size(); ++i) {
        const uint64_t k = key({merged[i], merged[i + 1]});
        pair_count[k] += freq[w];
        touched.push_back(k);
        if (merged[i] == new_id || merged[i + 1] == new_id) where[k].push_back(w);
      }
      word = std::move(merged);
    }
    pair_count.erase(top_key);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t k : touched) {
      auto c = pair_count.find(k);
      if (c == pair_count.end()) continue;
      if (c->second > 0) {
        queue.push({c->second, unkey(k)});
      } else {
        pair_count.erase(c);
      }
    }
    bar.update(merges.size());
  }
  bar.finish();

  std::vector<AddedToken> added;
  for (const std::string& s : options.special_tokens) {
    added.push_back({static_cast<int32_t>(vocab.size()), s, true});
    vocab.push_back(s);
  }
  return BpeTokenizer(std::move(vocab), merges, std::move(added), {}, "trained tokenizer");
}

}  // namespace pt::data
