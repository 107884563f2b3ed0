#include "server/service/ingest_decoder.h"

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kldrift/v1/kldrift.pb.h"
#include "server/service/testing/ingest_batch_compare.h"

namespace kldrift {
namespace {

// Whether protobuf parses `bytes` as an IngestRequest.
bool ProtobufParses(const std::string& bytes) {
  v1::IngestRequest request;
  return request.ParseFromString(bytes);
}

// `bytes` cut before each position of `cuts` (ascending; repeats make empty chunks).
std::vector<absl::string_view> Cut(const std::string& bytes, const std::vector<size_t>& cuts) {
  std::vector<absl::string_view> chunks;
  size_t start = 0;
  for (size_t cut : cuts) {
    chunks.push_back(absl::string_view(bytes).substr(start, cut - start));
    start = cut;
  }
  chunks.push_back(absl::string_view(bytes).substr(start));
  return chunks;
}

// `bytes` in chunks of `size` bytes.
std::vector<absl::string_view> ChunksOf(const std::string& bytes, size_t size) {
  std::vector<size_t> cuts;
  for (size_t cut = size; cut < bytes.size(); cut += size) cuts.push_back(cut);
  return Cut(bytes, cuts);
}

// Decodes `chunks` (of `bytes`) and, if the decoder accepts them, checks that protobuf parses
// `bytes` and FromProto converts them into the same batch and flag. Returns whether it accepted.
bool DecodeAndCompare(IngestDecoder& decoder, const std::string& bytes,
                      const std::vector<absl::string_view>& chunks) {
  IngestBatch batch;
  bool more_follows = true;
  const bool accepted = decoder.Decode(chunks, &batch, &more_follows);
  if (!accepted) return false;
  EXPECT_EQ(DecodedUnlikeProtobuf(bytes, batch, more_follows), "");
  return true;
}

bool Decodes(const std::string& bytes) {
  IngestDecoder decoder;
  return DecodeAndCompare(decoder, bytes, {absl::string_view(bytes)});
}

// The shape kldrift's clients send: a hundred histograms of 64 bins.
v1::IngestRequest HistogramRequest(int streams, int bins, uint32_t seed) {
  std::mt19937 random(seed);
  v1::IngestRequest request;
  request.set_client_id("scorer-7/replica-2");
  request.set_sequence(123456789012ull);
  request.set_model("fraud-scorer");
  request.set_more_follows(true);
  request.mutable_event_time()->set_seconds(1795000000);
  request.mutable_event_time()->set_nanos(250000000);
  for (int s = 0; s < streams; ++s) {
    v1::StreamBatch* stream = request.add_streams();
    stream->set_model_version(s % 3 == 0 ? "" : "2026-11-01");
    stream->set_signal("signal-" + std::to_string(s));
    if (s % 5 == 0) stream->set_reference_version(s + 1);
    v1::Counts* counts = stream->mutable_histogram();
    for (int b = 0; b < bins; ++b) {
      counts->add_counts(s % 7 == 0 ? random() / 3.0 : static_cast<double>(random() % 40));
    }
  }
  return request;
}

// Protobuf's wire format, written by hand for what a serializer would not write.
void PutVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}
void PutTag(uint32_t field, uint32_t wire_type, std::string* out) {
  PutVarint((uint64_t{field} << 3) | wire_type, out);
}
void PutBytes(uint32_t field, const std::string& bytes, std::string* out) {
  PutTag(field, 2, out);
  PutVarint(bytes.size(), out);
  out->append(bytes);
}
void PutDouble(uint32_t field, double value, std::string* out) {
  PutTag(field, 1, out);
  char raw[8];
  std::memcpy(raw, &value, 8);
  out->append(raw, 8);
}
// One field of every wire type protobuf knows, under numbers no message of the API uses.
std::string UnknownFields() {
  std::string out;
  PutTag(100, 0, &out);
  PutVarint(~uint64_t{0}, &out);
  PutBytes(101, "not a field of this message", &out);
  PutTag(102, 5, &out);
  out.append("\x01\x02\x03\x04", 4);
  PutDouble(103, 2.5, &out);
  return out;
}

TEST(IngestDecoderTest, DecodesTheRequestsClientsSendHoweverTheyAreChunked) {
  const std::string bytes = HistogramRequest(100, 64, 1).SerializeAsString();
  ASSERT_GT(bytes.size(), 50000u);
  IngestDecoder decoder;
  EXPECT_TRUE(DecodeAndCompare(decoder, bytes, {absl::string_view(bytes)}));
  for (size_t size : {1, 3, 7, 8, 9, 100, 4096, 8192, 16384}) {
    SCOPED_TRACE(size);
    EXPECT_TRUE(DecodeAndCompare(decoder, bytes, ChunksOf(bytes, size)));
  }
  // Empty chunks anywhere, and every cut of a smaller request into two.
  EXPECT_TRUE(DecodeAndCompare(decoder, bytes, Cut(bytes, {0, 0, 5, 5, 5, 4000, bytes.size()})));
  const std::string small = HistogramRequest(3, 5, 2).SerializeAsString();
  for (size_t cut = 0; cut <= small.size(); ++cut) {
    SCOPED_TRACE(cut);
    EXPECT_TRUE(DecodeAndCompare(decoder, small, Cut(small, {cut})));
  }
}

TEST(IngestDecoderTest, DecodesValuesProbabilitiesAndEmptyData) {
  v1::IngestRequest request;
  request.set_client_id("c");
  request.set_sequence(1);
  request.set_model("m");
  request.add_streams()->mutable_values()->add_values(-1.5);
  request.mutable_streams(0)->mutable_values()->add_values(
      std::numeric_limits<double>::quiet_NaN());
  request.mutable_streams(0)->set_signal("raw");
  v1::StreamBatch* probabilities = request.add_streams();
  probabilities->set_signal("p");
  for (double p : {0.25, 0.75, 0.5, 0.5})
    probabilities->mutable_probabilities()->add_probabilities(p);
  request.add_streams()->mutable_histogram();  // A histogram with no counts.
  request.add_streams()->mutable_values();
  EXPECT_TRUE(Decodes(request.SerializeAsString()));
  // Nothing set but one stream's data (all defaults): no event time, more_follows false.
  v1::IngestRequest bare;
  bare.add_streams()->mutable_histogram()->add_counts(1);
  EXPECT_TRUE(Decodes(bare.SerializeAsString()));
}

TEST(IngestDecoderTest, MergesAndSkipsFieldsAsProtobufDoes) {
  // Two serialized requests back to back parse as one merged request: the later names and
  // sequence win, the streams of both follow each other, event_time's fields merge.
  v1::IngestRequest first = HistogramRequest(4, 8, 3);
  v1::IngestRequest second = HistogramRequest(2, 3, 4);
  second.set_client_id("other-client");
  second.set_sequence(7);
  second.set_more_follows(false);
  second.mutable_event_time()->set_seconds(0);
  second.mutable_event_time()->set_nanos(999999999);
  EXPECT_TRUE(Decodes(first.SerializeAsString() + second.SerializeAsString()));

  // One stream's histogram given twice, the second time unpacked: its counts are appended.
  std::string counts;
  PutDouble(1, 3.0, &counts);
  PutDouble(1, 4.0, &counts);
  v1::StreamBatch packed;
  packed.set_signal("s");
  packed.mutable_histogram()->add_counts(1);
  packed.mutable_histogram()->add_counts(2);
  std::string stream = packed.SerializeAsString();
  PutBytes(3, counts + UnknownFields(), &stream);
  stream += UnknownFields();
  std::string request;
  PutBytes(4, stream, &request);
  PutBytes(3, "model", &request);
  request += UnknownFields();
  PutBytes(5, UnknownFields(), &request);  // An event time of unknown fields: the epoch.
  ASSERT_TRUE(Decodes(request));
  IngestDecoder decoder;
  IngestBatch batch;
  bool more_follows;
  ASSERT_TRUE(decoder.Decode({absl::string_view(request)}, &batch, &more_follows));
  ASSERT_EQ(batch.streams.size(), 1u);
  EXPECT_EQ(std::vector<double>(batch.streams[0].values().begin(), batch.streams[0].values().end()),
            (std::vector<double>{1, 2, 3, 4}));
  EXPECT_EQ(batch.event_time, absl::UnixEpoch());
}

TEST(IngestDecoderTest, DeclinesWhatOnlyProtobufAndFromProtoDecide) {
  const auto with_stream = [](auto fill) {
    v1::IngestRequest request;
    request.set_client_id("c");
    request.set_sequence(1);
    request.set_model("m");
    fill(request.add_streams());
    return request.SerializeAsString();
  };
  EXPECT_FALSE(
      Decodes(with_stream([](v1::StreamBatch* s) { s->mutable_labels()->add_labels("a"); })));
  EXPECT_FALSE(
      Decodes(with_stream([](v1::StreamBatch* s) { s->mutable_gaussian()->set_count(2); })));
  EXPECT_FALSE(Decodes(with_stream([](v1::StreamBatch* s) { s->mutable_log_probs(); })));
  EXPECT_FALSE(Decodes(with_stream([](v1::StreamBatch* s) { s->set_signal("no-data"); })));
  EXPECT_FALSE(Decodes(with_stream([](v1::StreamBatch* s) {
    s->set_signal("caf\xc3\xa9");  // Valid UTF-8, not ASCII.
    s->mutable_histogram();
  })));
  // Two kinds of data in one stream (the later replaces the earlier in protobuf).
  v1::StreamBatch histogram;
  histogram.mutable_histogram()->add_counts(1);
  v1::StreamBatch values;
  values.mutable_values()->add_values(1);
  std::string two_kinds;
  PutBytes(4, histogram.SerializeAsString() + values.SerializeAsString(), &two_kinds);
  EXPECT_FALSE(Decodes(two_kinds));
  // A timestamp FromProto refuses.
  v1::IngestRequest late = HistogramRequest(1, 1, 5);
  late.mutable_event_time()->set_nanos(1000000000);
  EXPECT_FALSE(Decodes(late.SerializeAsString()));
  // A group (wire type 3), a count array whose length is not a multiple of 8, a field number 0.
  std::string group = HistogramRequest(1, 1, 6).SerializeAsString();
  PutTag(50, 3, &group);
  PutTag(50, 4, &group);
  EXPECT_FALSE(Decodes(group));
  std::string ragged_counts;
  PutBytes(1, std::string(12, '\0'), &ragged_counts);
  std::string ragged_stream;
  PutBytes(3, ragged_counts, &ragged_stream);
  std::string ragged;
  PutBytes(4, ragged_stream, &ragged);
  EXPECT_FALSE(Decodes(ragged));
  std::string field_zero = HistogramRequest(1, 1, 7).SerializeAsString();
  PutTag(0, 0, &field_zero);
  PutVarint(1, &field_zero);
  EXPECT_FALSE(Decodes(field_zero));
  // A tag in six bytes (protobuf reads at most five), found by ingest_decoder_fuzzer.
  EXPECT_FALSE(Decodes(std::string("\xe0\xff\xff\x8d\x8f\x00\x63", 7)));
  // A stream whose last tag runs past its end into the request's next bytes.
  std::string straddling_stream;
  PutBytes(2, "s", &straddling_stream);
  straddling_stream += "\x80";
  std::string straddling;
  PutBytes(4, straddling_stream, &straddling);
  straddling += "\x01\x05";
  PutBytes(3, "model", &straddling);
  EXPECT_FALSE(Decodes(straddling));
  // A length in six bytes (zero, written long), which protobuf refuses too; found by the fuzzer.
  EXPECT_FALSE(Decodes(std::string("\x0a\x80\x80\x80\x80\x80\x00", 7)));
  // A known field of the wrong wire type (protobuf would keep it as an unknown field).
  std::string wrong_type = HistogramRequest(1, 1, 8).SerializeAsString();
  PutBytes(2, "sequence", &wrong_type);
  EXPECT_FALSE(Decodes(wrong_type));
  // Every truncation: one that protobuf cannot parse (a length or value runs past the end) is
  // declined; one at a field's end is a valid, shorter request (Decodes compares it).
  const std::string whole = HistogramRequest(2, 4, 9).SerializeAsString();
  int unparsable = 0;
  for (size_t length = 0; length < whole.size(); ++length) {
    SCOPED_TRACE(length);
    const std::string prefix = whole.substr(0, length);
    const bool decoded = Decodes(prefix);
    if (!ProtobufParses(prefix)) {
      ++unparsable;
      EXPECT_FALSE(decoded);
    }
  }
  EXPECT_GT(unparsable, static_cast<int>(whole.size()) / 2);
}

// Random damage to a valid request, cut at random: whatever the decoder accepts, protobuf and
// FromProto must turn into the same batch (most damage is declined; some is still valid).
TEST(IngestDecoderTest, DamagedRequestsAreDeclinedOrDecodedLikeProtobuf) {
  std::mt19937 random(20261126);
  const std::string original = HistogramRequest(4, 6, 10).SerializeAsString();
  IngestDecoder decoder;
  int accepted = 0;
  int declined = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string bytes = original;
    const int edits = 1 + static_cast<int>(random() % 3);
    for (int e = 0; e < edits && !bytes.empty(); ++e) {
      const size_t at = random() % bytes.size();
      switch (random() % 4) {
        case 0:
          bytes[at] = static_cast<char>(random());
          break;
        case 1:
          bytes[at] = static_cast<char>(bytes[at] ^ (1 << (random() % 8)));
          break;
        case 2:
          bytes.erase(at, 1 + random() % 4);
          break;
        default:
          bytes.insert(at, 1, static_cast<char>(random()));
      }
    }
    std::vector<size_t> cuts;
    for (int c = static_cast<int>(random() % 4); c > 0 && !bytes.empty(); --c) {
      cuts.push_back(random() % bytes.size());
    }
    std::sort(cuts.begin(), cuts.end());
    if (DecodeAndCompare(decoder, bytes, Cut(bytes, cuts))) {
      ++accepted;
    } else {
      ++declined;
    }
    if (HasFailure()) break;
  }
  EXPECT_GT(accepted, 1000);
  EXPECT_GT(declined, 1000);
}

TEST(IngestDecoderTest, ALargeRequestAfterASmallOneAndBack) {
  IngestDecoder decoder;
  const std::string small = HistogramRequest(2, 4, 11).SerializeAsString();
  const std::string large = HistogramRequest(1000, 64, 12).SerializeAsString();
  ASSERT_GT(large.size(), IngestDecoder::kKeptBufferBytes);
  EXPECT_TRUE(DecodeAndCompare(decoder, small, ChunksOf(small, 10)));
  EXPECT_TRUE(DecodeAndCompare(decoder, large, ChunksOf(large, 8192)));
  decoder.ReleaseLargeBuffer();
  EXPECT_TRUE(DecodeAndCompare(decoder, small, {absl::string_view(small)}));
  decoder.ReleaseLargeBuffer();  // Small: kept.
  EXPECT_TRUE(DecodeAndCompare(decoder, large, {absl::string_view(large)}));
}

}  // namespace
}  // namespace kldrift
