#include "server/kernels/binning.h"

#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "server/kernels/binning.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must come after foreach_target.h.
#include "hwy/highway.h"
#include "server/kernels/internal/vector_math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace kldrift::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Lane-parallel upper_bound: after the loop, position = #{edges <= x}. NaN padding compares false,
// so the search never moves into the padding, and a NaN value never moves at all (fixed up after).
void BinIndicesImpl(const double* HWY_RESTRICT values, size_t n, const double* HWY_RESTRICT padded,
                    size_t num_edges, uint32_t* HWY_RESTRICT out) {
  const hn::ScalableTag<double> d;
  const hn::RebindToSigned<decltype(d)> di;
  const size_t lanes = hn::Lanes(d);
  const size_t levels = SearchLevels(num_edges);
  const auto nan_bucket = hn::Set(di, static_cast<int64_t>(num_edges + 1));
  HWY_ALIGN int64_t positions[HWY_MAX_BYTES / sizeof(int64_t)];

  for (size_t i = 0; i < n; i += lanes) {
    const size_t count = n - i < lanes ? n - i : lanes;
    const auto x = count == lanes ? hn::LoadU(d, values + i) : LoadTail(d, values + i, count);
    auto position = hn::Zero(di);
    for (size_t level = levels; level-- > 0;) {
      const auto step = hn::Set(di, int64_t{1} << level);
      const auto probe = hn::Add(position, step);
      const auto edge = hn::GatherIndex(d, padded, hn::Sub(probe, hn::Set(di, 1)));
      position = hn::IfThenElse(hn::RebindMask(di, hn::Le(edge, x)), probe, position);
    }
    position = hn::IfThenElse(hn::RebindMask(di, hn::IsNaN(x)), nan_bucket, position);
    hn::Store(position, di, positions);
    for (size_t j = 0; j < count; ++j) {
      out[i + j] = static_cast<uint32_t>(positions[j]);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace kldrift::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kldrift::kernels {

size_t SearchLevels(size_t num_edges) {
  size_t levels = 0;
  while ((size_t{1} << levels) - 1 < num_edges) {
    ++levels;
  }
  return levels;
}

size_t SearchEdgesSize(size_t num_edges) { return (size_t{1} << SearchLevels(num_edges)) - 1; }

void PadEdgesForSearch(const double* edges, size_t num_edges, double* padded) {
  const size_t size = SearchEdgesSize(num_edges);
  for (size_t i = 0; i < size; ++i) {
    padded[i] = i < num_edges ? edges[i] : std::numeric_limits<double>::quiet_NaN();
  }
}

HWY_EXPORT(BinIndicesImpl);

void BinIndices(const double* values, size_t n, const double* padded, size_t num_edges,
                uint32_t* out) {
  HWY_DYNAMIC_DISPATCH(BinIndicesImpl)(values, n, padded, num_edges, out);
}

}  // namespace kldrift::kernels
#endif  // HWY_ONCE
