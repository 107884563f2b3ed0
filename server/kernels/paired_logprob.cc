#include "server/kernels/paired_logprob.h"

#include <cmath>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "server/kernels/paired_logprob.cc"
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

struct Estimators {
  V k1, k2, k3;
};

// k1 = -log r, k2 = (log r)^2 / 2, k3 = (r - 1) - log r, with log r = log p_ref - log p_cur.
HWY_INLINE Estimators EstimatorsFor(D d, V log_p_current, V log_p_reference) {
  const V log_r = hn::Sub(log_p_reference, log_p_current);
  return Estimators{hn::Neg(log_r), hn::Mul(hn::Mul(log_r, log_r), hn::Set(d, 0.5)),
                    Expm1MinusX(d, log_r)};
}

// Calls visit(valid_mask, estimators) for each vector of samples (padding lanes masked off) and
// end_block() after every kBlockVectors vectors and at the end, so callers can accumulate
// blockwise.
template <class Visit, class EndBlock>
HWY_INLINE void ForEachEstimatorVector(D d, const double* HWY_RESTRICT log_p_current,
                                       const double* HWY_RESTRICT log_p_reference, size_t n,
                                       const Visit& visit, const EndBlock& end_block) {
  const size_t lanes = hn::Lanes(d);
  const auto all = hn::FirstN(d, lanes);
  size_t i = 0;
  while (i + lanes <= n) {
    const size_t block_end = BlockEnd(i, n, lanes);
    for (; i < block_end; i += lanes) {
      visit(all,
            EstimatorsFor(d, hn::LoadU(d, log_p_current + i), hn::LoadU(d, log_p_reference + i)));
    }
    end_block();
  }
  if (i < n) {
    visit(hn::FirstN(d, n - i), EstimatorsFor(d, LoadTail(d, log_p_current + i, n - i),
                                              LoadTail(d, log_p_reference + i, n - i)));
    end_block();
  }
}

// Adds each member of `block` into `total` and zeroes `block`.
HWY_INLINE void Fold(D d, Estimators& block, Estimators& total) {
  total.k1 = hn::Add(total.k1, block.k1);
  total.k2 = hn::Add(total.k2, block.k2);
  total.k3 = hn::Add(total.k3, block.k3);
  block = Estimators{hn::Zero(d), hn::Zero(d), hn::Zero(d)};
}

PolicyKlSums SumPolicyKlImpl(const double* HWY_RESTRICT log_p_current,
                             const double* HWY_RESTRICT log_p_reference, size_t n) {
  const D d;
  const V zero = hn::Zero(d);
  Estimators sum{zero, zero, zero}, block_sum{zero, zero, zero};
  Estimators sum_sq{zero, zero, zero}, block_sum_sq{zero, zero, zero};
  ForEachEstimatorVector(
      d, log_p_current, log_p_reference, n,
      [&](auto valid, Estimators e) {
        const V k1 = hn::IfThenElseZero(valid, e.k1);
        const V k2 = hn::IfThenElseZero(valid, e.k2);
        const V k3 = hn::IfThenElseZero(valid, e.k3);
        block_sum.k1 = hn::Add(block_sum.k1, k1);
        block_sum.k2 = hn::Add(block_sum.k2, k2);
        block_sum.k3 = hn::Add(block_sum.k3, k3);
        block_sum_sq.k1 = hn::MulAdd(k1, k1, block_sum_sq.k1);
        block_sum_sq.k2 = hn::MulAdd(k2, k2, block_sum_sq.k2);
        block_sum_sq.k3 = hn::MulAdd(k3, k3, block_sum_sq.k3);
      },
      [&] {
        Fold(d, block_sum, sum);
        Fold(d, block_sum_sq, sum_sq);
      });
  PolicyKlSums sums;
  sums.samples = static_cast<double>(n);
  sums.k1 = SumLanes(d, sum.k1);
  sums.k2 = SumLanes(d, sum.k2);
  sums.k3 = SumLanes(d, sum.k3);
  sums.k1_sq = SumLanes(d, sum_sq.k1);
  sums.k2_sq = SumLanes(d, sum_sq.k2);
  sums.k3_sq = SumLanes(d, sum_sq.k3);
  return sums;
}

PolicyKlEstimates EstimatePolicyKlImpl(const double* HWY_RESTRICT log_p_current,
                                       const double* HWY_RESTRICT log_p_reference, size_t n) {
  const D d;
  const V zero = hn::Zero(d);
  // Pass 1: means.
  Estimators sum{zero, zero, zero}, block{zero, zero, zero};
  ForEachEstimatorVector(
      d, log_p_current, log_p_reference, n,
      [&](auto valid, Estimators e) {
        block.k1 = hn::Add(block.k1, hn::IfThenElseZero(valid, e.k1));
        block.k2 = hn::Add(block.k2, hn::IfThenElseZero(valid, e.k2));
        block.k3 = hn::Add(block.k3, hn::IfThenElseZero(valid, e.k3));
      },
      [&] { Fold(d, block, sum); });
  const double count = static_cast<double>(n);
  const double mean_k1 = SumLanes(d, sum.k1) / count;
  const double mean_k2 = SumLanes(d, sum.k2) / count;
  const double mean_k3 = SumLanes(d, sum.k3) / count;
  // Pass 2: squared deviations from the means (no E[x^2] - E[x]^2 cancellation).
  const V m1 = hn::Set(d, mean_k1), m2 = hn::Set(d, mean_k2), m3 = hn::Set(d, mean_k3);
  Estimators dev{zero, zero, zero};
  ForEachEstimatorVector(
      d, log_p_current, log_p_reference, n,
      [&](auto valid, Estimators e) {
        const V d1 = hn::IfThenElseZero(valid, hn::Sub(e.k1, m1));
        const V d2 = hn::IfThenElseZero(valid, hn::Sub(e.k2, m2));
        const V d3 = hn::IfThenElseZero(valid, hn::Sub(e.k3, m3));
        block.k1 = hn::MulAdd(d1, d1, block.k1);
        block.k2 = hn::MulAdd(d2, d2, block.k2);
        block.k3 = hn::MulAdd(d3, d3, block.k3);
      },
      [&] { Fold(d, block, dev); });
  auto standard_error = [&](double squared_deviations) {
    if (n < 2) {
      return std::numeric_limits<double>::infinity();
    }
    return std::sqrt(squared_deviations / (count - 1) / count);
  };
  PolicyKlEstimates out;
  out.samples = n;
  out.k1 = {mean_k1, standard_error(SumLanes(d, dev.k1))};
  out.k2 = {mean_k2, standard_error(SumLanes(d, dev.k2))};
  out.k3 = {mean_k3, standard_error(SumLanes(d, dev.k3))};
  return out;
}

}  // namespace HWY_NAMESPACE
}  // namespace kldrift::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kldrift::kernels {

HWY_EXPORT(EstimatePolicyKlImpl);
HWY_EXPORT(SumPolicyKlImpl);

PolicyKlEstimates EstimatePolicyKl(const double* log_p_current, const double* log_p_reference,
                                   size_t n) {
  return HWY_DYNAMIC_DISPATCH(EstimatePolicyKlImpl)(log_p_current, log_p_reference, n);
}

PolicyKlSums SumPolicyKl(const double* log_p_current, const double* log_p_reference, size_t n) {
  return HWY_DYNAMIC_DISPATCH(SumPolicyKlImpl)(log_p_current, log_p_reference, n);
}

}  // namespace kldrift::kernels
#endif  // HWY_ONCE
