// BatchLog: an append-only log of opaque records in memory-mapped segment files, recycled once
// truncated. RocksDbStore keeps its ingest log here (one record per acknowledged batch): writing
// a record is a copy into the page cache and a hardware CRC32C, with no system call, where
// RocksDB's write-ahead log cost a `write` call, a software CRC32C (Debian's librocksdb is built
// without SSE 4.2) and a write group per batch (README, "Storage and durability").
//
// Positions. Every record has a position: a byte offset in one log-wide address space that only
// grows and is never reused. A segment file is named by the position of its first byte (16 hex
// digits, ".seg") and holds the positions [start, start + file size). Records are 8-byte aligned:
//   u32 crc32c (masked)  over the next 12 bytes and the payload
//   u32 length           of the payload; kEndOfSegment marks the rest of the segment unused
//   u64 position         of this record (a record left over from a recycled file has another)
//   payload, zero-padded to a multiple of 8
// A record that does not fit in the rest of a segment goes to the next one, which starts where the
// full one's file ends; the full one gets an end-of-segment mark when 16 bytes are left for it.
//
// Recovery (Open): the segments are read in order. The last segment ends at its first record that
// does not check (a write torn by a crash, or bytes a recycled file held before); every other
// segment must end with an end-of-segment mark or too little room for one, and a gap between
// segments is an error (DATA_LOSS): both mean lost records, not a torn tail. Records after the
// recovered end are overwritten by the next appends.
//
// Durability. Append returns once the record is in the page cache (through a MAP_SHARED
// mapping), which survives a crash of the process (kill -9) but not of the machine. With
// `sync`, Sync(through) additionally returns only when every record up to `through` is on disk
// (fdatasync; concurrent callers share one); segment switches and recycling renames are synced
// too, so a synced log recovers after power loss.
//
// Truncation (TruncateBefore) renames segments whose every record lies before a position to
// "free-N.seg" (up to `free_segments` of them; others are deleted); the next segment switch renames
// a free file back in. Its pages are then already allocated on disk and resident in the page
// cache: writing fresh pages (a new file) cost page faults and zeroing that were a tenth of
// kldriftd's samples in a prototype (tests/bench/HISTORY.md, "The batch log").
//
// The next segment, prepared ahead (`prepare_next_segment`). Opening a segment (a free file
// renamed in, or a new file allocated on disk with posix_fallocate, then mapped), writing the
// first bytes of each of its pages (a page fault each) and unmapping the full one are kernel work
// that the appends did under the log's lock, which every other append (and the store's lock
// around it) waited for: at 12k batches/s a posix_fallocate waited ~2.6 ms for ext4 to read a
// block bitmap, and an append holding the lock while it faulted or unmapped kept the other ingest
// thread waiting 0.6 ms on average (README, "What changed": "The next log segment prepared
// ahead"). With the option, a thread of the log's own ("kldrift-log", at the lowest priority)
// keeps one free file allocated to `segment_bytes`, mapped and its pages faulted in writable
// (MADV_POPULATE_WRITE): the standby, still named "free-N.seg", so a crash leaves it a free file
// like any other. The append that fills a segment renames the standby in (a rename, and with
// `sync` the folder's sync), asks for the next one and hands the full segment to that thread to
// unmap (or unmaps it itself when four are already waiting). When there is no standby (not ready
// yet, too small for the record, or it could not be made, say on a full disk) the append opens
// the segment itself, as without the option, with the same errors.
//
// Memory: the segment being written and the standby are mapped, twice `segment_bytes` of the
// process's resident memory; full segments wait mapped for the preparing thread to unmap them, at
// most kMaxRetiredSegments (past that an append unmaps its own), so a starved thread adds at most
// four times `segment_bytes`.
//
// Thread safety: safe for concurrent use. Append serializes on one mutex (a copy of the record),
// Sync on another (the fdatasync); ForEach may run concurrently with both, and with
// TruncateBefore (which waits for it).
#ifndef KLDRIFT_SERVER_STORAGE_BATCH_LOG_H_
#define KLDRIFT_SERVER_STORAGE_BATCH_LOG_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/core/mutex.h"

namespace kldrift {

struct BatchLogOptions {
  // The log's folder; created when missing.
  std::string dir;
  // Size of a new segment file (a record larger than that gets a segment of its own size).
  uint64_t segment_bytes = uint64_t{16} << 20;
  // Truncated segments kept for reuse (the standby not counted).
  size_t free_segments = 4;
  // Keep the next segment prepared by a thread of the log's own (class comment).
  bool prepare_next_segment = true;
  // See the class comment.
  bool sync = false;
  // Test-only: called by the preparing thread at the start of each round of its work (unmapping
  // retired segments, making the standby), outside every lock of the log. A test blocks in it to
  // stand for a preparing thread starved of CPU; it must return before the log is destroyed.
  std::function<void()> TEST_before_preparing;
};

class BatchLog {
 public:
  // Full segments waiting for the preparing thread to unmap them, at most; past that, an append
  // that fills a segment unmaps it itself (a starved preparing thread does not leave them piling
  // up mapped).
  static constexpr size_t kMaxRetiredSegments = 4;

  // Opens the log in `options.dir` (creating an empty one), recovering its end (class comment).
  // DATA_LOSS when a segment before the last is damaged or missing.
  static absl::StatusOr<std::unique_ptr<BatchLog>> Open(const BatchLogOptions& options);
  ~BatchLog();
  BatchLog(const BatchLog&) = delete;
  BatchLog& operator=(const BatchLog&) = delete;

  // Appends one record (in the page cache when it returns) and returns the position just past it:
  // what End() returns until the next append, and what Sync takes. UNAVAILABLE when a segment
  // file cannot be created (a full disk, say): nothing was appended, and End() did not move.
  absl::StatusOr<uint64_t> Append(absl::string_view payload);
  // With `sync`: returns once every record before `through` is on disk. Without: OK at once.
  absl::Status Sync(uint64_t through);
  // Where the log ends: every record appended (or recovered) lies before it, and every later one
  // starts at or after it. That is the position just past the last record, except when that
  // record left its segment full: then the next segment's start (after Open, or while an Append
  // switches segments).
  uint64_t End() const { return end_.load(std::memory_order_acquire); }

  // Every record before End() (as of the call), oldest first; stops at the first error `visit`
  // returns and returns it.
  using Visit = std::function<absl::Status(uint64_t position, absl::string_view payload)>;
  absl::Status ForEach(const Visit& visit) const;
  // Frees the segments whose files end at or before `position` (so every record in them lies
  // before it), oldest first; never the last segment, which is (or precedes) the one written.
  absl::Status TruncateBefore(uint64_t position);

  // Reads the log in `dir` without changing anything (kldriftd --check-data-dir): every record,
  // as ForEach, with the same checks as Open. OK with no records when `dir` does not exist.
  static absl::Status Scan(const std::string& dir, const Visit& visit);

  // Segment files, free ones (and the standby) included.
  size_t SegmentFiles() const;

  // With `prepare_next_segment`: waits until the standby is ready, or until its preparation
  // failed (returned), or `timeout`. Tests use it to make the next switch take the standby.
  absl::Status WaitForStandby(absl::Duration timeout);

 private:
  struct Segment;
  explicit BatchLog(const BatchLogOptions& options);

  // Makes the segment being written hold `bytes` more from end_: maps the segment that holds
  // end_, or opens the next one, then marks the current one full and switches, handing the full
  // one to `retired` (for the caller to drop after releasing the lock: see Append).
  absl::Status MakeRoom(uint64_t bytes, std::shared_ptr<Segment>* retired)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(append_mutex_);
  // Opens (renaming a free file, or creating one) and maps the segment starting at `start`, at
  // least `min_bytes` long, and lists it in segments_.
  absl::StatusOr<std::shared_ptr<Segment>> OpenSegment(uint64_t start, uint64_t min_bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(append_mutex_);
  absl::Status SyncDir();

  // A free file allocated and mapped for the next segment.
  struct Standby;
  // The preparing thread's loop: drops retired segments, and makes a standby when asked.
  void PrepareLoop();
  // Allocates and maps a free file (reused, or created) of at least `segment_bytes`.
  absl::StatusOr<std::unique_ptr<Standby>> MakeStandby();
  // Takes the standby if it is ready and holds `min_bytes` (null otherwise), and asks for the
  // next one.
  std::unique_ptr<Standby> TakeStandby(uint64_t min_bytes);
  // Hands a segment the log no longer writes to the preparing thread to unmap, or drops it here
  // without one.
  void Retire(std::shared_ptr<Segment> segment);

  const BatchLogOptions options_;
  ExclusiveMutex append_mutex_;
  // The segment being written (mapped), or null before the first append after Open.
  std::shared_ptr<Segment> active_ ABSL_GUARDED_BY(append_mutex_);
  std::atomic<uint64_t> end_{0};

  Mutex sync_mutex_;
  uint64_t synced_ ABSL_GUARDED_BY(sync_mutex_) = 0;

  // Segment starts and file sizes, oldest first (the active one last), and free files. Held
  // briefly; `truncate_mutex_` is held by ForEach for its whole read and by TruncateBefore.
  mutable Mutex segments_mutex_;
  std::vector<std::pair<uint64_t, uint64_t>> segments_ ABSL_GUARDED_BY(segments_mutex_);
  std::vector<std::string> free_files_ ABSL_GUARDED_BY(segments_mutex_);
  uint64_t next_free_name_ ABSL_GUARDED_BY(segments_mutex_) = 0;
  mutable Mutex truncate_mutex_;

  // The standby and the preparing thread's work (`prepare_next_segment`). An append takes it
  // under append_mutex_ (to take the standby); no other lock is taken while it is held.
  mutable Mutex prepare_mutex_ ABSL_ACQUIRED_AFTER(append_mutex_);
  CondVar prepare_cv_;
  std::unique_ptr<Standby> standby_ ABSL_GUARDED_BY(prepare_mutex_);
  // A standby is wanted (none is ready and none failed since the last switch asked).
  bool standby_wanted_ ABSL_GUARDED_BY(prepare_mutex_) = false;
  // Why the last standby could not be made (OK when it was, or none was tried).
  absl::Status standby_error_ ABSL_GUARDED_BY(prepare_mutex_);
  std::vector<std::shared_ptr<Segment>> retired_ ABSL_GUARDED_BY(prepare_mutex_);
  bool stopping_ ABSL_GUARDED_BY(prepare_mutex_) = false;
  std::thread preparer_;
};

// CRC32C (Castagnoli) of `data`, extending `crc` (0 to start); SSE 4.2's crc32 instruction where
// the CPU has it, a table otherwise.
uint32_t Crc32c(uint32_t crc, const void* data, size_t size);

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_STORAGE_BATCH_LOG_H_
