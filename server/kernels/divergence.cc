#include "server/kernels/divergence.h"

#include <algorithm>
#include <cmath>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "server/kernels/divergence.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must come after foreach_target.h.
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "server/kernels/internal/vector_math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kldrift::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using D = hn::ScalableTag<double>;
using V = hn::Vec<D>;
using M = hn::Mask<D>;

// Tails are loaded with LoadTail (lanes past k read as 0) and every accumulated term is masked
// with `valid`, because a zero count still has a non-zero smoothed share when alpha > 0.

CountSummary SummarizeCountsImpl(const double* HWY_RESTRICT counts, size_t k) {
  const D d;
  const size_t lanes = hn::Lanes(d);
  const V inf = hn::Set(d, std::numeric_limits<double>::infinity());
  V total = hn::Zero(d);
  // Count lanes that fail "0 <= c < inf"; NaN fails both comparisons.
  V bad = hn::Zero(d);
  auto accumulate = [&](V& block_total, V c) {
    const M ok = hn::And(hn::Ge(c, hn::Zero(d)), hn::Lt(c, inf));
    block_total = hn::Add(block_total, c);
    bad = hn::Add(bad, hn::IfThenZeroElse(ok, hn::Set(d, 1.0)));
  };
  size_t i = 0;
  while (i + lanes <= k) {
    V block_total = hn::Zero(d);
    const size_t block_end = BlockEnd(i, k, lanes);
    for (; i < block_end; i += lanes) accumulate(block_total, hn::LoadU(d, counts + i));
    total = hn::Add(total, block_total);
  }
  if (i < k) accumulate(total, LoadTail(d, counts + i, k - i));
  CountSummary summary;
  summary.all_finite_non_negative = SumLanes(d, bad) == 0;
  summary.total = summary.all_finite_non_negative ? SumLanes(d, total) : 0;
  return summary;
}

void SmoothedSharesImpl(const double* HWY_RESTRICT counts, size_t k, double alpha, double scale,
                        double* HWY_RESTRICT shares, double* HWY_RESTRICT log_shares) {
  const D d;
  const size_t lanes = hn::Lanes(d);
  const V a = hn::Set(d, alpha);
  const V s = hn::Set(d, scale);
  size_t i = 0;
  for (; i + lanes <= k; i += lanes) {
    const V q = hn::Mul(hn::Add(hn::LoadU(d, counts + i), a), s);
    hn::StoreU(q, d, shares + i);
    hn::StoreU(LogOrMinusInf(d, q), d, log_shares + i);
  }
  // The tail goes through the same vector Log as the body, so equal inputs give equal logs.
  if (i < k) {
    const V q = hn::Mul(hn::Add(LoadTail(d, counts + i, k - i), a), s);
    StoreTail(d, q, shares + i, k - i);
    StoreTail(d, LogOrMinusInf(d, q), log_shares + i, k - i);
  }
}

// p log(p/q) for one vector of bins; 0 where p == 0, +inf where p > 0 == q (log_q = -inf).
HWY_INLINE V KlTerm(D d, V p, V log_q) {
  const M positive = hn::Gt(p, hn::Zero(d));
  const V log_p = hn::Log(d, hn::IfThenElse(positive, p, hn::Set(d, 1.0)));
  return hn::IfThenElseZero(positive, hn::Mul(p, hn::Sub(log_p, log_q)));
}

// log p for shares known to be normal numbers (> DBL_MIN): no zero or subnormal handling needed.
HWY_INLINE V LogOfNormal(D d, V p) { return hn::impl::Log<D, V, /*kAllowSubnormals=*/false>(d, p); }

// With alpha > 0 every smoothed share is >= alpha * p_scale; when that is a normal number no lane
// can be zero or subnormal, and the masks and subnormal scaling can be skipped.
HWY_INLINE bool SharesAreNormal(double alpha, double p_scale) {
  return alpha > 0 && alpha * p_scale >= std::numeric_limits<double>::min();
}

// Elements to prefetch ahead in the streaming loops (prefetching past the end is harmless).
constexpr size_t kPrefetchDistance = 512;

template <bool kSharesAreNormal>
double KlCurrentReferenceLoop(const double* HWY_RESTRICT current, size_t k, double alpha,
                              double p_scale, const double* HWY_RESTRICT log_q) {
  const D d;
  const size_t lanes = hn::Lanes(d);
  const V s = hn::Set(d, p_scale);
  const V a = hn::Set(d, alpha);
  // Rounded exactly as SmoothedShares rounds, so equal histograms give exactly zero.
  auto share = [&](V c) { return hn::Mul(hn::Add(c, a), s); };
  auto accumulate = [&](V sum, V p, V lq) {
    if constexpr (kSharesAreNormal) {
      return hn::MulAdd(p, hn::Sub(LogOfNormal(d, p), lq), sum);
    } else {
      return hn::Add(sum, KlTerm(d, p, lq));
    }
  };
  V total = hn::Zero(d);
  size_t i = 0;
  while (i + 2 * lanes <= k) {
    // Two accumulators let consecutive iterations' additions overlap.
    V sum0 = hn::Zero(d);
    V sum1 = hn::Zero(d);
    const size_t block_end = BlockEnd(i, k, 2 * lanes);
    for (; i < block_end; i += 2 * lanes) {
      // Large histograms stream from memory: ask for the data ~4 KiB ahead.
      hwy::Prefetch(current + i + kPrefetchDistance);
      hwy::Prefetch(log_q + i + kPrefetchDistance);
      sum0 = accumulate(sum0, share(hn::LoadU(d, current + i)), hn::LoadU(d, log_q + i));
      sum1 = accumulate(sum1, share(hn::LoadU(d, current + i + lanes)),
                        hn::LoadU(d, log_q + i + lanes));
    }
    total = hn::Add(total, hn::Add(sum0, sum1));
  }
  for (; i + lanes <= k; i += lanes) {
    total = accumulate(total, share(hn::LoadU(d, current + i)), hn::LoadU(d, log_q + i));
  }
  if (i < k) {
    const M valid = hn::FirstN(d, k - i);
    const V p = share(LoadTail(d, current + i, k - i));
    total = hn::Add(total, hn::IfThenElseZero(valid, KlTerm(d, p, LoadTail(d, log_q + i, k - i))));
  }
  return SumLanes(d, total);
}

double KlCurrentReferenceImpl(const double* HWY_RESTRICT current, size_t k, double alpha,
                              double p_scale, const double* HWY_RESTRICT log_q) {
  return SharesAreNormal(alpha, p_scale)
             ? KlCurrentReferenceLoop<true>(current, k, alpha, p_scale, log_q)
             : KlCurrentReferenceLoop<false>(current, k, alpha, p_scale, log_q);
}

void KlContributionsImpl(const double* HWY_RESTRICT current, size_t k, double alpha, double p_scale,
                         const double* HWY_RESTRICT log_q, double* HWY_RESTRICT contributions) {
  const D d;
  const size_t lanes = hn::Lanes(d);
  const V a = hn::Set(d, alpha);
  const V s = hn::Set(d, p_scale);
  size_t i = 0;
  for (; i + lanes <= k; i += lanes) {
    const V p = hn::Mul(hn::Add(hn::LoadU(d, current + i), a), s);
    hn::StoreU(KlTerm(d, p, hn::LoadU(d, log_q + i)), d, contributions + i);
  }
  if (i < k) {
    const V p = hn::Mul(hn::Add(LoadTail(d, current + i, k - i), a), s);
    StoreTail(d, KlTerm(d, p, LoadTail(d, log_q + i, k - i)), contributions + i, k - i);
  }
}

struct SumVectors {
  V kl_pq, kl_qp, js, sq_root_diff, abs_diff, max_abs_diff, chi2, homogeneity, occupied;

  static SumVectors Zero(D d) {
    const V zero = hn::Zero(d);
    return SumVectors{zero, zero, zero, zero, zero, zero, zero, zero, zero};
  }
  void Add(const SumVectors& block) {
    kl_pq = hn::Add(kl_pq, block.kl_pq);
    kl_qp = hn::Add(kl_qp, block.kl_qp);
    js = hn::Add(js, block.js);
    sq_root_diff = hn::Add(sq_root_diff, block.sq_root_diff);
    abs_diff = hn::Add(abs_diff, block.abs_diff);
    max_abs_diff = hn::Max(max_abs_diff, block.max_abs_diff);
    chi2 = hn::Add(chi2, block.chi2);
    homogeneity = hn::Add(homogeneity, block.homogeneity);
    occupied = hn::Add(occupied, block.occupied);
  }
};

// Two-sample G-test on the raw counts: c log((c + r) / c) + r log((c + r) / r), and the bins
// where c + r > 0. Shared by ComputeDivergenceSums and HomogeneitySums, so both give the same bits.
HWY_INLINE void AccumulateHomogeneity(D d, M valid, V c, V r, V log_r, V& homogeneity,
                                      V& occupied) {
  const V zero = hn::Zero(d);
  const V cr = hn::Add(c, r);
  const M c_pos = hn::And(valid, hn::Gt(c, zero));
  const M r_pos = hn::And(valid, hn::Gt(r, zero));
  const M cr_pos = hn::And(valid, hn::Gt(cr, zero));
  const V one = hn::Set(d, 1.0);
  const V log_cr = hn::Log(d, hn::IfThenElse(cr_pos, cr, one));
  const V log_c = hn::Log(d, hn::IfThenElse(c_pos, c, one));
  const V g_c = hn::IfThenElseZero(c_pos, hn::Mul(c, hn::Sub(log_cr, log_c)));
  const V g_r = hn::IfThenElseZero(r_pos, hn::Mul(r, hn::Sub(log_cr, log_r)));
  homogeneity = hn::Add(homogeneity, hn::Add(g_c, g_r));
  occupied = hn::Add(occupied, hn::IfThenElseZero(cr_pos, one));
}

// Accumulates every drift sum for one vector of bins; lanes outside `valid` contribute nothing.
// kSharesAreNormal: every p (and so every m = (p + q) / 2) is a normal number, see SharesAreNormal.
// The per-bin terms of KL(P||Q) are also stored at `kl_terms` (n lanes) unless it is null.
template <bool kSharesAreNormal>
HWY_INLINE void AccumulateSums(D d, M valid, V c, V q, V log_q, V r, V log_r, V a, V p_scale,
                               double* HWY_RESTRICT kl_terms, size_t n, SumVectors& acc) {
  const V zero = hn::Zero(d);
  const V p = hn::Mul(hn::Add(c, a), p_scale);
  const M p_pos = hn::And(valid, hn::Gt(p, zero));
  const M q_pos = hn::And(valid, hn::Gt(q, zero));
  const V m = hn::Mul(hn::Add(p, q), hn::Set(d, 0.5));
  V log_p, log_m;
  if constexpr (kSharesAreNormal) {
    log_p = LogOfNormal(d, p);
    log_m = LogOfNormal(d, m);
  } else {
    log_p = LogOrMinusInf(d, p);
    log_m = LogOrMinusInf(d, m);
  }

  // Bit for bit KlContributions' term: the same p, and Log agrees with LogOfNormal on normals.
  const V kl_term = hn::IfThenElseZero(p_pos, hn::Mul(p, hn::Sub(log_p, log_q)));
  if (kl_terms != nullptr) {
    if (n == hn::Lanes(d)) {
      hn::StoreU(kl_term, d, kl_terms);
    } else {
      StoreTail(d, kl_term, kl_terms, n);
    }
  }
  acc.kl_pq = hn::Add(acc.kl_pq, kl_term);
  acc.kl_qp = hn::Add(acc.kl_qp, hn::IfThenElseZero(q_pos, hn::Mul(q, hn::Sub(log_q, log_p))));
  const V js_p = hn::IfThenElseZero(p_pos, hn::Mul(p, hn::Sub(log_p, log_m)));
  const V js_q = hn::IfThenElseZero(q_pos, hn::Mul(q, hn::Sub(log_q, log_m)));
  acc.js = hn::Add(acc.js, hn::Add(js_p, js_q));

  const V root_diff = hn::Sub(hn::Sqrt(p), hn::Sqrt(q));
  acc.sq_root_diff = hn::MulAdd(hn::IfThenElseZero(valid, root_diff), root_diff, acc.sq_root_diff);
  const V diff = hn::Sub(p, q);
  const V abs_diff = hn::IfThenElseZero(valid, hn::Abs(diff));
  acc.abs_diff = hn::Add(acc.abs_diff, abs_diff);
  acc.max_abs_diff = hn::Max(acc.max_abs_diff, abs_diff);
  // (p - q)^2 / q: 0 when p == q (including both 0), +inf when p > 0 == q, set explicitly since
  // (p - q)^2 underflows to 0 for p < 1e-162 (a huge window, or a tiny alpha) and 0 / 0 is NaN.
  const M differs = hn::And(valid, hn::Ne(diff, zero));
  const V chi2_term = hn::IfThenElse(q_pos, hn::Div(hn::Mul(diff, diff), q),
                                     hn::Set(d, std::numeric_limits<double>::infinity()));
  acc.chi2 = hn::Add(acc.chi2, hn::IfThenElseZero(differs, chi2_term));

  AccumulateHomogeneity(d, valid, c, r, log_r, acc.homogeneity, acc.occupied);
}

template <bool kSharesAreNormal>
SumVectors DivergenceSumsLoop(const double* HWY_RESTRICT current, size_t k, V a, V p_scale,
                              const ReferenceView& ref, double* HWY_RESTRICT kl_terms) {
  const D d;
  const size_t lanes = hn::Lanes(d);
  SumVectors acc = SumVectors::Zero(d);
  const M all = hn::FirstN(d, lanes);
  size_t i = 0;
  while (i + lanes <= k) {
    SumVectors block = SumVectors::Zero(d);
    const size_t block_end = BlockEnd(i, k, lanes);
    for (; i < block_end; i += lanes) {
      AccumulateSums<kSharesAreNormal>(
          d, all, hn::LoadU(d, current + i), hn::LoadU(d, ref.shares + i),
          hn::LoadU(d, ref.log_shares + i), hn::LoadU(d, ref.counts + i),
          hn::LoadU(d, ref.log_counts + i), a, p_scale,
          kl_terms != nullptr ? kl_terms + i : nullptr, lanes, block);
    }
    acc.Add(block);
  }
  if (i < k) {
    const size_t n = k - i;
    AccumulateSums<false>(d, hn::FirstN(d, n), LoadTail(d, current + i, n),
                          LoadTail(d, ref.shares + i, n), LoadTail(d, ref.log_shares + i, n),
                          LoadTail(d, ref.counts + i, n), LoadTail(d, ref.log_counts + i, n), a,
                          p_scale, kl_terms != nullptr ? kl_terms + i : nullptr, n, acc);
  }
  return acc;
}

// The G-test's part of DivergenceSumsLoop alone, blocked the same way (so the same bits).
HomogeneityTerms HomogeneitySumsImpl(const double* HWY_RESTRICT current, size_t k,
                                     const ReferenceView& ref) {
  const D d;
  const size_t lanes = hn::Lanes(d);
  V homogeneity = hn::Zero(d);
  V occupied = hn::Zero(d);
  const M all = hn::FirstN(d, lanes);
  size_t i = 0;
  while (i + lanes <= k) {
    V block_homogeneity = hn::Zero(d);
    V block_occupied = hn::Zero(d);
    const size_t block_end = BlockEnd(i, k, lanes);
    for (; i < block_end; i += lanes) {
      AccumulateHomogeneity(d, all, hn::LoadU(d, current + i), hn::LoadU(d, ref.counts + i),
                            hn::LoadU(d, ref.log_counts + i), block_homogeneity, block_occupied);
    }
    homogeneity = hn::Add(homogeneity, block_homogeneity);
    occupied = hn::Add(occupied, block_occupied);
  }
  if (i < k) {
    const size_t n = k - i;
    AccumulateHomogeneity(d, hn::FirstN(d, n), LoadTail(d, current + i, n),
                          LoadTail(d, ref.counts + i, n), LoadTail(d, ref.log_counts + i, n),
                          homogeneity, occupied);
  }
  return HomogeneityTerms{SumLanes(d, homogeneity), SumLanes(d, occupied)};
}

DivergenceSums ComputeDivergenceSumsImpl(const double* HWY_RESTRICT current, size_t k, double alpha,
                                         double current_total, const ReferenceView& ref,
                                         double* HWY_RESTRICT kl_terms) {
  const D d;
  const double p_scale = 1.0 / (current_total + static_cast<double>(k) * alpha);
  const V a = hn::Set(d, alpha);
  const V ps = hn::Set(d, p_scale);
  const SumVectors acc = SharesAreNormal(alpha, p_scale)
                             ? DivergenceSumsLoop<true>(current, k, a, ps, ref, kl_terms)
                             : DivergenceSumsLoop<false>(current, k, a, ps, ref, kl_terms);
  DivergenceSums sums;
  sums.kl_pq = SumLanes(d, acc.kl_pq);
  sums.kl_qp = SumLanes(d, acc.kl_qp);
  sums.js_nats = 0.5 * SumLanes(d, acc.js);
  sums.sq_root_diff = SumLanes(d, acc.sq_root_diff);
  sums.abs_diff = SumLanes(d, acc.abs_diff);
  sums.max_abs_diff = MaxLanes(d, acc.max_abs_diff);
  sums.chi2 = SumLanes(d, acc.chi2);
  sums.homogeneity_terms = SumLanes(d, acc.homogeneity);
  sums.occupied_bins = SumLanes(d, acc.occupied);
  return sums;
}

}  // namespace HWY_NAMESPACE
}  // namespace kldrift::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kldrift::kernels {

HWY_EXPORT(SummarizeCountsImpl);
HWY_EXPORT(SmoothedSharesImpl);
HWY_EXPORT(KlCurrentReferenceImpl);
HWY_EXPORT(KlContributionsImpl);
HWY_EXPORT(ComputeDivergenceSumsImpl);
HWY_EXPORT(HomogeneitySumsImpl);

CountSummary SummarizeCounts(const double* counts, size_t k) {
  return HWY_DYNAMIC_DISPATCH(SummarizeCountsImpl)(counts, k);
}

void SmoothedShares(const double* counts, size_t k, double alpha, double scale, double* shares,
                    double* log_shares) {
  HWY_DYNAMIC_DISPATCH(SmoothedSharesImpl)(counts, k, alpha, scale, shares, log_shares);
}

double KlCurrentReference(const double* current, size_t k, double alpha, double p_scale,
                          const double* log_q) {
  return HWY_DYNAMIC_DISPATCH(KlCurrentReferenceImpl)(current, k, alpha, p_scale, log_q);
}

void KlContributions(const double* current, size_t k, double alpha, double p_scale,
                     const double* log_q, double* contributions) {
  HWY_DYNAMIC_DISPATCH(KlContributionsImpl)(current, k, alpha, p_scale, log_q, contributions);
}

DivergenceSums ComputeDivergenceSums(const double* current, size_t k, double alpha,
                                     double current_total, const ReferenceView& reference,
                                     double* kl_terms) {
  return HWY_DYNAMIC_DISPATCH(ComputeDivergenceSumsImpl)(current, k, alpha, current_total,
                                                         reference, kl_terms);
}

HomogeneityTerms HomogeneitySums(const double* current, size_t k, const ReferenceView& reference) {
  return HWY_DYNAMIC_DISPATCH(HomogeneitySumsImpl)(current, k, reference);
}

}  // namespace kldrift::kernels
#endif  // HWY_ONCE
