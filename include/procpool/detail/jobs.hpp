// procpool internals: jobs, the parent's record of one submission (an apply, a map, an imap).
//
// A job owns encoded items (ItemBlocks) and hands them to the scheduler as segments; the scheduler cuts segments
// into tasks (chunks), sends them to workers and gives the results back to the job, which decodes them into the
// caller's AsyncResult or range. A job never blocks the scheduler: decoding happens in the service thread without
// the scheduler's lock, and a job's own lock only guards what its consumer also reads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include "procpool/async_result.hpp"
#include "procpool/detail/buffer.hpp"
#include "procpool/detail/fifo.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/options.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

/// Encoded items, back to back; item i starts at offset(i).
struct ItemBlock {
    Buffer bytes;
    std::vector<std::shared_ptr<const void>> keep_alive;  // shared objects the items refer to
    std::vector<std::uint64_t> offsets;  // start of each item, plus the end; empty if stride is set or count <= 1
    std::uint64_t stride = 0;            // every item has this encoded size (bitwise items)
    std::uint64_t count = 0;

    [[nodiscard]] std::uint64_t offset(std::uint64_t i) const noexcept {
        if (stride != 0) return i * stride;
        if (offsets.empty()) return i == 0 ? 0 : bytes.size();  // one item (an apply): no offsets to allocate
        return offsets[i];
    }
    [[nodiscard]] std::span<const std::byte> items(std::uint64_t first, std::uint64_t n) const noexcept {
        const std::uint64_t begin = offset(first);
        return {bytes.data() + begin, offset(first + n) - begin};
    }
};

/// Builds an ItemBlock from items of type Item (one per call of the task function).
template <class Item>
class ItemEncoder {
public:
    /// Encodes into a new block (finish() returns it). A `shareable` block puts capacities from `shareable_from`
    /// bytes up in the bulk arena, where a pool's workers read the items in place (for transports whose workers
    /// share our memory).
    explicit ItemEncoder(std::size_t expected = 0, bool shareable = false,
                         std::size_t shareable_from = Buffer::kShareableThreshold)
        : ItemEncoder(std::make_shared<ItemBlock>(), expected, shareable, shareable_from) {}
    /// Encodes into `block`, a fresh one someone else owns (finish() returns it too).
    ItemEncoder(std::shared_ptr<ItemBlock> block, std::size_t expected, bool shareable = false,
                std::size_t shareable_from = Buffer::kShareableThreshold)
        : block_(std::move(block)) {
        if (shareable) block_->bytes = Buffer::shareable(shareable_from);
        if constexpr (bitwise<Item>()) {
            block_->stride = sizeof(Item);
            block_->bytes.reserve(expected * sizeof(Item));
        } else if (expected > 1) {
            block_->offsets.reserve(expected + 1);
        }
    }

    /// Adds one item (converted to Item). Throws std::invalid_argument for a struct holding an address in this
    /// thread's stack (detail/stack_check.hpp), and what encoding throws.
    template <class Value>
    void add(const Value& value) {
        if constexpr (bitwise<Item>()) {
            const Item item(value);
            check_argument_bytes(item, stack_);
            block_->bytes.append(&item, sizeof item);
        } else {
            check_argument_bytes(value, stack_);
            if (block_->count == 1) block_->offsets.push_back(0);  // a second item: offsets become explicit
            if (block_->count != 0) block_->offsets.push_back(block_->bytes.size());
            OutputArchive ar(block_->bytes, &block_->keep_alive);
            if constexpr (std::is_same_v<std::remove_cvref_t<Value>, Item>) {
                encode(ar, value);
            } else {
                encode(ar, static_cast<Item>(value));
            }
        }
        ++block_->count;
    }

    /// Adds `n` bitwise items stored contiguously at `first` with one copy.
    void add_contiguous(const Item* first, std::size_t n) {
        static_assert(bitwise<Item>());
        check_argument_run(first, n, stack_);
        block_->bytes.append(first, n * sizeof(Item));
        block_->count += n;
    }

    [[nodiscard]] std::uint64_t count() const noexcept { return block_->count; }
    [[nodiscard]] std::size_t bytes() const noexcept { return block_->bytes.size(); }

    std::shared_ptr<ItemBlock> finish() {
        if constexpr (!bitwise<Item>()) {
            if (!block_->offsets.empty()) block_->offsets.push_back(block_->bytes.size());
        }
        return std::move(block_);
    }

private:
    std::shared_ptr<ItemBlock> block_;
    StackRange stack_ = StackRange::of_this_thread();  // items must not point into it
};

/// A run of a job's items waiting to be sent: items [block_first, block_first + count) of `block`, which are the
/// job's items [job_first, job_first + count).
struct Segment {
    std::shared_ptr<const ItemBlock> block;
    std::uint64_t block_first = 0;
    std::uint64_t count = 0;
    std::uint64_t job_first = 0;

    /// Splits off and returns the first `n` items.
    Segment take_front(std::uint64_t n) {
        Segment front{block, block_first, n, job_first};
        block_first += n;
        count -= n;
        job_first += n;
        return front;
    }
};

/// A job's segments not sent yet, in order. Usually holds one segment, inline: an apply_async costs no
/// allocation here.
using SegmentQueue = Fifo<Segment, 1>;

/// Reports a job's progress to a MapOptions::progress callback: at most every 100 ms and once at the end.
/// Without a callback it costs one branch per delivery.
class ProgressTracker {
public:
    void start(ProgressCallback callback, std::optional<std::uint64_t> total) {
        callback_ = std::move(callback);
        total_ = total;
        start_ = MonotonicClock::now();
        last_ = start_;
    }
    /// `n` more items finished (delivered or failed).
    void add(std::uint64_t n) {
        if (!callback_) return;
        std::lock_guard lock(mutex_);
        done_ += n;
        const auto now = MonotonicClock::now();
        const bool last = total_ && done_ >= *total_;
        if (!last && now - last_ < std::chrono::milliseconds(100)) return;
        last_ = now;
        report_locked(now, last);
    }
    /// The job is over (all delivered, failed, or abandoned): the final report, once.
    void finish() {
        if (!callback_) return;
        std::lock_guard lock(mutex_);
        report_locked(MonotonicClock::now(), true);
    }

private:
    void report_locked(MonotonicClock::time_point now, bool final) {
        if (finished_) return;
        finished_ = final;
        ProgressInfo info;
        info.done = done_;
        info.total = total_;
        info.elapsed = now - start_;
        info.rate = info.elapsed.count() > 0 ? static_cast<double>(done_) / info.elapsed.count() : 0;
        if (total_ && info.rate > 0) {
            info.remaining = std::chrono::duration<double>(static_cast<double>(*total_ - std::min(done_, *total_)) /
                                                           info.rate);
        }
        info.finished = final;
        try {
            callback_(info);
        } catch (...) {
            report_callback_exception("a progress callback");
        }
    }

    ProgressCallback callback_;
    std::optional<std::uint64_t> total_;
    std::mutex mutex_;
    std::uint64_t done_ = 0;
    MonotonicClock::time_point start_;
    MonotonicClock::time_point last_;
    bool finished_ = false;
};

/// An error of one item, by job index.
struct ItemError {
    std::uint64_t index;
    std::exception_ptr error;
};

/// The parent's record of one submission. Scheduler-owned fields are guarded by the scheduler's lock.
class JobBase {
public:
    JobBase(TaskEntry task_entry, Buffer callable, std::size_t chunksize, bool presized_segments)
        : chunksize_(chunksize), presized_segments_(presized_segments), entry_(task_entry),
          callable_(std::move(callable)) {}
    JobBase(const JobBase&) = delete;
    JobBase& operator=(const JobBase&) = delete;
    virtual ~JobBase() = default;

    /// Decodes the results of items [first, first + count): `errors` (sorted by index) failed, the others have
    /// their values in `values`, in order. Called by the service thread only, without the scheduler's lock.
    /// The job moves out the errors it hands on, so the thread that consumes an exception drops its last
    /// reference (not the delivering thread, while the consumer may still be reading it).
    virtual void deliver(std::uint64_t first, std::uint64_t count, std::span<ItemError> errors,
                         InputArchive& values) = 0;
    /// Fails items [first, first + count) with `error` (a crash, a timeout, terminate()).
    virtual void fail(std::uint64_t first, std::uint64_t count, const std::exception_ptr& error) = 0;
    /// True when nobody wants the job's remaining results (a failed map, an abandoned imap): unsent items are
    /// dropped instead of run.
    [[nodiscard]] virtual bool cancelled() const noexcept = 0;

    [[nodiscard]] TaskEntry entry() const noexcept { return entry_; }
    [[nodiscard]] const Buffer& callable() const noexcept { return callable_; }

    // ---- scheduler state (guarded by the scheduler's lock) ----
    SegmentQueue ready;              // items not sent yet, in order
    std::uint64_t unsent_items = 0;  // sum of ready[].count
    std::size_t chunksize_;          // the caller's chunksize, 0 = automatic
    bool presized_segments_;         // segments are already chunks (imap) rather than cut at dispatch (map)
    bool queued = false;             // in the scheduler's job queue
    std::uint32_t tasks_sent = 0;
    std::atomic<double> item_ns{0};   // measured worker time per item (moving average), 0 = not measured yet
    std::uint64_t encoded_bytes = 0;  // bytes of all items added, to estimate bytes per item
    std::uint64_t encoded_items = 0;
    std::vector<std::shared_ptr<const void>> keep_alive;  // a copy of a callable holding shared-object handles
    ProgressTracker progress;                             // MapOptions::progress, if any
    bool code_pointer_callable = false;                   // the callable's bytes are a function pointer

private:
    TaskEntry entry_;
    Buffer callable_;
};

/// apply/apply_async: one item, one result. The job, its item and its result state are one allocation: the
/// AsyncResult and the scheduler's task share it through aliasing shared_ptrs (make() returns them).
template <class R>
class ApplyJob final : public JobBase {
public:
    ApplyJob(TaskEntry task_entry, Buffer callable) : JobBase(task_entry, std::move(callable), 1, true) {}

    struct Parts {
        std::shared_ptr<ApplyJob> job;
        std::shared_ptr<ResultState<R>> state;
        std::shared_ptr<ItemBlock> item;
    };
    static Parts make(TaskEntry task_entry, Buffer callable) {
        auto job = std::make_shared<ApplyJob>(task_entry, std::move(callable));
        std::shared_ptr<ResultState<R>> state(job, &job->own_state_);
        std::shared_ptr<ItemBlock> item(job, &job->item_);
        return {std::move(job), std::move(state), std::move(item)};
    }

    void deliver(std::uint64_t, std::uint64_t count, std::span<ItemError> errors, InputArchive& values) override {
        if (count == 0) return;
        // The worker ran the item and will not read it again (nor will the scheduler: the task is gone), so the
        // argument's encoding, perhaps a large block of shared memory, need not live as long as the AsyncResult.
        // (keep_alive stays: a result may be a handle to a shared object the argument held.)
        item_.bytes = Buffer();
        if (!errors.empty()) {
            own_state_.complete_error(std::move(errors.front().error));
            return;
        }
        if constexpr (std::is_void_v<R>) {
            own_state_.complete_value();
        } else {
            try {
                own_state_.complete_value(decode_as<R>(values));
            } catch (...) {
                own_state_.complete_error(std::current_exception());
            }
        }
    }
    void fail(std::uint64_t, std::uint64_t count, const std::exception_ptr& error) override {
        if (count != 0) own_state_.complete_error(error);
    }
    [[nodiscard]] bool cancelled() const noexcept override { return false; }

private:
    ResultState<R> own_state_;
    ItemBlock item_;
};

/// map/map_async/starmap: results decoded in place into the result vector; the first error fails the whole job
/// and cancels its items not yet sent.
template <class R>
class MapJob final : public JobBase {
public:
    using Output = std::conditional_t<std::is_void_v<R>, void, std::vector<R>>;

    MapJob(TaskEntry task_entry, Buffer callable, std::size_t chunksize, std::uint64_t count,
           std::shared_ptr<ResultState<Output>> state, ProgressCallback on_progress = {})
        : JobBase(task_entry, std::move(callable), chunksize, false), state_(std::move(state)), remaining_(count) {
        progress.start(std::move(on_progress), count);
        if constexpr (!std::is_void_v<R>) {
            static_assert(std::is_default_constructible_v<R>,
                          "procpool: map results are decoded in place, so the result type needs a default constructor");
            if constexpr (std::is_same_v<R, bool>) {
                state_->prepare().resize(count);
            } else {
                resize_for_overwrite(state_->prepare(), count);
            }
        }
        if (count == 0) finish_locked(nullptr);
    }

    void deliver(std::uint64_t first, std::uint64_t count, std::span<ItemError> errors, InputArchive& values) override {
        std::unique_lock lock(mutex_);
        if (done_.load(std::memory_order_relaxed)) return;
        std::exception_ptr failure = errors.empty() ? nullptr : std::move(errors.front().error);
        if constexpr (!std::is_void_v<R>) {
            try {
                decode_values(first, count, errors, values);
            } catch (...) {
                if (!failure) failure = std::current_exception();
            }
        }
        remaining_ -= count;
        const bool done = failure || remaining_ == 0;
        lock.unlock();
        progress.add(count);
        if (done) finish(failure);
    }
    void fail(std::uint64_t, std::uint64_t count, const std::exception_ptr& error) override {
        if (count == 0) return;
        progress.add(count);
        finish(error);
    }
    [[nodiscard]] bool cancelled() const noexcept override { return done_.load(std::memory_order_acquire); }

private:
    /// Decodes the values of items [first, first + count) except the failed ones into the result vector.
    void decode_values(std::uint64_t first, std::uint64_t count, std::span<const ItemError> errors,
                       InputArchive& values) {
        std::vector<R>& out = state_->prepare();
        if constexpr (bitwise<R>() && !std::is_same_v<R, bool>) {
            if (errors.empty()) {
                values.read_bytes(out.data() + first, count * sizeof(R));  // the whole run in one copy
                return;
            }
        }
        auto error = errors.begin();
        for (std::uint64_t i = first; i < first + count; ++i) {
            if (error != errors.end() && error->index == i) {
                ++error;
                continue;
            }
            if constexpr (std::is_same_v<R, bool>) {
                out[i] = decode_as<bool>(values);  // std::vector<bool> has no addressable elements
            } else {
                decode(values, out[i]);
            }
        }
    }

    void finish(std::exception_ptr error) {
        std::lock_guard lock(mutex_);
        finish_locked(std::move(error));
    }
    void finish_locked(std::exception_ptr error) {
        if (done_.exchange(true, std::memory_order_acq_rel)) return;
        progress.finish();
        if (error) {
            state_->complete_error(std::move(error));
        } else {
            state_->complete_value();
        }
    }

    std::shared_ptr<ResultState<Output>> state_;
    std::mutex mutex_;
    std::atomic<bool> done_{false};
    std::uint64_t remaining_;
};

}  // namespace procpool::detail
