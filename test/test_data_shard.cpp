// Shard format: round trips for both versions and every validation error.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "data/shard.h"
#include "test/catch.h"
#include "test/temp_dir.h"

namespace fs = std::filesystem;
using namespace pt::data;

using pt::test::TempDir;

namespace {

// Writes a raw file: a header of the given ints (rest zero), then `token_bytes` bytes of tokens.
void write_raw(const std::string& path, std::vector<int32_t> header, size_t token_bytes) {
  header.resize(256, 0);
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(header.data()), 1024);
  const std::vector<char> zeros(token_bytes, 0);
  out.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
}

// The message of the ShardError `fn` throws.
template <class Fn>
std::string shard_error(Fn&& fn) {
  try {
    fn();
  } catch (const ShardError& e) {
    return e.what();
  }
  return "(no ShardError thrown)";
}

}  // namespace

TEST_CASE("shard round trip, version 1 (uint16) and 2 (uint32)", "[data]") {
  TempDir dir;
  SECTION("version 1") {
    const std::vector<int32_t> tokens = {0, 1, 50256, 65535, 7};
    write_shard(dir.file("a.bin"), tokens, 1, 50257);
    CHECK(read_shard(dir.file("a.bin")) == tokens);
    const ShardHeader h = read_shard_header(dir.file("a.bin"));
    CHECK(h.version == 1);
    CHECK(h.tokens == 5);
    CHECK(h.vocab_size == 50257);
    CHECK(fs::file_size(dir.file("a.bin")) == 1024 + 5 * 2);
  }
  SECTION("version 2") {
    const std::vector<int32_t> tokens = {0, 65536, 128255, 1 << 30};
    write_shard(dir.file("b.bin"), tokens, 2);
    CHECK(read_shard(dir.file("b.bin")) == tokens);
    CHECK(read_shard_header(dir.file("b.bin")).version == 2);
    CHECK(fs::file_size(dir.file("b.bin")) == 1024 + 4 * 4);
  }
  SECTION("the header is llm.c's: magic, version, count as little-endian int32") {
    write_shard(dir.file("c.bin"), std::vector<int32_t>{3, 4, 5}, 1);
    std::ifstream in(dir.file("c.bin"), std::ios::binary);
    int32_t h[4];
    in.read(reinterpret_cast<char*>(h), sizeof h);
    CHECK(h[0] == 20240520);
    CHECK(h[1] == 1);
    CHECK(h[2] == 3);
    uint16_t t[3];
    in.seekg(1024);
    in.read(reinterpret_cast<char*>(t), sizeof t);
    CHECK((t[0] == 3 && t[1] == 4 && t[2] == 5));
  }
  SECTION("a mapped shard reads any range") {
    std::vector<int32_t> tokens(1000);
    for (int i = 0; i < 1000; ++i) tokens[i] = i * 7 % 1009;
    write_shard(dir.file("d.bin"), tokens, 1);
    MappedShard m(dir.file("d.bin"));
    std::vector<int32_t> part(10);
    m.read(500, part);
    CHECK(std::equal(part.begin(), part.end(), tokens.begin() + 500));
    REQUIRE_THROWS_AS(m.read(995, part), std::out_of_range);
  }
  SECTION("a version 1 writer rejects ids beyond uint16") {
    REQUIRE_THROWS_AS(write_shard(dir.file("e.bin"), std::vector<int32_t>{65536}, 1), ShardError);
    CHECK(!fs::exists(dir.file("e.bin")));
    CHECK(!fs::exists(dir.file("e.bin.tmp")));
  }
}

TEST_CASE("shard format errors name the file and the problem", "[data]") {
  TempDir dir;
  const std::string path = dir.file("bad.bin");
  SECTION("bad magic") {
    write_raw(path, {12345, 1, 2}, 4);
    const std::string msg = shard_error([&] { read_shard_header(path); });
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find("bad magic 12345") != std::string::npos);
  }
  SECTION("bad version") {
    write_raw(path, {kShardMagic, 3, 2}, 4);
    const std::string msg = shard_error([&] { MappedShard m(path); });
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find("unsupported version 3") != std::string::npos);
  }
  SECTION("size does not match the count") {
    write_raw(path, {kShardMagic, 1, 10}, 18);  // 9 tokens' worth of bytes
    const std::string msg = shard_error([&] { read_shard(path); });
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find("size mismatch") != std::string::npos);
    CHECK(msg.find("10 tokens") != std::string::npos);
  }
  SECTION("shorter than the header") {
    std::ofstream(path, std::ios::binary) << "tiny";
    const std::string msg = shard_error([&] { read_shard_header(path); });
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find("less than the 1024-byte header") != std::string::npos);
  }
  SECTION("a token id >= the vocab size") {
    write_shard(path, std::vector<int32_t>{1, 2, 300, 4}, 1);
    REQUIRE_NOTHROW(read_shard(path, 301));
    const std::string msg = shard_error([&] { read_shard(path, 300); });
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find("token 300 at position 2") != std::string::npos);
  }
  SECTION("a missing file") {
    const std::string msg = shard_error([&] { read_shard_header(dir.file("none.bin")); });
    CHECK(msg.find("none.bin") != std::string::npos);
  }
}
