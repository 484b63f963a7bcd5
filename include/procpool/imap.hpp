// procpool: ImapRange, what imap and imap_unordered return: a lazy input range of results.
//
// The input is read in the thread that iterates, only as results are consumed: at most a window of chunks, and
// never more than MapOptions::buffersize items (a few thousand by default), are read and not yet consumed, so
// infinite inputs work and memory stays bounded. Dereferencing an iterator whose item failed throws that item's
// exception; incrementing it moves on to the next item (like Python's imap). An exception thrown while reading the
// input is thrown at the failing element's position: every result of the elements read before it comes first.
// Destroying the range early (a `break`) drops the unsent input and ignores the results still in flight: it never
// waits for them.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <exception>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "procpool/detail/futex.hpp"
#include "procpool/detail/jobs.hpp"
#include "procpool/detail/pool_core.hpp"
#include "procpool/options.hpp"

namespace procpool {

namespace detail {

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
    /// Registers items [first, first + count) before they are submitted.
    void expect(std::uint64_t first, std::uint64_t count) {
        std::lock_guard lock(mutex_);
        outstanding_ += count;
        unconsumed_.fetch_add(count, std::memory_order_acq_rel);
        if (ordered_) chunks_.push_back(Chunk{first, 0, std::vector<Slot>(count)});
    }
    /// Takes back the last expect() when its items could not be submitted after all.
    void unexpect(std::uint64_t count) {
        std::lock_guard lock(mutex_);
        outstanding_ -= count;
        unconsumed_.fetch_sub(count, std::memory_order_acq_rel);
        if (ordered_) chunks_.pop_back();
    }
    /// Items submitted whose entries the reader has not taken yet.
    [[nodiscard]] std::uint64_t unconsumed() const noexcept { return unconsumed_.load(std::memory_order_acquire); }

    /// Takes the next released entry, if any.
    std::optional<Entry> try_take() {
        if (available_.load(std::memory_order_acquire) == 0) return std::nullopt;
        std::lock_guard lock(mutex_);
        if (released_.empty()) return std::nullopt;
        Entry entry = std::move(released_.front());
        released_.pop_front();
        available_.fetch_sub(1, std::memory_order_acq_rel);
        unconsumed_.fetch_sub(1, std::memory_order_acq_rel);
        return entry;
    }
    /// Waits until an entry is released: polls the pool through `helper` for a moment, then sleeps. Throws
    /// PoolStateError instead in a process forked after the pool was built (nothing would ever arrive there).
    void wait_available(WaitHelper& helper) {
        helper.check_owner();
        auto has_entry = [](const void* self) { return static_cast<const ImapJob*>(self)->available_.load() != 0; };
        const auto outcome = helper.help(has_entry, this, kHelpBudget);
        if (outcome == WaitHelper::Outcome::done) return;
        const auto spin = outcome == WaitHelper::Outcome::busy ? std::chrono::nanoseconds(std::chrono::microseconds(20))
                                                               : std::chrono::nanoseconds::zero();
        bell_.wait([this] { return available_.load(std::memory_order_acquire) != 0; }, std::nullopt, spin);
    }
    void abandon() noexcept { abandoned_.store(true, std::memory_order_release); }

    // ---- JobBase ----
    void deliver(std::uint64_t first, std::uint64_t count, std::span<ItemError> errors, InputArchive& values) override {
        if (abandoned_.load(std::memory_order_acquire)) return;
        std::vector<Entry> entries(count);
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

    void fail(std::uint64_t first, std::uint64_t count, const std::exception_ptr& error) override {
        if (abandoned_.load(std::memory_order_acquire)) return;
        std::vector<Entry> entries(count);
        for (Entry& entry : entries) entry.error = error;
        resolve(first, entries);
    }

    [[nodiscard]] bool cancelled() const noexcept override { return abandoned_.load(std::memory_order_acquire); }

private:
    struct Slot {
        bool resolved = false;
        Entry entry;
    };
    struct Chunk {
        std::uint64_t first;
        std::uint64_t next;  // slots before this were released
        std::vector<Slot> slots;
    };

    void resolve(std::uint64_t first, std::vector<Entry>& entries) {
        std::size_t released = 0;
        {
            std::lock_guard lock(mutex_);
            if (!ordered_) {
                for (Entry& entry : entries) released_.push_back(std::move(entry));
                released = entries.size();
            } else {
                // Items of one message always fall in one chunk.
                auto chunk = std::upper_bound(chunks_.begin(), chunks_.end(), first,
                                              [](std::uint64_t index, const Chunk& c) { return index < c.first; });
                if (chunk == chunks_.begin()) return;
                --chunk;
                for (std::size_t i = 0; i < entries.size(); ++i) {
                    Slot& slot = chunk->slots[first - chunk->first + i];
                    slot.resolved = true;
                    slot.entry = std::move(entries[i]);
                }
                while (!chunks_.empty()) {
                    Chunk& front = chunks_.front();
                    while (front.next < front.slots.size() && front.slots[front.next].resolved) {
                        released_.push_back(std::move(front.slots[front.next].entry));
                        ++front.next;
                        ++released;
                    }
                    if (front.next < front.slots.size()) break;
                    chunks_.pop_front();
                }
            }
            outstanding_ -= entries.size();
            available_.fetch_add(released, std::memory_order_acq_rel);
        }
        progress.add(entries.size());
        if (released != 0) bell_.ring();
    }

    const bool ordered_;
    std::mutex mutex_;
    std::deque<Chunk> chunks_;    // ordered mode: chunks not fully released, in input order
    std::deque<Entry> released_;  // entries the reader may take, in the order it gets them
    std::uint64_t outstanding_ = 0;
    std::atomic<std::uint64_t> available_{0};   // released_.size()
    std::atomic<std::uint64_t> unconsumed_{0};  // submitted, not yet taken by the reader
    std::atomic<bool> abandoned_{false};
    Doorbell bell_;
};

}  // namespace detail

/// A lazy input range of the results of imap/imap_unordered. Iterate it from one thread. Destroying it early
/// drops the rest without blocking. It may outlive the pool: reading past what was submitted before the pool was
/// joined then throws PoolStateError.
template <class Transport, class R, class View>
class ImapRange {
    using Item = detail::decoded_t<std::ranges::range_value_t<View>>;
    using Job = detail::ImapJob<R>;

public:
    using value_type = typename Job::Value;

    /// Chunks read ahead of the reader at most: enough to keep every worker busy with one queued behind.
    static std::uint64_t window_chunks(std::size_t workers) noexcept { return 4 * workers + 8; }
    /// Largest automatic chunk (automatic chunks aim at about 2 ms of work each).
    static constexpr std::uint64_t kMaxAutoChunk = 16384;
    /// Items read and not yet consumed at most when MapOptions::buffersize is 0 and the chunks are automatic: 1024
    /// per worker, at least 4096. (With a chunksize of yours, a window of chunks.)
    static std::uint64_t default_buffersize(std::size_t workers) noexcept {
        return std::max<std::uint64_t>(4096, std::uint64_t{1024} * workers);
    }

    /// Throws std::invalid_argument for a buffersize below the chunksize (a chunk could never be read).
    ImapRange(std::shared_ptr<detail::PoolCore<Transport>> core, std::shared_ptr<Job> job, View input,
              std::size_t chunksize, std::size_t buffersize)
        : core_(std::move(core)), job_(std::move(job)), input_(std::make_unique<Input>(std::move(input))),
          chunksize_(chunksize), window_(window_chunks(core_->scheduler.size())),
          buffer_(read_ahead_limit(core_->scheduler.size(), chunksize, buffersize)),
          max_auto_chunk_(std::clamp<std::uint64_t>(buffer_ / (core_->scheduler.size() + 1), 1, kMaxAutoChunk)) {}

    /// Moves keep the reading position: the input lives on the heap, so its iterators stay valid. A moved-from
    /// range must not be iterated. (Movable, so an imap result can be the input of another imap or piped into a view.)
    ImapRange(ImapRange&&) noexcept = default;
    ImapRange& operator=(ImapRange&& other) noexcept {
        if (this != &other) {
            this->~ImapRange();  // abandons this range's job, as its destructor would
            std::construct_at(this, std::move(other));
        }
        return *this;
    }
    ImapRange(const ImapRange&) = delete;
    ImapRange& operator=(const ImapRange&) = delete;

    ~ImapRange() {
        if (job_) {
            job_->abandon();
            core_->scheduler.abandon(*job_);
            job_->progress.finish();  // the final report of a range left early (a no-op after the last result)
        }
    }

    class iterator {
    public:
        using value_type = ImapRange::value_type;
        using difference_type = std::ptrdiff_t;
        using iterator_concept = std::input_iterator_tag;

        iterator() = default;
        /// The current result; throws the item's exception if it failed (the iterator can still be incremented).
        value_type& operator*() const { return range_->current(); }
        value_type* operator->() const { return &range_->current(); }
        /// Moves to the next result, reading more input as needed. Once the results of every element read before
        /// a failure of the input were yielded, throws what reading the input threw, and the range ends.
        iterator& operator++() {
            range_->advance();
            return *this;
        }
        void operator++(int) { range_->advance(); }
        friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.at_end(); }

    private:
        friend class ImapRange;
        [[nodiscard]] bool at_end() const noexcept { return range_->done_; }
        explicit iterator(ImapRange* range) : range_(range) {}
        ImapRange* range_ = nullptr;
    };

    /// Starts reading input and waits for the first result. Call once. Throws what reading the input throws if
    /// its first element fails.
    iterator begin() {
        if (!job_) throw PoolStateError("procpool: this imap range was moved from");
        if (started_) throw PoolStateError("procpool: an imap range can be iterated only once");
        started_ = true;
        input_->position.emplace(std::ranges::begin(input_->view));
        advance();
        return iterator(this);
    }
    std::default_sentinel_t end() const noexcept { return {}; }

private:
    value_type& current() {
        if (current_->error) std::rethrow_exception(current_->error);
        return *current_->value;
    }

    void advance() {
        current_.reset();
        refill();
        for (;;) {
            if (std::optional<typename Job::Entry> entry = job_->try_take()) {
                current_ = std::move(entry);
                refill();
                return;
            }
            if (job_->unconsumed() == 0) {
                if (input_done_) {
                    done_ = true;
                    job_->progress.finish();
                    // Every element read before the input failed has been yielded: now its exception, in its place.
                    if (input_error_) std::rethrow_exception(std::exchange(input_error_, nullptr));
                    return;
                }
                refill();
                continue;
            }
            job_->wait_available(core_->scheduler);
        }
    }

    /// Reads input and submits chunks while fewer than `window_` chunks' worth of items, and at most `buffer_`
    /// items, are unconsumed. An exception from the input ends the reading; it is kept for advance() to throw in its
    /// place, after the results of what was read before it.
    void refill() {
        while (!input_done_) {
            const std::uint64_t chunk = chunk_size();
            if (job_->unconsumed() + chunk > std::min(window_ * chunk, buffer_)) return;
            // Chunks are pipelined, so one that streams through the ring costs no waiting: only chunks of 2 MiB
            // and more go to the bulk arena (100 KiB chunks of ints measured 6% faster through the ring).
            detail::ItemEncoder<Item> encoder(chunk, detail::SharedMemoryWorkers<Transport>,
                                              detail::Buffer::kMappedThreshold);
            try {
                auto& it = *input_->position;
                const auto end = std::ranges::end(input_->view);
                while (encoder.count() < chunk && it != end) {
                    encoder.add(*it);
                    ++it;
                }
                if (it == end) input_done_ = true;
            } catch (...) {
                input_done_ = true;
                input_error_ = std::current_exception();
            }
            const std::uint64_t count = encoder.count();
            if (count != 0) {
                const std::uint64_t first = next_index_;
                next_index_ += count;
                job_->expect(first, count);  // before extend(): results may arrive before it returns
                try {
                    core_->scheduler.extend(job_, detail::Segment{encoder.finish(), 0, count, first});
                } catch (...) {
                    job_->unexpect(count);
                    next_index_ = first;
                    input_done_ = true;  // the pool no longer takes input; what was read is lost with the error
                    throw;
                }
                ++chunks_formed_;
            }
        }
    }

    static std::uint64_t read_ahead_limit(std::size_t workers, std::size_t chunksize, std::size_t buffersize) {
        if (buffersize != 0) {
            if (chunksize > buffersize) {
                throw std::invalid_argument("procpool: MapOptions::buffersize (" + std::to_string(buffersize) +
                                            ") must be at least the chunksize (" + std::to_string(chunksize) + ")");
            }
            return buffersize;
        }
        if (chunksize != 0) return window_chunks(workers) * chunksize;
        return default_buffersize(workers);
    }

    /// Items in the next chunk: the caller's chunksize, or automatic: doubling until items were timed, then about
    /// 2 ms of work, small enough that a few chunks per worker fit in the read-ahead limit.
    std::uint64_t chunk_size() const noexcept {
        if (chunksize_ != 0) return chunksize_;
        const double item_ns = job_->item_ns.load(std::memory_order_relaxed);
        std::uint64_t items = 0;
        if (item_ns <= 0) {
            items = std::min<std::uint64_t>(std::uint64_t{1} << std::min<std::uint64_t>(chunks_formed_, 4), 16);
        } else {
            const auto target = static_cast<double>(std::chrono::nanoseconds(std::chrono::milliseconds(2)).count());
            items = static_cast<std::uint64_t>(std::max(1.0, target / item_ns));
        }
        return std::clamp<std::uint64_t>(items, 1, max_auto_chunk_);
    }

    std::shared_ptr<detail::PoolCore<Transport>> core_;
    std::shared_ptr<Job> job_;
    struct Input {
        View view;
        std::optional<std::ranges::iterator_t<View>> position;  // where reading goes on; set when reading starts
    };
    std::unique_ptr<Input> input_;
    std::size_t chunksize_;  // MapOptions::chunksize: 0 = automatic (the progress callback lives in the job)
    std::uint64_t window_;
    std::uint64_t buffer_;            // items read and not yet consumed at most (MapOptions::buffersize, or a default)
    std::uint64_t max_auto_chunk_;    // automatic chunks: at most this many items
    std::exception_ptr input_error_;  // what reading the input threw, until advance() throws it in its place
    std::optional<typename Job::Entry> current_;
    std::uint64_t next_index_ = 0;
    std::uint64_t chunks_formed_ = 0;
    bool started_ = false;
    bool input_done_ = false;
    bool done_ = false;
};

}  // namespace procpool
