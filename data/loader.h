// The shard loader: a BatchSource that streams token windows out of the shards matching a glob.
//
// Windows: a window is seq + 1 consecutive tokens of one shard, starting at multiples of seq
// (stride seq, so consecutive windows share one token: the last target of one is the first input of
// the next, and every token is a target exactly once). Windows never cross a shard's end; a shard
// with fewer than seq + 1 tokens is skipped.
//
// Order: epoch e visits the shards in a seeded shuffle of (seed, e), and each shard's windows in a
// seeded shuffle of (seed, e, shard). Data-parallel ranks read disjoint slices of this one global
// sequence: rank r takes windows r, r + W, r + 2W, ... (W = world size). The position is the index
// into the global sequence where the next round of W windows starts; it is the same on every rank
// after the same number of batches, so any rank's state() resumes all of them.
//
// The shards are memory-mapped one at a time and read window by window, never loaded whole. Every
// token of a shard is checked against the vocab size when the shard is first used. A background
// thread prepares the next `prefetch_batches` batches (assuming the next call asks for the same
// shape); batches are the same with and without it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/batch_source.h"

namespace pt::data {

struct ShardLoaderOptions {
  std::string glob;
  uint64_t seed = 0;
  int rank = 0;
  int world_size = 1;
  int64_t vocab_size = 0;  // 0 = no check
  int prefetch_batches = 2;
};

// Throws std::runtime_error naming the glob when nothing matches, or naming the file when a
// shard is invalid (a ShardError).
std::unique_ptr<BatchSource> open_shard_loader(const ShardLoaderOptions& options);

// The files matching a glob pattern, sorted; throws std::runtime_error naming the pattern if none does.
std::vector<std::string> expand_glob(const std::string& pattern);

}  // namespace pt::data
