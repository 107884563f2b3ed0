#include "server/storage/rocksdb_store.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/types/span.h"
#include "kldrift/storage/v1/storage.pb.h"
#include "rocksdb/cache.h"
#include "rocksdb/compaction_filter.h"
#include "rocksdb/memtablerep.h"
#include "rocksdb/table.h"
#include "rocksdb/transaction_log.h"
#include "rocksdb/utilities/checkpoint.h"
#include "rocksdb/write_batch.h"
#include "server/core/count_scan.h"
#include "server/core/cpu_dispatch.h"

namespace kldrift {
namespace {

namespace fs = std::filesystem;

enum Family { kDefault = 0, kMeta, kReferences, kWindows, kClients, kAlerts, kLog, kFamilyCount };
constexpr const char* kFamilyNames[kFamilyCount] = {"default", "meta",   "references", "windows",
                                                    "clients", "alerts", "log"};
// meta keys holding a stream's snapshot log position: kLsnPrefix + stream prefix.
constexpr char kLsnPrefix[] = "lsn/";
constexpr char kFormatKey[] = "format_version";

bool IsUpgradedFormat(absl::string_view format) {
  return absl::c_linear_search(RocksDbStore::kUpgradedFormatVersions, format);
}

// ---- Encoding ------------------------------------------------------------------------------

size_t StreamPrefixSize(const StreamKey& key) {
  return key.model.size() + key.model_version.size() + key.signal.size() + 3;
}

void AppendStreamPrefix(std::string* out, const StreamKey& key) {
  for (const std::string* part : {&key.model, &key.model_version, &key.signal}) {
    *out += *part;
    *out += '\0';
  }
}

std::string StreamPrefix(const StreamKey& key) {
  std::string prefix;
  prefix.reserve(StreamPrefixSize(key));
  AppendStreamPrefix(&prefix, key);
  return prefix;
}

// Keys of every stream sort inside [prefix, prefix with its last \0 turned into \1).
std::string StreamPrefixEnd(const StreamKey& key) {
  std::string end = StreamPrefix(key);
  end.back() = '\1';
  return end;
}

// Writes `value` as 8 big-endian bytes at `p`; returns the end.
char* WriteBigEndian(char* p, uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) *p++ = static_cast<char>(value >> shift);
  return p;
}

void AppendBigEndian(std::string* out, uint64_t value) {
  char bytes[8];
  out->append(bytes, WriteBigEndian(bytes, value));
}

uint64_t ReadBigEndian(const char* p) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | static_cast<unsigned char>(p[i]);
  return value;
}

// Signed values sort correctly as unsigned once the sign bit is flipped.
uint64_t FlipSign(int64_t value) { return static_cast<uint64_t>(value) ^ (uint64_t{1} << 63); }
int64_t UnflipSign(uint64_t value) { return static_cast<int64_t>(value ^ (uint64_t{1} << 63)); }

int64_t ToMicros(absl::Time t) {
  if (t == absl::InfinitePast()) return std::numeric_limits<int64_t>::min();
  if (t == absl::InfiniteFuture()) return std::numeric_limits<int64_t>::max();
  return absl::ToUnixMicros(t);
}

absl::Time FromMicros(int64_t micros) {
  if (micros == std::numeric_limits<int64_t>::min()) return absl::InfinitePast();
  if (micros == std::numeric_limits<int64_t>::max()) return absl::InfiniteFuture();
  return absl::FromUnixMicros(micros);
}

// Splits "part\0part\0...rest" into `parts` and the rest.
bool SplitParts(rocksdb::Slice key, absl::Span<std::string* const> parts, rocksdb::Slice* rest) {
  const char* p = key.data();
  const char* end = key.data() + key.size();
  for (std::string* part : parts) {
    const char* zero = static_cast<const char*>(std::memchr(p, '\0', end - p));
    if (zero == nullptr) return false;
    part->assign(p, zero);
    p = zero + 1;
  }
  *rest = rocksdb::Slice(p, end - p);
  return true;
}

// Splits "model\0version\0signal\0rest" into the key and the rest.
bool DecodeStream(rocksdb::Slice key, StreamKey* stream, rocksdb::Slice* rest) {
  return SplitParts(key, {&stream->model, &stream->model_version, &stream->signal}, rest);
}

std::string WindowKey(const StreamKey& stream, absl::Duration window, absl::Time start) {
  std::string key = StreamPrefix(stream);
  AppendBigEndian(&key, static_cast<uint64_t>(absl::ToInt64Seconds(window)));
  AppendBigEndian(&key, FlipSign(ToMicros(start)));
  return key;
}

std::string AlertKey(const StreamKey& stream, absl::Duration window) {
  std::string key = StreamPrefix(stream);
  AppendBigEndian(&key, static_cast<uint64_t>(absl::ToInt64Seconds(window)));
  return key;
}

// Writes `value` as a varint at `p` (room for kMaxVarintLength bytes); returns the end.
constexpr size_t kMaxVarintLength = 10;
char* WriteVarint(char* p, uint64_t value) {
  while (value >= 0x80) {
    *p++ = static_cast<char>(value | 0x80);
    value >>= 7;
  }
  *p++ = static_cast<char>(value);
  return p;
}

void AppendVarint(std::string* out, uint64_t value) {
  char bytes[kMaxVarintLength];
  out->append(bytes, WriteVarint(bytes, value));
}

bool ReadVarint(rocksdb::Slice* in, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift <= 63; shift += 7) {
    if (in->empty()) return false;
    const unsigned char byte = static_cast<unsigned char>((*in)[0]);
    in->remove_prefix(1);
    *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

// Window values are encoded compactly: histogram deltas are small integers, so counts below 16
// are bit-packed (tag 'P': 1, 2 or 4 bits each, as the largest needs), other integers go as
// zig-zag varints (tag 'V', one byte per count below 64), and anything fractional as raw doubles
// (tag 'D'). All decode to the same doubles. Every byte of a log record is copied twice,
// checksummed (in software: Debian's RocksDB is built without SSE 4.2) and written once per batch:
// on 2026-11-25 the record's bytes were a fifth of kldriftd's CPU per batch (README, "What
// changed").
constexpr char kVarintTag = 'V';
constexpr char kDoublesTag = 'D';
constexpr char kPackedTag = 'P';
constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53

// What AppendValues needs to know of `values` (this runs for every bin of every batch): whether
// all are integers below 2^53 in magnitude, and whether all are also counts below 64, whose
// zig-zag varint is the single byte 2v. Small counts, the common case, are told by
// ScanSmallCounts' vectorized pass; anything else takes one branch-free scalar pass.
struct ValuesShape {
  bool integers = true;
  bool small_counts = true;
  double max = 0;  // The largest value, when small_counts.
};

// Counts below this are written as the single byte 2v.
constexpr double kSingleByteCountLimit = 64;

// The shape of whole counts in [0, 2^32) whose largest is `max_count`.
ValuesShape CountsShape(double max_count) {
  return ValuesShape{
      .integers = true, .small_counts = max_count < kSingleByteCountLimit, .max = max_count};
}

ValuesShape ShapeOf(absl::Span<const double> values) {
  ValuesShape shape;
  if (const SmallCountScan scan = ScanSmallCounts(values); scan.small_counts) {
    return CountsShape(scan.max);
  }
  for (double v : values) {
    // Inside the range the cast is exact, so it tells integers from fractions without a floor()
    // call; outside it (NaN included) 0.5 stands in, which no out-of-range value equals.
    const double checked = std::fabs(v) < kMaxExactInteger ? v : 0.5;
    shape.integers &= static_cast<double>(static_cast<int64_t>(checked)) == v;
    shape.small_counts &= (v >= 0) & (v < kSingleByteCountLimit);
    shape.max = std::max(shape.max, v);
  }
  shape.small_counts &= shape.integers;
  return shape;
}

// Writes the 'V' encoding of small counts (ShapeOf(values).small_counts) at `p`: 1 + size()
// bytes. Returns the end.
char* WriteSmallCountBytes(char* p, absl::Span<const double> values) {
  *p++ = kVarintTag;
  for (size_t i = 0; i < values.size(); ++i) {
    p[i] = static_cast<char>(static_cast<int32_t>(values[i]) << 1);
  }
  return p + values.size();
}

// Bits per value of the 'P' encoding of small counts whose largest is `max`; 8: not packed. At
// least 1, so a record's size bounds the number of values it decodes to.
int PackedBits(double max) {
  if (max < 2) return 1;
  if (max < 4) return 2;
  if (max < 16) return 4;
  return 8;
}

// Packs 64 whole counts below 2^bits (bits 1, 2 or 4) into 8 * bits bytes, the first value in
// the lowest bits of the first byte: converted to bytes, then each output byte gathered from its
// 8 / bits neighbours, in loops the compiler vectorizes (and compiles for AVX2 too). Converting
// first and then packing each 8 bytes as one 64-bit word by shifts took 26 ns for 4 bits, this
// 6 ns (README, "What changed"; tests/bench/HISTORY.md).
KLDRIFT_TARGET_CLONES_AVX2 void PackSixtyFourCounts(const double* values, int bits, uint8_t* out) {
  uint8_t b[64];
  for (int i = 0; i < 64; ++i) b[i] = static_cast<uint8_t>(static_cast<int32_t>(values[i]));
  if (bits == 4) {
    for (int j = 0; j < 32; ++j) out[j] = static_cast<uint8_t>(b[2 * j] | b[2 * j + 1] << 4);
  } else if (bits == 2) {
    for (int j = 0; j < 16; ++j) {
      out[j] = static_cast<uint8_t>(b[4 * j] | b[4 * j + 1] << 2 | b[4 * j + 2] << 4 |
                                    b[4 * j + 3] << 6);
    }
  } else {
    for (int j = 0; j < 8; ++j) {
      unsigned byte = 0;
      for (int k = 0; k < 8; ++k) byte |= unsigned{b[8 * j + k]} << k;
      out[j] = static_cast<uint8_t>(byte);
    }
  }
}

// Packs counts below 2^kBits into `out` ((n * kBits + 7) / 8 bytes), the first value in the
// lowest bits of the first byte.
template <int kBits>
void PackCounts(absl::Span<const double> values, unsigned char* out) {
  constexpr size_t kPerByte = 8 / kBits;
  size_t i = 0;
  for (; i + 64 <= values.size(); i += 64) {
    PackSixtyFourCounts(values.data() + i, kBits, out);
    out += 8 * kBits;
  }
  for (; i + kPerByte <= values.size(); i += kPerByte) {
    unsigned byte = 0;
    for (size_t k = 0; k < kPerByte; ++k) {
      byte |= static_cast<unsigned>(static_cast<int32_t>(values[i + k])) << (k * kBits);
    }
    *out++ = static_cast<unsigned char>(byte);
  }
  unsigned byte = 0;
  for (size_t k = 0; i + k < values.size(); ++k) {
    byte |= static_cast<unsigned>(static_cast<int32_t>(values[i + k])) << (k * kBits);
  }
  if (i < values.size()) *out = static_cast<unsigned char>(byte);
}

template <int kBits>
void UnpackCounts(const unsigned char* in, size_t count, double* out) {
  constexpr size_t kPerByte = 8 / kBits;
  constexpr unsigned kMask = (1u << kBits) - 1;
  for (size_t i = 0; i < count; ++i) {
    out[i] = static_cast<double>((in[i / kPerByte] >> ((i % kPerByte) * kBits)) & kMask);
  }
}

// Writes the 'P' encoding of counts below 2^bits (bits 1, 2 or 4) at `p`: the tag, `bits`, the
// number of values (varint), then the packed values. Returns the end.
char* WritePackedCounts(char* p, absl::Span<const double> values, int bits) {
  *p++ = kPackedTag;
  *p++ = static_cast<char>(bits);
  p = WriteVarint(p, values.size());
  unsigned char* packed = reinterpret_cast<unsigned char*>(p);
  if (bits == 1) PackCounts<1>(values, packed);
  if (bits == 2) PackCounts<2>(values, packed);
  if (bits == 4) PackCounts<4>(values, packed);
  return p + (values.size() * bits + 7) / 8;
}

size_t VarintLength(uint64_t value) {
  size_t length = 1;
  for (; value >= 0x80; value >>= 7) ++length;
  return length;
}

// The length of AppendValues' encoding of `count` small counts whose largest is `max`.
size_t SmallCountsSize(size_t count, double max) {
  const int bits = PackedBits(max);
  return bits < 8 ? 2 + VarintLength(count) + (count * bits + 7) / 8 : 1 + count;
}

// Writes the encoding of small counts whose largest is `max` at `p`: SmallCountsSize bytes.
// Returns the end.
char* WriteSmallCounts(char* p, absl::Span<const double> values, double max) {
  if (const int bits = PackedBits(max); bits < 8) return WritePackedCounts(p, values, bits);
  return WriteSmallCountBytes(p, values);
}

// Appends the encoding of `values` to `out`.
void AppendValues(std::string* out, absl::Span<const double> values, const ValuesShape& shape) {
  if (shape.small_counts) {
    const size_t start = out->size();
    out->resize(start + SmallCountsSize(values.size(), shape.max));
    WriteSmallCounts(out->data() + start, values, shape.max);
    return;
  }
  if (!shape.integers) {
    const size_t start = out->size();
    out->resize(start + 1 + values.size() * sizeof(double));
    (*out)[start] = kDoublesTag;
    std::memcpy(out->data() + start + 1, values.data(), values.size() * sizeof(double));
    return;
  }
  // Written through a pointer into room for the longest encoding (a varint of 2^54 takes 8
  // bytes), then cut to size: no capacity check per byte.
  constexpr size_t kMaxVarintBytes = 8;
  const size_t start = out->size();
  out->resize(start + 1 + values.size() * kMaxVarintBytes);
  char* p = out->data() + start;
  *p++ = kVarintTag;
  for (double v : values) {
    const int64_t i = static_cast<int64_t>(v);
    uint64_t zigzag = (static_cast<uint64_t>(i) << 1) ^ static_cast<uint64_t>(i >> 63);
    while (zigzag >= 0x80) {
      *p++ = static_cast<char>(zigzag | 0x80);
      zigzag >>= 7;
    }
    *p++ = static_cast<char>(zigzag);
  }
  out->resize(p - out->data());
}

void AppendValues(std::string* out, absl::Span<const double> values) {
  AppendValues(out, values, ShapeOf(values));
}

std::string EncodeValues(const std::vector<double>& values) {
  std::string out;
  AppendValues(&out, values);
  return out;
}

// False on a malformed value.
bool DecodeValues(rocksdb::Slice data, std::vector<double>* values) {
  values->clear();
  if (data.empty()) return false;
  const char tag = data[0];
  data.remove_prefix(1);
  if (tag == kDoublesTag) {
    if (data.size() % sizeof(double) != 0) return false;
    values->resize(data.size() / sizeof(double));
    std::memcpy(values->data(), data.data(), data.size());
    return true;
  }
  if (tag == kPackedTag) {
    uint64_t count;
    if (data.empty()) return false;
    const int bits = data[0];
    data.remove_prefix(1);
    if ((bits != 1 && bits != 2 && bits != 4) || !ReadVarint(&data, &count) ||
        count > 8 * data.size() || data.size() != (count * bits + 7) / 8) {
      return false;
    }
    values->assign(count, 0.0);
    const unsigned char* p = reinterpret_cast<const unsigned char*>(data.data());
    if (bits == 1) UnpackCounts<1>(p, count, values->data());
    if (bits == 2) UnpackCounts<2>(p, count, values->data());
    if (bits == 4) UnpackCounts<4>(p, count, values->data());
    return true;
  }
  if (tag != kVarintTag) return false;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(data.data());
  const unsigned char* end = p + data.size();
  while (p < end) {
    uint64_t zigzag = 0;
    int shift = 0;
    while (true) {
      if (p == end || shift > 63) return false;
      const unsigned char byte = *p++;
      zigzag |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) break;
      shift += 7;
    }
    const int64_t i = static_cast<int64_t>(zigzag >> 1) ^ -static_cast<int64_t>(zigzag & 1);
    values->push_back(static_cast<double>(i));
  }
  return true;
}

std::string LsnKey(uint64_t lsn) {
  std::string key;
  AppendBigEndian(&key, lsn);
  return key;
}

// A log record in the batch log (and, before kldrift-store-4, in RocksDB's write-ahead log as a
// WriteBatch::PutLogData blob): a tag saying the body's format, the record's lsn (8 bytes,
// big-endian), then the body. The log family (a backup's, or a store of the first format) keys a
// record by its lsn, plus the tag unless the body is of the stream-keys format.
enum class LogFormat : char {
  // kldrift-store-1 and -2: event time (8 bytes), varint count, then per stream: varint length,
  // stream prefix (model \0 version \0 signal \0), varint length, values (AppendValues).
  kStreamKeys = 'R',
  // kldrift-store-3 (AppendCompactRecord): the model once, a stream's values bit-packed.
  kCompact = 'C',
  // Since kldrift-store-4, in the batch log: varint length and the client's id, varint sequence
  // number, the time received (8 bytes, as the event time), then a compact body.
  kWithClient = 'B',
};
constexpr size_t kLogBlobHeader = 1 + 8;

// A log record's body in the compact format, appended to `out`: event time (8 bytes), varint
// length and the record's model, varint count, then per stream: varint length and its key
// ("version \0 signal \0", or "model \0 version \0 signal \0" for a stream of another model),
// varint length and its values (AppendValues). A batch of 100 histograms of 64 bins with counts
// below 4 adds 3,274 bytes to the write-ahead log (its body takes 9,299 in the stream-keys format).
void AppendCompactRecord(const IngestRecordView& record, std::string& out) {
  // The first stream's model, which the others share unless they name their own.
  const absl::string_view model =
      record.deltas.empty() ? absl::string_view() : record.deltas.front().model;
  auto names_length = [&](const StreamDeltaView& delta) {
    return delta.model_version.size() + delta.signal.size() + 2 +
           (delta.model != model ? delta.model.size() + 1 : 0);
  };
  // Written through a pointer into room made once, then cut to size: no capacity check per byte.
  // The room is exact for streams of small counts the engine has summarized (the common case);
  // any other stream makes more when it gets there.
  size_t room = 8 + 2 * kMaxVarintLength + model.size();
  for (const StreamDeltaView& delta : record.deltas) {
    room += 2 * kMaxVarintLength + names_length(delta) +
            (delta.known_counts && CountsShape(delta.max_count).small_counts
                 ? SmallCountsSize(delta.values.size(), delta.max_count)
                 : 0);
  }
  size_t at = out.size();
  out.resize(at + room);
  char* p = out.data() + at;
  // Makes room for `bytes` more at `p`.
  auto make_room = [&](size_t bytes) {
    at = p - out.data();
    if (out.size() - at < bytes) {
      out.resize(std::max(at + bytes, 2 * out.size()));
      p = out.data() + at;
    }
  };
  auto write = [&](absl::string_view bytes) {
    std::memcpy(p, bytes.data(), bytes.size());
    p += bytes.size();
  };
  p = WriteBigEndian(p, FlipSign(ToMicros(record.event_time)));
  p = WriteVarint(p, model.size());
  write(model);
  p = WriteVarint(p, record.deltas.size());
  std::string values;  // Reused: a stream's values, when their length is not known beforehand.
  for (const StreamDeltaView& delta : record.deltas) {
    // The engine's batch check usually knows the counts already: no second look at them.
    const ValuesShape shape =
        delta.known_counts ? CountsShape(delta.max_count) : ShapeOf(delta.values);
    size_t values_length = 0;
    if (shape.small_counts) {
      values_length = SmallCountsSize(delta.values.size(), shape.max);
    } else {
      values.clear();
      AppendValues(&values, delta.values, shape);
      values_length = values.size();
    }
    make_room(2 * kMaxVarintLength + names_length(delta) + values_length);
    p = WriteVarint(p, names_length(delta));
    if (delta.model != model) {
      write(delta.model);
      *p++ = '\0';
    }
    write(delta.model_version);
    *p++ = '\0';
    write(delta.signal);
    *p++ = '\0';
    p = WriteVarint(p, values_length);
    if (shape.small_counts) {
      p = WriteSmallCounts(p, delta.values, shape.max);
    } else {
      write(values);
    }
  }
  out.resize(p - out.data());
}

// Reads a varint length and that many bytes of `in` into `field`.
bool ReadLengthPrefixed(rocksdb::Slice* in, rocksdb::Slice* field) {
  uint64_t length;
  if (!ReadVarint(in, &length) || length > in->size()) return false;
  *field = rocksdb::Slice(in->data(), length);
  in->remove_prefix(length);
  return true;
}

bool DecodeRecord(LogFormat format, rocksdb::Slice in, IngestRecord* record) {
  if (format == LogFormat::kWithClient) {
    rocksdb::Slice client;
    if (!ReadLengthPrefixed(&in, &client) || !ReadVarint(&in, &record->sequence) || in.size() < 8) {
      return false;
    }
    record->client_id.assign(client.data(), client.size());
    record->received_at = FromMicros(UnflipSign(ReadBigEndian(in.data())));
    in.remove_prefix(8);
    format = LogFormat::kCompact;
  }
  if (in.size() < 8) return false;
  record->event_time = FromMicros(UnflipSign(ReadBigEndian(in.data())));
  in.remove_prefix(8);
  rocksdb::Slice model;
  if (format == LogFormat::kCompact && !ReadLengthPrefixed(&in, &model)) return false;
  uint64_t count;
  if (!ReadVarint(&in, &count) || count > in.size()) return false;
  record->deltas.resize(count);
  for (StreamDelta& delta : record->deltas) {
    rocksdb::Slice key, values, rest;
    if (!ReadLengthPrefixed(&in, &key) || !ReadLengthPrefixed(&in, &values)) return false;
    if (format == LogFormat::kCompact &&
        std::count(key.data(), key.data() + key.size(), '\0') == 2) {
      delta.stream.model.assign(model.data(), model.size());
      if (!SplitParts(key, {&delta.stream.model_version, &delta.stream.signal}, &rest) ||
          !rest.empty()) {
        return false;
      }
    } else if (!DecodeStream(key, &delta.stream, &rest) || !rest.empty()) {
      return false;
    }
    if (!DecodeValues(values, &delta.values)) return false;
  }
  return in.empty();
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", s.ToString());
  if (s.IsCorruption()) return absl::DataLossError(message);
  if (s.IsInvalidArgument() || s.IsNotSupported()) return absl::FailedPreconditionError(message);
  return absl::UnavailableError(message);
}

// ---- The log in the write-ahead log ---------------------------------------------------------

// The kldrift log records (PutLogData blobs) of one write batch; everything else is skipped. The
// slices point into the batch.
class LogBlobCollector : public rocksdb::WriteBatch::Handler {
 public:
  std::vector<rocksdb::Slice> blobs;

  void LogData(const rocksdb::Slice& blob) override { blobs.push_back(blob); }
  rocksdb::Status PutCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status DeleteCF(uint32_t, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status SingleDeleteCF(uint32_t, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status DeleteRangeCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status MergeCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
};

// Calls `visit(lsn, format, body)` for every log record in `db`'s write-ahead log files (archived
// and live) written at sequence numbers up to `through`, in write order.
absl::Status ForEachWalRecord(
    rocksdb::DB* db, rocksdb::SequenceNumber through,
    const std::function<absl::Status(uint64_t lsn, LogFormat format, rocksdb::Slice body)>& visit) {
  std::unique_ptr<rocksdb::TransactionLogIterator> it;
  rocksdb::Status s = db->GetUpdatesSince(0, &it);
  if (!s.ok()) return FromRocks(s, "reading the write-ahead log");
  rocksdb::SequenceNumber last = 0;
  LogBlobCollector collector;
  for (; it->Valid(); it->Next()) {
    rocksdb::BatchResult batch = it->GetBatch();
    if (batch.sequence > through) break;
    collector.blobs.clear();
    s = batch.writeBatchPtr->Iterate(&collector);
    if (!s.ok()) return FromRocks(s, "reading a write batch of the write-ahead log");
    for (const rocksdb::Slice& blob : collector.blobs) {
      if (blob.size() < kLogBlobHeader || (blob[0] != static_cast<char>(LogFormat::kCompact) &&
                                           blob[0] != static_cast<char>(LogFormat::kStreamKeys) &&
                                           blob[0] != static_cast<char>(LogFormat::kWithClient))) {
        return absl::DataLossError(absl::StrCat("unreadable log record (", blob.size(),
                                                " bytes) at sequence ", batch.sequence));
      }
      rocksdb::Slice body(blob.data() + kLogBlobHeader, blob.size() - kLogBlobHeader);
      const LogFormat format = static_cast<LogFormat>(blob[0]);
      if (absl::Status v = visit(ReadBigEndian(blob.data() + 1), format, body); !v.ok()) return v;
    }
    last = batch.sequence + std::max<uint32_t>(batch.writeBatchPtr->Count(), 1) - 1;
  }
  // A torn tail (a crash in the middle of a write) ends the log: RocksDB's recovery stopped there
  // too, so nothing up to `through` lies beyond it.
  if (!it->status().ok() && last < through) {
    return FromRocks(it->status(), "reading the write-ahead log");
  }
  return absl::OkStatus();
}

// A log record as the batch log holds it (a tag, the lsn, the body; see LogFormat). False when
// `blob` is not one.
bool ParseLogBlob(absl::string_view blob, uint64_t* lsn, LogFormat* format, rocksdb::Slice* body) {
  if (blob.size() < kLogBlobHeader || blob[0] != static_cast<char>(LogFormat::kWithClient)) {
    return false;
  }
  *format = static_cast<LogFormat>(blob[0]);
  *lsn = ReadBigEndian(blob.data() + 1);
  *body = rocksdb::Slice(blob.data() + kLogBlobHeader, blob.size() - kLogBlobHeader);
  return true;
}

absl::Status UnreadableBatchLogRecord(absl::string_view where, uint64_t position, size_t bytes) {
  return absl::DataLossError(absl::StrCat(where, ": unreadable record (", bytes,
                                          " bytes) at batch log position ", position));
}

// Where a store keeps its batch log.
std::string BatchLogDir(const std::string& data_dir) {
  return (fs::path(data_dir) / "batchlog").string();
}

// ---- Retention filter ------------------------------------------------------------------------

// Drops sub-buckets that ended more than half a window ago (see the class comment).
class WindowRetentionFilter : public rocksdb::CompactionFilter {
 public:
  explicit WindowRetentionFilter(const Clock* clock) : clock_(clock) {}

  Decision FilterV2(int level, const rocksdb::Slice& key, ValueType value_type,
                    const rocksdb::Slice& existing_value, std::string* new_value,
                    std::string* skip_until) const override {
    if (value_type != ValueType::kValue && value_type != ValueType::kMergeOperand) {
      return Decision::kKeep;
    }
    if (key.size() < 16) return Decision::kKeep;
    const char* tail = key.data() + key.size() - 16;
    const absl::Duration window = absl::Seconds(static_cast<int64_t>(ReadBigEndian(tail)));
    const absl::Time start = FromMicros(UnflipSign(ReadBigEndian(tail + 8)));
    return start + window + window / 2 <= clock_->Now() ? Decision::kRemove : Decision::kKeep;
  }
  const char* Name() const override { return "kldrift.WindowRetention"; }

 private:
  const Clock* clock_;
};

// ---- References ------------------------------------------------------------------------------

storage::v1::StoredReference ToStored(const Reference& ref) {
  storage::v1::StoredReference out;
  out.set_version(ref.version);
  out.set_kind(static_cast<int32_t>(ref.kind));
  if (ref.layout) {
    for (double e : ref.layout->edges()) out.add_edges(e);
    for (const std::string& c : ref.layout->categories()) out.add_categories(c);
    out.set_bins(ref.layout->size());
  }
  for (double c : ref.counts) out.add_counts(c);
  for (double m : ref.gaussian.mean) out.add_gaussian_mean(m);
  for (double v : ref.gaussian.var) out.add_gaussian_var(v);
  storage::v1::StoredPolicy* p = out.mutable_policy();
  for (absl::Duration w : ref.policy.windows) p->add_window_seconds(absl::ToInt64Seconds(w));
  p->set_alpha(ref.policy.alpha);
  p->set_measure(std::string(MeasureName(ref.policy.measure)));
  p->set_warn_threshold(ref.policy.warn_threshold);
  p->set_critical_threshold(ref.policy.critical_threshold);
  if (ref.policy.clear_threshold) p->set_clear_threshold(*ref.policy.clear_threshold);
  p->set_for_nanos(absl::ToInt64Nanoseconds(ref.policy.for_duration));
  if (ref.policy.min_samples) p->set_min_samples(*ref.policy.min_samples);
  p->set_max_p_value(ref.policy.max_p_value);
  p->set_sub_buckets(ref.policy.sub_buckets);
  out.set_created_at_micros(ToMicros(ref.created_at));
  return out;
}

absl::StatusOr<std::shared_ptr<const Reference>> FromStored(
    const StreamKey& stream, const storage::v1::StoredReference& in) {
  ReferenceSpec spec;
  spec.stream = stream;
  spec.kind = static_cast<ReferenceKind>(in.kind());
  spec.edges.assign(in.edges().begin(), in.edges().end());
  spec.categories.assign(in.categories().begin(), in.categories().end());
  spec.bins = in.bins();
  spec.gaussian.mean.assign(in.gaussian_mean().begin(), in.gaussian_mean().end());
  spec.gaussian.var.assign(in.gaussian_var().begin(), in.gaussian_var().end());
  if (spec.kind == ReferenceKind::kNumeric || spec.kind == ReferenceKind::kCategorical ||
      spec.kind == ReferenceKind::kPreBinned) {
    spec.counts.emplace(in.counts().begin(), in.counts().end());
  }
  const storage::v1::StoredPolicy& p = in.policy();
  AlertPolicy& policy = spec.policy;
  policy.windows.clear();
  for (int64_t s : p.window_seconds()) policy.windows.push_back(absl::Seconds(s));
  policy.alpha = p.alpha();
  absl::StatusOr<Measure> measure = ParseMeasure(p.measure());
  if (!measure.ok()) return measure.status();
  policy.measure = *measure;
  policy.warn_threshold = p.warn_threshold();
  policy.critical_threshold = p.critical_threshold();
  if (p.has_clear_threshold()) {
    // Servers before 2026-11-25 accepted a clear threshold above a warn threshold of 0 (which
    // ValidatePolicy now refuses); such a reference loads with clear = warn = 0, what the alert
    // state machine can honour, rather than keeping the store from opening.
    policy.clear_threshold = std::min(p.clear_threshold(), std::max(p.warn_threshold(), 0.0));
  }
  policy.for_duration = absl::Nanoseconds(p.for_nanos());
  if (p.has_min_samples()) policy.min_samples = p.min_samples();
  policy.max_p_value = p.max_p_value();
  policy.sub_buckets = p.sub_buckets();
  // Stored references were valid when written; the limits of this server do not apply again.
  ReferenceLimits unlimited;
  unlimited.max_bins = std::numeric_limits<size_t>::max();
  unlimited.max_dimensions = std::numeric_limits<size_t>::max();
  return BuildReference(spec, in.version(), FromMicros(in.created_at_micros()), unlimited);
}

uint64_t FolderBytes(const std::string& path) {
  uint64_t total = 0;
  std::error_code error;
  for (const auto& entry : fs::recursive_directory_iterator(path, error)) {
    if (entry.is_regular_file(error)) total += entry.file_size(error);
  }
  return total;
}

// `retention` (owned by the store, may be null for read-only use) filters the windows family.
// OK if `families` (of the RocksDB database at `path`) include every kldrift column family.
absl::Status CheckKldriftFamilies(const std::string& path,
                                  const std::vector<std::string>& families) {
  for (const char* name : kFamilyNames) {
    if (std::find(families.begin(), families.end(), name) == families.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, " is a RocksDB database but not a kldrift store (it has no \"", name,
                       "\" column family; it has: ", absl::StrJoin(families, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

// Memory. RocksDB's defaults give every column family two 64 MB memtables and its own 8 MB block
// cache: up to ~1 GB for our seven families, resident while a heavy ingest fills the log family.
// kldriftd keeps its working state in the engine and reads the store only at start-up, so it needs
// little of either: the memtables share one budget (a flush starts when they hold
// kMemtableBudgetBytes together) and the families share one small cache.
constexpr size_t kMemtableBudgetBytes = 64 << 20;
constexpr size_t kFamilyMemtableBytes = 16 << 20;
constexpr size_t kBlockCacheBytes = 8 << 20;

const std::shared_ptr<rocksdb::TableFactory>& SharedTableFactory() {
  static const auto* const factory = [] {
    rocksdb::BlockBasedTableOptions table;
    table.block_cache = rocksdb::NewLRUCache(kBlockCacheBytes);
    return new std::shared_ptr<rocksdb::TableFactory>(rocksdb::NewBlockBasedTableFactory(table));
  }();
  return *factory;
}

// The write-ahead log. Log records are written to it only (see the header): a write-ahead log file
// RocksDB no longer needs is archived rather than deleted (a size limit no store reaches, so
// RocksDB never deletes one itself; a TTL would, after any clock step), and TruncateLog deletes
// archived files the snapshots cover. The live files are cut to `max_live_log_bytes` by flushing
// the small memtables that hold them back (client sequences, snapshots), so a file is archived
// soon after it is full.
constexpr uint64_t kNeverPurgeWalMegabytes = uint64_t{1} << 30;  // 1 PiB.

rocksdb::DBOptions StoreDbOptions(
    uint64_t max_live_log_bytes = RocksDbStoreOptions().max_live_log_bytes) {
  rocksdb::DBOptions options;
  options.paranoid_checks = true;
  // Concurrent ingest streams: let the WAL and memtable writes of different batches overlap.
  options.enable_pipelined_write = true;
  // The vector memtables (FamilyOptions) take one writer at a time; on a few cores concurrent
  // memtable writes gained nothing measurable.
  options.allow_concurrent_memtable_write = false;
  options.db_write_buffer_size = kMemtableBudgetBytes;
  options.WAL_size_limit_MB = kNeverPurgeWalMegabytes;
  options.WAL_ttl_seconds = 0;
  options.max_total_wal_size = max_live_log_bytes;
  return options;
}

rocksdb::ColumnFamilyOptions FamilyOptions(int family, const rocksdb::CompactionFilter* retention) {
  rocksdb::ColumnFamilyOptions options;
  options.write_buffer_size = kFamilyMemtableBytes;
  options.table_factory = SharedTableFactory();
  if (family == kWindows || family == kLog || family == kClients) {
    // Written heavily (every batch's client sequence, every tick's changed sub-buckets) and read
    // only at start-up: a vector memtable appends each key and sorts once at flush, where the
    // default skip list pays a search of ~20 key comparisons per insert (perf: most of a tick's
    // snapshot write, and 3 % of kldriftd's CPU at saturated ingest for the client sequences).
    // No point lookups are made in these families (VectorRep's would be a scan).
    options.memtable_factory = std::make_shared<rocksdb::VectorRepFactory>();
  }
  if (family == kWindows) {
    options.compaction_filter = retention;
    options.periodic_compaction_seconds = 3600;
  }
  return options;
}

// Every kldrift column family, in Family order.
std::vector<rocksdb::ColumnFamilyDescriptor> FamilyDescriptors(
    const rocksdb::CompactionFilter* retention) {
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (int family = 0; family < kFamilyCount; ++family) {
    descriptors.emplace_back(kFamilyNames[family], FamilyOptions(family, retention));
  }
  return descriptors;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RocksDbStore>> RocksDbStore::Open(const RocksDbStoreOptions& opts) {
  if (opts.path.empty()) return absl::InvalidArgumentError("--data-dir is empty");
  if (opts.clock == nullptr) return absl::InvalidArgumentError("RocksDbStore needs a clock");
  std::error_code error;
  const bool exists = fs::exists(opts.path, error);
  const bool fresh = !exists || fs::is_empty(opts.path, error);
  if (exists && !fs::is_directory(opts.path, error)) {
    return absl::FailedPreconditionError(
        absl::StrCat("--data-dir ", opts.path, " is a file, not a folder"));
  }
  rocksdb::DBOptions db_options = StoreDbOptions(opts.max_live_log_bytes);
  db_options.create_if_missing = fresh;
  db_options.create_missing_column_families = fresh;
  if (!fresh) {
    std::vector<std::string> families;
    rocksdb::Status s = rocksdb::DB::ListColumnFamilies(db_options, opts.path, &families);
    if (s.IsCorruption()) {
      // A store whose MANIFEST is damaged: not a foreign folder, and not to be replaced.
      return absl::DataLossError(absl::StrCat(
          "--data-dir ", opts.path, " is corrupted (", s.ToString(),
          "); kldriftd will not reset it. Restore a backup (README, \"Backup and restore\") or "
          "move the folder aside"));
    }
    if (!s.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--data-dir ", opts.path, " is not empty and is not a kldrift data folder (",
          s.ToString(), "); point --data-dir at an empty or new folder, or at a kldrift store"));
    }
    if (absl::Status s = CheckKldriftFamilies(absl::StrCat("--data-dir ", opts.path), families);
        !s.ok()) {
      return s;
    }
  }
  std::unique_ptr<RocksDbStore> store(new RocksDbStore());
  store->options_ = opts;
  store->retention_ = std::make_unique<WindowRetentionFilter>(opts.clock);
  const std::vector<rocksdb::ColumnFamilyDescriptor> descriptors =
      FamilyDescriptors(store->retention_.get());
  store->write_options_.sync = opts.sync;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, opts.path, descriptors, &store->handles_, &db);
  if (!s.ok()) {
    if (s.IsCorruption()) {
      return absl::DataLossError(absl::StrCat(
          "--data-dir ", opts.path, " is corrupted (", s.ToString(),
          "); kldriftd will not reset it. Restore a backup (README, \"Backup and restore\") or "
          "move the folder aside"));
    }
    if (s.ToString().find("lock") != std::string::npos) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--data-dir ", opts.path, " is in use by another kldriftd (", s.ToString(), ")"));
    }
    return FromRocks(s, absl::StrCat("cannot open --data-dir ", opts.path));
  }
  store->db_.reset(db);
  rocksdb::ColumnFamilyHandle* meta = store->handles_[kMeta];
  std::string format;
  s = db->Get(rocksdb::ReadOptions(), meta, kFormatKey, &format);
  if ((fresh && s.IsNotFound()) || (s.ok() && IsUpgradedFormat(format))) {
    // A new store, or one of a previous format, whose log records (in the log family, or in the
    // write-ahead log) Load still reads and TruncateLog deletes: from now on they go to the batch
    // log, which a kldriftd of a previous format would not read, so the folder is marked as the
    // new format.
    rocksdb::WriteOptions synced;
    synced.sync = true;
    s = db->Put(synced, meta, kFormatKey, kFormatVersion);
    if (!s.ok()) return FromRocks(s, "cannot initialise the data folder");
  } else if (!s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--data-dir ", opts.path, " has no kldrift format version (", s.ToString(),
                     "); it was not written by kldriftd"));
  } else if (format != kFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("--data-dir ", opts.path, " was written in format \"", format,
                     "\" but this kldriftd reads \"", kFormatVersion,
                     "\"; run a kldriftd that matches it, or start from a new folder"));
  }
  BatchLogOptions log_options;
  log_options.dir = BatchLogDir(opts.path);
  log_options.segment_bytes = opts.log_segment_bytes;
  log_options.sync = opts.sync;
  absl::StatusOr<std::unique_ptr<BatchLog>> log = BatchLog::Open(log_options);
  if (!log.ok()) {
    return absl::Status(log.status().code(),
                        absl::StrCat("--data-dir ", opts.path, ": ", log.status().message()));
  }
  store->log_ = *std::move(log);
  return store;
}

RocksDbStore::~RocksDbStore() {
  if (db_ != nullptr) {
    for (rocksdb::ColumnFamilyHandle* handle : handles_) db_->DestroyColumnFamilyHandle(handle);
    db_->Close();
  }
}

absl::Status RocksDbStore::PutReference(const Reference& reference, bool reset_windows,
                                        uint64_t lsn_floor) {
  rocksdb::WriteBatch batch;
  const StreamKey& stream = reference.stream;
  // Every new version resets the stream's alert states (DriftEngine::PutReference), bins changed
  // or not: a stored state would otherwise come back on restart (e.g. firing after a re-baseline).
  batch.DeleteRange(handles_[kAlerts], StreamPrefix(stream), StreamPrefixEnd(stream));
  if (reset_windows) {
    batch.DeleteRange(handles_[kWindows], StreamPrefix(stream), StreamPrefixEnd(stream));
    // Log records written before the windows were reset must never be replayed into them.
    batch.Put(handles_[kMeta], kLsnPrefix + StreamPrefix(stream), LsnKey(lsn_floor));
  }
  std::string key = StreamPrefix(stream);
  AppendBigEndian(&key, reference.version);
  batch.Put(handles_[kReferences], key, ToStored(reference).SerializeAsString());
  return FromRocks(db_->Write(write_options_, &batch), "storing the reference failed");
}

absl::Status RocksDbStore::DeleteStream(const StreamKey& stream) {
  rocksdb::WriteBatch batch;
  for (int family : {kReferences, kWindows, kAlerts}) {
    batch.DeleteRange(handles_[family], StreamPrefix(stream), StreamPrefixEnd(stream));
  }
  batch.Delete(handles_[kMeta], kLsnPrefix + StreamPrefix(stream));
  return FromRocks(db_->Write(write_options_, &batch), "deleting the stream failed");
}

absl::Status RocksDbStore::WriteBatch(const IngestRecordView& record) {
  // Reused by the thread's next batch (the log copies it): no allocation per batch. A record
  // of a batch far larger than usual does not keep its buffer.
  constexpr size_t kKeptBufferBytes = size_t{1} << 20;
  thread_local std::string blob;
  blob.clear();
  absl::Cleanup release_large = [&] {
    if (blob.capacity() > kKeptBufferBytes) std::string().swap(blob);
  };
  blob.push_back(static_cast<char>(LogFormat::kWithClient));
  AppendBigEndian(&blob, record.lsn);
  AppendVarint(&blob, record.client_id.size());
  blob.append(record.client_id.data(), record.client_id.size());
  AppendVarint(&blob, record.sequence);
  AppendBigEndian(&blob, FlipSign(ToMicros(record.received_at)));
  AppendCompactRecord(record, blob);
  absl::StatusOr<uint64_t> end;
  {
    // The client's sequence number joins the map in the same critical section as its record joins
    // the log, so TruncateLog, which writes the map before it frees records, never frees one whose
    // sequence number is not written.
    MutexLock lock(&clients_mutex_);
    end = log_->Append(blob);
    if (!end.ok()) {
      return absl::Status(end.status().code(),
                          absl::StrCat("storing the batch failed: ", end.status().message()));
    }
    auto it = clients_.find(record.client_id);
    if (it == clients_.end()) it = clients_.emplace(record.client_id, ClientSequence()).first;
    if (record.sequence >= it->second.sequence) {
      it->second = ClientSequence{record.sequence, record.received_at, /*dirty=*/true};
    }
  }
  if (absl::Status synced = log_->Sync(*end); !synced.ok()) {
    return absl::Status(synced.code(),
                        absl::StrCat("storing the batch failed: ", synced.message()));
  }
  return absl::OkStatus();
}

absl::Status RocksDbStore::WriteSnapshots(const std::vector<StreamSnapshot>& snapshots) {
  rocksdb::WriteBatch batch;
  for (const StreamSnapshot& snapshot : snapshots) {
    for (const SubBucketDelta& sub_bucket : snapshot.sub_buckets) {
      batch.Put(handles_[kWindows],
                WindowKey(snapshot.stream, sub_bucket.window, sub_bucket.sub_bucket_start),
                EncodeValues(sub_bucket.values));
    }
    batch.Put(handles_[kMeta], kLsnPrefix + StreamPrefix(snapshot.stream), LsnKey(snapshot.lsn));
  }
  return FromRocks(db_->Write(write_options_, &batch), "storing window snapshots failed");
}

uint64_t RocksDbStore::LogEnd() { return log_->End(); }

absl::Status RocksDbStore::TruncateLog(uint64_t up_to, uint64_t end) {
  MutexLock truncating(&log_files_mutex_);
  if (const uint64_t legacy = legacy_log_lsn_.load(); legacy > 0) {
    rocksdb::WriteBatch batch;
    batch.DeleteRange(handles_[kLog], LsnKey(0), LsnKey(up_to + 1));
    if (absl::Status s = FromRocks(db_->Write(write_options_, &batch), "truncating the log");
        !s.ok()) {
      return s;
    }
    if (up_to >= legacy) legacy_log_lsn_.store(0);
  }
  // The clients' sequence numbers the records to be freed carry (and later ones) go first.
  std::vector<std::pair<std::string, ClientSequence>> clients;
  {
    MutexLock lock(&clients_mutex_);
    for (const auto& [id, client] : clients_) {
      if (client.dirty) clients.emplace_back(id, client);
    }
  }
  if (!clients.empty()) {
    rocksdb::WriteBatch batch;
    for (const auto& [id, client] : clients) {
      storage::v1::StoredClient stored;
      stored.set_last_sequence(client.sequence);
      stored.set_last_seen_micros(ToMicros(client.seen));
      batch.Put(handles_[kClients], id, stored.SerializeAsString());
    }
    if (absl::Status s = FromRocks(db_->Write(write_options_, &batch),
                                   "storing client sequence numbers before truncating the log");
        !s.ok()) {
      return s;
    }
    MutexLock lock(&clients_mutex_);
    for (const auto& [id, client] : clients) {
      auto it = clients_.find(id);
      if (it != clients_.end() && it->second.sequence == client.sequence) it->second.dirty = false;
    }
  }
  // Every record before `end` has an lsn up to `up_to`.
  if (absl::Status s = log_->TruncateBefore(end); !s.ok()) return s;
  // RocksDB's write-ahead log holds log records of an earlier format until the snapshots cover
  // them; an archived file holds nothing else that is needed (its memtables were flushed).
  if (const uint64_t legacy = legacy_wal_lsn_.load(); legacy > up_to) return absl::OkStatus();
  legacy_wal_lsn_.store(0);
  rocksdb::VectorLogPtr files;
  if (absl::Status s = FromRocks(db_->GetSortedWalFiles(files), "listing write-ahead log files");
      !s.ok()) {
    return s;
  }
  for (const std::unique_ptr<rocksdb::LogFile>& file : files) {
    if (file->Type() != rocksdb::kArchivedLogFile) continue;
    if (absl::Status s = FromRocks(db_->DeleteFile(file->PathName()),
                                   absl::StrCat("deleting log file ", file->PathName()));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status RocksDbStore::WriteClientSequence(const std::string& client_id, uint64_t sequence,
                                               absl::Time seen) {
  {
    MutexLock lock(&clients_mutex_);
    ClientSequence& known = clients_[client_id];
    if (sequence >= known.sequence) {
      known.sequence = sequence;
      known.seen = seen;
    }
  }
  storage::v1::StoredClient client;
  client.set_last_sequence(sequence);
  client.set_last_seen_micros(ToMicros(seen));
  return FromRocks(
      db_->Put(write_options_, handles_[kClients], client_id, client.SerializeAsString()),
      "storing the client's sequence failed");
}

absl::Status RocksDbStore::WriteAlerts(const std::vector<AlertUpdate>& updates) {
  if (updates.empty()) return absl::OkStatus();
  rocksdb::WriteBatch batch;
  for (const AlertUpdate& u : updates) {
    storage::v1::StoredAlert alert;
    alert.set_state(static_cast<int32_t>(u.status.state));
    alert.set_severity(static_cast<int32_t>(u.status.severity));
    alert.set_since_micros(ToMicros(u.status.since));
    alert.set_over_since_micros(ToMicros(u.status.over_since));
    alert.set_below_clear_since_micros(ToMicros(u.status.below_clear_since));
    batch.Put(handles_[kAlerts], AlertKey(u.stream, u.window), alert.SerializeAsString());
  }
  return FromRocks(db_->Write(write_options_, &batch), "storing alert states failed");
}

absl::Status RocksDbStore::Load(const Visitor& visitor) {
  rocksdb::ReadOptions read;
  read.verify_checksums = true;
  auto corrupt = [&](absl::string_view family, rocksdb::Slice key) {
    return absl::DataLossError(absl::StrCat("--data-dir ", options_.path, ": unreadable record in ",
                                            family, " (key of ", key.size(), " bytes)"));
  };
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, handles_[kReferences]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      StreamKey stream;
      rocksdb::Slice rest;
      storage::v1::StoredReference stored;
      if (!DecodeStream(it->key(), &stream, &rest) || rest.size() != 8 ||
          !stored.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return corrupt("references", it->key());
      }
      absl::StatusOr<std::shared_ptr<const Reference>> ref = FromStored(stream, stored);
      if (!ref.ok()) {
        return absl::DataLossError(absl::StrCat("stored reference of ", stream.ToString(),
                                                " is invalid: ", ref.status().message()));
      }
      if (visitor.reference) {
        if (absl::Status s = visitor.reference(*ref); !s.ok()) return s;
      }
    }
    if (!it->status().ok()) return FromRocks(it->status(), "reading references");
  }
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, handles_[kWindows]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      SubBucketDelta delta;
      rocksdb::Slice rest;
      if (!DecodeStream(it->key(), &delta.stream, &rest) || rest.size() != 16 ||
          !DecodeValues(it->value(), &delta.values)) {
        return corrupt("windows", it->key());
      }
      delta.window = absl::Seconds(static_cast<int64_t>(ReadBigEndian(rest.data())));
      delta.sub_bucket_start = FromMicros(UnflipSign(ReadBigEndian(rest.data() + 8)));
      if (visitor.sub_bucket) visitor.sub_bucket(delta);
    }
    if (!it->status().ok()) return FromRocks(it->status(), "reading windows");
  }
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, handles_[kMeta]));
    const rocksdb::Slice prefix(kLsnPrefix);
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      StreamKey stream;
      rocksdb::Slice key = it->key(), rest;
      key.remove_prefix(prefix.size());
      if (!DecodeStream(key, &stream, &rest) || !rest.empty() || it->value().size() != 8) {
        return corrupt("meta", it->key());
      }
      if (visitor.stream_lsn) visitor.stream_lsn(stream, ReadBigEndian(it->value().data()));
    }
    if (!it->status().ok()) return FromRocks(it->status(), "reading snapshot positions");
  }
  // Each client's latest sequence number in the records (merged with the clients family below).
  absl::flat_hash_map<std::string, ClientSequence> clients;
  auto note_client = [&](const IngestRecord& record) {
    if (record.client_id.empty()) return;  // A record of an earlier format.
    ClientSequence& client = clients[record.client_id];
    if (record.sequence >= client.sequence) {
      client = ClientSequence{record.sequence, record.received_at, /*dirty=*/true};
    }
  };
  {
    // The log family holds the records of a store of the first format, and those a backup copied
    // out of the batch log (or, before kldrift-store-4, out of the write-ahead log); the
    // write-ahead log those of kldrift-store-2 and -3 stores, the batch log the rest. A record in
    // two of them (a backup's own write-ahead log) is visited once.
    absl::flat_hash_set<uint64_t> in_log_family;
    uint64_t legacy_lsn = 0;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, handles_[kLog]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      IngestRecord record;
      // An lsn (a record of the stream-keys format), or an lsn and the format's tag.
      const rocksdb::Slice key = it->key();
      const LogFormat format =
          key.size() == 9 ? static_cast<LogFormat>(key[8]) : LogFormat::kStreamKeys;
      if ((key.size() != 8 && !(key.size() == 9 && (format == LogFormat::kCompact ||
                                                    format == LogFormat::kWithClient))) ||
          !DecodeRecord(format, it->value(), &record)) {
        return corrupt("log", it->key());
      }
      record.lsn = ReadBigEndian(it->key().data());
      in_log_family.insert(record.lsn);
      legacy_lsn = std::max(legacy_lsn, record.lsn);
      note_client(record);
      if (visitor.log_record) visitor.log_record(record);
    }
    if (!it->status().ok()) return FromRocks(it->status(), "reading the log");
    legacy_log_lsn_.store(legacy_lsn);
    IngestRecord record;
    uint64_t wal_lsn = 0;
    absl::Status read =
        ForEachWalRecord(db_.get(), db_->GetLatestSequenceNumber(),
                         [&](uint64_t lsn, LogFormat format, rocksdb::Slice body) -> absl::Status {
                           if (in_log_family.contains(lsn)) return absl::OkStatus();
                           record = IngestRecord();
                           if (!DecodeRecord(format, body, &record)) {
                             return absl::DataLossError(absl::StrCat(
                                 "--data-dir ", options_.path, ": unreadable log record ", lsn,
                                 " in the write-ahead log"));
                           }
                           record.lsn = lsn;
                           wal_lsn = std::max(wal_lsn, lsn);
                           note_client(record);
                           if (visitor.log_record) visitor.log_record(record);
                           return absl::OkStatus();
                         });
    if (!read.ok()) return read;
    legacy_wal_lsn_.store(wal_lsn);
    read = log_->ForEach([&](uint64_t position, absl::string_view blob) -> absl::Status {
      uint64_t lsn;
      LogFormat format;
      rocksdb::Slice body;
      if (!ParseLogBlob(blob, &lsn, &format, &body)) {
        return UnreadableBatchLogRecord(absl::StrCat("--data-dir ", options_.path), position,
                                        blob.size());
      }
      if (in_log_family.contains(lsn)) return absl::OkStatus();
      record = IngestRecord();
      if (!DecodeRecord(format, body, &record)) {
        return absl::DataLossError(absl::StrCat("--data-dir ", options_.path,
                                                ": unreadable log record ", lsn,
                                                " in the batch log (position ", position, ")"));
      }
      record.lsn = lsn;
      note_client(record);
      if (visitor.log_record) visitor.log_record(record);
      return absl::OkStatus();
    });
    if (!read.ok()) return read;
  }
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, handles_[kClients]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      storage::v1::StoredClient stored;
      if (!stored.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return corrupt("clients", it->key());
      }
      ClientSequence& client = clients[it->key().ToString()];
      if (stored.last_sequence() >= client.sequence) {
        client = ClientSequence{stored.last_sequence(), FromMicros(stored.last_seen_micros()),
                                /*dirty=*/false};
      }
    }
    if (!it->status().ok()) return FromRocks(it->status(), "reading clients");
    if (visitor.client) {
      for (const auto& [id, client] : clients) visitor.client(id, client.sequence, client.seen);
    }
    MutexLock lock(&clients_mutex_);
    clients_ = std::move(clients);
  }
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, handles_[kAlerts]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      StreamKey stream;
      rocksdb::Slice rest;
      storage::v1::StoredAlert stored;
      if (!DecodeStream(it->key(), &stream, &rest) || rest.size() != 8 ||
          !stored.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return corrupt("alerts", it->key());
      }
      AlertStatus status;
      status.state = static_cast<AlertState>(stored.state());
      status.severity = static_cast<Severity>(stored.severity());
      status.since = FromMicros(stored.since_micros());
      status.over_since = FromMicros(stored.over_since_micros());
      status.below_clear_since = FromMicros(stored.below_clear_since_micros());
      visitor.alert(stream, absl::Seconds(static_cast<int64_t>(ReadBigEndian(rest.data()))),
                    status);
    }
    if (!it->status().ok()) return FromRocks(it->status(), "reading alerts");
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> RocksDbStore::Backup(const std::string& dir) {
  rocksdb::Checkpoint* checkpoint = nullptr;
  rocksdb::Status s = rocksdb::Checkpoint::Create(db_.get(), &checkpoint);
  if (!s.ok()) return FromRocks(s, "cannot start a checkpoint");
  std::unique_ptr<rocksdb::Checkpoint> owned(checkpoint);
  // No log record is freed until the copy has it.
  MutexLock lock(&log_files_mutex_);
  // Flush first so the copy needs no log replay beyond what is in flight.
  s = owned->CreateCheckpoint(dir, /*log_size_for_flush=*/0);
  if (!s.ok()) return FromRocks(s, absl::StrCat("backup into ", dir, " failed"));
  if (absl::Status copied = CopyLogInto(dir); !copied.ok()) {
    std::error_code error;
    fs::remove_all(dir, error);
    return absl::Status(copied.code(), absl::StrCat("backup into ", dir, " failed (",
                                                    copied.message(), "); nothing was kept"));
  }
  return FolderBytes(dir);
}

absl::Status RocksDbStore::CopyLogInto(const std::string& dir) {
  // The checkpoint holds the windows, clients and alert states written up to its last sequence
  // number, but not the log records, which live in the batch log (and, for a store of an earlier
  // format, in write-ahead log files) it does not copy: they go into the copy's log family (which
  // Load reads). Every record the batch log holds now is copied: a record written after the
  // checkpoint replays into a stream the copy knows, or is skipped like any record of a stream
  // Load does not know; its client's sequence number travels with it.
  const std::vector<rocksdb::ColumnFamilyDescriptor> descriptors = FamilyDescriptors(nullptr);
  const rocksdb::DBOptions db_options = StoreDbOptions();
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, dir, descriptors, &handles, &raw);
  if (!s.ok()) return FromRocks(s, "cannot open the copy");
  std::unique_ptr<rocksdb::DB> copy(raw);
  absl::Cleanup close_handles = [&] {
    for (rocksdb::ColumnFamilyHandle* handle : handles) copy->DestroyColumnFamilyHandle(handle);
  };
  const rocksdb::SequenceNumber through = copy->GetLatestSequenceNumber();
  rocksdb::WriteBatch batch;
  constexpr size_t kBatchBytes = 4 << 20;
  auto write = [&]() -> absl::Status {
    if (batch.Count() == 0) return absl::OkStatus();
    absl::Status written = FromRocks(copy->Write(rocksdb::WriteOptions(), &batch),
                                     "writing log records into the copy");
    batch.Clear();
    return written;
  };
  // The checkpoint may have copied a live log file with writes this store was still finishing
  // (written, not yet visible): wait, for a bounded time, until every write up to `through` is.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (db_->GetLatestSequenceNumber() < through) {
    if (absl::Now() > deadline) {
      return absl::UnavailableError(
          absl::StrCat("writes up to sequence number ", through, " did not finish in 10 s"));
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  // Records up to `through` no longer in the write-ahead log were truncated: the checkpoint's
  // snapshots cover them (no file is deleted while this runs).
  absl::Status read = ForEachWalRecord(
      db_.get(), through, [&](uint64_t lsn, LogFormat format, rocksdb::Slice body) -> absl::Status {
        std::string key = LsnKey(lsn);
        if (format != LogFormat::kStreamKeys) key += static_cast<char>(format);
        batch.Put(handles[kLog], key, body);
        return batch.GetDataSize() >= kBatchBytes ? write() : absl::OkStatus();
      });
  if (!read.ok()) return read;
  read = log_->ForEach([&](uint64_t position, absl::string_view blob) -> absl::Status {
    uint64_t lsn;
    LogFormat format;
    rocksdb::Slice body;
    if (!ParseLogBlob(blob, &lsn, &format, &body)) {
      return UnreadableBatchLogRecord("backup", position, blob.size());
    }
    batch.Put(handles[kLog], LsnKey(lsn) + static_cast<char>(format), body);
    return batch.GetDataSize() >= kBatchBytes ? write() : absl::OkStatus();
  });
  if (!read.ok()) return read;
  if (absl::Status written = write(); !written.ok()) return written;
  rocksdb::FlushOptions flush;
  std::vector<rocksdb::ColumnFamilyHandle*> all(handles.begin(), handles.end());
  return FromRocks(copy->Flush(flush, all), "flushing the copy");
}

absl::Status RocksDbStore::CompactWindows() {
  return FromRocks(
      db_->CompactRange(rocksdb::CompactRangeOptions(), handles_[kWindows], nullptr, nullptr),
      "compacting windows failed");
}

uint64_t RocksDbStore::DiskBytes() const { return FolderBytes(options_.path); }

absl::StatusOr<std::string> RocksDbStore::Describe(const std::string& path) {
  const std::vector<rocksdb::ColumnFamilyDescriptor> descriptors = FamilyDescriptors(nullptr);
  std::vector<std::string> families;
  const rocksdb::DBOptions db_options = StoreDbOptions();
  rocksdb::Status s = rocksdb::DB::ListColumnFamilies(db_options, path, &families);
  if (!s.ok()) {
    std::error_code error;
    if (fs::exists(fs::path(path) / "CURRENT", error)) {
      return absl::DataLossError(
          absl::StrCat(path, " is a RocksDB data folder that cannot be read, probably corrupted (",
                       s.ToString(), "); restore a backup"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is not a kldrift data folder: ", s.ToString()));
  }
  if (absl::Status check = CheckKldriftFamilies(path, families); !check.ok()) return check;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  s = rocksdb::DB::OpenForReadOnly(db_options, path, descriptors, &handles, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("cannot open ", path));
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string report = absl::StrCat("data folder ", path, "\n");
  std::string format;
  s = db->Get(rocksdb::ReadOptions(), handles[kMeta], kFormatKey, &format);
  absl::Status result = absl::OkStatus();
  if (!s.ok()) {
    result = absl::FailedPreconditionError("no kldrift format version: not written by kldriftd");
  } else if (format != kFormatVersion && !IsUpgradedFormat(format)) {
    result = absl::FailedPreconditionError(absl::StrCat(
        "format \"", format, "\", but this build reads \"", kFormatVersion, "\" (and upgrades \"",
        absl::StrJoin(kUpgradedFormatVersions, "\", \""), "\")"));
  }
  absl::StrAppend(&report, "  format:     ", s.ok() ? format : "(missing)",
                  format == kFormatVersion   ? " (readable by this kldriftd)"
                  : IsUpgradedFormat(format) ? " (upgraded when this kldriftd opens it)"
                                             : " (NOT readable)",
                  "\n");
  for (int family : {kReferences, kWindows, kLog, kClients, kAlerts}) {
    uint64_t records = 0;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), handles[family]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) ++records;
    absl::StrAppend(&report, "  ", kFamilyNames[family], ": ", records, " records\n");
  }
  uint64_t wal_records = 0;
  const absl::Status wal = ForEachWalRecord(db.get(), db->GetLatestSequenceNumber(),
                                            [&](uint64_t, LogFormat, rocksdb::Slice) {
                                              ++wal_records;
                                              return absl::OkStatus();
                                            });
  if (wal.ok()) {
    absl::StrAppend(&report, "  write-ahead log: ", wal_records,
                    " log records (an earlier format's batches not yet in a snapshot)\n");
  } else if (result.ok()) {
    result = wal;
  }
  uint64_t batch_log_records = 0;
  const absl::Status batch_log =
      BatchLog::Scan(BatchLogDir(path), [&](uint64_t position, absl::string_view blob) {
        uint64_t lsn;
        LogFormat format;
        rocksdb::Slice body;
        ++batch_log_records;
        return ParseLogBlob(blob, &lsn, &format, &body)
                   ? absl::OkStatus()
                   : UnreadableBatchLogRecord(path, position, blob.size());
      });
  if (batch_log.ok()) {
    absl::StrAppend(&report, "  batch log: ", batch_log_records,
                    " log records (batches not yet in a snapshot), checksums ok\n");
  } else if (result.ok()) {
    result = batch_log;
  }
  const rocksdb::Status checksums = db->VerifyChecksum();
  absl::StrAppend(&report, "  checksums:  ", checksums.ok() ? "ok" : checksums.ToString(), "\n");
  absl::StrAppend(&report, "  size:       ", FolderBytes(path), " bytes\n");
  for (rocksdb::ColumnFamilyHandle* handle : handles) db->DestroyColumnFamilyHandle(handle);
  if (!checksums.ok() && result.ok()) {
    result =
        absl::DataLossError(absl::StrCat("checksum verification failed: ", checksums.ToString()));
  }
  if (!result.ok()) {
    return absl::Status(result.code(), absl::StrCat(report, "  problem:    ", result.message()));
  }
  return report;
}

}  // namespace kldrift
