#include "server/storage/batch_log.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace kldrift {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kEndOfSegment = 0xFFFFFFFFu;
constexpr uint64_t kHeaderBytes = 16;
// Segment files are whole pages, so that records (8-byte aligned) always end inside one.
constexpr uint64_t kFileGranule = 4096;
constexpr char kSegmentSuffix[] = ".seg";
constexpr char kFreePrefix[] = "free-";

// A CRC stored next to the data it covers is masked (as LevelDB does), so that a CRC of bytes
// that themselves hold CRCs is not trivially related to them.
constexpr uint32_t kMaskDelta = 0xa282ead8u;
uint32_t Mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + kMaskDelta; }

uint64_t Padded(uint64_t bytes) { return (bytes + 7) & ~uint64_t{7}; }
uint64_t RoundUpToGranule(uint64_t bytes) {
  return (bytes + kFileGranule - 1) / kFileGranule * kFileGranule;
}

// ---- CRC32C ----------------------------------------------------------------------------------

constexpr uint32_t kCastagnoliReflected = 0x82F63B78u;

constexpr std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (crc & 1 ? kCastagnoliReflected : 0);
    table[i] = crc;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrcTable = MakeCrcTable();

uint32_t Crc32cTable(uint32_t state, const unsigned char* p, size_t size) {
  for (size_t i = 0; i < size; ++i) state = (state >> 8) ^ kCrcTable[(state ^ p[i]) & 0xff];
  return state;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cSse42(uint32_t state, const unsigned char* p,
                                                       size_t size) {
  for (; size > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0; --size, ++p) {
    state = _mm_crc32_u8(state, *p);
  }
  uint64_t wide = state;
  for (; size >= 8; size -= 8, p += 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    wide = _mm_crc32_u64(wide, word);
  }
  state = static_cast<uint32_t>(wide);
  for (; size > 0; --size, ++p) state = _mm_crc32_u8(state, *p);
  return state;
}

bool HasSse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif

// ---- Files -----------------------------------------------------------------------------------

std::string SegmentName(uint64_t start) {
  return absl::StrFormat("%016x%s", start, kSegmentSuffix);
}

absl::Status ErrnoStatus(absl::string_view what, const std::string& path, int error) {
  return absl::UnavailableError(absl::StrCat(what, " ", path, ": ", std::strerror(error)));
}

// The log's files in `dir`: segments (start, size) by start, and free files with the largest
// number a free file's name holds.
struct LogFiles {
  std::vector<std::pair<uint64_t, uint64_t>> segments;
  std::vector<std::string> free_files;
  uint64_t next_free_name = 0;
};

absl::StatusOr<LogFiles> ListLogFiles(const std::string& dir) {
  LogFiles files;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (!absl::EndsWith(name, kSegmentSuffix)) continue;
    const absl::string_view stem(name.data(), name.size() - std::strlen(kSegmentSuffix));
    if (absl::StartsWith(stem, kFreePrefix)) {
      uint64_t number = 0;
      if (absl::SimpleAtoi(stem.substr(std::strlen(kFreePrefix)), &number)) {
        files.next_free_name = std::max(files.next_free_name, number + 1);
      }
      files.free_files.push_back(entry.path().string());
      continue;
    }
    uint64_t start = 0;
    if (stem.size() != 16 || !absl::SimpleHexAtoi(stem, &start)) continue;
    const uint64_t size = entry.file_size(error);
    if (error) return ErrnoStatus("cannot read the size of", entry.path(), error.value());
    files.segments.emplace_back(start, size);
  }
  if (error) return ErrnoStatus("cannot list the log folder", dir, error.value());
  std::sort(files.segments.begin(), files.segments.end());
  return files;
}

absl::StatusOr<std::string> ReadFilePrefix(const std::string& path, uint64_t bytes) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open log segment", path, errno);
  std::string data(bytes, '\0');
  uint64_t done = 0;
  while (done < bytes) {
    const ssize_t n = pread(fd, data.data() + done, bytes - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = n < 0 ? errno : EIO;
      close(fd);
      return ErrnoStatus("cannot read log segment", path, error);
    }
    done += static_cast<uint64_t>(n);
  }
  close(fd);
  return data;
}

// How reading a segment ended.
struct SegmentEnd {
  uint64_t end = 0;       // Position after its last record (the segment's end when `full`).
  bool full = false;      // An end-of-segment mark, or less room left than a header.
  bool at_limit = false;  // Reached the reader's limit.
};

// Reads the records of the segment [start, start + size) whose first `data.size()` bytes are
// `data`, up to position `limit`, calling `visit` for each (a visitor's error is returned).
absl::StatusOr<SegmentEnd> ReadRecords(absl::string_view data, uint64_t start, uint64_t size,
                                       uint64_t limit, const BatchLog::Visit& visit) {
  uint64_t offset = 0;
  for (;;) {
    const uint64_t position = start + offset;
    if (position >= limit) return SegmentEnd{position, false, true};
    if (size - offset < kHeaderBytes) return SegmentEnd{start + size, true, false};
    if (data.size() - offset < kHeaderBytes) return SegmentEnd{position, false, false};
    const char* header = data.data() + offset;
    uint32_t stored_crc, length;
    uint64_t stored_position;
    std::memcpy(&stored_crc, header, 4);
    std::memcpy(&length, header + 4, 4);
    std::memcpy(&stored_position, header + 8, 8);
    if (stored_position != position) return SegmentEnd{position, false, false};
    const uint64_t payload_bytes = length == kEndOfSegment ? 0 : length;
    if (payload_bytes > data.size() - offset - kHeaderBytes) {
      return SegmentEnd{position, false, false};
    }
    const char* payload = header + kHeaderBytes;
    const uint32_t crc = Crc32c(Crc32c(0, payload, payload_bytes), header + 4, 12);
    if (Mask(crc) != stored_crc) return SegmentEnd{position, false, false};
    if (length == kEndOfSegment) return SegmentEnd{start + size, true, false};
    if (absl::Status s = visit(position, absl::string_view(payload, payload_bytes)); !s.ok()) {
      return s;
    }
    offset += kHeaderBytes + Padded(payload_bytes);
  }
}

// Reads the records of `segments` (in `dir`) before `limit`, and returns the position after the
// last one. A segment before the last one read must be full; the last may end early (a torn tail)
// unless `tail_must_reach_limit`.
absl::StatusOr<uint64_t> ReadLog(const std::string& dir,
                                 const std::vector<std::pair<uint64_t, uint64_t>>& segments,
                                 uint64_t limit, bool tail_must_reach_limit,
                                 const BatchLog::Visit& visit) {
  uint64_t end = segments.empty() ? 0 : segments.front().first;
  for (size_t i = 0; i < segments.size(); ++i) {
    const auto [start, size] = segments[i];
    const std::string path = (fs::path(dir) / SegmentName(start)).string();
    if (start >= limit) break;
    if (i > 0 && start != segments[i - 1].first + segments[i - 1].second) {
      return absl::DataLossError(absl::StrCat(
          "log folder ", dir, ": the segment before ", SegmentName(start), " is missing (",
          SegmentName(segments[i - 1].first), " ends at position ",
          segments[i - 1].first + segments[i - 1].second, "); acknowledged batches were lost"));
    }
    absl::StatusOr<std::string> data = ReadFilePrefix(path, std::min(size, limit - start));
    if (!data.ok()) return data.status();
    absl::StatusOr<SegmentEnd> read = ReadRecords(*data, start, size, limit, visit);
    if (!read.ok()) return read.status();
    const bool last = i + 1 == segments.size() || segments[i + 1].first >= limit;
    if (!read->full && !read->at_limit && (!last || tail_must_reach_limit)) {
      return absl::DataLossError(absl::StrCat(
          "log segment ", path, " is damaged: the record at position ", read->end, " (offset ",
          read->end - start, ") does not check", last ? "" : ", and later segments hold records",
          "; acknowledged batches were lost. Restore a backup, or move the "
          "folder aside to start without them"));
    }
    end = read->end;
  }
  return end;
}

}  // namespace

uint32_t Crc32c(uint32_t crc, const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
#if defined(__x86_64__)
  if (HasSse42()) return ~Crc32cSse42(~crc, p, size);
#endif
  return ~Crc32cTable(~crc, p, size);
}

// A mapped segment file.
struct BatchLog::Segment {
  uint64_t start = 0;
  uint64_t size = 0;
  int fd = -1;
  char* map = nullptr;

  ~Segment() {
    if (map != nullptr) munmap(map, size);
    if (fd >= 0) close(fd);
  }

  // Maps the file at `path` (`fd`, open for writing) at its size or `min_bytes`, whichever is
  // larger. A segment gets its whole size on disk before it is mapped (so a full disk shows here,
  // not as SIGBUS on a write through the mapping). A file left by an attempt that failed here, or
  // reused, may be smaller than this segment needs, or larger: it grows, or keeps its size.
  absl::Status Map(const std::string& path, uint64_t min_bytes) {
    struct stat stat_buffer;
    if (fstat(fd, &stat_buffer) != 0) return ErrnoStatus("cannot stat log segment", path, errno);
    const uint64_t file_bytes = static_cast<uint64_t>(stat_buffer.st_size);
    size = std::max(file_bytes, min_bytes);
    if (size > file_bytes) {
      if (const int e = posix_fallocate(fd, 0, static_cast<off_t>(size)); e != 0) {
        return ErrnoStatus("cannot allocate log segment", path, e);
      }
    }
    void* mapped = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mapped == MAP_FAILED) return ErrnoStatus("cannot map log segment", path, errno);
    map = static_cast<char*>(mapped);
    return absl::OkStatus();
  }
};

// A free file allocated and mapped for the next segment (whose start it takes when renamed in);
// unmapped and closed unless taken.
struct BatchLog::Standby {
  std::string path;
  std::shared_ptr<Segment> segment = std::make_shared<Segment>();
};

BatchLog::BatchLog(const BatchLogOptions& options) : options_(options) {}

BatchLog::~BatchLog() {
  {
    MutexLock lock(&prepare_mutex_);
    stopping_ = true;
    prepare_cv_.SignalAll();
  }
  if (preparer_.joinable()) preparer_.join();
  MutexLock lock(&append_mutex_);
  active_.reset();
}

absl::StatusOr<std::unique_ptr<BatchLog>> BatchLog::Open(const BatchLogOptions& options) {
  if (options.dir.empty()) return absl::InvalidArgumentError("BatchLog needs a folder");
  std::error_code error;
  fs::create_directories(options.dir, error);
  if (error) return ErrnoStatus("cannot create the log folder", options.dir, error.value());
  absl::StatusOr<LogFiles> files = ListLogFiles(options.dir);
  if (!files.ok()) return files.status();
  std::unique_ptr<BatchLog> log(new BatchLog(options));
  absl::StatusOr<uint64_t> end =
      ReadLog(options.dir, files->segments, std::numeric_limits<uint64_t>::max(),
              /*tail_must_reach_limit=*/false,
              [](uint64_t, absl::string_view) { return absl::OkStatus(); });
  if (!end.ok()) return end.status();
  if (files->segments.empty()) {
    // Positions start again at 0 only in a log that never had a segment: free files of one that
    // did would hold records of those positions.
    for (const std::string& free_file : files->free_files) fs::remove(free_file, error);
    files->free_files.clear();
  }
  if (options.sync) {
    for (const auto& [start, size] : files->segments) {
      const std::string path = (fs::path(options.dir) / SegmentName(start)).string();
      const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0 || fdatasync(fd) != 0) {
        const absl::Status s = ErrnoStatus("cannot sync log segment", path, errno);
        if (fd >= 0) close(fd);
        return s;
      }
      close(fd);
    }
  }
  log->end_.store(*end);
  {
    MutexLock lock(&log->sync_mutex_);
    log->synced_ = *end;
  }
  {
    MutexLock lock(&log->segments_mutex_);
    log->segments_ = std::move(files->segments);
    log->free_files_ = std::move(files->free_files);
    log->next_free_name_ = files->next_free_name;
  }
  if (options.prepare_next_segment) {
    {
      MutexLock lock(&log->prepare_mutex_);
      log->standby_wanted_ = true;
    }
    log->preparer_ = std::thread([raw = log.get()] { raw->PrepareLoop(); });
    pthread_setname_np(log->preparer_.native_handle(), "kldrift-log");
  }
  return log;
}

void BatchLog::PrepareLoop() {
  // Nothing here is urgent (an append without a standby opens its segment itself), and faulting
  // in 16 MB takes a core for ~10 ms: at the lowest priority (Linux's nice is per thread) that
  // work waits for ingest and queries instead of delaying them.
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
  for (;;) {
    if (options_.TEST_before_preparing) options_.TEST_before_preparing();
    std::vector<std::shared_ptr<Segment>> retired;
    bool make = false;
    {
      MutexLock lock(&prepare_mutex_);
      while (!stopping_ && retired_.empty() && !standby_wanted_) prepare_cv_.Wait(&prepare_mutex_);
      if (stopping_) return;
      retired.swap(retired_);
      make = standby_wanted_ && standby_ == nullptr;
      standby_wanted_ = false;
    }
    retired.clear();  // Unmaps the segments no one else holds.
    if (!make) continue;
    absl::StatusOr<std::unique_ptr<Standby>> made = MakeStandby();
    MutexLock lock(&prepare_mutex_);
    // Moved in, so that only the member holds the status (see WaitForStandby).
    if (made.ok()) {
      standby_ = *std::move(made);
    } else {
      standby_error_ = std::move(made).status();
    }
    prepare_cv_.SignalAll();
  }
}

absl::StatusOr<std::unique_ptr<BatchLog::Standby>> BatchLog::MakeStandby() {
  auto standby = std::make_unique<Standby>();
  {
    MutexLock lock(&segments_mutex_);
    if (!free_files_.empty()) {
      standby->path = std::move(free_files_.back());
      free_files_.pop_back();
    } else {
      standby->path =
          (fs::path(options_.dir) / absl::StrCat(kFreePrefix, next_free_name_++, kSegmentSuffix))
              .string();
    }
  }
  Segment* const file = standby->segment.get();
  file->fd = open(standby->path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  absl::Status mapped = file->fd < 0
                            ? ErrnoStatus("cannot create log segment", standby->path, errno)
                            : file->Map(standby->path, RoundUpToGranule(options_.segment_bytes));
  if (!mapped.ok()) {
    // A file this failed to allocate or map stays a free file, to be tried again.
    if (access(standby->path.c_str(), F_OK) == 0) {
      MutexLock lock(&segments_mutex_);
      free_files_.push_back(standby->path);
    }
    return mapped;
  }
  // The pages are faulted in writable here rather than by the appends, under their lock, a
  // megabyte per call so that the process's memory map is never held long. A kernel without
  // MADV_POPULATE_WRITE (before Linux 5.14) leaves them to the appends.
  constexpr uint64_t kPopulateBytes = uint64_t{1} << 20;
  for (uint64_t offset = 0; offset < file->size; offset += kPopulateBytes) {
    madvise(file->map + offset, std::min(kPopulateBytes, file->size - offset), MADV_POPULATE_WRITE);
  }
  return standby;
}

std::unique_ptr<BatchLog::Standby> BatchLog::TakeStandby(uint64_t min_bytes) {
  if (!preparer_.joinable()) return nullptr;
  MutexLock lock(&prepare_mutex_);
  std::unique_ptr<Standby> taken;
  if (standby_ != nullptr && standby_->segment->size >= min_bytes) taken = std::move(standby_);
  if (standby_ == nullptr) {
    standby_wanted_ = true;
    standby_error_ = absl::OkStatus();
    prepare_cv_.SignalAll();
  }
  return taken;
}

void BatchLog::Retire(std::shared_ptr<Segment> segment) {
  if (segment == nullptr || !preparer_.joinable()) return;
  MutexLock lock(&prepare_mutex_);
  // A preparing thread starved of CPU does not leave full segments piling up mapped: past a few,
  // the caller unmaps its own (when `segment` goes out of scope, after the lock).
  if (retired_.size() >= kMaxRetiredSegments) return;
  retired_.push_back(std::move(segment));
  prepare_cv_.SignalAll();
}

absl::Status BatchLog::WaitForStandby(absl::Duration timeout) {
  if (!preparer_.joinable()) {
    return absl::FailedPreconditionError("the log prepares no standby segment");
  }
  const absl::Time deadline = absl::Now() + timeout;
  MutexLock lock(&prepare_mutex_);
  while (standby_ == nullptr && standby_error_.ok()) {
    if (prepare_cv_.WaitWithDeadline(&prepare_mutex_, deadline)) break;
  }
  if (standby_ != nullptr) return absl::OkStatus();
  // A status of the caller's own rather than a copy: a copy would share its message with the
  // member, which the preparing thread replaces, through a reference count in Debian's Abseil
  // that ThreadSanitizer cannot see.
  if (!standby_error_.ok()) return absl::Status(standby_error_.code(), standby_error_.message());
  return absl::DeadlineExceededError("no standby segment yet");
}

absl::StatusOr<uint64_t> BatchLog::Append(absl::string_view payload) {
  if (payload.size() >= kEndOfSegment) {
    return absl::InvalidArgumentError(
        absl::StrCat("a log record of ", payload.size(), " bytes is too large"));
  }
  const uint64_t bytes = kHeaderBytes + Padded(payload.size());
  // The payload's CRC comes first so that it is computed outside the lock.
  const uint32_t payload_crc = Crc32c(0, payload.data(), payload.size());
  // A segment this append fills is unmapped after the lock is released, by the preparing thread
  // when there is one: unmapping 16 MB of written pages takes ~0.7 ms, which every other append
  // would wait for under the lock.
  std::shared_ptr<Segment> retired;
  uint64_t new_end;
  {
    MutexLock lock(&append_mutex_);
    if (absl::Status s = MakeRoom(bytes, &retired); !s.ok()) return s;
    const uint64_t position = end_.load(std::memory_order_relaxed);
    char* out = active_->map + (position - active_->start);
    const uint32_t length = static_cast<uint32_t>(payload.size());
    std::memcpy(out + 4, &length, 4);
    std::memcpy(out + 8, &position, 8);
    std::memcpy(out + kHeaderBytes, payload.data(), payload.size());
    std::memset(out + kHeaderBytes + payload.size(), 0, Padded(payload.size()) - payload.size());
    const uint32_t crc = Mask(Crc32c(payload_crc, out + 4, 12));
    std::memcpy(out, &crc, 4);
    new_end = position + bytes;
    end_.store(new_end, std::memory_order_release);
  }
  Retire(std::move(retired));
  return new_end;
}

absl::Status BatchLog::MakeRoom(uint64_t bytes, std::shared_ptr<Segment>* retired) {
  const uint64_t end = end_.load(std::memory_order_relaxed);
  if (active_ == nullptr) {
    // After Open: the last segment is written on while there is room in it.
    std::pair<uint64_t, uint64_t> last{0, 0};
    {
      MutexLock lock(&segments_mutex_);
      if (!segments_.empty()) last = segments_.back();
    }
    if (end < last.first + last.second) {
      absl::StatusOr<std::shared_ptr<Segment>> opened = OpenSegment(last.first, 0);
      if (!opened.ok()) return opened.status();
      active_ = *std::move(opened);
    }
  }
  if (active_ != nullptr && end + bytes <= active_->start + active_->size) return absl::OkStatus();
  // The next segment is opened before the current one is marked full, so that a failure (a full
  // disk) changes nothing: End() stays, and a smaller record may still go where it was.
  const uint64_t next = active_ != nullptr ? active_->start + active_->size : end;
  absl::StatusOr<std::shared_ptr<Segment>> opened =
      OpenSegment(next, RoundUpToGranule(std::max(options_.segment_bytes, bytes)));
  if (!opened.ok()) return opened.status();
  if (active_ != nullptr) {
    if (next - end >= kHeaderBytes) {
      char* mark = active_->map + (end - active_->start);
      const uint32_t length = kEndOfSegment;
      std::memcpy(mark + 4, &length, 4);
      std::memcpy(mark + 8, &end, 8);
      const uint32_t crc = Mask(Crc32c(0, mark + 4, 12));
      std::memcpy(mark, &crc, 4);
    }
    if (options_.sync && fdatasync(active_->fd) != 0) {
      return ErrnoStatus("cannot sync log segment", SegmentName(active_->start), errno);
    }
  }
  *retired = std::exchange(active_, *std::move(opened));
  if (next + bytes > active_->start + active_->size) {
    return absl::InternalError(absl::StrCat("log segment ", SegmentName(next), " holds ",
                                            active_->size, " bytes, not the record's ", bytes));
  }
  end_.store(next, std::memory_order_release);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<BatchLog::Segment>> BatchLog::OpenSegment(uint64_t start,
                                                                         uint64_t min_bytes) {
  const std::string path = (fs::path(options_.dir) / SegmentName(start)).string();
  std::shared_ptr<Segment> segment;
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  const bool created = fd < 0;
  if (created && errno != ENOENT) return ErrnoStatus("cannot open log segment", path, errno);
  if (std::unique_ptr<Standby> standby = created ? TakeStandby(min_bytes) : nullptr;
      standby != nullptr) {
    if (rename(standby->path.c_str(), path.c_str()) != 0) {
      const int error = errno;
      MutexLock lock(&segments_mutex_);
      free_files_.push_back(standby->path);
      return ErrnoStatus("cannot reuse log segment", standby->path, error);
    }
    segment = std::move(standby->segment);
  } else {
    if (created) {
      std::string free_file;
      {
        MutexLock lock(&segments_mutex_);
        if (!free_files_.empty()) {
          free_file = std::move(free_files_.back());
          free_files_.pop_back();
        }
      }
      if (!free_file.empty() && rename(free_file.c_str(), path.c_str()) != 0) {
        return ErrnoStatus("cannot reuse log segment", free_file, errno);
      }
      fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) return ErrnoStatus("cannot create log segment", path, errno);
    }
    segment = std::make_shared<Segment>();
    segment->fd = fd;
    if (absl::Status s = segment->Map(path, min_bytes); !s.ok()) return s;
  }
  segment->start = start;
  {
    MutexLock lock(&segments_mutex_);
    if (!segments_.empty() && segments_.back().first == start) {
      segments_.back().second = segment->size;
    } else {
      segments_.emplace_back(start, segment->size);
    }
  }
  if (created && options_.sync) {
    if (absl::Status s = SyncDir(); !s.ok()) return s;
  }
  return segment;
}

absl::Status BatchLog::Sync(uint64_t through) {
  if (!options_.sync) return absl::OkStatus();
  MutexLock lock(&sync_mutex_);
  if (synced_ >= through) return absl::OkStatus();
  std::shared_ptr<Segment> segment;
  uint64_t target;
  {
    MutexLock append(&append_mutex_);
    segment = active_;
    target = end_.load(std::memory_order_relaxed);
  }
  // Segments before the active one were synced when it took over (MakeRoom).
  if (segment != nullptr && fdatasync(segment->fd) != 0) {
    return ErrnoStatus("cannot sync log segment", SegmentName(segment->start), errno);
  }
  synced_ = target;
  return absl::OkStatus();
}

absl::Status BatchLog::SyncDir() {
  const int fd = open(options_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open the log folder", options_.dir, errno);
  const int result = fsync(fd);
  const int error = errno;
  close(fd);
  return result == 0 ? absl::OkStatus()
                     : ErrnoStatus("cannot sync the log folder", options_.dir, error);
}

absl::Status BatchLog::ForEach(const Visit& visit) const {
  MutexLock truncating(&truncate_mutex_);
  const uint64_t limit = End();
  std::vector<std::pair<uint64_t, uint64_t>> segments;
  {
    MutexLock lock(&segments_mutex_);
    segments = segments_;
  }
  absl::StatusOr<uint64_t> end =
      ReadLog(options_.dir, segments, limit, /*tail_must_reach_limit=*/true, visit);
  return end.ok() ? absl::OkStatus() : end.status();
}

absl::Status BatchLog::TruncateBefore(uint64_t position) {
  MutexLock truncating(&truncate_mutex_);
  for (;;) {
    std::pair<uint64_t, uint64_t> oldest;
    std::string free_file;
    {
      MutexLock lock(&segments_mutex_);
      // The last segment stays: it is (or precedes) the one being written, and it tells Open
      // where positions go on.
      if (segments_.size() < 2 || segments_.front().first + segments_.front().second > position) {
        break;
      }
      oldest = segments_.front();
      if (free_files_.size() < options_.free_segments) {
        free_file =
            (fs::path(options_.dir) / absl::StrCat(kFreePrefix, next_free_name_++, kSegmentSuffix))
                .string();
      }
    }
    const std::string path = (fs::path(options_.dir) / SegmentName(oldest.first)).string();
    const int result =
        free_file.empty() ? unlink(path.c_str()) : rename(path.c_str(), free_file.c_str());
    if (result != 0) return ErrnoStatus("cannot free log segment", path, errno);
    MutexLock lock(&segments_mutex_);
    segments_.erase(segments_.begin());
    if (!free_file.empty()) free_files_.push_back(std::move(free_file));
  }
  return options_.sync ? SyncDir() : absl::OkStatus();
}

absl::Status BatchLog::Scan(const std::string& dir, const Visit& visit) {
  std::error_code error;
  if (!fs::exists(dir, error)) return absl::OkStatus();
  absl::StatusOr<LogFiles> files = ListLogFiles(dir);
  if (!files.ok()) return files.status();
  absl::StatusOr<uint64_t> end = ReadLog(dir, files->segments, std::numeric_limits<uint64_t>::max(),
                                         /*tail_must_reach_limit=*/false, visit);
  return end.ok() ? absl::OkStatus() : end.status();
}

size_t BatchLog::SegmentFiles() const {
  size_t files;
  {
    MutexLock lock(&segments_mutex_);
    files = segments_.size() + free_files_.size();
  }
  MutexLock lock(&prepare_mutex_);
  return files + (standby_ != nullptr ? 1 : 0);
}

}  // namespace kldrift
