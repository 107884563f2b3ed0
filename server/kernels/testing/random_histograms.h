// Random count vectors for the kernel and core tests: the shapes that stress the numerics.
//
// Thread safety: pure functions of the generator passed in.
#ifndef KLDRIFT_SERVER_KERNELS_TESTING_RANDOM_HISTOGRAMS_H_
#define KLDRIFT_SERVER_KERNELS_TESTING_RANDOM_HISTOGRAMS_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <string>
#include <vector>

namespace kldrift::test_histograms {

// How a random count vector is drawn.
enum class Shape { kDense, kSparse, kHuge, kTiny, kOneHot };

inline std::string ShapeName(Shape shape) {
  switch (shape) {
    case Shape::kDense:
      return "dense";
    case Shape::kSparse:
      return "sparse";
    case Shape::kHuge:
      return "huge";
    case Shape::kTiny:
      return "tiny";
    case Shape::kOneHot:
      return "one-hot";
  }
  return "?";
}

// K integer counts of the given shape; never all zero. kHuge draws multiples of 2^huge_shift below
// 2^(20 + huge_shift), so the default reaches 2^53, the largest range doubles hold exactly.
inline std::vector<double> RandomCounts(size_t k, Shape shape, std::mt19937_64& rng,
                                        int huge_shift = 33) {
  std::vector<double> counts(k, 0.0);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  switch (shape) {
    case Shape::kDense:
      for (double& c : counts) c = std::floor(unit(rng) * 1000);
      break;
    case Shape::kSparse:
      for (double& c : counts) c = unit(rng) < 0.9 ? 0 : std::floor(unit(rng) * 50);
      break;
    case Shape::kHuge:
      for (double& c : counts) c = std::ldexp(std::floor(unit(rng) * 0x1p20), huge_shift);
      break;
    case Shape::kTiny:
      for (double& c : counts) c = unit(rng) < 0.5 ? 1 : 0;
      break;
    case Shape::kOneHot:
      counts[rng() % k] = 1;
      break;
  }
  if (std::all_of(counts.begin(), counts.end(), [](double c) { return c == 0; })) counts[0] = 1;
  return counts;
}

}  // namespace kldrift::test_histograms

#endif  // KLDRIFT_SERVER_KERNELS_TESTING_RANDOM_HISTOGRAMS_H_
