// procpool internals: a single-producer single-consumer byte ring in shared memory.
//
// Messages travel as fragments. A fragment is an 8-byte header {payload size, flags, kind} followed by its payload,
// padded to 8 bytes; it never wraps around the end of the ring (a PAD fragment fills the tail end instead), so a
// message that fits in one fragment can be decoded in place. A message larger than the free space streams through
// as several fragments (FIRST ... LAST) that the consumer reassembles while the producer keeps writing.
//
// Crash safety: the only shared state is `tail` (written by the producer) and `head` (written by the consumer),
// each a single atomic store; a process dying at any instruction leaves the ring consistent for the survivor, who
// can reset() it once the dead side is gone.
#pragma once

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>

#include "procpool/detail/assert.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/detail/platform.hpp"

namespace procpool::detail {

struct FragmentHeader {
    std::uint32_t size;   // payload bytes, excluding this header and the padding after the payload
    std::uint16_t flags;  // FragmentFlag bits
    std::uint16_t kind;   // the message kind, repeated in every fragment of a message
};
static_assert(sizeof(FragmentHeader) == 8, "fragments are laid out on 8-byte boundaries");

enum FragmentFlag : std::uint16_t { kFirstFragment = 1, kLastFragment = 2, kPadFragment = 4 };

/// The shared part of a ring. Positions are byte counts since the ring was (re)set and only grow.
struct RingState {
    alignas(kCacheLine) std::atomic<std::uint64_t> tail{0};  // bytes published by the producer
    alignas(kCacheLine) std::atomic<std::uint64_t> head{0};  // bytes released by the consumer
    alignas(kCacheLine) Doorbell readable;                   // the consumer sleeps here while the ring is empty
    Doorbell writable;                                       // a blocking producer sleeps here while it is full
    std::atomic<std::uint32_t> producer_waiting{0};          // a non-blocking producer wants to hear of free space
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "ring positions must be lock-free atomics");
static_assert(std::is_standard_layout_v<RingState> && std::is_trivially_destructible_v<RingState>,
              "RingState lives in shared memory: no pointers, no destructor");
static_assert(offsetof(RingState, head) - offsetof(RingState, tail) >= kCacheLine,
              "head and tail must be a cache line apart to prevent false sharing");

/// One piece of a message to write (messages are written from several pieces without concatenating them first).
struct Piece {
    const void* data;
    std::size_t size;
};

/// The producer's side of a ring: process-local view plus a cached copy of the consumer's head.
class RingProducer {
public:
    RingProducer() = default;
    RingProducer(RingState* state, std::byte* data, std::uint64_t capacity) noexcept
        : state_(state), data_(data), capacity_(capacity), tail_(state->tail.load(std::memory_order_relaxed)),
          head_cache_(state->head.load(std::memory_order_acquire)) {
        assert(capacity >= 4096 && (capacity & (capacity - 1)) == 0);
    }

    [[nodiscard]] RingState& state() const noexcept { return *state_; }
    [[nodiscard]] std::uint64_t capacity() const noexcept { return capacity_; }
    /// Largest payload of one fragment; a message up to this size is never split when the ring is empty.
    [[nodiscard]] std::uint64_t max_fragment() const noexcept { return capacity_ / 4; }

    /// Writes as much of a message as there is room for and publishes it. `written` counts the message bytes
    /// already in the ring (0 for a new message) and is advanced. Returns true once the whole message is in.
    /// `first_position`, when given, receives the ring position of the message's first fragment.
    /// Never blocks, never rings a doorbell.
    bool write_some(std::uint16_t kind, std::span<const Piece> pieces, std::size_t total, std::size_t& written,
                    std::uint64_t* first_position = nullptr) noexcept {
        bool progressed = false;
        bool done = false;
        while (!done) {
            const std::uint64_t remaining = total - written;
            const std::uint64_t single = sizeof(FragmentHeader) + align8(remaining);
            const std::uint64_t to_end = capacity_ - (tail_ & (capacity_ - 1));
            std::uint64_t free = free_space(single);
            std::uint64_t chunk = 0;
            if (remaining <= max_fragment() && single <= std::min(free, to_end)) {
                chunk = remaining;  // the rest fits in one fragment here
            } else if (written == 0 && remaining <= max_fragment()) {
                // A small message that does not fit before the end: pad and start over, never split it.
                if (free < to_end + single && (free = free_space(to_end + single)) < to_end + single) break;
                write_pad(to_end);
                progressed = true;
                continue;
            } else {
                // Stream a large message in fragments of at least 64 bytes (or its remainder).
                const std::uint64_t min_fragment = sizeof(FragmentHeader) +
                                                   align8(std::min<std::uint64_t>(remaining, 64));
                std::uint64_t contiguous = std::min(free, to_end);
                if (contiguous < min_fragment) {
                    free = free_space(to_end + min_fragment);
                    contiguous = std::min(free, to_end);
                    if (contiguous < min_fragment) {
                        if (to_end >= min_fragment || free < to_end + min_fragment) break;  // wait for space
                        write_pad(to_end);  // too little before the end: continue at the start
                        progressed = true;
                        continue;
                    }
                }
                const std::uint64_t room = (contiguous - sizeof(FragmentHeader)) & ~std::uint64_t{7};
                chunk = std::min({remaining, room, max_fragment()});
            }
            const std::uint16_t flags = static_cast<std::uint16_t>((written == 0 ? kFirstFragment : 0) |
                                                                   (chunk == remaining ? kLastFragment : 0));
            if (written == 0 && first_position != nullptr) *first_position = tail_;
            write_fragment(kind, flags, pieces, written, chunk);
            written += chunk;
            progressed = true;
            done = written == total;
        }
        PROCPOOL_ASSERT(tail_ - head_cache_ <= capacity_, "a ring never holds more than its capacity");
        if (progressed) state_->tail.store(tail_, std::memory_order_release);
        return done;
    }

    /// Like write_some, but waits (spin, then sleep on the ring's `writable` bell) until the whole message is in,
    /// calling `on_progress(done)` after each publish so the consumer can be woken (`done`: the whole message is
    /// in), and `on_progress(false)` before it waits for space (the consumer must be awake to make it). Returns
    /// false if `alive()` turns false while waiting.
    template <class OnProgress, class Alive>
    bool write_all(std::uint16_t kind, std::span<const Piece> pieces, std::size_t total, OnProgress&& on_progress,
                   Alive&& alive, std::chrono::nanoseconds spin) {
        std::size_t written = 0;
        for (;;) {
            const std::uint64_t before = tail_;
            const bool done = write_some(kind, pieces, total, written);
            if (tail_ != before) on_progress(done);
            if (done) return true;
            if (!alive()) return false;
            if (tail_ == before) on_progress(false);
            const std::uint64_t seen_head = head_cache_;
            state_->writable.wait([&] { return state_->head.load(std::memory_order_acquire) != seen_head || !alive(); },
                                  MonotonicClock::now() + std::chrono::milliseconds(100), spin);
        }
    }

    /// Bytes the consumer has not released yet (refreshes the cached head).
    [[nodiscard]] std::uint64_t in_use() noexcept {
        head_cache_ = state_->head.load(std::memory_order_acquire);
        return tail_ - head_cache_;
    }
    [[nodiscard]] std::uint64_t position() const noexcept { return tail_; }

    /// Empties the ring. Only while the consumer is gone (or not yet started).
    void reset() noexcept {
        tail_ = head_cache_ = 0;
        state_->tail.store(0, std::memory_order_relaxed);
        state_->head.store(0, std::memory_order_relaxed);
        state_->producer_waiting.store(0, std::memory_order_relaxed);
        state_->readable.reset();
        state_->writable.reset();
    }

private:
    // Free bytes; refreshes the cached head only when the cache says fewer than `needed` are free.
    std::uint64_t free_space(std::uint64_t needed) noexcept {
        std::uint64_t free = capacity_ - (tail_ - head_cache_);
        if (free < needed) {
            head_cache_ = state_->head.load(std::memory_order_acquire);
            free = capacity_ - (tail_ - head_cache_);
        }
        return free;
    }

    void write_pad(std::uint64_t to_end) noexcept {
        const FragmentHeader pad{static_cast<std::uint32_t>(to_end - sizeof(FragmentHeader)), kPadFragment, 0};
        std::memcpy(data_ + (tail_ & (capacity_ - 1)), &pad, sizeof pad);
        tail_ += to_end;
    }

    void write_fragment(std::uint16_t kind, std::uint16_t flags, std::span<const Piece> pieces,
                        std::size_t message_offset, std::uint64_t n) noexcept {
        std::byte* at = data_ + (tail_ & (capacity_ - 1));
        const FragmentHeader header{static_cast<std::uint32_t>(n), flags, kind};
        std::memcpy(at, &header, sizeof header);
        std::byte* out = at + sizeof header;
        // Copy message bytes [message_offset, message_offset + n) gathered from the pieces.
        std::size_t skip = message_offset;
        std::uint64_t left = n;
        for (const Piece& piece : pieces) {
            if (left == 0) break;
            if (skip >= piece.size) {
                skip -= piece.size;
                continue;
            }
            const std::size_t take = std::min<std::uint64_t>(piece.size - skip, left);
            std::memcpy(out, static_cast<const std::byte*>(piece.data) + skip, take);
            out += take;
            left -= take;
            skip = 0;
        }
        tail_ += sizeof header + align8(n);
    }

    RingState* state_ = nullptr;
    std::byte* data_ = nullptr;
    std::uint64_t capacity_ = 0;
    std::uint64_t tail_ = 0;
    std::uint64_t head_cache_ = 0;
};

/// A fragment as seen by the consumer; `payload` points into the ring and stays valid until it is consumed.
struct Fragment {
    FragmentHeader header;
    std::byte* payload;
    std::uint64_t position;      // ring position of the fragment header
    std::uint64_t end_position;  // ring position just past it
    [[nodiscard]] bool first() const noexcept { return (header.flags & kFirstFragment) != 0; }
    [[nodiscard]] bool last() const noexcept { return (header.flags & kLastFragment) != 0; }
    [[nodiscard]] std::span<std::byte> bytes() const noexcept { return {payload, header.size}; }
};

/// The consumer's side of a ring: process-local view plus a cached copy of the producer's tail.
class RingConsumer {
public:
    RingConsumer() = default;
    RingConsumer(RingState* state, std::byte* data, std::uint64_t capacity) noexcept
        : state_(state), data_(data), capacity_(capacity), head_(state->head.load(std::memory_order_relaxed)),
          tail_cache_(state->tail.load(std::memory_order_acquire)) {}

    [[nodiscard]] RingState& state() const noexcept { return *state_; }

    /// True when a fragment (or padding) is waiting. Cheap: touches the shared tail only when the cache is stale.
    [[nodiscard]] bool readable() noexcept {
        if (head_ != tail_cache_) return true;
        tail_cache_ = state_->tail.load(std::memory_order_acquire);
        return head_ != tail_cache_;
    }

    /// True while the producer has published bytes this consumer has not released. Unlike readable() it reads
    /// only the shared positions, so another thread of the consumer's process may ask while the reading thread
    /// consumes (readable(), peek() and consume() update process-local state and belong to that one thread).
    /// Padding is published together with the fragment after it, so this is false once the ring was drained.
    [[nodiscard]] bool unreleased() const noexcept {
        return state_->tail.load(std::memory_order_acquire) != state_->head.load(std::memory_order_acquire);
    }

    /// Messages published after ring position `position` (the end of a fragment this consumer peeked), counted up to
    /// `limit`: how many more the producer has queued. Reads fragment headers only; consumes nothing.
    [[nodiscard]] std::size_t messages_after(std::uint64_t position, std::size_t limit) const noexcept {
        const std::uint64_t tail = state_->tail.load(std::memory_order_acquire);
        std::size_t messages = 0;
        while (position < tail && messages < limit) {  // positions only grow (a corrupt header cannot loop)
            FragmentHeader header;
            std::memcpy(&header, data_ + (position & (capacity_ - 1)), sizeof header);
            if ((header.flags & kFirstFragment) != 0) ++messages;
            position += sizeof header + align8(header.size);
        }
        return messages;
    }

    /// The next fragment, skipping padding, or nothing when the ring is empty. Does not consume it.
    std::optional<Fragment> peek() noexcept {
        for (;;) {
            if (!readable()) return std::nullopt;
            std::byte* at = data_ + (head_ & (capacity_ - 1));
            FragmentHeader header;
            std::memcpy(&header, at, sizeof header);
            const std::uint64_t end = head_ + sizeof header + align8(header.size);
            if ((header.flags & kPadFragment) != 0) {
                head_ = end;  // released to the producer with the next consume()
                continue;
            }
            return Fragment{header, at + sizeof header, head_, end};
        }
    }

    /// Releases `fragment` (and any padding before it) to the producer.
    void consume(const Fragment& fragment) noexcept {
        head_ = fragment.end_position;
        state_->head.store(head_, std::memory_order_release);
    }

    [[nodiscard]] std::uint64_t position() const noexcept { return head_; }

    /// Re-reads the shared positions after the producer reset the ring (a new consumer process starting).
    void resync() noexcept {
        head_ = state_->head.load(std::memory_order_relaxed);
        tail_cache_ = state_->tail.load(std::memory_order_acquire);
    }

private:
    RingState* state_ = nullptr;
    std::byte* data_ = nullptr;
    std::uint64_t capacity_ = 0;
    std::uint64_t head_ = 0;
    std::uint64_t tail_cache_ = 0;
};

}  // namespace procpool::detail
