// Element types and the device tag. No CUDA headers here: the backend is chosen at run time.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace pt {

enum class DType : uint8_t { f32, f64, bf16, i32, i64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);           // "f32", "f64", "bf16", "i32", "i64"
DType dtype_from_name(const std::string& name);  // throws std::invalid_argument naming the value
inline bool is_floating(DType t) { return t == DType::f32 || t == DType::f64 || t == DType::bf16; }

// bfloat16: the top 16 bits of an IEEE float32. Conversion rounds to nearest even.
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a quiet NaN
      bits = static_cast<uint16_t>((u >> 16) | 0x40);
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<uint16_t>(u >> 16);
    }
  }
  explicit operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  bool operator==(const Device&) const = default;
  std::string str() const;  // "cpu", "cuda:0"
};

Device parse_device(const std::string& name);  // "cpu", "cuda", "cuda:1"

}  // namespace pt
