// procpool internals: the loop a worker process runs (fork transport).
//
// A worker reads task messages from its task ring, claims each (a compare-exchange on the message's claim word,
// racing the parent, who may revoke a queued task to give it to an idle worker), runs it, streams the results into
// its result ring and waits for the next. Between tasks it spins briefly, then sleeps on the task ring's doorbell.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <sched.h>
#include <span>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>
#include <utility>

#include "procpool/detail/assert.hpp"
#include "procpool/detail/buffer.hpp"
#include "procpool/detail/exceptions.hpp"
#include "procpool/detail/process.hpp"
#include "procpool/detail/result_area.hpp"
#include "procpool/detail/ring.hpp"
#include "procpool/detail/shared_layout.hpp"
#include "procpool/detail/stream_copy.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/detail/worker_setup.hpp"

namespace procpool::detail {

/// Exit code of a worker whose initializer threw (it also sends the exception to the parent first).
inline constexpr int kInitializerFailedExit = 3;

/// What a worker needs to know, all of it already in its (forked) memory.
struct WorkerEnvironment {
    void* shared_base = nullptr;
    SharedLayout layout;
    std::size_t slot = 0;
    const std::function<void()>* initializer = nullptr;
    pid_t server_pid = 0;
    std::chrono::nanoseconds spin{};            // how long to poll an empty task ring before sleeping
    std::chrono::nanoseconds flush_interval{};  // how often a long task sends the results it has so far
    std::optional<std::size_t> memory_limit;    // address space the worker may add to what it inherited
    std::byte* result_area = nullptr;           // this slot's result area (ResultAreas::kBytesPerSlot), if any
};

class Worker final : private ResultSink {
public:
    explicit Worker(const WorkerEnvironment& env)
        : env_(env), control_(env.layout.control(env.shared_base)), slot_(env.layout.slot(env.shared_base, env.slot)),
          task_ring_(&slot_->task_ring, env.layout.task_ring_data(env.shared_base, env.slot), env.layout.ring_bytes()),
          result_ring_(&slot_->result_ring, env.layout.result_ring_data(env.shared_base, env.slot),
                       env.layout.ring_bytes()) {}

    /// Runs the initializer, then serves tasks until told to exit. Never returns.
    [[noreturn]] void run() noexcept {
        apply_memory_limit(env_.memory_limit);
        CPU_ZERO(&inherited_cpus_);
        const bool known = ::sched_getaffinity(0, sizeof inherited_cpus_, &inherited_cpus_) == 0;
        run_initializer();
        cpu_set_t now;
        CPU_ZERO(&now);
        // The placement is ours to follow only if the initializer left the affinity alone.
        follows_placement_ = known && ::sched_getaffinity(0, sizeof now, &now) == 0 &&
                             CPU_EQUAL(&now, &inherited_cpus_);
        for (;;) {
            const Fragment fragment = next_fragment();
            switch (fragment.header.kind) {
                case kExitMessage: task_ring_.consume(fragment); exit_process(0);
                case kTaskMessage:
                    follow_placement();
                    handle_task(fragment);
                    break;
                default: std::abort();  // protocol violation: let the parent see a crash rather than guess
            }
        }
    }

    /// Ends the worker process: flushes buffered output (a task's printf must not be lost), skips atexit handlers
    /// and static destructors that belong to the parent's program.
    [[noreturn]] static void exit_process(int code) noexcept {
        flush_standard_streams();
        exit_now(code);
    }

private:
    void run_initializer() noexcept {
        if (env_.initializer != nullptr) {
            Buffer error;
            if (!detail::run_initializer(*env_.initializer, error)) {
                const Piece piece{error.data(), error.size()};
                send(kInitFailedMessage, {&piece, 1}, error.size());
                exit_process(kInitializerFailedExit);
            }
        }
        slot_->status.initialized.store(1, std::memory_order_release);
    }

    /// Keeps off the CPU the parent names (ControlBlock::keep_off_cpu; WorkerPlacement) when that changed: read after
    /// the task itself, so a change written before a task was sent holds for it. Stops following for good when its
    /// affinity is no longer the one it set last (a task changed it).
    void follow_placement() noexcept {
        if (!follows_placement_) return;
        const std::int32_t cpu = control_->keep_off_cpu.load(std::memory_order_relaxed);
        if (cpu == kept_off_) return;
        cpu_set_t now;
        CPU_ZERO(&now);
        const cpu_set_t set_last = inherited_without(kept_off_);
        if (::sched_getaffinity(0, sizeof now, &now) != 0 || !CPU_EQUAL(&now, &set_last)) {
            follows_placement_ = false;
            return;
        }
        const cpu_set_t wanted = inherited_without(cpu);
        if (::sched_setaffinity(0, sizeof wanted, &wanted) != 0) {
            follows_placement_ = false;
            return;
        }
        kept_off_ = cpu;
    }
    /// The CPUs it inherited, without `cpu` (all of them if -1, or if that would leave none).
    [[nodiscard]] cpu_set_t inherited_without(std::int32_t cpu) const noexcept {
        cpu_set_t mask = inherited_cpus_;
        if (cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &mask) && CPU_COUNT(&mask) > 1) CPU_CLR(cpu, &mask);
        return mask;
    }

    Fragment next_fragment() noexcept {
        std::optional<Fragment> fragment;
        if (bell_owed_) {
            // Results went out without a ring (send()): fine while tasks are queued, but not before sleeping.
            if ((fragment = task_ring_.peek())) return *fragment;
            ring_parent();
        }
        slot_->task_ring.readable.wait([&] { return (fragment = task_ring_.peek()).has_value(); }, std::nullopt,
                                       env_.spin);
        return *fragment;
    }

    /// Releases task ring space; tells the parent if it is waiting to write more.
    void release(const Fragment& fragment) noexcept {
        task_ring_.consume(fragment);
        std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the parent's flag-then-recheck
        if (slot_->task_ring.producer_waiting.load(std::memory_order_relaxed) != 0 &&
            slot_->task_ring.producer_waiting.exchange(0, std::memory_order_relaxed) != 0) {
            control_->task_ring_space_freed.store(1, std::memory_order_release);
            ring_parent();
        }
    }

    void handle_task(const Fragment& first) noexcept {
        TaskHeader header;
        std::memcpy(&header, first.payload, sizeof header);
        std::atomic_ref<std::uint32_t> claim(
            *reinterpret_cast<std::uint32_t*>(first.payload + offsetof(TaskHeader, claim)));
        std::uint32_t expected = kUnclaimed;
        if (!claim.compare_exchange_strong(expected, kTaken, std::memory_order_acq_rel)) {
            PROCPOOL_ASSERT(first.first() && first.last(), "the parent revokes only single-fragment tasks");
            release(first);  // revoked by the parent
            return;
        }
        // No item has started yet: clear the previous item's start time first, or the parent could time this
        // task out while its arguments are still arriving.
        slot_->status.item_start_ns.store(0, std::memory_order_relaxed);
        slot_->status.item.store(0, std::memory_order_relaxed);
        slot_->status.task.store(header.task_id, std::memory_order_release);

        std::span<const std::byte> body;
        const bool single = first.first() && first.last();
        running_end_ = single ? std::optional<std::uint64_t>(first.end_position) : std::nullopt;
        if (single) {
            body = first.bytes();
        } else {
            body = reassemble(first);
        }
        const std::size_t callable_at = sizeof(TaskHeader);
        const std::size_t items_at = callable_at + align8(header.callable_size);
        std::span<const std::byte> items = body.subspan(items_at);
        if ((header.flags & kItemsByReference) != 0) {
            ItemsReference reference;
            std::memcpy(&reference, items.data(), sizeof reference);
            items = {reinterpret_cast<const std::byte*>(reference.address), reference.size};
        }
        TaskRunner runner(header, body.subspan(callable_at, header.callable_size), items, *this,
                          ProgressWords{&slot_->status.item, &slot_->status.item_start_ns}, values_, errors_,
                          env_.flush_interval);
        reinterpret_cast<TaskEntry>(header.entry)(runner);

        slot_->status.task.store(0, std::memory_order_release);  // results are out: nothing is held any more
        running_end_.reset();
        if (single) release(first);
    }

    std::span<const std::byte> reassemble(const Fragment& first) noexcept {
        message_.clear();
        message_.append(first.payload, first.header.size);
        release(first);
        for (bool last = false; !last;) {
            const Fragment next = next_fragment();
            message_.append(next.payload, next.header.size);
            last = next.last();
            release(next);
        }
        return message_.view();
    }

    void send_result(std::span<const Piece> pieces, std::size_t total) override {
        const bool large = total > result_ring_.max_fragment();
        large_messages_ = large;
        // The half values_buffer() gave this message's values, if it did: ours until a message is sent in it.
        const std::size_t picked = std::exchange(picked_half_, kNoHalf);
        const bool values_in_half = picked != kNoHalf && !pieces.empty() && pieces.back().size != 0 &&
                                    area_values_.in_external_storage() && pieces.back().data == area_values_.data();
        if (values_in_half && large && send_around_values(pieces, total, picked)) return;
        if (!(large && send_in_area(pieces, total, picked))) send(kResultMessage, pieces, total);
        // Sent elsewhere (small, its errors too large to go in front, or values that outgrew the half): what was
        // written there past the warm part goes back now, or it would stay until a message in that half is read.
        if (picked != kNoHalf) {
            ResultAreas::give_back(half_start(picked), slot_->result_area.halves[picked], ResultAreas::kWarmBytes);
        }
    }

    /// The values of the next message go straight into a free half of the result area when the last message was
    /// too large for the ring (the next is likely to be as well); otherwise into the runner's own buffer (a small
    /// message is copied into the ring either way).
    Buffer& values_buffer(Buffer& own) noexcept override {
        if (!large_messages_) return own;
        const std::size_t half = picked_half_ != kNoHalf ? picked_half_
                                                         : free_half();  // (asked again after a rollback)
        if (half == kNoHalf) return own;
        picked_half_ = half;
        raise_extent(half, ResultAreas::kWarmBytes);  // before a byte is written
        area_values_ = Buffer::over(
            {half_start(half) + ResultAreas::kValuesOffset, ResultAreas::kWarmBytes - ResultAreas::kValuesOffset,
             ResultAreas::kBytesPerHalf - ResultAreas::kValuesOffset, &widen_area_values, this});
        return area_values_;
    }

    /// area_values_ outgrew the pages a half keeps warm: the whole half may hold pages from now on.
    static std::size_t widen_area_values(void* worker, std::size_t) noexcept {
        auto* self = static_cast<Worker*>(worker);
        if (self->picked_half_ == kNoHalf) return 0;  // (not reached: values_buffer() picks a half before any write)
        self->raise_extent(self->picked_half_, ResultAreas::kBytesPerHalf);
        return ResultAreas::kBytesPerHalf - ResultAreas::kValuesOffset;
    }

    /// A half of the result area the parent is not reading, other than `avoid`, or kNoHalf. The first one if both
    /// are free: the second is written only while the parent reads the first (and only then keeps pages).
    std::size_t free_half(std::size_t avoid = kNoHalf) noexcept {
        if (env_.result_area == nullptr) return kNoHalf;
        for (std::size_t half = 0; half < ResultAreas::kHalves; ++half) {
            // acquire: the parent's reads of the message that was there are done
            if (half != avoid && slot_->result_area.halves[half].busy.load(std::memory_order_acquire) == 0) {
                return half;
            }
        }
        return kNoHalf;
    }
    [[nodiscard]] std::byte* half_start(std::size_t half) const noexcept {
        return env_.result_area + half * ResultAreas::kBytesPerHalf;
    }

    /// Records that `half` may hold pages up to `end` of it (ResultAreas::trim() gives back what lies past the
    /// warm part). Only while the half is the worker's (not busy).
    void raise_extent(std::size_t half, std::uint64_t end) noexcept {
        std::atomic<std::uint64_t>& extent = slot_->result_area.halves[half].extent;
        if (extent.load(std::memory_order_relaxed) < end) extent.store(end, std::memory_order_relaxed);
    }

    /// Sends a message whose values were encoded into `half` of the result area (values_buffer()): writes the
    /// pieces before them just in front, so the message lies in the half whole. False if they do not fit there.
    bool send_around_values(std::span<const Piece> pieces, std::size_t total, std::size_t half) noexcept {
        const std::size_t front = total - pieces.back().size;
        if (front > ResultAreas::kValuesOffset) return false;
        const std::size_t offset = ResultAreas::kValuesOffset - front;
        copy_pieces(half_start(half) + offset, pieces.first(pieces.size() - 1));
        publish_in_area(total, half, offset);
        return true;
    }

    /// Puts a result message that would stream through the ring in fragments into a free half of the slot's result
    /// area other than `avoid` (where its values may lie) instead; the ring carries a ResultInArea. False if it did
    /// not (no half free, or too large).
    bool send_in_area(std::span<const Piece> pieces, std::size_t total, std::size_t avoid) noexcept {
        if (total > ResultAreas::kBytesPerHalf) return false;
        const std::size_t half = free_half(avoid);
        if (half == kNoHalf) return false;
        raise_extent(half, total);
        copy_pieces(half_start(half), pieces);
        publish_in_area(total, half, 0);
        return true;
    }

    /// Writes the pieces back to back from `at`.
    static void copy_pieces(std::byte* at, std::span<const Piece> pieces) noexcept {
        for (const Piece& piece : pieces) {
            stream_copy(at, piece.data, piece.size);
            at += piece.size;
        }
    }

    /// Hands the parent the message of `total` bytes at `offset` in `half` of the result area.
    void publish_in_area(std::size_t total, std::size_t half, std::size_t offset) noexcept {
        slot_->result_area.halves[half].busy.store(1, std::memory_order_relaxed);  // published with the message
        const ResultInArea message{total, half * ResultAreas::kBytesPerHalf + offset};
        const Piece piece{&message, sizeof message};
        send(kResultInAreaMessage, {&piece, 1}, sizeof message);
    }

    void send(std::uint16_t kind, std::span<const Piece> pieces, std::size_t total) noexcept {
        // Not when the result ring is half full: the parent must drain it before the worker blocks on it.
        const bool may_defer = kind == kResultMessage && enough_queued() &&
                               2 * (result_ring_.in_use() + total) < result_ring_.capacity();
        const bool sent = result_ring_.write_all(
            kind, pieces, total,
            [&](bool done) {
                // Held back only if the parent still allows it once the result is published: it may have turned
                // that off meanwhile (and then sleeps without bound); the fences make one side see the other.
                std::atomic_thread_fence(std::memory_order_seq_cst);
                if (done && may_defer && control_->result_bell_low_water.load(std::memory_order_relaxed) != 0) {
                    bell_owed_ = true;
                } else {
                    ring_parent();
                }
            },
            [this] { return ::getppid() == env_.server_pid; }, env_.spin);
        if (!sent) exit_process(1);  // the fork server (and so the pool) is gone
    }

    /// Whether at least the parent's low-water mark of tasks wait behind the running one (a single-fragment task):
    /// the parent then need not wake for this result; it will be rung when this queue runs low, and looks by itself
    /// every ForkTransport::kDeferredResultBound meanwhile (ControlBlock::result_bell_low_water). Tasks the parent
    /// revoked count too; next_fragment() rings before the worker would sleep, so an owed ring is never lost.
    [[nodiscard]] bool enough_queued() const noexcept {
        const std::uint32_t low_water = control_->result_bell_low_water.load(std::memory_order_relaxed);
        return low_water != 0 && running_end_ && task_ring_.messages_after(*running_end_, low_water) >= low_water;
    }

    void ring_parent() noexcept {
        bell_owed_ = false;
        control_->parent_bell.ring();
    }

    WorkerEnvironment env_;
    ControlBlock* control_;
    SlotBlock* slot_;
    RingConsumer task_ring_;
    RingProducer result_ring_;
    Buffer message_;  // reassembly of tasks that arrived in several fragments
    Buffer values_;   // results of the items run since the last send
    Buffer errors_;
    Buffer area_values_;  // the same, encoded into a half of the result area (values_buffer())
    static constexpr std::size_t kNoHalf = ResultAreas::kHalves;
    std::size_t picked_half_ = kNoHalf;         // the half area_values_ is over until its message is sent
    std::optional<std::uint64_t> running_end_;  // task ring position past the running task, if it is one fragment
    cpu_set_t inherited_cpus_{};                // its affinity as forked, before the initializer
    bool follows_placement_ = false;            // the initializer left it: it follows ControlBlock::keep_off_cpu
    std::int32_t kept_off_ = -1;                // the CPU it keeps off now
    bool bell_owed_ = false;                    // a result went out without ringing the parent's bell
    bool large_messages_ = false;               // the last result message was larger than a ring fragment
};

}  // namespace procpool::detail
