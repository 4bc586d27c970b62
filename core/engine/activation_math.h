// Scalar activation functions and their derivatives, shared by the CPU kernels and (compiled
// with nvcc) the CUDA kernels so both backends compute the same formulas.
#pragma once

#include <cmath>

#include "core/engine/backend.h"

#if defined(__CUDACC__)
#define PT_HOST_DEVICE __host__ __device__
#else
#define PT_HOST_DEVICE
#endif

namespace pt::act {

using std::erf;
using std::exp;
using std::log;
using std::sqrt;
using std::tanh;

template <class T>
PT_HOST_DEVICE inline T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// gelu_tanh constant sqrt(2/pi).
template <class T>
PT_HOST_DEVICE inline T gelu_tanh_c() {
  return T(0.7978845608028654);
}

// y = f(x)
template <class T>
PT_HOST_DEVICE inline T forward(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::identity: return x;
    case UnaryOp::neg: return -x;
    case UnaryOp::relu: return x > T(0) ? x : T(0);
    case UnaryOp::gelu_erf: return T(0.5) * x * (T(1) + erf(x * T(0.7071067811865476)));
    case UnaryOp::gelu_tanh: {
      const T inner = gelu_tanh_c<T>() * (x + T(0.044715) * x * x * x);
      return T(0.5) * x * (T(1) + tanh(inner));
    }
    case UnaryOp::silu: return x * sigmoid(x);
    case UnaryOp::relu2: return x > T(0) ? x * x : T(0);
    case UnaryOp::sigmoid: return sigmoid(x);
    case UnaryOp::tanh: return tanh(x);
    case UnaryOp::exp: return exp(x);
    case UnaryOp::log: return log(x);
    case UnaryOp::sqrt: return sqrt(x);
    case UnaryOp::square: return x * x;
  }
  return x;
}

// f'(x), given x and y = f(x)
template <class T>
PT_HOST_DEVICE inline T derivative(UnaryOp op, T x, T y) {
  switch (op) {
    case UnaryOp::identity: return T(1);
    case UnaryOp::neg: return T(-1);
    case UnaryOp::relu: return x > T(0) ? T(1) : T(0);
    case UnaryOp::gelu_erf:
      return T(0.5) * (T(1) + erf(x * T(0.7071067811865476))) + x * exp(T(-0.5) * x * x) * T(0.3989422804014327);
    case UnaryOp::gelu_tanh: {
      const T c = gelu_tanh_c<T>();
      const T t = tanh(c * (x + T(0.044715) * x * x * x));
      return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * c * (T(1) + T(3 * 0.044715) * x * x);
    }
    case UnaryOp::silu: {
      const T s = sigmoid(x);
      return s * (T(1) + x * (T(1) - s));
    }
    case UnaryOp::relu2: return x > T(0) ? T(2) * x : T(0);
    case UnaryOp::sigmoid: return y * (T(1) - y);
    case UnaryOp::tanh: return T(1) - y * y;
    case UnaryOp::exp: return y;
    case UnaryOp::log: return T(1) / x;
    case UnaryOp::sqrt: return T(0.5) / y;
    case UnaryOp::square: return T(2) * x;
  }
  return T(1);
}

// y = f(x) and f'(x) together, sharing the expensive part (one exp for silu/sigmoid).
template <class T>
PT_HOST_DEVICE inline void value_and_derivative(UnaryOp op, T x, T& y, T& dydx) {
  if (op == UnaryOp::silu) {
    const T s = sigmoid(x);
    y = x * s;
    dydx = s * (T(1) + x * (T(1) - s));
    return;
  }
  y = forward(op, x);
  dydx = derivative(op, x, y);
}

// The activation a gated linear unit applies to its gate branch.
PT_HOST_DEVICE inline UnaryOp glu_activation(GluKind kind) {
  switch (kind) {
    case GluKind::swiglu: return UnaryOp::silu;
    case GluKind::geglu: return UnaryOp::gelu_tanh;
    case GluKind::reglu: return UnaryOp::relu;
  }
  return UnaryOp::silu;
}

}  // namespace pt::act
