// libFuzzer harness, differential: IngestDecoder (server/service/ingest_decoder.h) against
// protobuf's parse and FromProto, the reference it must agree with. kldriftd decodes every Ingest
// message with the decoder first and hands what it declines to protobuf, so a request the decoder
// accepts must be one protobuf parses and FromProto converts into the same batch and the same
// more_follows flag; anything else is a finding. Besides that check, ASan and UBSan watch the
// decoder's reads across chunk boundaries.
//
// Input: byte 0 chooses how the rest is cut into chunks, as gRPC hands a message over in slices:
// 0 keeps it whole, n > 0 cuts it every n bytes. The rest is the request's wire bytes (the seeds
// are serialized IngestRequests: tests/fuzz/make_ingest_seeds.sh).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "server/core/drift_engine.h"
#include "server/service/ingest_decoder.h"
#include "server/service/testing/ingest_batch_compare.h"

namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "ingest_decoder_fuzzer: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk_size = data[0];
  const std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<absl::string_view> chunks;
  if (chunk_size == 0) {
    chunks.push_back(bytes);
  } else {
    for (size_t start = 0; start < bytes.size(); start += chunk_size) {
      chunks.push_back(absl::string_view(bytes).substr(start, chunk_size));
    }
  }
  static kldrift::IngestDecoder* decoder = new kldrift::IngestDecoder();  // Reused, as a stream's.
  kldrift::IngestBatch batch;
  bool more_follows = false;
  const bool accepted = decoder->Decode(chunks, &batch, &more_follows);
  decoder->ReleaseLargeBuffer();
  if (!accepted) return 0;
  const std::string disagreement = kldrift::DecodedUnlikeProtobuf(bytes, batch, more_follows);
  if (!disagreement.empty()) Fail(disagreement);
  return 0;
}
