// procpool internals: jobs, the parent's record of one submission: ApplyJob (apply), MapJob (map, starmap), ImapJob
// (imap, imap_unordered).
//
// A job owns encoded items (ItemBlocks, detail/items.hpp) and hands them to the scheduler as segments; the scheduler
// cuts segments into tasks (chunks), sends them to workers and gives the results back to the job, which decodes them
// into the caller's AsyncResult or range. A job never blocks the scheduler: decoding happens in the poller without
// the scheduler's lock, and a job's own lock only guards what its consumer also reads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "procpool/async_result.hpp"
#include "procpool/detail/assert.hpp"
#include "procpool/detail/block_recycler.hpp"
#include "procpool/detail/buffer.hpp"
#include "procpool/detail/config.hpp"
#include "procpool/detail/fifo.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/detail/items.hpp"
#include "procpool/detail/progress_tracker.hpp"
#include "procpool/detail/spin_mutex.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/options.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

/// An error of one item, by job index.
struct ItemError {
    std::uint64_t index;
    std::exception_ptr error;
};

/// PoolOptions::retries spent, by job index; the table is made on the first retry (most jobs have none, and an
/// empty std::unordered_map would take 56 bytes of every apply_async's record).
class RetryCounts {
public:
    [[nodiscard]] std::uint32_t spent(std::uint64_t index) const {
        if (!counts_) return 0;
        const auto found = counts_->find(index);
        return found == counts_->end() ? 0 : found->second;
    }
    /// One more retry of item `index`. Throws std::bad_alloc.
    void add(std::uint64_t index) {
        if (!counts_) counts_ = std::make_unique<std::unordered_map<std::uint64_t, std::uint32_t>>();
        ++(*counts_)[index];
    }

private:
    std::unique_ptr<std::unordered_map<std::uint64_t, std::uint32_t>> counts_;
};

/// The parent's record of one submission. Scheduler-owned fields are guarded by the scheduler's lock.
class JobBase {
public:
    PROCPOOL_DECL JobBase(TaskEntry task_entry, Buffer callable, std::size_t chunksize, bool presized_segments);
    JobBase(const JobBase&) = delete;
    JobBase& operator=(const JobBase&) = delete;
    PROCPOOL_DECL virtual ~JobBase();

    /// Decodes the results of items [first, first + count): `errors` (sorted by index) failed, the others have
    /// their values in `values`, in order. Called by the poller only (detail/scheduler/polling.hpp), without the
    /// scheduler's lock. The job moves out the errors it hands on, so the thread that consumes an exception drops its
    /// last reference (not the delivering thread, while the consumer may still be reading it). `busy_ns` is the
    /// worker time these items took.
    virtual void deliver(std::uint64_t first, std::uint64_t count, std::span<ItemError> errors, InputArchive& values,
                         std::uint64_t busy_ns) = 0;
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
    RetryCounts retries_used;                             // PoolOptions::retries spent

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
        // One block per apply_async, recycled (detail/block_recycler.hpp): bursts allocate and free thousands.
        auto job = std::allocate_shared<ApplyJob>(RecyclingAllocator<ApplyJob>(), task_entry, std::move(callable));
        std::shared_ptr<ResultState<R>> state(job, &job->own_state_);
        std::shared_ptr<ItemBlock> item(job, &job->item_);
        return {std::move(job), std::move(state), std::move(item)};
    }

    void deliver(std::uint64_t, std::uint64_t count, std::span<ItemError> errors, InputArchive& values,
                 std::uint64_t /*busy_ns*/) override {
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

    void deliver(std::uint64_t first, std::uint64_t count, std::span<ItemError> errors, InputArchive& values,
                 std::uint64_t /*busy_ns*/) override {
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

/// The job behind an ImapRange. Ordered mode keeps a slot per item of each chunk and releases items to the reader
/// in input order; unordered mode releases each item as it arrives.
template <class R>
class ImapJob final : public JobBase {
public:
    using Value = std::conditional_t<std::is_void_v<R>, std::monostate, R>;
    struct Entry {
        std::optional<Value> value;
        std::exception_ptr error;
    };

    ImapJob(TaskEntry task_entry, Buffer callable, std::size_t chunksize, bool ordered)
        : JobBase(task_entry, std::move(callable), chunksize, true), ordered_(ordered) {}

    // ---- reader side ----
    /// Registers items [first, first + count) before they are submitted, with the room their failures will need
    /// (fail() allocates nothing). Throws std::bad_alloc, having changed nothing.
    void expect(std::uint64_t first, std::uint64_t count) {
        std::lock_guard lock(mutex_);
        // First: if it throws (std::bad_alloc), nothing was counted.
        if (ordered_) {
            PROCPOOL_ASSERT(first == slots_first_ + slots_.size(), "items are expected in input order");
            (void)first;
            slots_.resize(slots_.size() + count);
        } else {
            // Each run of failed items holds at least one item submitted and not taken.
            failed_runs_.reserve_total(unconsumed_.load(std::memory_order_relaxed) + count);
        }
        unconsumed_.fetch_add(count, std::memory_order_acq_rel);
    }
    /// Takes back the last expect() when its items could not be submitted after all.
    void unexpect(std::uint64_t count) {
        std::lock_guard lock(mutex_);
        unconsumed_.fetch_sub(count, std::memory_order_acq_rel);
        if (ordered_) slots_.resize(slots_.size() - count);
    }
    /// Items submitted whose entries the reader has not taken yet.
    [[nodiscard]] std::uint64_t unconsumed() const noexcept { return unconsumed_.load(std::memory_order_acquire); }

    /// Takes the next released entry, if any.
    std::optional<Entry> try_take() {
        if (available_.load(std::memory_order_acquire) == 0) return std::nullopt;
        std::lock_guard lock(mutex_);
        std::optional<Entry> entry;
        if (ordered_) {
            if (ready_ == 0) return std::nullopt;
            entry.emplace(std::move(slots_.front().entry));
            slots_.pop_front();
            ++slots_first_;
            --ready_;
        } else if (!failed_runs_.empty() && failed_runs_.front().after == released_taken_) {
            // Every value released before this run has been taken: its failures come next, in completion order.
            FailedRun& run = failed_runs_.front();
            entry.emplace(Entry{std::nullopt, run.error});
            if (--run.count == 0) failed_runs_.pop_front();
        } else {
            if (released_.empty()) return std::nullopt;
            entry.emplace(std::move(released_.front()));
            released_.pop_front();
            ++released_taken_;
        }
        available_.fetch_sub(1, std::memory_order_acq_rel);
        unconsumed_.fetch_sub(1, std::memory_order_acq_rel);
        return entry;
    }
    /// Waits until an entry is released: polls the pool through `helper` for a moment, then sleeps. Throws
    /// PoolStateError instead in a process forked after the pool was built (nothing would ever arrive there).
    void wait_available(WaitHelper& helper) {
        helper.check_owner();
        auto has_entry = [](const void* self) { return static_cast<const ImapJob*>(self)->available_.load() != 0; };
        const auto outcome = helper.help(has_entry, this, kHelpBudget, std::nullopt);
        if (outcome == WaitHelper::Outcome::done) return;
        const auto spin = outcome == WaitHelper::Outcome::busy ? std::chrono::nanoseconds(std::chrono::microseconds(20))
                                                               : std::chrono::nanoseconds::zero();
        bell_.wait([this] { return available_.load(std::memory_order_acquire) != 0; }, std::nullopt, spin);
    }
    void abandon() noexcept { abandoned_.store(true, std::memory_order_release); }

    // ---- JobBase ----
    void deliver(std::uint64_t first, std::uint64_t count, std::span<ItemError> errors, InputArchive& values,
                 std::uint64_t /*busy_ns*/) override {
        if (abandoned_.load(std::memory_order_acquire)) return;
        // One item per message is the common case of small chunks: no allocation for it.
        Entry one;
        std::vector<Entry> many(count == 1 ? 0 : count);
        const std::span<Entry> entries = count == 1 ? std::span<Entry>(&one, 1) : std::span<Entry>(many);
        auto error = errors.begin();
        for (std::uint64_t i = 0; i < count; ++i) {
            if (error != errors.end() && error->index == first + i) {
                entries[i].error = std::move(error->error);
                ++error;
                continue;
            }
            try {
                if constexpr (std::is_void_v<R>) {
                    entries[i].value.emplace();
                } else {
                    entries[i].value.emplace(decode_as<R>(values));
                }
            } catch (...) {
                // The value stream is unreadable from here on: fail this item and the rest of the message.
                for (std::uint64_t k = i; k < count; ++k) entries[k].error = std::current_exception();
                break;
            }
        }
        resolve(first, entries);
    }

    /// Allocates nothing and throws nothing: the scheduler calls it when delivering threw, std::bad_alloc included,
    /// and an item it failed to resolve would leave the reader waiting for ever.
    void fail(std::uint64_t first, std::uint64_t count, const std::exception_ptr& error) noexcept override {
        if (abandoned_.load(std::memory_order_acquire)) return;
        std::size_t resolved = 0;
        std::size_t released = 0;
        {
            std::lock_guard lock(mutex_);
            if (ordered_) {
                for (std::uint64_t item = first; item < first + count; ++item) {
                    Slot* slot = unresolved_slot_locked(item);
                    if (slot == nullptr) continue;  // a deliver() that threw midway stored it
                    slot->entry.value.reset();
                    slot->entry.error = error;
                    slot->resolved = true;
                    ++resolved;
                }
                advance_ready_locked(released);
            } else if (count != 0) {  // unordered resolve() stores all of a message or none of it
                failed_runs_.push_back(FailedRun{error, count, released_total_});  // within the room expect() made
                resolved = released = count;
            }
            available_.fetch_add(released, std::memory_order_acq_rel);
        }
        progress.add(resolved);
        if (released != 0) bell_.ring();
    }

    [[nodiscard]] bool cancelled() const noexcept override { return abandoned_.load(std::memory_order_acquire); }

private:
    struct Slot {
        bool resolved = false;
        Entry entry;
    };
    /// Unordered mode: `count` items that failed with `error`, stored by fail() without allocating, after the first
    /// `after` entries released.
    struct FailedRun {
        std::exception_ptr error;
        std::uint64_t count;
        std::uint64_t after;
    };

    /// Stores the entries of items [first, first + entries.size()) and releases what the reader may take now.
    /// Allocates nothing in ordered mode (expect() made the slots). Each item resolves once: a fail() for items that
    /// a deliver() that threw midway already resolved leaves those alone. Throws only what moving a value throws,
    /// or (unordered) std::bad_alloc, with the counts true to what was stored.
    void resolve(std::uint64_t first, std::span<Entry> entries) {
        std::size_t resolved = 0;   // items stored now
        std::size_t released = 0;   // entries the reader may take now that it could not before
        std::exception_ptr thrown;  // what storing threw: counted, rung and reported as far as it got, then rethrown
        {
            std::lock_guard lock(mutex_);
            try {
                if (ordered_) {
                    for (std::size_t i = 0; i < entries.size(); ++i) {
                        Slot* slot = unresolved_slot_locked(first + i);
                        if (slot == nullptr) continue;
                        slot->entry = std::move(entries[i]);
                        slot->resolved = true;
                        ++resolved;
                    }
                } else {
                    // Room first: a std::bad_alloc then changes nothing (the scheduler then fails the items).
                    const std::size_t old_size = released_.size();
                    released_.resize(old_size + entries.size());
                    try {
                        for (std::size_t i = 0; i < entries.size(); ++i)
                            released_[old_size + i] = std::move(entries[i]);
                    } catch (...) {
                        released_.resize(old_size);  // (shrinking does not throw)
                        throw;
                    }
                    resolved = released = entries.size();
                    released_total_ += entries.size();
                }
            } catch (...) {
                thrown = std::current_exception();
            }
            advance_ready_locked(released);
            available_.fetch_add(released, std::memory_order_acq_rel);
        }
        progress.add(resolved);
        if (released != 0) bell_.ring();
        if (thrown) std::rethrow_exception(thrown);
    }
    /// Ordered mode: item `item`'s slot, or nullptr if the item is resolved already (taken by the reader, or stored
    /// by an earlier resolve()): each item resolves once.
    Slot* unresolved_slot_locked(std::uint64_t item) noexcept {
        if (item < slots_first_) return nullptr;
        PROCPOOL_ASSERT(item - slots_first_ < slots_.size(), "results arrive only for expected items");
        Slot& slot = slots_[item - slots_first_];
        return slot.resolved ? nullptr : &slot;
    }
    /// Ordered mode: extends the resolved prefix of the slots the reader may take, counting it in `released`.
    void advance_ready_locked(std::size_t& released) noexcept {
        if (!ordered_) return;
        while (ready_ < slots_.size() && slots_[ready_].resolved) {
            ++ready_;
            ++released;
        }
    }

    const bool ordered_;
    // The reader and the thread delivering results take it for a few hundred nanoseconds each, once per item with
    // chunks of one: a std::mutex made them sleep on a futex whenever they met (imap with chunksize 1 measured
    // 70 000-90 000 futex calls per 200 ms and ran at half speed while that lasted).
    SpinMutex mutex_;
    std::deque<Slot> slots_;            // ordered mode: items expected and not yet taken by the reader, in input order
    std::uint64_t slots_first_ = 0;     // the index of slots_.front()
    std::size_t ready_ = 0;             // ordered mode: the resolved prefix of slots_, the reader's to take
    std::deque<Entry> released_;        // unordered mode: entries the reader may take, in the order it gets them
    std::uint64_t released_total_ = 0;  // unordered mode: entries ever put into released_
    std::uint64_t released_taken_ = 0;  // unordered mode: entries ever taken from released_
    Fifo<FailedRun, 1> failed_runs_;    // unordered mode: failed items, each run in its place among released_
    std::atomic<std::uint64_t> available_{0};   // entries the reader may take: ready_, or released_ and failed runs
    std::atomic<std::uint64_t> unconsumed_{0};  // submitted, not yet taken by the reader
    std::atomic<bool> abandoned_{false};
    Doorbell bell_;
};


}  // namespace procpool::detail

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/jobs.ipp"
#endif
