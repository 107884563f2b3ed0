// IngestDecoder reads an IngestRequest's wire bytes straight into an IngestBatch, without building
// the protobuf message first: what protobuf's parse of a batch of a hundred histograms spends on
// arena allocations (five per stream), string objects and a copy of every count, plus
// FromProto's walk over the result, was ~18 % of a saturated kldriftd's CPU.
//
// It decodes the requests kldrift's clients send — histograms, raw values and probability
// vectors, in any field order, with unknown fields skipped and repeated doubles packed or not —
// and declines everything else: labels, Gaussian statistics and log-prob pairs, names with bytes
// outside ASCII, a stream with two different kinds of data, a group, a timestamp out of range,
// malformed or truncated bytes. A declined request is parsed by protobuf and converted by
// FromProto, which stay the reference: they decide what is valid and word the errors, and
// whatever this decoder accepts, they turn into the same batch (ingest_decoder_test, and the
// differential ingest_decoder_fuzzer).
//
// Thread safety: one thread at a time per decoder (an Ingest stream decodes its reads in turn).
#ifndef KLDRIFT_SERVER_SERVICE_INGEST_DECODER_H_
#define KLDRIFT_SERVER_SERVICE_INGEST_DECODER_H_

#include <cstddef>
#include <memory>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/core/drift_engine.h"

namespace kldrift {

class IngestDecoder {
 public:
  IngestDecoder() = default;
  IngestDecoder(const IngestDecoder&) = delete;
  IngestDecoder& operator=(const IngestDecoder&) = delete;

  // Decodes the request whose bytes are `chunks` concatenated (a gRPC message arrives in several
  // slices) into `batch`, which must be empty, and its more_follows flag into `more_follows`.
  // Counts, values and probabilities are copied into this decoder's buffer and lent to the batch
  // (StreamData::lent_numbers), valid until the next Decode. Returns false if it declines the
  // request (see the file comment); `batch` is then partly filled, to be discarded.
  bool Decode(absl::Span<const absl::string_view> chunks, IngestBatch* batch, bool* more_follows);

  // Frees the numbers' buffer if it grew beyond kKeptBufferBytes (a large request): a stream keeps
  // only a common batch's worth while idle. Call it when done with the last decoded batch.
  void ReleaseLargeBuffer();

  static constexpr size_t kKeptBufferBytes = 256 << 10;

 private:
  // Room for every double the request could hold (8 wire bytes each at least), so that spans
  // lent while decoding stay valid; grown, never shrunk below what the last request needed.
  std::unique_ptr<double[]> numbers_;
  size_t numbers_capacity_ = 0;
  // Streams the last request held (at most kMostExpectedStreams): reserved for the next batch.
  static constexpr size_t kMostExpectedStreams = 1024;
  size_t expected_streams_ = 0;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_SERVICE_INGEST_DECODER_H_
