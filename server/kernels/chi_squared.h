// The chi-squared distribution's survival function, for the G-test p-value of a drift report.
//
// Implemented here (no special-function library) through the regularized incomplete gamma
// functions: a series for x < a + 1 and a Lentz continued fraction otherwise, with the prefactor
// x^a e^-x / Gamma(a) evaluated in a cancellation-free form for large a, so the result stays
// accurate to ~1e-13 relative even for a ~ 5e5 (K = 2^20 bins) and far into the tails.
//
// Thread safety: pure functions.
//
// Example:
//   double p_value = ChiSquaredSurvival(/*statistic=*/g, /*degrees_of_freedom=*/k - 1);
#ifndef KLDRIFT_SERVER_KERNELS_CHI_SQUARED_H_
#define KLDRIFT_SERVER_KERNELS_CHI_SQUARED_H_

namespace kldrift::kernels {

// P(a, x) = gamma(a, x) / Gamma(a), the regularized lower incomplete gamma function.
// REQUIRES: a > 0, x >= 0 (x = +inf gives 1). NaN inputs give NaN.
double RegularizedGammaP(double a, double x);

// Q(a, x) = Gamma(a, x) / Gamma(a) = 1 - P(a, x), computed directly (not as 1 - P) in the upper
// tail.
double RegularizedGammaQ(double a, double x);

// Pr[X >= statistic] for X ~ chi-squared with `degrees_of_freedom` (> 0, need not be an integer).
// statistic <= 0 gives 1; statistic = +inf gives 0.
double ChiSquaredSurvival(double statistic, double degrees_of_freedom);

}  // namespace kldrift::kernels

#endif  // KLDRIFT_SERVER_KERNELS_CHI_SQUARED_H_
