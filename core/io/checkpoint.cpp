// Checkpoint container; the byte layout is specified in docs/checkpoints.md.
#include "core/io/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <set>
#include <string_view>
#include <system_error>

namespace pt::ckpt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------- format constants
// "PTCKPT\0" followed by the format version byte.
constexpr std::array<uint8_t, 8> kMagic = {'P', 'T', 'C', 'K', 'P', 'T', 0, 1};
constexpr size_t kVersionByte = 7;
constexpr uint8_t kFormatVersion = 1;
constexpr std::array<uint8_t, 8> kEndMarker = {'P', 'T', 'C', 'K', 'E', 'N', 'D', 0};
constexpr uint64_t kPrefixBytes = 16;   // magic + u64 header length
constexpr uint64_t kTrailerBytes = 16;  // u64 checksum + end marker
// The data section and every payload start on a 64-byte boundary, so a future reader can mmap the
// file and use payloads in place with cache-line (and SIMD) alignment.
constexpr uint64_t kAlign = 64;
constexpr std::array<uint8_t, kAlign> kZeros{};
constexpr size_t kWriteBufferBytes = size_t{1} << 20;  // coalesces the small writes (header, padding)

uint64_t align_up(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

std::array<uint8_t, 8> encode_le64(uint64_t v) {
  std::array<uint8_t, 8> b{};
  for (size_t i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
  return b;
}

uint64_t decode_le64(const std::array<uint8_t, 8>& b) {
  uint64_t v = 0;
  for (size_t i = 8; i-- > 0;) v = (v << 8) | b[i];
  return v;
}

std::string hex64(uint64_t v) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%016" PRIx64, v);
  return text;
}

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

[[noreturn]] void fail(const fs::path& file, const std::string& what) {
  throw CheckpointError("checkpoint " + file.string() + ": " + what);
}

// For a failed system call: "<action>[ <subject>]: <errno text>". errno is read first, before
// building the message can clobber it.
[[noreturn]] void fail_errno(const fs::path& file, const char* action, const fs::path& subject = {}) {
  const int err = errno;
  fail(file, action + (subject.empty() ? "" : " " + subject.string()) + ": " + errno_text(err));
}

// ---------------------------------------------------------------- tensor records
size_t dtype_size(const std::string& dtype) {
  if (dtype == "u8") return 1;
  if (dtype == "bf16") return 2;
  if (dtype == "f32" || dtype == "i32") return 4;
  if (dtype == "f64" || dtype == "i64") return 8;
  return 0;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// Why dtype, shape and byte count disagree, or "" when they are consistent.
std::string record_problem(const std::string& dtype, const std::vector<int64_t>& shape, uint64_t nbytes) {
  const uint64_t element_bytes = dtype_size(dtype);
  if (element_bytes == 0) return "unknown dtype '" + dtype + "'";
  uint64_t expected = element_bytes;
  for (int64_t dim : shape) {
    if (dim < 0) return "negative dimension in shape " + shape_text(shape);
    const auto d = static_cast<uint64_t>(dim);
    if (d != 0 && expected > std::numeric_limits<uint64_t>::max() / d) return "shape " + shape_text(shape) + " overflows";
    expected *= d;
  }
  if (expected != nbytes) {
    return "nbytes " + std::to_string(nbytes) + " != numel * dtype size = " + std::to_string(expected) + " (" +
           dtype + " " + shape_text(shape) + ")";
  }
  return "";
}

// ---------------------------------------------------------------- I/O helpers
struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<FILE, FileCloser>;

// Streaming XXH3-64 over everything before the trailer.
class Hasher {
 public:
  Hasher() : state_(XXH3_createState()) {
    if (!state_ || XXH3_64bits_reset(state_.get()) != XXH_OK) throw std::bad_alloc();
  }
  void update(const void* data, size_t n) { XXH3_64bits_update(state_.get(), data, n); }
  uint64_t digest() const { return XXH3_64bits_digest(state_.get()); }

 private:
  struct Free {
    void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
  };
  std::unique_ptr<XXH3_state_t, Free> state_;
};

// Deletes the temp file on every exit path until the rename has consumed it.
class TempFileGuard {
 public:
  explicit TempFileGuard(fs::path path) : path_(std::move(path)) {}
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  ~TempFileGuard() {
    std::error_code ignored;
    if (!path_.empty()) fs::remove(path_, ignored);
  }
  void release() { path_.clear(); }

 private:
  fs::path path_;
};

// Reads from a checkpoint being validated, hashing what it reads.
class HashingReader {
 public:
  HashingReader(FILE* in, const fs::path& file) : in_(in), file_(file) {}

  void read(void* data, size_t n) {
    read_unhashed(data, n);
    hasher_.update(data, n);
  }
  void read_unhashed(void* data, size_t n) {
    if (n == 0 || std::fread(data, 1, n, in_) == n) return;
    if (std::feof(in_)) fail(file_, "unexpected end of file (did it shrink while being read?)");
    fail_errno(file_, "read error");
  }
  // Hash and discard n bytes (padding between payloads).
  void skip(uint64_t n) {
    std::array<uint8_t, 4096> scratch;
    while (n > 0) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, scratch.size()));
      read(scratch.data(), chunk);
      n -= chunk;
    }
  }
  uint64_t digest() const { return hasher_.digest(); }

 private:
  FILE* in_;
  const fs::path& file_;
  Hasher hasher_;
};

// ---------------------------------------------------------------- header parsing
struct ParsedHeader {
  Checkpoint checkpoint;          // tensors carry name, dtype and shape; bytes are read later
  std::vector<uint64_t> offsets;  // per tensor, relative to the data section
  std::vector<uint64_t> nbytes;
  uint64_t data_bytes = 0;
};

const json& require_field(const fs::path& file, const json& object, const char* key, const std::string& where) {
  const auto it = object.find(key);
  if (it == object.end()) fail(file, where + " has no '" + key + "'");
  return *it;
}

void reject_unknown_keys(const fs::path& file, const json& object, std::initializer_list<std::string_view> known,
                         const std::string& where) {
  for (const auto& item : object.items()) {
    if (std::find(known.begin(), known.end(), item.key()) == known.end()) {
      fail(file, where + " has unknown key '" + item.key() + "'");
    }
  }
}

uint64_t require_unsigned(const fs::path& file, const json& object, const char* key, const std::string& where) {
  const json& value = require_field(file, object, key, where);
  if (!value.is_number_unsigned()) fail(file, where + ": '" + key + "' must be a non-negative integer");
  return value.get<uint64_t>();
}

// Checks the header's structure and the tensor index (types, dtypes, sizes, alignment, bounds,
// overlaps). Payload bytes are not touched.
ParsedHeader parse_header(const fs::path& file, const json& header) {
  if (!header.is_object()) fail(file, "header JSON is not an object");
  reject_unknown_keys(file, header, {"meta", "tensors", "data_bytes"}, "header");
  ParsedHeader parsed;
  parsed.checkpoint.meta = require_field(file, header, "meta", "header");
  parsed.data_bytes = require_unsigned(file, header, "data_bytes", "header");
  const json& index = require_field(file, header, "tensors", "header");
  if (!index.is_array()) fail(file, "header: 'tensors' must be an array");

  std::set<std::string> names;
  for (size_t i = 0; i < index.size(); ++i) {
    const json& entry = index[i];
    std::string where = "tensor index entry " + std::to_string(i);
    if (!entry.is_object()) fail(file, where + " is not an object");
    reject_unknown_keys(file, entry, {"name", "dtype", "shape", "offset", "nbytes"}, where);
    TensorRecord record;
    const json& name = require_field(file, entry, "name", where);
    const json& dtype = require_field(file, entry, "dtype", where);
    const json& shape = require_field(file, entry, "shape", where);
    if (!name.is_string()) fail(file, where + ": 'name' must be a string");
    record.name = name.get<std::string>();
    where += " ('" + record.name + "')";
    if (!dtype.is_string()) fail(file, where + ": 'dtype' must be a string");
    record.dtype = dtype.get<std::string>();
    if (!shape.is_array()) fail(file, where + ": 'shape' must be an array");
    for (const json& dim : shape) {
      if (!dim.is_number_unsigned() || dim.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())) {
        fail(file, where + ": 'shape' must hold non-negative integers, got " + shape.dump());
      }
      record.shape.push_back(dim.get<int64_t>());
    }
    const uint64_t offset = require_unsigned(file, entry, "offset", where);
    const uint64_t nbytes = require_unsigned(file, entry, "nbytes", where);

    if (!names.insert(record.name).second) fail(file, "tensor index: duplicate tensor name '" + record.name + "'");
    if (const std::string problem = record_problem(record.dtype, record.shape, nbytes); !problem.empty()) {
      fail(file, "tensor index: tensor '" + record.name + "': " + problem);
    }
    if (offset % kAlign != 0) {
      fail(file, "tensor index: tensor '" + record.name + "' offset " + std::to_string(offset) +
                     " is not 64-byte aligned");
    }
    if (nbytes > parsed.data_bytes || offset > parsed.data_bytes - nbytes) {
      fail(file, "tensor index: tensor '" + record.name + "' (offset " + std::to_string(offset) + ", " +
                     std::to_string(nbytes) + " bytes) lies beyond the data section (" +
                     std::to_string(parsed.data_bytes) + " bytes)");
    }
    parsed.checkpoint.tensors.push_back(std::move(record));
    parsed.offsets.push_back(offset);
    parsed.nbytes.push_back(nbytes);
  }
  return parsed;
}

// Tensor positions in file order (by offset; an empty tensor before a non-empty one at the same
// offset). Throws if two payloads overlap.
std::vector<size_t> payload_order(const fs::path& file, const ParsedHeader& parsed) {
  std::vector<size_t> order(parsed.offsets.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::pair(parsed.offsets[a], parsed.nbytes[a]) < std::pair(parsed.offsets[b], parsed.nbytes[b]);
  });
  for (size_t k = 1; k < order.size(); ++k) {
    const size_t prev = order[k - 1], cur = order[k];
    if (parsed.offsets[cur] < parsed.offsets[prev] + parsed.nbytes[prev]) {
      fail(file, "tensor index: tensor '" + parsed.checkpoint.tensors[cur].name + "' (offset " +
                     std::to_string(parsed.offsets[cur]) + ") overlaps tensor '" +
                     parsed.checkpoint.tensors[prev].name + "' (offset " + std::to_string(parsed.offsets[prev]) +
                     ", " + std::to_string(parsed.nbytes[prev]) + " bytes)");
    }
  }
  return order;
}

std::string step_file_name(int64_t step) {
  char name[48];
  std::snprintf(name, sizeof name, "step_%08" PRId64 ".ckpt", step);
  return name;
}

// The step of a file named exactly as checkpoint_file() names it, else nullopt.
std::optional<int64_t> parse_step(const std::string& name) {
  constexpr std::string_view prefix = "step_", suffix = ".ckpt";
  if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) || !name.ends_with(suffix)) {
    return std::nullopt;
  }
  const char* first = name.data() + prefix.size();
  const char* last = name.data() + name.size() - suffix.size();
  int64_t step = 0;
  const auto [end, err] = std::from_chars(first, last, step);
  // Only the canonical spelling counts, so each step maps to exactly one file name.
  if (err != std::errc() || end != last || step < 0 || name != step_file_name(step)) return std::nullopt;
  return step;
}

}  // namespace

const TensorRecord* Checkpoint::find(const std::string& name) const {
  for (const TensorRecord& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

void write_checkpoint(const fs::path& file, const Checkpoint& ck) {
  // Validate and lay out everything first: nothing touches the disk unless the checkpoint is sound.
  json index = json::array();
  std::vector<uint64_t> offsets;
  std::set<std::string> names;
  uint64_t data_bytes = 0;
  for (const TensorRecord& t : ck.tensors) {
    if (!names.insert(t.name).second) fail(file, "cannot write: duplicate tensor name '" + t.name + "'");
    if (const std::string problem = record_problem(t.dtype, t.shape, t.bytes.size()); !problem.empty()) {
      fail(file, "cannot write tensor '" + t.name + "': " + problem);
    }
    const uint64_t offset = align_up(data_bytes);
    index.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}, {"offset", offset},
                     {"nbytes", t.bytes.size()}});
    offsets.push_back(offset);
    data_bytes = offset + t.bytes.size();
  }
  std::string header;
  try {
    header = json{{"meta", ck.meta}, {"tensors", index}, {"data_bytes", data_bytes}}.dump();
  } catch (const json::exception& e) {
    fail(file, std::string("cannot serialize the header: ") + e.what());
  }

  const fs::path dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(file, "cannot create directory " + dir.string() + ": " + ec.message());

  // The temp file lives in the target's directory so the rename stays within one file system
  // (and is therefore atomic); the pid keeps concurrent writers from different processes apart.
  const fs::path tmp = file.string() + ".tmp." + std::to_string(::getpid());
  std::vector<char> buffer(kWriteBufferBytes);  // outlives `out`, which uses it
  TempFileGuard guard(tmp);                     // declared before `out`: the file is closed before removal
  FilePtr out(std::fopen(tmp.c_str(), "wb"));
  if (!out) fail_errno(file, "cannot create temp file", tmp);
  std::setvbuf(out.get(), buffer.data(), _IOFBF, buffer.size());

  auto write_raw = [&](const void* data, size_t n) {
    if (n != 0 && std::fwrite(data, 1, n, out.get()) != n) fail_errno(file, "cannot write temp file", tmp);
  };
  Hasher hasher;
  auto write_hashed = [&](const void* data, size_t n) {
    hasher.update(data, n);
    write_raw(data, n);
  };

  write_hashed(kMagic.data(), kMagic.size());
  write_hashed(encode_le64(header.size()).data(), 8);
  write_hashed(header.data(), header.size());
  const uint64_t header_end = kPrefixBytes + header.size();
  write_hashed(kZeros.data(), align_up(header_end) - header_end);
  uint64_t data_written = 0;
  for (size_t i = 0; i < ck.tensors.size(); ++i) {
    write_hashed(kZeros.data(), offsets[i] - data_written);
    write_hashed(ck.tensors[i].bytes.data(), ck.tensors[i].bytes.size());
    data_written = offsets[i] + ck.tensors[i].bytes.size();
  }
  write_raw(encode_le64(hasher.digest()).data(), 8);
  write_raw(kEndMarker.data(), kEndMarker.size());

  // The data must be on disk before the rename is: otherwise a crash can leave the new name
  // pointing at a file whose blocks were never written.
  if (std::fflush(out.get()) != 0) fail_errno(file, "cannot flush temp file", tmp);
  if (::fsync(::fileno(out.get())) != 0) fail_errno(file, "cannot fsync temp file", tmp);
  if (std::fclose(out.release()) != 0) fail_errno(file, "cannot close temp file", tmp);
  if (std::rename(tmp.c_str(), file.c_str()) != 0) fail_errno(file, "cannot rename into place temp file", tmp);
  guard.release();

  // The rename is a change to the directory; it is durable only once the directory is fsynced.
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) fail_errno(file, "cannot open directory", dir);
  const bool synced = ::fsync(dir_fd) == 0;
  const int sync_errno = errno;
  ::close(dir_fd);
  if (!synced) fail(file, "cannot fsync directory " + dir.string() + ": " + errno_text(sync_errno));
}

Checkpoint read_checkpoint(const fs::path& file) {
  FilePtr in(std::fopen(file.c_str(), "rb"));
  if (!in) fail_errno(file, "cannot open");
  struct stat info {};
  if (::fstat(::fileno(in.get()), &info) != 0) fail_errno(file, "cannot stat");
  if (!S_ISREG(info.st_mode)) fail(file, "not a regular file");
  const auto file_size = static_cast<uint64_t>(info.st_size);
  ::posix_fadvise(::fileno(in.get()), 0, 0, POSIX_FADV_SEQUENTIAL);  // a hint; failure is harmless
  if (file_size < kPrefixBytes + kTrailerBytes) {
    fail(file, "too short: " + std::to_string(file_size) + " bytes, a checkpoint has at least " +
                   std::to_string(kPrefixBytes + kTrailerBytes));
  }

  HashingReader reader(in.get(), file);
  std::array<uint8_t, 8> magic{};
  reader.read(magic.data(), magic.size());
  if (!std::equal(magic.begin(), magic.begin() + kVersionByte, kMagic.begin())) {
    fail(file, "bad magic: not a pretrain checkpoint");
  }
  if (magic[kVersionByte] != kFormatVersion) {
    fail(file, "unsupported format version " + std::to_string(magic[kVersionByte]) + " (this build reads version " +
                   std::to_string(kFormatVersion) + ")");
  }
  std::array<uint8_t, 8> length_bytes{};
  reader.read(length_bytes.data(), length_bytes.size());
  const uint64_t header_length = decode_le64(length_bytes);
  if (header_length > file_size - kPrefixBytes - kTrailerBytes) {
    fail(file, "header length " + std::to_string(header_length) + " extends beyond the end of the file (" +
                   std::to_string(file_size) + " bytes); the file is truncated or corrupt");
  }
  std::string header_text(header_length, '\0');
  reader.read(header_text.data(), header_text.size());
  json header;
  try {
    header = json::parse(header_text);
  } catch (const json::parse_error& e) {
    fail(file, std::string("header JSON invalid: ") + e.what());
  }
  ParsedHeader parsed = parse_header(file, header);
  const std::vector<size_t> order = payload_order(file, parsed);

  // The index fixes the file size exactly; compare before reading any payload.
  const uint64_t header_end = kPrefixBytes + header_length;
  const uint64_t data_start = align_up(header_end);
  if (data_start > file_size - kTrailerBytes || parsed.data_bytes > file_size - kTrailerBytes - data_start) {
    fail(file, "truncated: the file has " + std::to_string(file_size) + " bytes but its index implies " +
                   std::to_string(data_start) + " (up to the data section) + " + std::to_string(parsed.data_bytes) +
                   " (data) + 16 (trailer)");
  }
  const uint64_t implied_size = data_start + parsed.data_bytes + kTrailerBytes;
  if (implied_size != file_size) {
    fail(file, "size mismatch: the file has " + std::to_string(file_size) + " bytes but its index implies " +
                   std::to_string(implied_size) + " (unexpected bytes after the data section)");
  }

  reader.skip(data_start - header_end);
  uint64_t data_read = 0;
  for (size_t i : order) {
    reader.skip(parsed.offsets[i] - data_read);
    std::vector<uint8_t>& bytes = parsed.checkpoint.tensors[i].bytes;
    bytes.resize(parsed.nbytes[i]);
    reader.read(bytes.data(), bytes.size());
    data_read = parsed.offsets[i] + parsed.nbytes[i];
  }
  reader.skip(parsed.data_bytes - data_read);

  const uint64_t computed = reader.digest();
  std::array<uint8_t, 8> stored_bytes{}, end_marker{};
  reader.read_unhashed(stored_bytes.data(), stored_bytes.size());
  reader.read_unhashed(end_marker.data(), end_marker.size());
  if (end_marker != kEndMarker) fail(file, "bad trailer: the end marker \"PTCKEND\\0\" is missing; the file is corrupt");
  const uint64_t stored = decode_le64(stored_bytes);
  if (stored != computed) {
    fail(file, "checksum mismatch: stored " + hex64(stored) + ", computed " + hex64(computed) + "; the file is corrupt");
  }
  return std::move(parsed.checkpoint);
}

fs::path checkpoint_file(const fs::path& dir, int64_t step) {
  if (step < 0) throw CheckpointError("checkpoint_file: negative step " + std::to_string(step));
  return dir / step_file_name(step);
}

std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec == std::errc::no_such_file_or_directory) return found;
  for (const fs::directory_iterator end{}; !ec && it != end; it.increment(ec)) {
    const std::optional<int64_t> step = parse_step(it->path().filename().string());
    std::error_code type_ec;
    if (step && it->is_regular_file(type_ec)) found.emplace_back(*step, it->path());
  }
  if (ec) throw CheckpointError("cannot list checkpoint directory " + dir.string() + ": " + ec.message());
  std::sort(found.begin(), found.end());
  return found;
}

void prune_checkpoints(const fs::path& dir, int64_t keep_last) {
  if (keep_last < 1) throw CheckpointError("prune_checkpoints: keep_last must be >= 1, got " + std::to_string(keep_last));
  const auto found = list_checkpoints(dir);
  const auto keep = static_cast<size_t>(keep_last);
  for (size_t i = 0; i + keep < found.size(); ++i) {
    std::error_code ec;
    fs::remove(found[i].second, ec);
    if (ec) throw CheckpointError("cannot delete old checkpoint " + found[i].second.string() + ": " + ec.message());
  }
}

std::optional<std::pair<fs::path, Checkpoint>> load_latest_valid(
    const fs::path& dir, const std::function<void(const fs::path&, const std::string&)>& on_reject) {
  const auto found = list_checkpoints(dir);
  for (auto it = found.rbegin(); it != found.rend(); ++it) {
    try {
      return std::pair<fs::path, Checkpoint>(it->second, read_checkpoint(it->second));
    } catch (const CheckpointError& e) {
      if (on_reject) on_reject(it->second, e.what());
    }
  }
  return std::nullopt;
}

}  // namespace pt::ckpt
