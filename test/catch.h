// Catch2 compatibility: Debian ships Catch2 v2 (single header), the GPU machines v3.
// Use only what both provide, plus the helpers below. CMake says which one it found
// (PRETRAIN_CATCH2_V2 for v2), so a machine with both never mixes headers and library.
#pragma once

#include <string>

#if !defined(PRETRAIN_CATCH2_V2)
#include <catch2/catch_all.hpp>
using Catch::Approx;
namespace pt::test {
// Matcher: the exception message / string contains `part` (for CHECK_THROWS_WITH and CHECK_THAT).
inline auto contains(const std::string& part) { return Catch::Matchers::ContainsSubstring(part); }
}  // namespace pt::test
#else
#include <catch2/catch.hpp>
namespace pt::test {
inline auto contains(const std::string& part) { return Catch::Matchers::Contains(part); }
}  // namespace pt::test
#endif
