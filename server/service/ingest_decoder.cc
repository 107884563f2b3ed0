#include "server/service/ingest_decoder.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "absl/time/time.h"
#include "server/service/proto_conversion.h"

namespace kldrift {
namespace {

// Wire types (protobuf encoding).
constexpr uint32_t kVarint = 0;
constexpr uint32_t kFixed64 = 1;
constexpr uint32_t kLengthDelimited = 2;
constexpr uint32_t kFixed32 = 5;

constexpr uint32_t kMaxFieldNumber = (1u << 29) - 1;

// Reads bytes spread over chunks. Positions are offsets from the start of the first chunk.
class ChunkReader {
 public:
  explicit ChunkReader(absl::Span<const absl::string_view> chunks) : chunks_(chunks) {
    for (absl::string_view chunk : chunks) size_ += chunk.size();
    EnterChunk(0);
  }

  size_t size() const { return size_; }
  size_t position() const { return chunk_start_ + static_cast<size_t>(p_ - chunk_begin_); }

  bool ReadVarint(uint64_t* value) {
    if (end_ - p_ >= 10) {  // The common case: the whole varint is in this chunk.
      const auto* p = reinterpret_cast<const uint8_t*>(p_);
      uint64_t result = 0;
      for (int i = 0; i < 10; ++i) {
        const uint64_t byte = p[i];
        if (i == 9 && byte > 1) return false;  // More than 64 bits.
        result |= (byte & 0x7f) << (7 * i);
        if (byte < 0x80) {
          p_ += i + 1;
          *value = result;
          return true;
        }
      }
      return false;
    }
    uint64_t result = 0;
    for (int i = 0; i < 10; ++i) {
      uint8_t byte;
      if (!ReadByte(&byte)) return false;
      if (i == 9 && byte > 1) return false;
      result |= static_cast<uint64_t>(byte & 0x7f) << (7 * i);
      if (byte < 0x80) {
        *value = result;
        return true;
      }
    }
    return false;
  }

  // Copies the next `n` bytes to `out`.
  bool Read(size_t n, void* out) {
    char* dst = static_cast<char*>(out);
    return Consume(n, [&dst](const char* piece, size_t size) {
      std::memcpy(dst, piece, size);
      dst += size;
      return true;
    });
  }

  // Reads an `n`-byte string of ASCII characters into `out`; false for any other byte.
  bool ReadAscii(size_t n, std::string* out) {
    out->clear();
    return Consume(n, [out](const char* piece, size_t size) {
      uint8_t high = 0;
      for (size_t i = 0; i < size; ++i) high |= static_cast<uint8_t>(piece[i]);
      if (high >= 0x80) return false;
      out->append(piece, size);
      return true;
    });
  }

  bool Skip(size_t n) {
    return Consume(n, [](const char*, size_t) { return true; });
  }

 private:
  bool ReadByte(uint8_t* byte) {
    if (p_ == end_ && !NextChunk()) return false;
    *byte = static_cast<uint8_t>(*p_++);
    return true;
  }

  // Consumes the next `n` bytes, handing them to `take(const char* piece, size_t size)` a
  // chunk's piece at a time; false if `take` refuses a piece or the input ends first.
  template <typename Take>
  bool Consume(size_t n, Take take) {
    while (n > 0) {
      if (p_ == end_ && !NextChunk()) return false;
      const size_t size = std::min(n, static_cast<size_t>(end_ - p_));
      if (!take(p_, size)) return false;
      p_ += size;
      n -= size;
    }
    return true;
  }

  // Moves to the next non-empty chunk; false at the end of the input.
  bool NextChunk() {
    while (chunk_index_ + 1 < chunks_.size()) {
      chunk_start_ += chunks_[chunk_index_].size();
      EnterChunk(chunk_index_ + 1);
      if (p_ != end_) return true;
    }
    return false;
  }

  void EnterChunk(size_t index) {
    chunk_index_ = index;
    if (index < chunks_.size()) {
      chunk_begin_ = p_ = chunks_[index].data();
      end_ = p_ + chunks_[index].size();
    } else {
      chunk_begin_ = p_ = end_ = nullptr;
    }
  }

  absl::Span<const absl::string_view> chunks_;
  size_t size_ = 0;
  size_t chunk_index_ = 0;
  size_t chunk_start_ = 0;  // Position of chunk_begin_.
  const char* chunk_begin_ = nullptr;
  const char* p_ = nullptr;
  const char* end_ = nullptr;
};

// The decoding of one request; false declines it.
class RequestDecoder {
 public:
  RequestDecoder(ChunkReader* in, double* numbers) : in_(*in), numbers_(numbers) {}

  bool DecodeRequest(IngestBatch* batch, bool* more_follows) {
    const size_t end = in_.size();
    bool has_event_time = false;
    int64_t seconds = 0;
    int32_t nanos = 0;
    *more_follows = false;
    while (in_.position() < end) {
      uint32_t field, wire_type;
      if (!ReadTag(&field, &wire_type)) return false;
      uint64_t value;
      switch (field) {
        case 1:  // client_id
          if (wire_type != kLengthDelimited || !ReadString(end, &batch->client_id)) return false;
          break;
        case 2:  // sequence
          if (wire_type != kVarint || !in_.ReadVarint(&batch->sequence)) return false;
          break;
        case 3:  // model
          if (wire_type != kLengthDelimited || !ReadString(end, &batch->model)) return false;
          break;
        case 4: {  // streams
          size_t stream_end;
          if (wire_type != kLengthDelimited || !ReadLength(end, &stream_end) ||
              !DecodeStream(stream_end, &batch->streams.emplace_back())) {
            return false;
          }
          break;
        }
        case 5: {  // event_time: a second occurrence merges into the first, as protobuf's does.
          size_t time_end;
          if (wire_type != kLengthDelimited || !ReadLength(end, &time_end) ||
              !DecodeTimestamp(time_end, &seconds, &nanos)) {
            return false;
          }
          has_event_time = true;
          break;
        }
        case 6:  // more_follows
          if (wire_type != kVarint || !in_.ReadVarint(&value)) return false;
          *more_follows = value != 0;
          break;
        default:
          if (!SkipField(wire_type, end)) return false;
      }
    }
    if (has_event_time) {
      google::protobuf::Timestamp timestamp;
      timestamp.set_seconds(seconds);
      timestamp.set_nanos(nanos);
      absl::StatusOr<absl::Time> time = FromProto(timestamp, "event_time");
      if (!time.ok()) return false;  // Declined: FromProto words the error again then.
      batch->event_time = *time;
    }
    return in_.position() == end;
  }

 private:
  bool ReadTag(uint32_t* field, uint32_t* wire_type) {
    uint64_t tag;
    const size_t start = in_.position();
    // Protobuf reads a tag from at most 5 bytes, as a 32-bit value.
    if (!in_.ReadVarint(&tag) || in_.position() - start > 5 ||
        tag > std::numeric_limits<uint32_t>::max()) {
      return false;
    }
    *field = static_cast<uint32_t>(tag >> 3);
    *wire_type = static_cast<uint32_t>(tag & 7);
    return *field != 0 && *field <= kMaxFieldNumber;
  }

  // Bytes from here to `limit`; 0 past it (a varint may run past the end of its message, which the
  // message's final position check then declines).
  size_t Remaining(size_t limit) const {
    return in_.position() < limit ? limit - in_.position() : 0;
  }

  // Reads a length and turns it into the end position of what follows, within `limit`.
  bool ReadLength(size_t limit, size_t* end) {
    uint64_t length;
    const size_t start = in_.position();
    // Protobuf reads a length from at most 5 bytes, below 2^31 - 16.
    if (!in_.ReadVarint(&length) || in_.position() - start > 5 || length >= (1u << 31) - 16 ||
        length > Remaining(limit)) {
      return false;
    }
    *end = in_.position() + static_cast<size_t>(length);
    return true;
  }

  bool ReadString(size_t limit, std::string* out) {
    size_t end;
    return ReadLength(limit, &end) && in_.ReadAscii(end - in_.position(), out);
  }

  bool SkipField(uint32_t wire_type, size_t limit) {
    uint64_t value;
    size_t end;
    switch (wire_type) {
      case kVarint:
        return in_.ReadVarint(&value) && in_.position() <= limit;
      case kFixed64:
        return Remaining(limit) >= 8 && in_.Skip(8);
      case kLengthDelimited:
        return ReadLength(limit, &end) && in_.Skip(end - in_.position());
      case kFixed32:
        return Remaining(limit) >= 4 && in_.Skip(4);
      default:  // Groups (deprecated) and invalid wire types.
        return false;
    }
  }

  // StreamBatch: model_version 1, signal 2, histogram 3 / values 4 / probabilities 6 (each a
  // message of `repeated double = 1`), reference_version 9. Labels 5, gaussian 7 and log_probs 8
  // are declined.
  bool DecodeStream(size_t end, StreamData* data) {
    int data_field = 0;
    double* numbers_begin = numbers_ + used_;
    while (in_.position() < end) {
      uint32_t field, wire_type;
      if (!ReadTag(&field, &wire_type)) return false;
      switch (field) {
        case 1:
          if (wire_type != kLengthDelimited || !ReadString(end, &data->model_version)) {
            return false;
          }
          break;
        case 2:
          if (wire_type != kLengthDelimited || !ReadString(end, &data->signal)) return false;
          break;
        case 3:
        case 4:
        case 6: {
          // A second occurrence of the same field merges (its doubles follow the first's, here
          // too: nothing else writes numbers_ meanwhile); a different one would replace it.
          if (data_field != 0 && data_field != static_cast<int>(field)) return false;
          data_field = static_cast<int>(field);
          size_t numbers_end;
          if (wire_type != kLengthDelimited || !ReadLength(end, &numbers_end) ||
              !DecodeNumbers(numbers_end)) {
            return false;
          }
          break;
        }
        case 9:
          if (wire_type != kVarint || !in_.ReadVarint(&data->reference_version)) return false;
          break;
        case 5:
        case 7:
        case 8:
          return false;
        default:
          if (!SkipField(wire_type, end)) return false;
      }
    }
    switch (data_field) {
      case 3:
        data->type = StreamData::Type::kHistogram;
        break;
      case 4:
        data->type = StreamData::Type::kValues;
        break;
      case 6:
        data->type = StreamData::Type::kProbabilities;
        break;
      default:
        return false;  // No data: FromProto words that error.
    }
    data->lent_numbers = absl::Span<const double>(numbers_begin, numbers_ + used_ - numbers_begin);
    return in_.position() == end;
  }

  // Counts, Values, ProbabilityVectors: `repeated double = 1`, packed or not, appended.
  bool DecodeNumbers(size_t end) {
    while (in_.position() < end) {
      uint32_t field, wire_type;
      if (!ReadTag(&field, &wire_type)) return false;
      if (field != 1) {
        if (!SkipField(wire_type, end)) return false;
        continue;
      }
      if (wire_type == kLengthDelimited) {
        size_t packed_end;
        if (!ReadLength(end, &packed_end)) return false;
        const size_t bytes = packed_end - in_.position();
        if (bytes % sizeof(double) != 0 || !in_.Read(bytes, numbers_ + used_)) return false;
        used_ += bytes / sizeof(double);
      } else if (wire_type == kFixed64) {
        if (Remaining(end) < sizeof(double) || !in_.Read(sizeof(double), numbers_ + used_)) {
          return false;
        }
        ++used_;
      } else {
        return false;
      }
    }
    return in_.position() == end;
  }

  bool DecodeTimestamp(size_t end, int64_t* seconds, int32_t* nanos) {
    while (in_.position() < end) {
      uint32_t field, wire_type;
      if (!ReadTag(&field, &wire_type)) return false;
      uint64_t value;
      if (field == 1 || field == 2) {
        if (wire_type != kVarint || !in_.ReadVarint(&value)) return false;
        if (field == 1) {
          *seconds = static_cast<int64_t>(value);
        } else {
          *nanos = static_cast<int32_t>(static_cast<uint32_t>(value));
        }
      } else if (!SkipField(wire_type, end)) {
        return false;
      }
    }
    return in_.position() == end;
  }

  ChunkReader& in_;
  double* const numbers_;
  size_t used_ = 0;  // Doubles of numbers_ filled.
};

}  // namespace

bool IngestDecoder::Decode(absl::Span<const absl::string_view> chunks, IngestBatch* batch,
                           bool* more_follows) {
  ChunkReader in(chunks);
  // Every double takes at least 8 bytes on the wire, so this many can never overflow.
  const size_t most_numbers = in.size() / sizeof(double) + 1;
  if (most_numbers > numbers_capacity_) {
    numbers_ = std::make_unique_for_overwrite<double[]>(most_numbers);
    numbers_capacity_ = most_numbers;
  }
  // A stream sends batches of a similar size: room for as many streams as the last one had
  // spares growing the vector (moving every StreamData) eight times for a hundred streams.
  batch->streams.reserve(expected_streams_);
  RequestDecoder decoder(&in, numbers_.get());
  const bool decoded = decoder.DecodeRequest(batch, more_follows);
  expected_streams_ = std::min(batch->streams.size(), kMostExpectedStreams);
  return decoded;
}

void IngestDecoder::ReleaseLargeBuffer() {
  if (numbers_capacity_ * sizeof(double) > kKeptBufferBytes) {
    numbers_.reset();
    numbers_capacity_ = 0;
  }
}

}  // namespace kldrift
