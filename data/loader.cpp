#include "data/loader.h"

#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <thread>

#include <glob.h>
#include <spdlog/spdlog.h>

#include "data/shard.h"

namespace pt::data {
namespace {

// ---------------------------------------------------------------- deterministic shuffling
// Own generator and bounded draws (not std::shuffle / std distributions, whose results differ
// between standard libraries), so an order is the same on every platform.

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t mix(uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t x = seed;
  x = splitmix64(x) ^ a;
  x = splitmix64(x) ^ b;
  return splitmix64(x);
}

// A uniformly shuffled 0..n-1 (Fisher-Yates with unbiased draws by rejection).
std::vector<uint32_t> permutation(uint32_t n, uint64_t key) {
  std::vector<uint32_t> p(n);
  std::iota(p.begin(), p.end(), 0u);
  uint64_t state = key;
  for (uint32_t i = n; i > 1; --i) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % i;
    uint64_t r;
    do r = splitmix64(state);
    while (r >= limit);
    std::swap(p[i - 1], p[r % i]);
  }
  return p;
}

constexpr uint64_t kShardOrderTag = 0x5348415244ull;  // keys shard orders apart from window orders

// ---------------------------------------------------------------- the dataset

struct ShardEntry {
  std::string path;
  std::string name;  // file name, for the fingerprint
  uint64_t bytes = 0;
  ShardHeader header;
  std::unique_ptr<std::once_flag> checked = std::make_unique<std::once_flag>();
};

// The matched shards with validated headers; shared read-only by the loader's threads.
struct Dataset {
  std::string glob;
  int64_t vocab_check = 0;
  std::vector<ShardEntry> shards;
  int64_t tokens = 0;
  std::string fingerprint;  // of the file names and sizes

  // Maps shard i, checking all its tokens the first time it is used.
  std::shared_ptr<const MappedShard> map(uint32_t i) const {
    auto m = std::make_shared<const MappedShard>(shards[i].path);
    if (vocab_check > 0) std::call_once(*shards[i].checked, [&] { m->check_tokens(vocab_check); });
    return m;
  }
};

std::string fingerprint(const std::vector<ShardEntry>& shards) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a over "name\0size\0" of each file in order
  const auto add = [&](const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 0x100000001B3ull;
    h = (h ^ 0) * 0x100000001B3ull;
  };
  for (const ShardEntry& s : shards) add(s.name), add(std::to_string(s.bytes));
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// ---------------------------------------------------------------- walking the window sequence

// Index of a window in the global sequence: epoch, then the shard's place in that epoch's order,
// then the window's place in that shard's order.
struct Position {
  uint64_t epoch = 0, shard = 0, window = 0;
};

// Reads windows along the global sequence for one seq and seed; one per thread.
class Walker {
 public:
  Walker(const Dataset& ds, int64_t seq, uint64_t seed) : ds_(ds), seq_(seq), seed_(seed) {
    for (uint32_t i = 0; i < ds.shards.size(); ++i) {
      if (ds.shards[i].header.tokens >= seq + 1) eligible_.push_back(i);
    }
    if (eligible_.empty()) {
      throw std::runtime_error("shards '" + ds.glob + "': no shard has the " + std::to_string(seq + 1) +
                               " tokens of one window (seq + 1)");
    }
  }
  int64_t seq() const { return seq_; }
  uint64_t seed() const { return seed_; }

  // The next `batch` windows of `rank` from the round starting at `base`, which moves to the next round.
  TokenBatch next(Position& base, int64_t batch, int rank, int world_size) {
    TokenBatch out;
    out.batch = batch;
    out.seq = seq_;
    out.inputs.resize(batch * seq_);
    out.targets.resize(batch * seq_);
    std::vector<int32_t> window(seq_ + 1);
    normalize(base);
    for (int64_t row = 0; row < batch; ++row) {
      Position p = base;
      advance(p, rank);
      read(p, window);
      std::copy(window.begin(), window.end() - 1, out.inputs.begin() + row * seq_);
      std::copy(window.begin() + 1, window.end(), out.targets.begin() + row * seq_);
      advance(base, world_size);
    }
    return out;
  }

  // A position saved against another dataset may point past a shard's or an epoch's end: move it
  // to the next valid window.
  void normalize(Position& p) {
    if (p.shard >= eligible_.size()) {
      p = {p.epoch + 1, 0, 0};
    } else if (p.window >= windows(order(p.epoch)[p.shard])) {
      p.window = 0;
      if (++p.shard == eligible_.size()) p = {p.epoch + 1, 0, 0};
    }
  }

 private:
  uint64_t windows(uint32_t shard) const { return (ds_.shards[shard].header.tokens - 1) / seq_; }

  void advance(Position& p, uint64_t n) {
    while (n > 0) {
      const uint64_t left = windows(order(p.epoch)[p.shard]) - p.window;
      if (n < left) {
        p.window += n;
        return;
      }
      n -= left;
      p.window = 0;
      if (++p.shard == eligible_.size()) p = {p.epoch + 1, 0, 0};
    }
  }

  void read(const Position& p, std::span<int32_t> window) {
    const uint32_t shard = order(p.epoch)[p.shard];
    if (window_order_epoch_ != p.epoch || window_order_shard_ != shard) {
      window_order_ = permutation(static_cast<uint32_t>(windows(shard)), mix(seed_, p.epoch, shard));
      window_order_epoch_ = p.epoch, window_order_shard_ = shard;
    }
    if (!map_ || map_index_ != shard) {
      map_.reset();  // unmap the previous shard first: at most one is mapped per thread
      map_ = ds_.map(shard);
      map_index_ = shard;
    }
    map_->read(static_cast<int64_t>(window_order_[p.window]) * seq_, window);
  }

  // Eligible shard indices in epoch order. Rank offsets can straddle an epoch end, so the two
  // most recent epochs are kept.
  const std::vector<uint32_t>& order(uint64_t epoch) {
    for (auto& [e, o] : orders_) {
      if (e == epoch && !o.empty()) return o;
    }
    auto& [e, o] = orders_[next_order_slot_];
    next_order_slot_ ^= 1;
    e = epoch;
    o.clear();
    for (uint32_t i : permutation(static_cast<uint32_t>(eligible_.size()), mix(seed_, epoch, kShardOrderTag))) {
      o.push_back(eligible_[i]);
    }
    return o;
  }

  const Dataset& ds_;
  int64_t seq_;
  uint64_t seed_;
  std::vector<uint32_t> eligible_;
  std::pair<uint64_t, std::vector<uint32_t>> orders_[2];
  int next_order_slot_ = 0;
  std::vector<uint32_t> window_order_;
  uint64_t window_order_epoch_ = UINT64_MAX;
  uint32_t window_order_shard_ = UINT32_MAX;
  std::shared_ptr<const MappedShard> map_;
  uint32_t map_index_ = UINT32_MAX;
};

// ---------------------------------------------------------------- the loader

class ShardLoader final : public BatchSource {
 public:
  ShardLoader(ShardLoaderOptions options, std::shared_ptr<const Dataset> ds)
      : opt_(std::move(options)), ds_(std::move(ds)), seed_(opt_.seed) {}

  ~ShardLoader() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  TokenBatch next(int64_t batch, int64_t seq) override {
    if (batch <= 0 || seq <= 0) throw std::invalid_argument("shard loader: batch and seq must be positive");
    std::unique_lock lock(mu_);
    if (seq_ == 0) seq_ = seq;
    if (seq != seq_) {
      throw std::invalid_argument("shards '" + opt_.glob + "': seq changed from " + std::to_string(seq_) + " to " +
                                  std::to_string(seq) + " (a position is defined for one seq)");
    }
    if (opt_.prefetch_batches <= 0) {
      lock.unlock();
      if (!walker_ || walker_->seq() != seq_ || walker_->seed() != seed_) walker_ = std::make_unique<Walker>(*ds_, seq_, seed_);
      Position p = committed_;
      TokenBatch out = walker_->next(p, batch, opt_.rank, opt_.world_size);
      committed_ = p;
      return out;
    }
    if (!thread_.joinable()) thread_ = std::thread([this] { produce(); });
    if (!active_ || batch != batch_) {  // (re)start prefetching from the committed position
      ++generation_;
      queue_.clear();
      produce_from_ = committed_;
      batch_ = batch;
      active_ = true;
      cv_.notify_all();
    }
    cv_.wait(lock, [&] { return !queue_.empty(); });
    Prefetched item = std::move(queue_.front());
    queue_.pop_front();
    cv_.notify_all();
    lock.unlock();
    if (item.error) std::rethrow_exception(item.error);
    committed_ = item.after;
    return std::move(item.batch);
  }

  nlohmann::json state() const override {
    return {{"source", "shards"},       {"glob", opt_.glob},          {"epoch", committed_.epoch},
            {"shard", committed_.shard}, {"window", committed_.window}, {"seq", seq_},
            {"seed", seed_},             {"world_size", opt_.world_size}, {"fingerprint", ds_->fingerprint},
            {"files", ds_->shards.size()}, {"tokens", ds_->tokens}};
  }

  void load_state(const nlohmann::json& s) override {
    Position p;
    int64_t seq;
    uint64_t seed;
    std::string fp;
    int64_t world_size, files, tokens;
    try {
      if (s.at("source").get<std::string>() != "shards") throw std::invalid_argument("not a shard loader state");
      p = {s.at("epoch").get<uint64_t>(), s.at("shard").get<uint64_t>(), s.at("window").get<uint64_t>()};
      seq = s.at("seq").get<int64_t>();
      seed = s.at("seed").get<uint64_t>();
      fp = s.at("fingerprint").get<std::string>();
      world_size = s.at("world_size").get<int64_t>();
      files = s.at("files").get<int64_t>();
      tokens = s.at("tokens").get<int64_t>();
    } catch (const std::exception& e) {
      throw std::invalid_argument("shards '" + opt_.glob + "': invalid loader state " + s.dump() + ": " + e.what());
    }
    if (fp != ds_->fingerprint) {
      spdlog::warn("shards '{}': the dataset changed since this position was saved (fingerprint {} with {} files, "
                   "{} tokens; now {} with {} files, {} tokens): resuming at the saved position, but the order "
                   "of the data differs from the original run",
                   opt_.glob, fp, files, tokens, ds_->fingerprint, ds_->shards.size(), ds_->tokens);
    }
    if (world_size != opt_.world_size) {
      spdlog::warn("shards '{}': the position was saved with world size {}, now {}: ranks resume from the same "
                   "point but read different slices",
                   opt_.glob, world_size, opt_.world_size);
    }
    if (seed != opt_.seed) spdlog::info("shards '{}': resuming with the saved data seed {} (not {})", opt_.glob, seed, opt_.seed);
    std::lock_guard lock(mu_);
    ++generation_;
    queue_.clear();
    active_ = false;
    committed_ = p;
    seq_ = seq;
    seed_ = seed;
  }

  int64_t vocab_size() const override {
    int64_t known = 0;
    bool all_known = true, all_v1 = true;
    for (const ShardEntry& s : ds_->shards) {
      known = std::max(known, s.header.vocab_size);
      all_known = all_known && s.header.vocab_size > 0;
      all_v1 = all_v1 && s.header.version == 1;
    }
    if (all_known) return known;
    if (opt_.vocab_size > 0) return opt_.vocab_size;
    return all_v1 ? 65536 : INT32_MAX;
  }

  std::string describe() const override {
    const size_t n = ds_->shards.size();
    return "shards '" + opt_.glob + "': " + std::to_string(n) + (n == 1 ? " file, " : " files, ") + std::to_string(ds_->tokens) +
           " tokens (fingerprint " + ds_->fingerprint + "), rank " + std::to_string(opt_.rank) + " of " +
           std::to_string(opt_.world_size) + ", seed " + std::to_string(seed_);
  }

 private:
  struct Prefetched {
    TokenBatch batch;
    Position after;  // the committed position once this batch is taken
    std::exception_ptr error;
  };

  // The prefetch thread: computes batches in order from produce_from_, with the consumer's shape.
  void produce() {
    std::unique_ptr<Walker> walker;
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || (active_ && queue_.size() < static_cast<size_t>(opt_.prefetch_batches)); });
      if (stop_) return;
      const uint64_t generation = generation_, seed = seed_;
      const int64_t batch = batch_, seq = seq_;
      Prefetched item{{}, produce_from_, nullptr};
      lock.unlock();
      try {
        if (!walker || walker->seq() != seq || walker->seed() != seed) walker = std::make_unique<Walker>(*ds_, seq, seed);
        item.batch = walker->next(item.after, batch, opt_.rank, opt_.world_size);
      } catch (...) {
        item.error = std::current_exception();
      }
      lock.lock();
      if (generation != generation_) continue;  // reset meanwhile: drop it
      if (item.error) {
        active_ = false;  // the consumer rethrows it; a later call restarts from the committed position
      } else {
        produce_from_ = item.after;
      }
      queue_.push_back(std::move(item));
      cv_.notify_all();
    }
  }

  const ShardLoaderOptions opt_;
  const std::shared_ptr<const Dataset> ds_;

  // The consumer's position. seq_ and seed_ change under mu_ (the prefetch thread reads them).
  Position committed_;
  int64_t seq_ = 0;  // 0 until the first batch or load_state
  uint64_t seed_;
  std::unique_ptr<Walker> walker_;  // without prefetching

  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
  bool stop_ = false, active_ = false;
  uint64_t generation_ = 0;  // bumped on every reset; the prefetch thread drops batches of an older one
  Position produce_from_;
  int64_t batch_ = 0;
  std::deque<Prefetched> queue_;
};

}  // namespace

std::vector<std::string> expand_glob(const std::string& pattern) {
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> files;
  if (rc == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) {
      if (std::filesystem::is_regular_file(g.gl_pathv[i])) files.emplace_back(g.gl_pathv[i]);
    }
  }
  ::globfree(&g);
  if (rc != 0 && rc != GLOB_NOMATCH) throw std::runtime_error("cannot expand '" + pattern + "' (read error)");
  if (files.empty()) throw std::runtime_error("no file matches '" + pattern + "'");
  return files;  // glob() sorts
}

std::unique_ptr<BatchSource> open_shard_loader(const ShardLoaderOptions& options) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    throw std::invalid_argument("shard loader: rank " + std::to_string(options.rank) + " is not in a world of " +
                                std::to_string(options.world_size));
  }
  auto ds = std::make_shared<Dataset>();
  ds->glob = options.glob;
  ds->vocab_check = options.vocab_size;
  for (const std::string& path : expand_glob(options.glob)) {
    ShardEntry e;
    e.path = path;
    e.name = std::filesystem::path(path).filename().string();
    e.bytes = std::filesystem::file_size(path);
    e.header = read_shard_header(path);
    if (options.vocab_size > 0 && e.header.vocab_size > options.vocab_size) {
      throw ShardError(path + ": written with a vocab of " + std::to_string(e.header.vocab_size) +
                       " tokens, more than the model's " + std::to_string(options.vocab_size));
    }
    ds->tokens += e.header.tokens;
    ds->shards.push_back(std::move(e));
  }
  ds->fingerprint = fingerprint(ds->shards);
  return std::make_unique<ShardLoader>(options, std::move(ds));
}

}  // namespace pt::data
