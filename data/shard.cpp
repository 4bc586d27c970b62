#include "data/shard.h"

#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace pt::data {

static_assert(std::endian::native == std::endian::little, "shards are little-endian; big-endian hosts are not supported");

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) { throw ShardError(path + ": " + what); }

std::string errno_text() { return std::strerror(errno); }

class Fd {
 public:
  explicit Fd(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) fail(path, "cannot open shard: " + errno_text());
  }
  ~Fd() { ::close(fd_); }
  int get() const { return fd_; }

 private:
  int fd_;
};

ShardHeader parse_header(const std::string& path, const int32_t* h, uint64_t file_bytes) {
  if (h[0] != kShardMagic) {
    fail(path, "bad magic " + std::to_string(h[0]) + " (expected " + std::to_string(kShardMagic) + "): not a token shard");
  }
  if (h[1] != 1 && h[1] != 2) {
    fail(path, "unsupported version " + std::to_string(h[1]) + " (1 = uint16 tokens, 2 = uint32 tokens)");
  }
  ShardHeader header;
  header.version = h[1];
  header.tokens = h[2];
  header.vocab_size = h[3];
  if (header.tokens < 0) fail(path, "negative token count " + std::to_string(header.tokens) + " in the header");
  if (header.vocab_size < 0) fail(path, "negative vocab size " + std::to_string(header.vocab_size) + " in the header");
  const uint64_t expected = kShardHeaderBytes + static_cast<uint64_t>(header.tokens) * header.token_bytes();
  if (file_bytes != expected) {
    fail(path, "size mismatch: the header says " + std::to_string(header.tokens) + " tokens of " +
                   std::to_string(header.token_bytes()) + " bytes (" + std::to_string(expected) + " bytes in all) but the file has " +
                   std::to_string(file_bytes) + " bytes");
  }
  return header;
}

uint64_t file_size(const std::string& path, int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(path, "cannot stat shard: " + errno_text());
  const auto bytes = static_cast<uint64_t>(st.st_size);
  if (bytes < kShardHeaderBytes) fail(path, "file has " + std::to_string(bytes) + " bytes, less than the 1024-byte header");
  return bytes;
}

}  // namespace

int shard_version_for_vocab(int64_t vocab_size) { return vocab_size <= 65536 ? 1 : 2; }

ShardHeader read_shard_header(const std::string& path) {
  Fd fd(path);
  const uint64_t bytes = file_size(path, fd.get());
  int32_t h[kShardHeaderInts];
  if (::pread(fd.get(), h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) fail(path, "cannot read the header: " + errno_text());
  return parse_header(path, h, bytes);
}

MappedShard::MappedShard(const std::string& path) : path_(path) {
  Fd fd(path);
  map_bytes_ = file_size(path, fd.get());
  void* p = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (p == MAP_FAILED) fail(path, "cannot mmap shard: " + errno_text());
  data_ = static_cast<const unsigned char*>(p);
  try {
    int32_t h[kShardHeaderInts];
    std::memcpy(h, data_, sizeof h);
    header_ = parse_header(path, h, map_bytes_);
  } catch (...) {
    ::munmap(const_cast<unsigned char*>(data_), map_bytes_);
    throw;
  }
}

MappedShard::~MappedShard() { ::munmap(const_cast<unsigned char*>(data_), map_bytes_); }

void MappedShard::read(int64_t begin, std::span<int32_t> out) const {
  const auto n = static_cast<int64_t>(out.size());
  if (begin < 0 || begin + n > size()) {
    throw std::out_of_range(path_ + ": tokens [" + std::to_string(begin) + ", " + std::to_string(begin + n) +
                            ") are outside the shard's " + std::to_string(size()));
  }
  const unsigned char* p = data_ + kShardHeaderBytes;
  if (header_.version == 1) {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, p + (begin + i) * 2, 2);
      out[i] = v;
    }
  } else {
    std::memcpy(out.data(), p + begin * 4, n * 4);
  }
}

void MappedShard::check_tokens(int64_t vocab_size) const {
  const unsigned char* p = data_ + kShardHeaderBytes;
  for (int64_t i = 0; i < size(); ++i) {
    int64_t id;
    if (header_.version == 1) {
      uint16_t v;
      std::memcpy(&v, p + i * 2, 2);
      id = v;
    } else {
      uint32_t v;
      std::memcpy(&v, p + i * 4, 4);
      id = v;
    }
    if (id >= vocab_size) {
      fail(path_, "token " + std::to_string(id) + " at position " + std::to_string(i) + " is >= the vocab size " +
                      std::to_string(vocab_size));
    }
  }
}

ShardWriter::ShardWriter(std::string path, int version, int64_t vocab_size)
    : path_(std::move(path)), version_(version), vocab_size_(vocab_size) {
  if (version != 1 && version != 2) fail(path_, "cannot write shard version " + std::to_string(version));
  file_ = std::fopen((path_ + ".tmp").c_str(), "wb");
  if (!file_) fail(path_, "cannot create shard: " + errno_text());
  const int32_t zeros[kShardHeaderInts] = {};
  if (std::fwrite(zeros, sizeof zeros, 1, file_) != 1) fail(path_, "write failed: " + errno_text());
}

ShardWriter::~ShardWriter() {
  if (file_) {  // not closed: an error path; leave no partial shard behind
    std::fclose(file_);
    std::remove((path_ + ".tmp").c_str());
  }
}

void ShardWriter::append(std::span<const int32_t> tokens) {
  std::vector<unsigned char> buf(tokens.size() * (version_ == 1 ? 2 : 4));
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t id = tokens[i];
    if (id < 0 || (version_ == 1 && id > 65535)) {
      fail(path_, "token " + std::to_string(id) + " does not fit a version " + std::to_string(version_) + " shard");
    }
    if (version_ == 1) {
      const auto v = static_cast<uint16_t>(id);
      std::memcpy(&buf[i * 2], &v, 2);
    } else {
      const auto v = static_cast<uint32_t>(id);
      std::memcpy(&buf[i * 4], &v, 4);
    }
  }
  if (count_ + static_cast<int64_t>(tokens.size()) > INT32_MAX) fail(path_, "a shard holds at most 2^31 - 1 tokens");
  if (!buf.empty() && std::fwrite(buf.data(), buf.size(), 1, file_) != 1) fail(path_, "write failed: " + errno_text());
  count_ += static_cast<int64_t>(tokens.size());
}

void ShardWriter::close() {
  int32_t header[kShardHeaderInts] = {kShardMagic, version_, static_cast<int32_t>(count_), static_cast<int32_t>(vocab_size_)};
  const bool ok = std::fseek(file_, 0, SEEK_SET) == 0 && std::fwrite(header, sizeof header, 1, file_) == 1;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  if (!ok || !closed) {
    std::remove((path_ + ".tmp").c_str());
    fail(path_, "write failed: " + errno_text());
  }
  std::error_code ec;
  std::filesystem::rename(path_ + ".tmp", path_, ec);
  if (ec) fail(path_, "cannot rename the finished shard into place: " + ec.message());
}

void write_shard(const std::string& path, std::span<const int32_t> tokens, int version, int64_t vocab_size) {
  ShardWriter w(path, version, vocab_size);
  w.append(tokens);
  w.close();
}

std::vector<int32_t> read_shard(const std::string& path, int64_t vocab_size) {
  MappedShard shard(path);
  if (vocab_size > 0) shard.check_tokens(vocab_size);
  std::vector<int32_t> tokens(shard.size());
  shard.read(0, tokens);
  return tokens;
}

}  // namespace pt::data
