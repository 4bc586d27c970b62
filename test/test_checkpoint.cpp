// Checkpoint container: round trips, the documented byte layout, atomic writes, corruption
// detection, listing/pruning and recovery from a corrupt newest checkpoint.
#include "core/io/checkpoint.h"

#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

#include "test/catch.h"
#include "test/temp_dir.h"

namespace fs = std::filesystem;
using namespace pt::ckpt;
using nlohmann::json;

using pt::test::TempDir;

namespace {

std::vector<uint8_t> pattern_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> bytes(n);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
  return bytes;
}

TensorRecord tensor(const std::string& name, const std::string& dtype, std::vector<int64_t> shape, size_t elem_bytes,
                    uint32_t seed) {
  size_t numel = 1;
  for (int64_t d : shape) numel *= static_cast<size_t>(d);
  return {name, dtype, std::move(shape), pattern_bytes(numel * elem_bytes, seed)};
}

// Meta plus one tensor of every dtype, a scalar, an empty tensor and one larger than 1 MiB.
Checkpoint sample_checkpoint(int64_t step = 100) {
  Checkpoint ck;
  ck.meta = {{"step", step},
             {"tokens_seen", int64_t{1} << 40},
             {"spec", {{"model", {{"d_model", 64}, {"preset", "llama"}}}}},
             {"rng", {1, 2, 3}},
             {"loss", 2.5}};
  ck.tensors.push_back(tensor("wte", "f32", {7, 3}, 4, 1));
  ck.tensors.push_back(tensor("adam.m", "f64", {5}, 8, 2));
  ck.tensors.push_back(tensor("act", "bf16", {3, 1, 3}, 2, 3));
  ck.tensors.push_back(tensor("count", "i32", {}, 4, 4));
  ck.tensors.push_back(tensor("empty", "u8", {0, 5}, 1, 5));
  ck.tensors.push_back(tensor("order", "i64", {9}, 8, 6));
  ck.tensors.push_back(tensor("big", "f32", {640, 512}, 4, 7));  // 1.25 MiB
  return ck;
}

std::vector<uint8_t> read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& file, const std::vector<uint8_t>& bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

uint64_t load_le64(const std::vector<uint8_t>& bytes, size_t at) {
  uint64_t v = 0;
  for (size_t i = 8; i-- > 0;) v = (v << 8) | bytes[at + i];
  return v;
}

void store_le64(std::vector<uint8_t>& bytes, size_t at, uint64_t v) {
  for (size_t i = 0; i < 8; ++i) bytes[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t align64(uint64_t n) { return (n + 63) / 64 * 64; }

// A file laid out as docs/checkpoints.md describes, from a header and a data section, with a
// correct checksum: lets tests craft structurally valid files whose index is wrong.
void write_raw_checkpoint(const fs::path& file, const json& header, const std::vector<uint8_t>& data) {
  const std::string text = header.dump();
  const uint8_t magic[8] = {'P', 'T', 'C', 'K', 'P', 'T', 0, 1};
  const size_t header_at = 16;
  // Sized once (growing a 16-byte vector with resize() trips a false GCC 12 -Wstringop-overread).
  std::vector<uint8_t> bytes(align64(header_at + text.size()), 0);
  std::copy(magic, magic + 8, bytes.begin());
  store_le64(bytes, 8, text.size());
  std::copy(text.data(), text.data() + text.size(), bytes.data() + header_at);
  bytes.insert(bytes.end(), data.begin(), data.end());
  const uint64_t checksum = XXH3_64bits(bytes.data(), bytes.size());
  bytes.resize(bytes.size() + 8);
  store_le64(bytes, bytes.size() - 8, checksum);
  bytes.insert(bytes.end(), {'P', 'T', 'C', 'K', 'E', 'N', 'D', 0});
  write_file(file, bytes);
}

// Reads `file` expecting a CheckpointError that names the file and contains `part`. Returns `part`
// when it does, otherwise the actual message (or a note that the file was accepted), so a failing
// CHECK(rejection(...) == part) prints what was wrong.
std::string rejection(const fs::path& file, const std::string& part) {
  try {
    read_checkpoint(file);
  } catch (const CheckpointError& e) {
    const std::string message = e.what();
    const bool matches = message.find(part) != std::string::npos && message.find(file.string()) != std::string::npos;
    return matches ? part : message;
  }
  return "<read_checkpoint accepted the file>";
}

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<int64_t> listed_steps(const fs::path& dir) {
  std::vector<int64_t> steps;
  for (const auto& [step, path] : list_checkpoints(dir)) {
    CHECK(path == checkpoint_file(dir, step));
    steps.push_back(step);
  }
  return steps;
}

void write_step(const fs::path& dir, int64_t step) {
  Checkpoint ck;
  ck.meta = {{"step", step}};
  ck.tensors.push_back(tensor("w", "f32", {4, 4}, 4, static_cast<uint32_t>(step)));
  write_checkpoint(checkpoint_file(dir, step), ck);
}

}  // namespace

TEST_CASE("checkpoint round trip preserves meta and tensor bytes", "[checkpoint]") {
  TempDir tmp;
  const fs::path file = tmp.path / "step_00000100.ckpt";
  const Checkpoint original = sample_checkpoint();
  write_checkpoint(file, original);

  const Checkpoint loaded = read_checkpoint(file);
  CHECK(loaded.meta == original.meta);
  REQUIRE(loaded.tensors.size() == original.tensors.size());
  for (size_t i = 0; i < original.tensors.size(); ++i) {
    CHECK(loaded.tensors[i].name == original.tensors[i].name);
    CHECK(loaded.tensors[i].dtype == original.tensors[i].dtype);
    CHECK(loaded.tensors[i].shape == original.tensors[i].shape);
    CHECK(loaded.tensors[i].bytes == original.tensors[i].bytes);
  }
  REQUIRE(loaded.find("big") != nullptr);
  CHECK(loaded.find("big")->bytes.size() == 640u * 512u * 4u);
  CHECK(loaded.find("empty")->bytes.empty());
  CHECK(loaded.find("count")->bytes.size() == 4);
  CHECK(loaded.find("missing") == nullptr);

  SECTION("an empty checkpoint round trips") {
    write_checkpoint(file, Checkpoint{});
    const Checkpoint empty = read_checkpoint(file);
    CHECK(empty.meta.is_null());
    CHECK(empty.tensors.empty());
  }
  SECTION("rewriting replaces the file") {
    Checkpoint next = sample_checkpoint(200);
    next.tensors.pop_back();
    write_checkpoint(file, next);
    const Checkpoint reloaded = read_checkpoint(file);
    CHECK(reloaded.meta["step"] == 200);
    CHECK(reloaded.tensors.size() == next.tensors.size());
  }
}

TEST_CASE("checkpoint file layout matches docs/checkpoints.md", "[checkpoint]") {
  TempDir tmp;
  const fs::path file = tmp.path / "c.ckpt";
  const Checkpoint ck = sample_checkpoint();
  write_checkpoint(file, ck);
  const std::vector<uint8_t> bytes = read_file(file);

  REQUIRE(bytes.size() >= 32);
  CHECK(std::memcmp(bytes.data(), "PTCKPT\0\1", 8) == 0);
  const uint64_t header_length = load_le64(bytes, 8);
  REQUIRE(16 + header_length <= bytes.size());
  const json header = json::parse(bytes.begin() + 16, bytes.begin() + 16 + static_cast<ptrdiff_t>(header_length));
  CHECK(header["meta"] == ck.meta);
  const uint64_t data_start = align64(16 + header_length);
  for (uint64_t i = 16 + header_length; i < data_start; ++i) CHECK(bytes[i] == 0);

  REQUIRE(header["tensors"].size() == ck.tensors.size());
  uint64_t data_end = 0;
  for (size_t i = 0; i < ck.tensors.size(); ++i) {
    const json& entry = header["tensors"][i];
    const TensorRecord& t = ck.tensors[i];
    CHECK(entry["name"] == t.name);
    CHECK(entry["dtype"] == t.dtype);
    CHECK(entry["shape"].get<std::vector<int64_t>>() == t.shape);
    CHECK(entry["nbytes"] == t.bytes.size());
    const auto offset = entry["offset"].get<uint64_t>();
    CHECK(offset % 64 == 0);
    CHECK(offset >= data_end);  // in index order, no overlap
    CHECK(std::equal(t.bytes.begin(), t.bytes.end(), bytes.begin() + static_cast<ptrdiff_t>(data_start + offset)));
    data_end = offset + t.bytes.size();
  }
  CHECK(header["data_bytes"] == data_end);
  REQUIRE(bytes.size() == data_start + data_end + 16);
  CHECK(load_le64(bytes, bytes.size() - 16) == XXH3_64bits(bytes.data(), bytes.size() - 16));
  CHECK(std::memcmp(bytes.data() + bytes.size() - 8, "PTCKEND\0", 8) == 0);

  SECTION("a file crafted from the documented layout reads back") {
    write_raw_checkpoint(tmp.path / "crafted.ckpt", header,
                         std::vector<uint8_t>(bytes.begin() + static_cast<ptrdiff_t>(data_start), bytes.end() - 16));
    CHECK(read_file(tmp.path / "crafted.ckpt") == bytes);
  }
}

TEST_CASE("checkpoint writes are atomic and leave no temp files", "[checkpoint]") {
  TempDir tmp;
  const fs::path dir = tmp.path / "run" / "checkpoints";  // created by the writer

  SECTION("successful writes leave only the checkpoint") {
    write_checkpoint(dir / "step_00000001.ckpt", sample_checkpoint(1));
    write_checkpoint(dir / "step_00000001.ckpt", sample_checkpoint(2));
    CHECK(names_in(dir) == std::vector<std::string>{"step_00000001.ckpt"});
    CHECK(read_checkpoint(dir / "step_00000001.ckpt").meta["step"] == 2);
  }
  SECTION("a failed write removes its temp file and names the file") {
    const fs::path blocked = dir / "step_00000002.ckpt";
    fs::create_directories(blocked / "occupied");  // rename() cannot replace a non-empty directory
    std::string message;
    try {
      write_checkpoint(blocked, sample_checkpoint());
    } catch (const CheckpointError& e) {
      message = e.what();
    }
    CHECK(message.find(blocked.string()) != std::string::npos);
    CHECK(message.find("cannot rename") != std::string::npos);
    CHECK(names_in(dir) == std::vector<std::string>{"step_00000002.ckpt"});
    CHECK(fs::is_directory(blocked));
  }
  SECTION("inconsistent checkpoints are rejected before anything is written") {
    Checkpoint bad = sample_checkpoint();
    SECTION("byte count not matching the shape") { bad.tensors[0].bytes.pop_back(); }
    SECTION("unknown dtype") { bad.tensors[0].dtype = "f16"; }
    SECTION("negative dimension") { bad.tensors[0].shape = {-1, 3}; }
    SECTION("duplicate name") { bad.tensors[1].name = bad.tensors[0].name; }
    SECTION("meta that is not valid UTF-8") { bad.meta["note"] = std::string("\xff\xfe"); }
    REQUIRE_THROWS_AS(write_checkpoint(dir / "step_00000003.ckpt", bad), CheckpointError);
    CHECK(!fs::exists(dir));
  }
}

TEST_CASE("checkpoint corruption is detected with a precise message", "[checkpoint]") {
  TempDir tmp;
  const fs::path file = tmp.path / "step_00000100.ckpt";
  write_checkpoint(file, sample_checkpoint());
  std::vector<uint8_t> bytes = read_file(file);
  const uint64_t data_start = align64(16 + load_le64(bytes, 8));

  SECTION("missing file") {
    CHECK(rejection(tmp.path / "step_00000200.ckpt", "cannot open: No such file or directory") ==
          "cannot open: No such file or directory");
  }
  SECTION("too short") {
    bytes.resize(20);
    write_file(file, bytes);
    CHECK(rejection(file, "too short: 20 bytes") == "too short: 20 bytes");
  }
  SECTION("bad magic") {
    bytes[0] = 'X';
    write_file(file, bytes);
    CHECK(rejection(file, "bad magic") == "bad magic");
  }
  SECTION("unsupported version") {
    bytes[7] = 2;
    write_file(file, bytes);
    CHECK(rejection(file, "unsupported format version 2") == "unsupported format version 2");
  }
  SECTION("header length beyond the file") {
    store_le64(bytes, 8, bytes.size());
    write_file(file, bytes);
    CHECK(rejection(file, "header length") == "header length");
    CHECK(rejection(file, "extends beyond the end of the file") == "extends beyond the end of the file");
  }
  SECTION("garbage header") {
    std::fill(bytes.begin() + 16, bytes.begin() + 40, '#');
    write_file(file, bytes);
    CHECK(rejection(file, "header JSON invalid") == "header JSON invalid");
  }
  SECTION("truncated inside a payload") {
    bytes.resize(bytes.size() - 1000);
    write_file(file, bytes);
    CHECK(rejection(file, "truncated: the file has") == "truncated: the file has");
  }
  SECTION("truncated at the start of the data section") {
    bytes.resize(data_start + 16);
    write_file(file, bytes);
    CHECK(rejection(file, "truncated: the file has") == "truncated: the file has");
  }
  SECTION("bytes appended") {
    bytes.push_back(0);
    write_file(file, bytes);
    CHECK(rejection(file, "size mismatch") == "size mismatch");
  }
  SECTION("bad trailer") {
    bytes.back() = 'X';
    write_file(file, bytes);
    CHECK(rejection(file, "bad trailer") == "bad trailer");
  }
  SECTION("one flipped payload byte") {
    bytes[data_start + 100] ^= 0x01;
    write_file(file, bytes);
    CHECK(rejection(file, "checksum mismatch: stored 0x") == "checksum mismatch: stored 0x");
    CHECK(rejection(file, ", computed 0x") == ", computed 0x");
    CHECK(rejection(file, "; the file is corrupt") == "; the file is corrupt");
  }
  SECTION("one flipped byte in the padding after the header") {
    bytes[data_start - 1] ^= 0x01;
    write_file(file, bytes);
    CHECK(rejection(file, "checksum mismatch") == "checksum mismatch");
  }
  SECTION("a damaged stored checksum") {
    bytes[bytes.size() - 16] ^= 0x80;
    write_file(file, bytes);
    CHECK(rejection(file, "checksum mismatch") == "checksum mismatch");
  }
}

TEST_CASE("checkpoint tensor index inconsistencies are rejected", "[checkpoint]") {
  TempDir tmp;
  const fs::path file = tmp.path / "crafted.ckpt";
  const std::vector<uint8_t> data(256, 7);
  json a = {{"name", "a"}, {"dtype", "f32"}, {"shape", {4, 4}}, {"offset", 0}, {"nbytes", 64}};
  json b = {{"name", "b"}, {"dtype", "u8"}, {"shape", {100}}, {"offset", 64}, {"nbytes", 100}};
  json header = {{"meta", {{"step", 1}}}, {"tensors", json::array()}, {"data_bytes", data.size()}};

  SECTION("a consistent crafted index reads back") {
    header["tensors"] = {a, b};
    write_raw_checkpoint(file, header, data);
    const Checkpoint ck = read_checkpoint(file);
    CHECK(ck.tensors.size() == 2);
    CHECK(ck.find("b")->bytes == std::vector<uint8_t>(100, 7));
  }
  SECTION("unknown dtype") {
    a["dtype"] = "f16";
    header["tensors"] = {a, b};
    write_raw_checkpoint(file, header, data);
    CHECK(rejection(file, "tensor 'a': unknown dtype 'f16'") == "tensor 'a': unknown dtype 'f16'");
  }
  SECTION("nbytes != numel * dtype size") {
    b["nbytes"] = 99;
    header["tensors"] = {a, b};
    write_raw_checkpoint(file, header, data);
    CHECK(rejection(file, "nbytes 99 != numel * dtype size = 100") == "nbytes 99 != numel * dtype size = 100");
  }
  SECTION("overlapping payloads") {
    a["shape"] = json::array({32});
    a["nbytes"] = 128;
    header["tensors"] = {a, b};
    write_raw_checkpoint(file, header, data);
    CHECK(rejection(file, "tensor 'b' (offset 64) overlaps tensor 'a'") == "tensor 'b' (offset 64) overlaps tensor 'a'");
  }
  SECTION("payload beyond the data section") {
    b["offset"] = 192;
    header["tensors"] = {a, b};
    write_raw_checkpoint(file, header, data);
    CHECK(rejection(file, "lies beyond the data section (256 bytes)") == "lies beyond the data section (256 bytes)");
  }
  SECTION("misaligned offset") {
    b["offset"] = 65;
    header["tensors"] = {a, b};
    write_raw_checkpoint(file, header, data);
    CHECK(rejection(file, "offset 65 is not 64-byte aligned") == "offset 65 is not 64-byte aligned");
  }
  SECTION("duplicate names") {
    b["name"] = "a";
    header["tensors"] = {a, b};
    write_raw_checkpoint(file, header, data);
    CHECK(rejection(file, "duplicate tensor name 'a'") == "duplicate tensor name 'a'");
  }
  SECTION("wrong field type") {
    a["shape"] = "4x4";
    header["tensors"] = {a, b};
    write_raw_checkpoint(file, header, data);
    CHECK(rejection(file, "'shape' must be an array") == "'shape' must be an array");
  }
  SECTION("missing field") {
    b.erase("offset");
    header["tensors"] = {a, b};
    write_raw_checkpoint(file, header, data);
    CHECK(rejection(file, "tensor index entry 1 ('b') has no 'offset'") == "tensor index entry 1 ('b') has no 'offset'");
  }
  SECTION("unknown header key") {
    header["extra"] = true;
    write_raw_checkpoint(file, header, data);
    CHECK(rejection(file, "header has unknown key 'extra'") == "header has unknown key 'extra'");
  }
  SECTION("header that is not an object") {
    write_raw_checkpoint(file, json::array(), data);
    CHECK(rejection(file, "header JSON is not an object") == "header JSON is not an object");
  }
  SECTION("data section larger than the file") {
    header["tensors"] = {a, b};
    header["data_bytes"] = 4096;
    write_raw_checkpoint(file, header, data);
    CHECK(rejection(file, "truncated") == "truncated");
  }
}

TEST_CASE("checkpoint listing and pruning keep the newest", "[checkpoint]") {
  TempDir tmp;
  const fs::path dir = tmp.path;
  CHECK(checkpoint_file(dir, 100) == dir / "step_00000100.ckpt");
  CHECK(checkpoint_file(dir, 123456789) == dir / "step_123456789.ckpt");
  REQUIRE_THROWS_AS(checkpoint_file(dir, -1), CheckpointError);
  CHECK(list_checkpoints(dir / "missing").empty());

  for (int64_t step : {5, 100, 20, 3, 123456789}) write_step(dir, step);
  // Names that are not checkpoints: a temp file, a non-canonical step, a directory, other files.
  write_file(dir / "step_00000200.ckpt.tmp.4242", {1, 2, 3});
  write_file(dir / "step_7.ckpt", {1});
  write_file(dir / "step_abcdefgh.ckpt", {1});
  write_file(dir / "notes.txt", {1});
  fs::create_directories(dir / "step_00000300.ckpt");

  CHECK(listed_steps(dir) == std::vector<int64_t>{3, 5, 20, 100, 123456789});

  prune_checkpoints(dir, 10);
  CHECK(listed_steps(dir).size() == 5);
  prune_checkpoints(dir, 2);
  CHECK(listed_steps(dir) == std::vector<int64_t>{100, 123456789});
  CHECK(names_in(dir) == std::vector<std::string>{"notes.txt", "step_00000100.ckpt", "step_00000200.ckpt.tmp.4242",
                                                   "step_00000300.ckpt", "step_123456789.ckpt", "step_7.ckpt",
                                                   "step_abcdefgh.ckpt"});
  REQUIRE_THROWS_AS(prune_checkpoints(dir, 0), CheckpointError);
}

TEST_CASE("load_latest_valid skips corrupt checkpoints", "[checkpoint]") {
  TempDir tmp;
  const fs::path dir = tmp.path;
  std::vector<std::pair<fs::path, std::string>> rejected;
  const auto record = [&](const fs::path& path, const std::string& reason) { rejected.emplace_back(path, reason); };

  SECTION("empty or missing directory") {
    CHECK(!load_latest_valid(dir, record).has_value());
    CHECK(!load_latest_valid(dir / "missing", record).has_value());
    CHECK(rejected.empty());
  }
  SECTION("a corrupt newest checkpoint falls back to the previous one") {
    for (int64_t step : {1, 2, 3}) write_step(dir, step);
    std::vector<uint8_t> bytes = read_file(checkpoint_file(dir, 3));
    bytes[bytes.size() - 20] ^= 0xff;  // a payload byte
    write_file(checkpoint_file(dir, 3), bytes);

    const auto latest = load_latest_valid(dir, record);
    REQUIRE(latest.has_value());
    CHECK(latest->first == checkpoint_file(dir, 2));
    CHECK(latest->second.meta["step"] == 2);
    REQUIRE(rejected.size() == 1);
    CHECK(rejected[0].first == checkpoint_file(dir, 3));
    CHECK(rejected[0].second.find("checksum mismatch") != std::string::npos);
  }
  SECTION("no valid checkpoint") {
    for (int64_t step : {1, 2}) {
      write_step(dir, step);
      fs::resize_file(checkpoint_file(dir, step), fs::file_size(checkpoint_file(dir, step)) - 10);
    }
    CHECK(!load_latest_valid(dir, record).has_value());
    REQUIRE(rejected.size() == 2);
    CHECK(rejected[0].first == checkpoint_file(dir, 2));
    CHECK(rejected[1].first == checkpoint_file(dir, 1));
    CHECK(rejected[1].second.find("truncated") != std::string::npos);
  }
}
