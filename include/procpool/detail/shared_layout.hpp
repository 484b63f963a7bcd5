// procpool internals: what the fork transport keeps in shared memory, and where.
//
//   [ControlBlock][SlotBlock x slots][task ring data x slots][result ring data x slots]
//
// Everything lives in one anonymous shared mapping made before the fork server is forked, so the parent, the fork
// server and every worker (replacements included) see it at the same address. Nothing in it is a pointer or needs
// a destructor, and no word in it is a lock: a process may die at any instruction without wedging another.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>

#include "procpool/detail/futex.hpp"
#include "procpool/detail/platform.hpp"
#include "procpool/detail/result_area.hpp"
#include "procpool/detail/ring.hpp"

namespace procpool::detail {

/// Written by a worker while it runs a task, read by the parent after the worker died or when a deadline passed.
struct alignas(kCacheLine) WorkerStatus {
    std::atomic<std::uint64_t> task{0};          // id of the task being run, 0 between tasks
    std::atomic<std::uint64_t> item{0};          // index (within that task) of the item being run
    std::atomic<std::int64_t> item_start_ns{0};  // CLOCK_MONOTONIC start of that item (timed tasks only)
    std::atomic<std::uint32_t> initialized{0};   // 1 once the initializer returned
};

struct ControlBlock {
    alignas(kCacheLine) Doorbell parent_bell;                          // the parent's service thread sleeps here
    alignas(kCacheLine) std::atomic<std::uint64_t> reports_posted{0};  // by the fork server, one per report
    alignas(kCacheLine) std::atomic<std::uint32_t> task_ring_space_freed{
        0};                                        // a worker freed space the parent waits for
    std::atomic<std::uint32_t> server_exiting{0};  // set by the fork server just before it exits
    // Set by the parent: a worker rings parent_bell for a result only when fewer than this many tasks wait behind
    // the one it runs (else the parent hears when that queue runs low, or looks by itself within
    // ForkTransport::kDeferredResultBound); 0: for every result. Batches the parent's wake-ups when tasks are short
    // and queues deep (issue 19).
    alignas(kCacheLine) std::atomic<std::uint32_t> result_bell_low_water{0};
    // Set by the parent (WorkerPlacement): the CPU the workers keep off, -1 for none. Each worker reads it when it
    // takes a task and changes its own affinity when it changed (Worker::follow_placement).
    alignas(kCacheLine) std::atomic<std::int32_t> keep_off_cpu{-1};
};

struct SlotBlock {
    WorkerStatus status;
    RingState task_ring;          // parent -> worker: tasks
    RingState result_ring;        // worker -> parent: results
    ResultAreaState result_area;  // worker -> parent: a result too large for one fragment of the result ring
};

static_assert(std::is_standard_layout_v<ControlBlock> && std::is_trivially_destructible_v<ControlBlock> &&
                  std::is_standard_layout_v<SlotBlock> && std::is_trivially_destructible_v<SlotBlock>,
              "shared-memory blocks must hold no pointers and need no destructor");

/// Computes the addresses of the shared blocks inside one mapping.
class SharedLayout {
public:
    SharedLayout() = default;
    SharedLayout(std::size_t slots, std::size_t ring_bytes) noexcept : slots_(slots), ring_bytes_(ring_bytes) {
        slots_offset_ = round_up(sizeof(ControlBlock), kCacheLine);
        data_offset_ = round_up(slots_offset_ + slots * sizeof(SlotBlock), kPage);
    }

    [[nodiscard]] std::size_t bytes() const noexcept { return data_offset_ + 2 * slots_ * ring_bytes_; }
    [[nodiscard]] std::size_t slots() const noexcept { return slots_; }
    [[nodiscard]] std::size_t ring_bytes() const noexcept { return ring_bytes_; }

    /// Constructs the blocks at `base`: in fresh memory, or anew in memory a finished pool left (PoolMemory).
    void construct(void* base) const noexcept {
        new (base) ControlBlock();
        for (std::size_t i = 0; i < slots_; ++i)
            new (static_cast<std::byte*>(base) + slots_offset_ + i * sizeof(SlotBlock)) SlotBlock();
    }

    [[nodiscard]] ControlBlock* control(void* base) const noexcept {
        return std::launder(static_cast<ControlBlock*>(base));
    }
    [[nodiscard]] SlotBlock* slot(void* base, std::size_t i) const noexcept {
        return std::launder(
            reinterpret_cast<SlotBlock*>(static_cast<std::byte*>(base) + slots_offset_ + i * sizeof(SlotBlock)));
    }
    [[nodiscard]] std::byte* task_ring_data(void* base, std::size_t i) const noexcept {
        return static_cast<std::byte*>(base) + data_offset_ + i * ring_bytes_;
    }
    [[nodiscard]] std::byte* result_ring_data(void* base, std::size_t i) const noexcept {
        return static_cast<std::byte*>(base) + data_offset_ + (slots_ + i) * ring_bytes_;
    }

private:
    std::size_t slots_ = 0;
    std::size_t ring_bytes_ = 0;
    std::size_t slots_offset_ = 0;
    std::size_t data_offset_ = 0;
};

}  // namespace procpool::detail
