// The shard loader: windows, determinism, rank slices, resume, fingerprint warning, prefetch.
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "data/loader.h"
#include "data/shard.h"
#include "test/catch.h"

namespace fs = std::filesystem;
using namespace pt::data;

namespace {

// Shards whose token at position i of shard s is s * 1000 + i, so every window is identifiable.
struct Corpus {
  fs::path dir;
  explicit Corpus(const std::vector<int>& sizes) {
    dir = fs::temp_directory_path() / ("pt_data_loader_" + std::to_string(std::random_device{}()));
    fs::create_directories(dir);
    for (size_t s = 0; s < sizes.size(); ++s) add(static_cast<int>(s), sizes[s]);
  }
  ~Corpus() { fs::remove_all(dir); }
  void add(int s, int size) {
    std::vector<int32_t> t(size);
    for (int i = 0; i < size; ++i) t[i] = s * 1000 + i;
    write_shard((dir / ("train_" + std::to_string(s) + ".bin")).string(), t, 1);
  }
  std::string glob() const { return (dir / "train_*.bin").string(); }
};

std::vector<TokenBatch> take(BatchSource& src, int n, int64_t batch = 4, int64_t seq = 8) {
  std::vector<TokenBatch> out;
  for (int i = 0; i < n; ++i) out.push_back(src.next(batch, seq));
  return out;
}

bool same(const std::vector<TokenBatch>& a, const std::vector<TokenBatch>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].inputs != b[i].inputs || a[i].targets != b[i].targets) return false;
  }
  return true;
}

// First token of every window of the batches.
std::vector<int32_t> window_starts(const std::vector<TokenBatch>& batches) {
  std::vector<int32_t> starts;
  for (const auto& b : batches) {
    for (int64_t r = 0; r < b.batch; ++r) starts.push_back(b.inputs[r * b.seq]);
  }
  return starts;
}

ShardLoaderOptions options(const Corpus& c, uint64_t seed = 1, int prefetch = 2) {
  ShardLoaderOptions o;
  o.glob = c.glob();
  o.seed = seed;
  o.prefetch_batches = prefetch;
  return o;
}

}  // namespace

TEST_CASE("loader windows: seq + 1 tokens, stride seq, within one shard", "[data]") {
  Corpus c({81, 40, 5});  // windows of 9 tokens: 10, 4 and (too short) 0
  auto src = open_shard_loader(options(c));
  const auto batches = take(*src, 7, 2, 8);  // 14 windows = one epoch
  std::multiset<int32_t> starts;
  for (const auto& b : batches) {
    REQUIRE(b.batch == 2);
    REQUIRE(b.seq == 8);
    for (int64_t r = 0; r < 2; ++r) {
      const int32_t first = b.inputs[r * 8];
      for (int64_t i = 0; i < 8; ++i) {
        CHECK(b.inputs[r * 8 + i] == first + i);       // consecutive tokens of one shard
        CHECK(b.targets[r * 8 + i] == first + i + 1);  // shifted by one
      }
      starts.insert(first);
    }
  }
  std::multiset<int32_t> expected;
  for (int w = 0; w < 10; ++w) expected.insert(w * 8);
  for (int w = 0; w < 4; ++w) expected.insert(1000 + w * 8);
  CHECK(starts == expected);  // every window exactly once per epoch; shard 2 is skipped
  CHECK(src->describe().find("3 files") != std::string::npos);
}

TEST_CASE("loader order is deterministic per seed and reshuffled per epoch", "[data]") {
  Corpus c({801, 401, 601});  // 100 + 50 + 75 windows of seq 8
  const auto a = take(*open_shard_loader(options(c, 1)), 30);
  const auto b = take(*open_shard_loader(options(c, 1)), 30);
  const auto d = take(*open_shard_loader(options(c, 2)), 30);
  CHECK(same(a, b));
  CHECK(!same(a, d));
  // Epoch 1 visits the same windows as epoch 0 in another order.
  const auto two_epochs = window_starts(take(*open_shard_loader(options(c, 1)), 2 * 225 / 5, 5));
  std::vector<int32_t> e0(two_epochs.begin(), two_epochs.begin() + 225), e1(two_epochs.begin() + 225, two_epochs.end());
  CHECK(e0 != e1);
  std::sort(e0.begin(), e0.end());
  std::sort(e1.begin(), e1.end());
  CHECK(e0 == e1);
}

TEST_CASE("loader ranks read disjoint slices that cover the data", "[data]") {
  Corpus c({801, 401, 601});
  std::vector<int32_t> all;
  for (int rank = 0; rank < 3; ++rank) {
    auto o = options(c, 5);
    o.rank = rank;
    o.world_size = 3;
    const auto starts = window_starts(take(*open_shard_loader(o), 15, 5));  // 3 x 75 = 225 = one epoch
    all.insert(all.end(), starts.begin(), starts.end());
  }
  std::set<int32_t> unique(all.begin(), all.end());
  CHECK(unique.size() == 225);  // disjoint, and together one full epoch
  auto o = options(c);
  o.rank = 3;
  o.world_size = 3;
  REQUIRE_THROWS_AS(open_shard_loader(o), std::invalid_argument);
}

TEST_CASE("loader resume continues with exactly the next batch", "[data]") {
  Corpus c({801, 401, 601});
  for (int prefetch : {0, 3}) {
    for (int k : {0, 7, 44, 50}) {  // 45 batches of 5 = one epoch: resume mid-shard, at and past the epoch end
      auto src = open_shard_loader(options(c, 9, prefetch));
      take(*src, k, 5);
      const nlohmann::json state = src->state();
      const auto expected = take(*src, 6, 5);

      auto resumed = open_shard_loader(options(c, k == 7 ? 123 : 9, prefetch));  // the saved seed wins
      resumed->load_state(nlohmann::json::parse(state.dump()));
      CHECK(same(take(*resumed, 6, 5), expected));
    }
  }
  SECTION("every rank's state is the same and resumes every rank") {
    std::vector<nlohmann::json> states;
    std::vector<std::vector<TokenBatch>> next;
    for (int rank = 0; rank < 2; ++rank) {
      auto o = options(c, 4);
      o.rank = rank;
      o.world_size = 2;
      auto src = open_shard_loader(o);
      take(*src, 11, 3);
      states.push_back(src->state());
      next.push_back(take(*src, 3, 3));
    }
    CHECK(states[0] == states[1]);
    for (int rank = 0; rank < 2; ++rank) {
      auto o = options(c, 4);
      o.rank = rank;
      o.world_size = 2;
      auto src = open_shard_loader(o);
      src->load_state(states[0]);
      CHECK(same(take(*src, 3, 3), next[rank]));
    }
  }
  SECTION("a malformed state is rejected") {
    auto src = open_shard_loader(options(c));
    REQUIRE_THROWS_AS(src->load_state(nlohmann::json{{"source", "synthetic"}}), std::invalid_argument);
  }
}

TEST_CASE("loader prefetch on and off give identical batches", "[data]") {
  Corpus c({801, 401, 601});
  const auto off = options(c, 3, 0);
  const auto on = options(c, 3, 4);
  auto a = open_shard_loader(off);
  auto b = open_shard_loader(on);
  // Changing the batch size between calls restarts prefetching from the right place.
  for (int64_t batch : {4, 4, 4, 7, 7, 1, 4, 4, 13, 13, 13}) {
    const TokenBatch x = a->next(batch, 8), y = b->next(batch, 8);
    REQUIRE(x.inputs == y.inputs);
    REQUIRE(x.targets == y.targets);
    REQUIRE(a->state() == b->state());
  }
  REQUIRE_THROWS_AS(b->next(4, 16), std::invalid_argument);  // the position is defined for one seq
}

TEST_CASE("loader warns when the dataset changed since the state was saved", "[data]") {
  Corpus c({801, 401});
  auto src = open_shard_loader(options(c));
  take(*src, 3);
  const nlohmann::json state = src->state();

  std::ostringstream log;
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(log)));
  auto same_data = open_shard_loader(options(c));
  same_data->load_state(state);
  const std::string quiet = log.str();
  c.add(2, 300);  // a new shard changes the fingerprint
  auto changed = open_shard_loader(options(c));
  changed->load_state(state);
  spdlog::set_default_logger(previous);

  CHECK(quiet.find("dataset changed") == std::string::npos);
  CHECK(log.str().find("dataset changed") != std::string::npos);
  CHECK(log.str().find(c.glob()) != std::string::npos);
  CHECK(changed->state()["fingerprint"] != state["fingerprint"]);
  REQUIRE_NOTHROW(take(*changed, 3));
}

TEST_CASE("loader errors name the glob or the file", "[data]") {
  Corpus c({100});
  const auto message = [](const ShardLoaderOptions& o, int64_t seq = 8) -> std::string {
    try {
      open_shard_loader(o)->next(1, seq);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "(no error)";
  };
  auto o = options(c);
  o.glob = (c.dir / "nothing_*.bin").string();
  CHECK(message(o).find("no file matches '" + o.glob + "'") != std::string::npos);

  CHECK(message(options(c), 200).find("no shard has the 201 tokens") != std::string::npos);

  o = options(c);
  o.vocab_size = 50;  // shard 0 holds ids 0..99; the check runs when the shard is first used
  std::string msg = message(o);
  CHECK(msg.find("train_0.bin") != std::string::npos);
  CHECK(msg.find("token 50 at position 50 is >= the vocab size 50") != std::string::npos);
  o.prefetch_batches = 0;
  CHECK(message(o) == msg);

  std::ofstream((c.dir / "train_9.bin").string(), std::ios::binary) << std::string(1024, 'x');
  msg = message(options(c));
  CHECK(msg.find("train_9.bin") != std::string::npos);
  CHECK(msg.find("bad magic") != std::string::npos);
}
