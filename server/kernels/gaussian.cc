#include "server/kernels/gaussian.h"

#include <cmath>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "server/kernels/gaussian.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must come after foreach_target.h.
#include "hwy/highway.h"
#include "server/kernels/internal/vector_math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kldrift::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using D = hn::ScalableTag<double>;
using V = hn::Vec<D>;

// Below this, r - 1 = (v1 - v2) / v2 has lost the digits of a small ratio r (and rounds to -1
// once r < 2^-53), so log1p(r - 1) is no longer log r.
constexpr double kSmallRatioMinusOne = 1e-3 - 1;

// 2 * KL(N(m1, v1) || N(m2, v2)) per lane: (r - 1 - log r) + (m1 - m2)^2 / v2, r = v1 / v2.
// Divides by v2 rather than multiplying by 1 / v2, which overflows for a subnormal v2 (0 * inf is
// NaN). Where r is tiny or overflows, log r is taken as log v1 - log v2: the result is then right,
// or +inf when it is past the double range, never NaN.
HWY_INLINE V TwiceKl(D d, V m1, V v1, V m2, V v2) {
  const V rel_var_change = hn::Div(hn::Sub(v1, v2), v2);
  const V mean_diff = hn::Sub(m1, m2);
  V var_term = XMinusLog1p(d, rel_var_change);
  const auto far = hn::Or(hn::Lt(rel_var_change, hn::Set(d, kSmallRatioMinusOne)),
                          hn::Eq(rel_var_change, hn::Set(d, HUGE_VAL)));
  if (HWY_UNLIKELY(!hn::AllFalse(d, far))) {
    const V log_ratio = hn::Sub(hn::Log(d, v1), hn::Log(d, v2));
    var_term = hn::IfThenElse(far, hn::Sub(rel_var_change, log_ratio), var_term);
  }
  return hn::Add(hn::Div(hn::Mul(mean_diff, mean_diff), v2), var_term);
}

template <bool kStandardNormal>
GaussianKlPair GaussianKlLoop(const double* HWY_RESTRICT mean1, const double* HWY_RESTRICT var1,
                              const double* HWY_RESTRICT mean2, const double* HWY_RESTRICT var2,
                              size_t n) {
  const D d;
  const size_t lanes = hn::Lanes(d);
  V forward = hn::Zero(d);
  V reverse = hn::Zero(d);
  const V zero = hn::Zero(d);
  const V one = hn::Set(d, 1.0);
  size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const V m1 = hn::LoadU(d, mean1 + i);
    const V v1 = hn::LoadU(d, var1 + i);
    const V m2 = kStandardNormal ? zero : hn::LoadU(d, mean2 + i);
    const V v2 = kStandardNormal ? one : hn::LoadU(d, var2 + i);
    forward = hn::Add(forward, TwiceKl(d, m1, v1, m2, v2));
    reverse = hn::Add(reverse, TwiceKl(d, m2, v2, m1, v1));
  }
  if (i < n) {
    // Padding lanes hold identical unit Gaussians, whose divergence is exactly zero.
    const size_t rest = n - i;
    const auto valid = hn::FirstN(d, rest);
    const V m1 = LoadTail(d, mean1 + i, rest);
    const V v1 = hn::IfThenElse(valid, LoadTail(d, var1 + i, rest), one);
    const V m2 = kStandardNormal ? zero : LoadTail(d, mean2 + i, rest);
    const V v2 = kStandardNormal ? one : hn::IfThenElse(valid, LoadTail(d, var2 + i, rest), one);
    forward = hn::Add(forward, hn::IfThenElseZero(valid, TwiceKl(d, m1, v1, m2, v2)));
    reverse = hn::Add(reverse, hn::IfThenElseZero(valid, TwiceKl(d, m2, v2, m1, v1)));
  }
  return GaussianKlPair{0.5 * SumLanes(d, forward), 0.5 * SumLanes(d, reverse)};
}

GaussianKlPair DiagonalGaussianKlImpl(const double* mean1, const double* var1, const double* mean2,
                                      const double* var2, size_t n) {
  return GaussianKlLoop<false>(mean1, var1, mean2, var2, n);
}

GaussianKlPair DiagonalGaussianKlStandardNormalImpl(const double* mean, const double* var,
                                                    size_t n) {
  return GaussianKlLoop<true>(mean, var, nullptr, nullptr, n);
}

}  // namespace HWY_NAMESPACE
}  // namespace kldrift::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kldrift::kernels {

HWY_EXPORT(DiagonalGaussianKlImpl);
HWY_EXPORT(DiagonalGaussianKlStandardNormalImpl);

GaussianKlPair DiagonalGaussianKl(const double* mean1, const double* var1, const double* mean2,
                                  const double* var2, size_t d) {
  return HWY_DYNAMIC_DISPATCH(DiagonalGaussianKlImpl)(mean1, var1, mean2, var2, d);
}

GaussianKlPair DiagonalGaussianKlStandardNormal(const double* mean, const double* var, size_t d) {
  return HWY_DYNAMIC_DISPATCH(DiagonalGaussianKlStandardNormalImpl)(mean, var, d);
}

}  // namespace kldrift::kernels
#endif  // HWY_ONCE
