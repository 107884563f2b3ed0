// Closed-form KL divergence between diagonal Gaussians, for latent/embedding monitoring (the VAE
// case).
//
// Per dimension, with r = v1 / v2:
//   KL(N(m1, v1) || N(m2, v2)) = 1/2 [ (r - 1 - log r) + (m1 - m2)^2 / v2 ].
// r - 1 - log r is evaluated as d - log1p(d) with d = (v1 - v2) / v2, and by its power series when
// |d| is small, so nearly equal variances give accurate (not cancelled) results.
//
// Thread safety: pure functions over caller-owned memory; no allocation.
#ifndef KLDRIFT_SERVER_KERNELS_GAUSSIAN_H_
#define KLDRIFT_SERVER_KERNELS_GAUSSIAN_H_

#include <cstddef>

namespace kldrift::kernels {

struct GaussianKlPair {
  double forward = 0;  // KL(N1 || N2) in nats.
  double reverse = 0;  // KL(N2 || N1) in nats.
};

// Both directions between N1 = N(mean1, diag(var1)) and N2 = N(mean2, diag(var2)) over d
// dimensions. REQUIRES: means finite, variances finite and > 0.
GaussianKlPair DiagonalGaussianKl(const double* mean1, const double* var1, const double* mean2,
                                  const double* var2, size_t d);

// Both directions between N(mean, diag(var)) and the standard normal N(0, I):
// forward = KL(N(mean, var) || N(0, I)) (the VAE regulariser), reverse = KL(N(0, I) || N(mean,
// var)).
GaussianKlPair DiagonalGaussianKlStandardNormal(const double* mean, const double* var, size_t d);

}  // namespace kldrift::kernels

#endif  // KLDRIFT_SERVER_KERNELS_GAUSSIAN_H_
