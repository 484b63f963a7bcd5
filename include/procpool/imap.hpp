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

#include "procpool/detail/chunk_policy.hpp"
#include "procpool/detail/config.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/detail/jobs.hpp"
#include "procpool/detail/pool_core.hpp"
#include "procpool/options.hpp"

namespace procpool {

namespace detail {

// What ImapRange's limits are (see ImapRange), the same for every range: not instantiated per range type.
inline std::uint64_t imap_window_chunks(std::size_t workers) noexcept { return 4 * workers + 8; }
/// Items in flight that the window allows at least, however small the chunks: with chunks of one item, 16 in flight
/// for 2 workers kept them waiting on the reader (a futex wake-up per few items); 136 let the reader submit them in
/// batches (imap with chunksize 1: about 1.1 -> 2.5 M items/s on the 2-vCPU benchmark VM).
inline std::uint64_t imap_window_floor_items(std::size_t workers) noexcept { return 64 * workers + 8; }
inline std::uint64_t imap_default_buffersize(std::size_t workers) noexcept {
    return std::max<std::uint64_t>(4096, std::uint64_t{1024} * workers);
}
/// Throws std::invalid_argument for a buffersize below the chunksize.
PROCPOOL_DECL std::uint64_t imap_read_ahead_limit(std::size_t workers, std::size_t chunksize, std::size_t buffersize);

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

    /// Chunks read ahead of the reader at most: enough to keep every worker busy with one queued behind...
    static std::uint64_t window_chunks(std::size_t workers) noexcept { return detail::imap_window_chunks(workers); }
    /// ...or this many items, if more (small chunks).
    static std::uint64_t window_floor_items(std::size_t workers) noexcept {
        return detail::imap_window_floor_items(workers);
    }
    /// Items read and not yet consumed at most when MapOptions::buffersize is 0 and the chunks are automatic: 1024
    /// per worker, at least 4096. (With a chunksize of yours, a window of chunks.)
    static std::uint64_t default_buffersize(std::size_t workers) noexcept {
        return detail::imap_default_buffersize(workers);
    }

    /// Throws std::invalid_argument for a buffersize below the chunksize (a chunk could never be read).
    ImapRange(std::shared_ptr<detail::PoolCore<Transport>> core, std::shared_ptr<Job> job, View input,
              std::size_t chunksize, std::size_t buffersize)
        : core_(std::move(core)), job_(std::move(job)), input_(std::make_unique<Input>(std::move(input))),
          chunksize_(chunksize), window_(window_chunks(core_->scheduler.size())),
          window_floor_(window_floor_items(core_->scheduler.size())),
          buffer_(read_ahead_limit(core_->scheduler.size(), chunksize, buffersize)),
          max_auto_chunk_(std::clamp<std::uint64_t>(buffer_ / (core_->scheduler.size() + 1), 1,
                                                    detail::ChunkPolicy::kMaxImapChunk)) {}

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

    /// Read-ahead that the window's floor in items may add at most: the floor is for tiny items (a futex wake-up per
    /// few of them otherwise), not for large ones, which keep their window of chunks.
    static constexpr std::uint64_t kWindowFloorBytes = std::uint64_t{1} << 20;

    /// Items unconsumed at most with chunks of `chunk` items: `window_` chunks or the floor in items (window_floor_,
    /// fewer if the items read so far average more than kWindowFloorBytes / window_floor_ bytes), whichever is more,
    /// and never more than `buffer_`.
    [[nodiscard]] std::uint64_t read_ahead_items(std::uint64_t chunk) const noexcept {
        std::uint64_t floor = window_floor_;
        if (items_read_ != 0 && bytes_read_ != 0) {
            const double per_item = static_cast<double>(bytes_read_) / static_cast<double>(items_read_);
            floor = std::min(floor, static_cast<std::uint64_t>(static_cast<double>(kWindowFloorBytes) / per_item));
        }
        return std::min(std::max(window_ * chunk, floor), buffer_);
    }

    /// Reads input and submits chunks while fewer than read_ahead_items() are unconsumed. It starts only once half of
    /// that is left (or nothing), and submits what it read in one batch: one lock and one dispatch for many chunks
    /// (with chunks of one item, a dispatch per item took a quarter of the reader's time). With nothing in flight the
    /// first chunk goes at once, so that the workers start while the rest is read. An exception from the input ends
    /// the reading; it is kept for advance() to throw in its place, after the results of what was read before it.
    void refill() {
        if (input_done_) return;
        if (job_->unconsumed() > read_ahead_items(chunk_size()) / 2) return;
        bool submit_first_alone = job_->unconsumed() == 0;
        batch_.clear();
        batch_first_ = next_index_;
        while (!input_done_) {
            const std::uint64_t chunk = chunk_size();
            if (job_->unconsumed() + chunk > read_ahead_items(chunk)) break;
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
            if (count == 0) break;
            items_read_ += count;
            bytes_read_ += encoder.bytes();
            add_to_batch(encoder.finish(), count);
            if (submit_first_alone) {
                submit_batch();
                submit_first_alone = false;
            }
        }
        submit_batch();
    }
    /// Expects a chunk's results and adds it to the batch. On failure (std::bad_alloc) the batch is taken back.
    void add_to_batch(std::shared_ptr<detail::ItemBlock> block, std::uint64_t count) {
        const std::uint64_t first = next_index_;
        try {
            job_->expect(first, count);  // before extend(): results may arrive before it returns
        } catch (...) {
            take_back_batch();
            throw;
        }
        try {
            batch_.push_back(detail::Segment{std::move(block), 0, count, first});
        } catch (...) {
            job_->unexpect(count);
            take_back_batch();
            throw;
        }
        next_index_ += count;
        ++chunks_formed_;
    }
    /// Hands the batch to the scheduler (all of it or, if that throws, none: then the batch is taken back).
    void submit_batch() {
        if (batch_.empty()) return;
        try {
            core_->scheduler.extend(job_, batch_);
        } catch (...) {
            take_back_batch();
            throw;
        }
        batch_.clear();  // the scheduler moved the segments out
        batch_first_ = next_index_;
    }
    /// Takes back the chunks of a batch that could not be submitted: what was read is lost with the error, and the
    /// pool takes no more input.
    void take_back_batch() noexcept {
        for (std::size_t i = batch_.size(); i-- > 0;) job_->unexpect(batch_[i].count);  // latest first
        batch_.clear();
        next_index_ = batch_first_;
        input_done_ = true;
    }

    static std::uint64_t read_ahead_limit(std::size_t workers, std::size_t chunksize, std::size_t buffersize) {
        return detail::imap_read_ahead_limit(workers, chunksize, buffersize);
    }

    /// Items in the next chunk: the caller's chunksize, or automatic (detail/chunk_policy.hpp), small enough that
    /// workers + 1 chunks fit in the read-ahead bound.
    std::uint64_t chunk_size() const noexcept {
        if (chunksize_ != 0) return chunksize_;
        return detail::ChunkPolicy::imap_chunk(chunks_formed_, job_->item_ns.load(std::memory_order_relaxed),
                                               max_auto_chunk_, core_->scheduler.workers_per_slot());
    }

    std::shared_ptr<detail::PoolCore<Transport>> core_;
    std::shared_ptr<Job> job_;
    struct Input {
        View view;
        std::optional<std::ranges::iterator_t<View>> position;  // where reading goes on; set when reading starts
    };
    std::unique_ptr<Input> input_;
    std::size_t chunksize_;           // MapOptions::chunksize: 0 = automatic (the progress callback lives in the job)
    std::uint64_t window_;            // chunks unconsumed at most (window_chunks())...
    std::uint64_t window_floor_;      // ...or this many items, if more (window_floor_items())
    std::uint64_t buffer_;            // items read and not yet consumed at most (MapOptions::buffersize, or a default)
    std::uint64_t max_auto_chunk_;    // automatic chunks: at most this many items
    std::exception_ptr input_error_;  // what reading the input threw, until advance() throws it in its place
    std::optional<typename Job::Entry> current_;
    std::vector<detail::Segment> batch_;  // the chunks refill() submits at once (kept: allocated once)
    std::uint64_t batch_first_ = 0;       // the job index of batch_'s first item
    std::uint64_t items_read_ = 0;        // items read from the input so far...
    std::uint64_t bytes_read_ = 0;        // ...and their encoded bytes (read_ahead_items())
    std::uint64_t next_index_ = 0;
    std::uint64_t chunks_formed_ = 0;
    bool started_ = false;
    bool input_done_ = false;
    bool done_ = false;
};

}  // namespace procpool

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/imap.ipp"
#endif
