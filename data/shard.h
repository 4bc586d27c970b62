// Token shards in the llm.c format.
//
//   bytes 0..1023   header: 256 little-endian int32
//                     [0] magic 20240520
//                     [1] version: 1 = tokens are uint16, 2 = tokens are uint32
//                     [2] token count N
//                     [3] vocab size of the tokenizer that wrote it, 0 = unknown (an extension:
//                         llm.c writes 0 there and ignores it)
//                     [4..255] 0
//   bytes 1024..    N little-endian tokens of 2 (version 1) or 4 (version 2) bytes
//
// So the file is exactly 1024 + N * width bytes. Every error names the file and what is wrong.
#pragma once

#include <cstdint>
#include <cstdio>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace pt::data {

class ShardError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int kShardHeaderInts = 256;
inline constexpr int64_t kShardHeaderBytes = kShardHeaderInts * 4;

// The smallest version that holds every id below vocab_size (1 when it fits in uint16).
int shard_version_for_vocab(int64_t vocab_size);

struct ShardHeader {
  int version = 1;
  int64_t tokens = 0;
  int64_t vocab_size = 0;  // 0 = unknown
  int token_bytes() const { return version == 1 ? 2 : 4; }
};

// Reads and validates the header against the file size (not the tokens).
ShardHeader read_shard_header(const std::string& path);

// A read-only memory map of a validated shard: pages are read on demand, never the whole file.
class MappedShard {
 public:
  explicit MappedShard(const std::string& path);
  ~MappedShard();
  MappedShard(const MappedShard&) = delete;
  MappedShard& operator=(const MappedShard&) = delete;

  const std::string& path() const { return path_; }
  const ShardHeader& header() const { return header_; }
  int64_t size() const { return header_.tokens; }
  // Copies tokens [begin, begin + out.size()) as int32.
  void read(int64_t begin, std::span<int32_t> out) const;
  // Throws ShardError naming the file, the position and the id of the first token >= vocab_size.
  void check_tokens(int64_t vocab_size) const;

 private:
  std::string path_;
  ShardHeader header_;
  const unsigned char* data_ = nullptr;  // the whole file
  size_t map_bytes_ = 0;
};

// Writes a shard incrementally to `path`.tmp, then patches the count and renames it at close(), so a
// shard that exists under its name is complete.
class ShardWriter {
 public:
  ShardWriter(std::string path, int version, int64_t vocab_size);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void append(std::span<const int32_t> tokens);
  int64_t size() const { return count_; }
  void close();

 private:
  std::string path_;
  int version_;
  int64_t vocab_size_;
  int64_t count_ = 0;
  std::FILE* file_ = nullptr;
};

void write_shard(const std::string& path, std::span<const int32_t> tokens, int version, int64_t vocab_size = 0);
// The whole shard, validated (and its tokens checked against vocab_size when > 0).
std::vector<int32_t> read_shard(const std::string& path, int64_t vocab_size = 0);

}  // namespace pt::data
