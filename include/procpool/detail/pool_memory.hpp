// procpool internals: a fork pool's shared memory (its rings and its result areas), kept for the next pool.
//
// Mapping it (one committed shared mapping for the control block and the rings; ~256 MiB of reserved address space per
// worker for the result areas, their madvise() calls, the checks whether reserving is free) and unmapping it again,
// with the rings' pages faulted in afresh each time, is ~7% of starting, using once and stopping a Pool(2) on a 2-vCPU
// VM. So a pool that ended cleanly hands its memory to a one-entry cache, and the next pool with the same number of
// workers and the same ring size takes it: its blocks constructed anew, its result areas emptied.
//
// Only memory no other process writes any more is kept: the fork server exited normally, which it does only after
// reaping every worker. While kept it is left out of forks, and a process forked meanwhile never reuses it (nor
// unmaps it: it does not have it, and may have mapped something else at that address). What stays allocated
// while kept: the rings' pages that were touched (pools with up to 4 MiB of rings are kept: 8 workers with the
// default rings) and the result areas' address space (no pages).
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <memory>
#include <sys/mman.h>
#include <system_error>
#include <unistd.h>
#include <utility>

#include "procpool/detail/process.hpp"
#include "procpool/detail/result_area.hpp"
#include "procpool/detail/shared_layout.hpp"
#include "procpool/detail/shared_reservation.hpp"

namespace procpool::detail {

class PoolMemory {
public:
    /// Pools with more ring memory than this are not kept (the pages they touched would stay allocated).
    static constexpr std::size_t kMaxKeptRingBytes = std::size_t{4} << 20;

    /// Memory laid out as `layout`, its blocks constructed: what the last pool of the same shape left, or a fresh
    /// mapping. Throws std::system_error when the rings cannot be mapped.
    static PoolMemory acquire(const SharedLayout& layout) {
        std::unique_ptr<PoolMemory> kept(kept_slot().exchange(nullptr, std::memory_order_acq_rel));
        if (kept && !kept->ours()) {
            // Kept by the process this one was forked from: not mapped here, so only forgotten (not unmapped).
            (void)kept.release();  // NOLINT(bugprone-unused-return-value)
        }
        if (kept && kept->layout_.slots() == layout.slots() && kept->layout_.ring_bytes() == layout.ring_bytes()) {
            ::madvise(kept->base_, kept->layout_.bytes(), MADV_DOFORK);
            kept->areas_.let_into_later_forks();
            layout.construct(kept->base_);
            return std::move(*kept);
        }
        return PoolMemory(layout);  // (one of another shape is unmapped)
    }

    /// Keeps `memory` for the next pool of its shape (replacing what was kept), or unmaps it. Call only once no
    /// other process maps it: the fork server exited normally.
    static void keep(PoolMemory&& memory) noexcept {
        if (memory.base_ == nullptr || !memory.ours() ||
            2 * memory.layout_.slots() * memory.layout_.ring_bytes() > kMaxKeptRingBytes) {
            return;
        }
        for (std::size_t slot = 0; slot < memory.layout_.slots(); ++slot) {
            memory.areas_.trim_all(slot, memory.layout_.slot(memory.base_, slot)->result_area, 0);
        }
        ::madvise(memory.base_, memory.layout_.bytes(), MADV_DONTFORK);
        memory.areas_.keep_out_of_later_forks();
        try {
            delete kept_slot().exchange(new PoolMemory(std::move(memory)), std::memory_order_acq_rel);
        } catch (const std::bad_alloc&) {  // then it is unmapped as usual
        }
    }

    // (The rings are unmapped with mapping_, in the process that mapped them only.)
    PoolMemory(PoolMemory&& other) noexcept
        : layout_(other.layout_), mapping_(std::move(other.mapping_)), base_(std::exchange(other.base_, nullptr)),
          areas_(std::move(other.areas_)) {}
    PoolMemory& operator=(PoolMemory&&) = delete;

    /// The control block, slot blocks and rings (layout_.bytes() bytes).
    [[nodiscard]] void* base() const noexcept { return base_; }
    [[nodiscard]] ResultAreas& areas() noexcept { return areas_; }
    [[nodiscard]] const ResultAreas& areas() const noexcept { return areas_; }

private:
    explicit PoolMemory(const SharedLayout& layout)
        : layout_(layout), mapping_(SharedMapping::commit(layout.bytes())), base_(mapping_.data()),
          areas_(layout.slots()) {
        layout.construct(base_);
    }

    /// Made in this process (not inherited through a fork: fork_generation() misses a raw clone or _Fork()).
    [[nodiscard]] bool ours() const noexcept { return mapping_.ours(); }

    static std::atomic<PoolMemory*>& kept_slot() noexcept {
        static std::atomic<PoolMemory*> slot{nullptr};  // never destroyed with something in it: exit unmaps it all
        return slot;
    }

    SharedLayout layout_;
    SharedMapping mapping_;  // committed shared memory (shared_reservation.hpp)
    void* base_ = nullptr;
    ResultAreas areas_;
};

}  // namespace procpool::detail
