// Per-target helpers shared by the kernel .cc files. Include after hwy/highway.h inside a file that
// is compiled once per target through hwy/foreach_target.h (hence the target-toggle guard).

#if defined(KLDRIFT_SERVER_KERNELS_INTERNAL_VECTOR_MATH_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef KLDRIFT_SERVER_KERNELS_INTERNAL_VECTOR_MATH_INL_H_
#undef KLDRIFT_SERVER_KERNELS_INTERNAL_VECTOR_MATH_INL_H_
#else
#define KLDRIFT_SERVER_KERNELS_INTERNAL_VECTOR_MATH_INL_H_
#endif

#include <limits>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace kldrift::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// log(x) for x > 0 and -inf for x == 0. Highway's Log is only valid on (0, DBL_MAX], so zero lanes
// are fed 1.0 and replaced afterwards rather than relying on whatever Log(0) returns.
template <class D, class V>
HWY_INLINE V LogOrMinusInf(D d, V x) {
  const auto positive = hn::Gt(x, hn::Zero(d));
  const V log_x = hn::Log(d, hn::IfThenElse(positive, x, hn::Set(d, 1.0)));
  return hn::IfThenElse(positive, log_x, hn::Set(d, -std::numeric_limits<double>::infinity()));
}

// x - log1p(x) for x > -1, without the cancellation that the direct form suffers for small |x|:
// a power series (x^2/2 - x^3/3 + ... , truncation error < 1e-19 relative) when |x| < 0.1.
template <class D, class V>
HWY_INLINE V XMinusLog1p(D d, V x) {
  V series = hn::Set(d, 1.0 / 20);
  for (int n = 19; n >= 2; --n) {
    // Horner: c_n - x * (...), alternating signs folded into the subtraction.
    series = hn::NegMulAdd(x, series, hn::Set(d, 1.0 / n));
  }
  series = hn::Mul(hn::Mul(x, x), series);
  const V direct = hn::Sub(x, hn::Log1p(d, x));
  return hn::IfThenElse(hn::Lt(hn::Abs(x), hn::Set(d, 0.1)), series, direct);
}

// expm1(x) - x for finite x, accurate near 0 (series x^2/2! + x^3/3! + ... when |x| < 0.1).
// Returns +inf past Exp's valid range (x > 706), where the true value overflows anyway.
template <class D, class V>
HWY_INLINE V Expm1MinusX(D d, V x) {
  V series = hn::Set(d, 1.0);
  // x^2 * (1/2! + x/3! + x^2/4! + ... + x^14/16!) via Horner on the ratios.
  for (int n = 16; n >= 3; --n) {
    series = hn::MulAdd(hn::Mul(x, hn::Set(d, 1.0 / n)), series, hn::Set(d, 1.0));
  }
  series = hn::Mul(hn::Mul(hn::Mul(x, x), hn::Set(d, 0.5)), series);
  const V kMaxExp = hn::Set(d, 706.0);
  const V direct = hn::Sub(hn::Expm1(d, hn::Min(x, kMaxExp)), x);
  const V result = hn::IfThenElse(hn::Lt(hn::Abs(x), hn::Set(d, 0.1)), series, direct);
  return hn::IfThenElse(hn::Gt(x, kMaxExp), hn::Set(d, std::numeric_limits<double>::infinity()),
                        result);
}

// Loads the last `count` (< Lanes(d)) elements at p into the low lanes, zeros elsewhere, without
// touching memory past p + count. Highway 1.0's MaskedLoad is a full aligned load on SSE4/EMU128,
// so it is not safe for tails.
template <class D>
HWY_INLINE hn::Vec<D> LoadTail(D d, const hn::TFromD<D>* HWY_RESTRICT p, size_t count) {
  HWY_ALIGN hn::TFromD<D> buffer[HWY_MAX_BYTES / sizeof(hn::TFromD<D>)] = {};
  for (size_t j = 0; j < count; ++j) {
    buffer[j] = p[j];
  }
  return hn::Load(d, buffer);
}

// Stores the low `count` (< Lanes(d)) lanes of v to p without writing past p + count.
template <class D>
HWY_INLINE void StoreTail(D d, hn::Vec<D> v, hn::TFromD<D>* HWY_RESTRICT p, size_t count) {
  HWY_ALIGN hn::TFromD<D> buffer[HWY_MAX_BYTES / sizeof(hn::TFromD<D>)];
  hn::Store(v, d, buffer);
  for (size_t j = 0; j < count; ++j) {
    p[j] = buffer[j];
  }
}

// Long sums are accumulated in blocks of kBlockVectors vectors whose partial sums are then added
// together, so rounding error grows like (block + n / block) * eps instead of n * eps: 2^20 bins
// stay within ~1e-13 relative. Returns the end of the block starting at `begin` for a loop that
// steps by `step` elements while `i + step <= n`.
inline constexpr size_t kBlockVectors = 256;
HWY_INLINE size_t BlockEnd(size_t begin, size_t n, size_t step) {
  const size_t whole_steps = (n - begin) / step;
  const size_t steps = whole_steps < kBlockVectors ? whole_steps : kBlockVectors;
  return begin + steps * step;
}

// Horizontal sum and max of a vector, as scalars.
template <class D, class V>
HWY_INLINE double SumLanes(D d, V v) {
  return hn::GetLane(hn::SumOfLanes(d, v));
}
template <class D, class V>
HWY_INLINE double MaxLanes(D d, V v) {
  return hn::GetLane(hn::MaxOfLanes(d, v));
}

}  // namespace HWY_NAMESPACE
}  // namespace kldrift::kernels
HWY_AFTER_NAMESPACE();

#endif  // include guard
