// procpool internals: result areas, where a fork-pool worker puts a result message too large for one ring fragment.
//
// Such a message used to stream through the worker's result ring in fragments that the parent copied together
// before decoding it: two copies in the parent, on the thread that drains every worker's results. Instead the
// worker writes the whole message into its slot's area (shared memory mapped before the fork server is forked, so
// at the same address everywhere) and sends a small ResultInArea message through the ring; the parent decodes the
// message where it lies and then marks the area free. One area per worker slot, in two halves that take one
// message each: the worker writes its next message into one while the parent reads the other. While the parent has
// not read either, a worker sends through the ring as before.
//
// Into a free half, a worker encodes the values of its next message straight away, kValuesOffset bytes in, and
// then writes the message's header and error records just before them: a large result is written once in the
// worker instead of encoded privately and copied over. The worker raises a half's `extent` before it writes past
// it.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <sys/mman.h>
#include <unistd.h>
#include <utility>

#include "procpool/detail/process.hpp"
#include "procpool/detail/ring.hpp"
#include "procpool/detail/shared_reservation.hpp"

namespace procpool::detail {

/// A slot's area in use, in the pool's shared mapping (SlotBlock).
struct ResultAreaState {
    struct alignas(kCacheLine) Half {
        std::atomic<std::uint32_t> busy{0};    // 1 from the worker's message until the parent has read it
        std::atomic<std::uint64_t> extent{0};  // bytes of the half that may hold pages (raised by the worker)
    };
    Half halves[2];
};

/// The ring message that stands for a message in the area (kind kResultInAreaMessage).
struct ResultInArea {
    std::uint64_t size;    // bytes of the message
    std::uint64_t offset;  // where in the area it starts
};

/// The areas of one pool: one range of address space per worker slot, reserved without committing memory.
class ResultAreas {
public:
    /// Address space of a slot's area: two halves, and messages up to a half's size go through them (larger ones
    /// stream through the ring).
    static constexpr std::size_t kBytesPerSlot = std::size_t{256} << 20;
    static constexpr std::size_t kHalves = 2;
    static constexpr std::size_t kBytesPerHalf = kBytesPerSlot / kHalves;
    /// Pages of a half kept after a larger message was read (so the next one finds them faulted in).
    static constexpr std::size_t kWarmBytes = std::size_t{64} << 20;
    /// Where a worker encodes values into the area: the room before them takes the message's header and errors.
    static constexpr std::size_t kValuesOffset = std::size_t{64} << 10;

    ResultAreas() = default;
    /// Reserves areas for `slots` workers, or none where address space is not free (then every result streams).
    explicit ResultAreas(std::size_t slots) noexcept
        : mapping_(reserve(slots)), base_(mapping_.data()), slots_(base_ != nullptr ? slots : 0) {}
    // (Unmapped with mapping_ in the process that reserved it only: a process forked later has no areas
    // (keep_out_of_later_forks), and may have mapped something else there.)
    ResultAreas(ResultAreas&& other) noexcept
        : mapping_(std::move(other.mapping_)), base_(std::exchange(other.base_, nullptr)),
          slots_(std::exchange(other.slots_, 0)) {}
    ResultAreas& operator=(ResultAreas&&) = delete;

    /// Keeps the areas out of processes this one forks from now on (other pools' fork servers, the program's own
    /// children): only this pool's fork server and its workers use them, and a child holding a mapping would keep
    /// its pages after the pool is gone.
    void keep_out_of_later_forks() const noexcept {
        if (base_ != nullptr) ::madvise(base_, slots_ * kBytesPerSlot, MADV_DONTFORK);
    }
    /// Undoes keep_out_of_later_forks(), for a new pool's fork server (areas kept for reuse, PoolMemory).
    void let_into_later_forks() const noexcept {
        if (base_ != nullptr) ::madvise(base_, slots_ * kBytesPerSlot, MADV_DOFORK);
    }

    /// `slot`'s area (kBytesPerSlot bytes), or nullptr when there are no areas.
    [[nodiscard]] std::byte* area(std::size_t slot) const noexcept {
        return base_ == nullptr ? nullptr : base_ + slot * kBytesPerSlot;
    }

    /// Gives back the pages of half `half` of `slot`'s area past `keep` bytes, if a worker wrote past them (its
    /// `extent`). Only while no worker writes the half: it is busy, or the slot's worker is dead.
    void trim(std::size_t slot, std::size_t half, ResultAreaState& state,
              std::size_t keep = kWarmBytes) const noexcept {
        if (base_ != nullptr) give_back(area(slot) + half * kBytesPerHalf, state.halves[half], keep);
    }
    /// trim() on a half given by its start: for the worker, on a half it wrote but did not send a message in.
    static void give_back(std::byte* half_start, ResultAreaState::Half& half, std::size_t keep) noexcept {
        const std::uint64_t extent = half.extent.load(std::memory_order_relaxed);
        if (extent <= keep) return;
        const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        const std::size_t end = std::min<std::uint64_t>(extent, kBytesPerHalf);
        ::madvise(half_start + keep, (end - keep + page - 1) / page * page, MADV_REMOVE);
        half.extent.store(keep, std::memory_order_relaxed);
    }
    /// trim() for both halves: only while the slot's worker is dead (or every worker is).
    void trim_all(std::size_t slot, ResultAreaState& state, std::size_t keep = kWarmBytes) const noexcept {
        for (std::size_t half = 0; half < kHalves; ++half) trim(slot, half, state, keep);
    }

private:
    static SharedMapping reserve(std::size_t slots) noexcept {
        if (slots == 0 || slots > SIZE_MAX / kBytesPerSlot || !address_space_is_free()) return {};
        return SharedMapping::reserve(slots * kBytesPerSlot);
    }

    SharedMapping mapping_;
    std::byte* base_ = nullptr;
    std::size_t slots_ = 0;
};

}  // namespace procpool::detail
