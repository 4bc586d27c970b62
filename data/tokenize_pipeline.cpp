#include "data/tokenize_pipeline.h"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "data/parallel.h"
#include "data/progress.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace pt::data {
namespace {

// Whether document `index` belongs to the validation split: a fixed hash of the index, as a
// number in [0, 1), below the fraction.
bool is_validation(int64_t index, double fraction) {
  uint64_t z = static_cast<uint64_t>(index) + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53 < fraction;
}

// Consecutive shards of one split, each filled to `shard_tokens`.
class ShardSequence {
 public:
  ShardSequence(std::string dir, std::string prefix, int64_t shard_tokens, int64_t vocab_size)
      : dir_(std::move(dir)), prefix_(std::move(prefix)), shard_tokens_(shard_tokens), vocab_size_(vocab_size) {}

  void append(std::span<const int32_t> tokens) {
    while (!tokens.empty()) {
      if (!writer_) open();
      const auto n = std::min<size_t>(tokens.size(), shard_tokens_ - writer_->size());
      writer_->append(tokens.first(n));
      tokens = tokens.subspan(n);
      total_ += static_cast<int64_t>(n);
      if (writer_->size() == shard_tokens_) close();
    }
  }
  void close() {
    if (!writer_) return;
    writer_->close();
    writer_.reset();
  }
  const std::vector<std::string>& files() const { return files_; }
  int64_t total() const { return total_; }

 private:
  void open() {
    char name[32];
    std::snprintf(name, sizeof name, "%s_%06zu.bin", prefix_.c_str(), files_.size());
    files_.push_back((fs::path(dir_) / name).string());
    writer_ = std::make_unique<ShardWriter>(files_.back(), shard_version_for_vocab(vocab_size_), vocab_size_);
  }

  std::string dir_, prefix_;
  int64_t shard_tokens_, vocab_size_;
  std::unique_ptr<ShardWriter> writer_;
  std::vector<std::string> files_;
  int64_t total_ = 0;
};

}  // namespace

TokenizeSummary tokenize_to_shards(const Tokenizer& tokenizer, const TokenizeOptions& options) {
  if (options.inputs.empty()) throw std::invalid_argument("tokenize: no input files");
  if (options.shard_tokens < 1 || options.shard_tokens > INT32_MAX) {
    throw std::invalid_argument("tokenize: --shard-tokens must be in [1, 2^31 - 1]");
  }
  if (!(options.val_fraction >= 0.0 && options.val_fraction < 1.0)) {
    throw std::invalid_argument("tokenize: --val-fraction must be in [0, 1)");
  }
  std::optional<int32_t> separator;
  if (!options.separator.empty()) {
    separator = tokenizer.special_token(options.separator);
    if (!separator) throw std::invalid_argument("tokenize: the tokenizer has no special token '" + options.separator + "'");
  }

  fs::create_directories(options.output_dir);
  for (const auto& entry : fs::directory_iterator(options.output_dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() == ".bin" && (name.starts_with("train_") || name.starts_with("val_"))) {
      throw std::runtime_error("tokenize: " + options.output_dir + " already holds shards (" + name +
                               "); remove them or choose another --output-dir");
    }
  }

  DocumentReader reader(options.inputs, options.format, options.text_field);
  const int threads = resolve_threads(options.threads);
  TokenizeSummary sum;
  sum.vocab_size = tokenizer.vocab_size();
  ShardSequence train(options.output_dir, "train", options.shard_tokens, sum.vocab_size);
  ShardSequence val(options.output_dir, "val", options.shard_tokens, sum.vocab_size);
  ProgressBar bar("tokenizing", reader.total_bytes(), "B", options.progress);

  struct Work {
    TextChunk chunk;
    bool val = false;
    std::vector<int32_t> tokens;
  };
  std::vector<Work> round;
  for (bool more = true; more;) {
    // Read about 4 MB per thread, encode it in parallel, write it in input order.
    round.clear();
    size_t bytes = 0;
    TextChunk chunk;
    while (bytes < size_t{4 << 20} * threads && (more = reader.next(chunk))) {
      if (chunk.starts_document) ++sum.documents;
      bytes += chunk.text.size();
      const bool is_val = is_validation(sum.documents - 1, options.val_fraction);
      round.push_back({std::move(chunk), is_val, {}});
    }
    parallel_for(round.size(), threads, [&](size_t i) {
      Work& w = round[i];
      if (w.chunk.starts_document && separator) w.tokens.push_back(*separator);
      const std::vector<int32_t> ids = tokenizer.encode_ordinary(w.chunk.text);
      w.tokens.insert(w.tokens.end(), ids.begin(), ids.end());
    });
    for (Work& w : round) {
      (w.val ? val : train).append(w.tokens);
      if (w.val && w.chunk.starts_document) ++sum.val_documents;
      sum.text_bytes += static_cast<int64_t>(w.chunk.text.size());
      sum.text_tokens += static_cast<int64_t>(w.tokens.size()) - (w.chunk.starts_document && separator ? 1 : 0);
    }
    bar.update(reader.bytes_read());
  }
  bar.finish();
  train.close();
  val.close();
  sum.train_shards = train.files();
  sum.val_shards = val.files();
  sum.train_tokens = train.total();
  sum.val_tokens = val.total();
  if (options.val_fraction > 0 && sum.val_documents == 0) {
    spdlog::warn("tokenize: --val-fraction {} selected none of the {} documents: no validation shards written",
                 options.val_fraction, sum.documents);
  }
  return sum;
}

std::string TokenizeSummary::to_string() const {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "documents:   %lld (train %lld, val %lld)\n"
                "tokens:      %lld (train %lld, val %lld; vocab %lld)\n"
                "shards:      %zu train, %zu val\n"
                "bytes/token: %.3f (%lld text bytes)",
                static_cast<long long>(documents), static_cast<long long>(documents - val_documents),
                static_cast<long long>(val_documents), static_cast<long long>(train_tokens + val_tokens),
                static_cast<long long>(train_tokens), static_cast<long long>(val_tokens),
                static_cast<long long>(vocab_size), train_shards.size(), val_shards.size(), bytes_per_token(),
                static_cast<long long>(text_bytes));
  return buf;
}

}  // namespace pt::data
