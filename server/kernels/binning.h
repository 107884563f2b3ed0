// Vectorized assignment of raw values to frozen histogram buckets.
//
// A numeric layout has E strictly increasing finite edges and K = E + 2 buckets:
//   index 0        underflow       x < e[0]            (includes -inf)
//   index i        [e[i-1], e[i])  for 1 <= i <= E - 1 (half-open)
//   index E        overflow        x >= e[E-1]         (includes +inf)
//   index E + 1    NaN
// so every observation lands somewhere. The search is a branch-free binary search using gathers
// over the edges padded with NaN to 2^levels - 1 entries (see SearchEdgesSize()).
//
// Thread safety: pure functions over caller-owned memory; no allocation.
#ifndef KLDRIFT_SERVER_KERNELS_BINNING_H_
#define KLDRIFT_SERVER_KERNELS_BINNING_H_

#include <cstddef>
#include <cstdint>

namespace kldrift::kernels {

// Number of levels of the binary search over `num_edges` edges: the smallest L with 2^L - 1 >= E.
size_t SearchLevels(size_t num_edges);

// Length of the padded edge array for `num_edges` edges: 2^SearchLevels(E) - 1.
size_t SearchEdgesSize(size_t num_edges);

// Fills `padded` (SearchEdgesSize(E) entries) with the edges followed by NaN padding.
void PadEdgesForSearch(const double* edges, size_t num_edges, double* padded);

// out[j] = bucket index of values[j], as laid out above.
// REQUIRES: padded from PadEdgesForSearch(edges, num_edges, ...); num_edges >= 1.
void BinIndices(const double* values, size_t n, const double* padded, size_t num_edges,
                uint32_t* out);

}  // namespace kldrift::kernels

#endif  // KLDRIFT_SERVER_KERNELS_BINNING_H_
