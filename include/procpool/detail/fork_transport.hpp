// procpool internals: the fork transport, the parent's side of the shared-memory rings and the fork server.
//
// It implements the contract of detail/transport.hpp with every capability there; the MPI transport implements it too.
// Members that touch a slot's rings are called with the scheduler's lock held (ring endpoints are single-threaded);
// drain() and the report calls are only used by the poller.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <poll.h>
#include <span>
#include <stdexcept>
#include <string>
#include <sys/socket.h>
#include <system_error>
#include <unistd.h>
#include <vector>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/bulk_arena.hpp"
#include "procpool/detail/exception_registry.hpp"
#include "procpool/detail/fork_server.hpp"
#include "procpool/detail/pool_memory.hpp"
#include "procpool/detail/process.hpp"
#include "procpool/detail/ring.hpp"
#include "procpool/detail/shared_heap.hpp"
#include "procpool/detail/shared_layout.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/detail/transport.hpp"
#include "procpool/detail/worker.hpp"
#include "procpool/options.hpp"

namespace procpool::detail {

/// Forked workers on shared-memory rings; every capability of detail/transport.hpp.
class ForkTransport {
public:
    struct Config {
        std::size_t workers = 1;
        std::function<void()> initializer;
        std::size_t ring_bytes = std::size_t{1} << 18;
        std::optional<std::size_t> memory_limit;  // address space a worker may add (RLIMIT_AS)
        std::chrono::nanoseconds worker_spin = std::chrono::microseconds(50);
        std::chrono::nanoseconds flush_interval = std::chrono::microseconds(200);
    };

    /// The configuration for a pool built with `options`.
    static Config make_config(const PoolOptions& options) {
        Config config;
        config.workers = options.processes.value_or(usable_cpu_count());
        config.initializer = options.initializer;
        config.ring_bytes = options.ring_bytes;
        config.memory_limit = options.memory_limit;
        return config;
    }

    /// Maps the shared memory (or takes what the last pool of this shape left) and forks the fork server, which
    /// forks the `workers` workers at once. Blocks until all are forked. Throws std::system_error if a fork fails
    /// (the workers already started are killed and reaped) or the memory cannot be mapped.
    explicit ForkTransport(Config config)
        : config_(std::move(config)), layout_(config_.workers, config_.ring_bytes),
          memory_(PoolMemory::acquire(layout_)) {
        base_ = memory_.base();
        control_ = layout_.control(base_);
        for (std::size_t i = 0; i < config_.workers; ++i) {
            SlotBlock* slot = layout_.slot(base_, i);
            task_rings_.emplace_back(&slot->task_ring, layout_.task_ring_data(base_, i), layout_.ring_bytes());
            result_rings_.emplace_back(&slot->result_ring, layout_.result_ring_data(base_, i), layout_.ring_bytes());
        }
        reassembly_.resize(config_.workers);
        // The shared heap must exist before the first fork, so that shared objects made at any time (before or
        // after this pool) are visible in every worker.
        SharedHeap::instance();
        ExceptionRegistry::instance().share();  // exception types registered later reach the workers through it
        BulkArena::instance();                  // likewise the bulk arena, where large inputs are passed by reference
        bind_child_functions_early();
        start_server();
        memory_.areas().keep_out_of_later_forks();  // the fork server has them, and forks every worker
        await_initial_workers();
    }

    ForkTransport(const ForkTransport&) = delete;
    ForkTransport& operator=(const ForkTransport&) = delete;

    /// Kills whatever is still running (normally nothing: the pool shut it down) and reaps the fork server.
    ~ForkTransport() {
        // In a process forked after the pool was built, the fork server belongs to the original process.
        if (server_pid_ > 0 && fork_generation() == generation_) {
            terminate();
            wait_server_exit();
        }
        close_quietly(socket_);
        close_quietly(server_pidfd_);
        // The fork server reaps every worker before it exits normally: then no other process maps the memory.
        if (server_exited_normally_) PoolMemory::keep(std::move(memory_));
    }

    [[nodiscard]] std::size_t size() const noexcept { return config_.workers; }
    [[nodiscard]] std::uint64_t max_fragment() const noexcept { return config_.ring_bytes / 4; }
    /// Whether the workers can read `bytes` where they are (in the bulk arena), so a task may refer to them
    /// instead of carrying them.
    [[nodiscard]] static bool readable_by_workers(std::span<const std::byte> bytes) noexcept {
        const BulkArena* arena = BulkArena::instance();
        return arena != nullptr && arena->contains(bytes.data(), bytes.size());
    }
    [[nodiscard]] static std::uint64_t entry_id(TaskEntry entry) noexcept {
        return reinterpret_cast<std::uint64_t>(entry);
    }

    // ---- parent -> worker (call with the scheduler's lock held) ---------------------------------------------------
    /// Writes as much of a task message as fits; true when all of it is in. Wakes the worker if it sleeps. When it
    /// returns false, the service thread's doorbell rings once the worker frees space.
    bool write(std::size_t slot, std::uint16_t kind, std::span<const Piece> pieces, std::size_t total,
               std::size_t& written, std::uint64_t* first_position = nullptr) noexcept {
        RingProducer& ring = task_rings_[slot];
        const std::uint64_t before = ring.position();
        bool done = ring.write_some(kind, pieces, total, written, first_position);
        if (!done) {
            // Ask to hear of free space, then look once more: the worker may have freed some in between.
            ring.state().producer_waiting.store(1, std::memory_order_seq_cst);
            done = ring.write_some(kind, pieces, total, written, first_position);
            if (done) ring.state().producer_waiting.store(0, std::memory_order_relaxed);
        }
        if (ring.position() != before) ring.state().readable.ring();
        return done;
    }

    /// Takes back a queued task message the worker has not claimed. True if the worker will now skip it. False for a
    /// message the worker has consumed already: its ring space may hold another message by now (only the parent
    /// writes there, under the scheduler's lock, so the check cannot go stale before the exchange).
    bool revoke(std::size_t slot, std::uint64_t position) noexcept {
        if (position < task_ring_head(slot)) return false;
        std::uint32_t expected = kUnclaimed;
        return claim_word(slot, position).compare_exchange_strong(expected, kRevoked, std::memory_order_acq_rel);
    }
    /// Whether the worker claimed the task message at `position`; valid while position >= task_ring_head(slot).
    bool claimed(std::size_t slot, std::uint64_t position) noexcept {
        return claim_word(slot, position).load(std::memory_order_acquire) == kTaken;
    }
    [[nodiscard]] std::uint64_t task_ring_head(std::size_t slot) const noexcept {
        return task_rings_[slot].state().head.load(std::memory_order_acquire);
    }
    [[nodiscard]] const WorkerStatus& status(std::size_t slot) const noexcept {
        return layout_.slot(base_, slot)->status;
    }

    // ---- worker -> parent (the poller only) ------------------------------------------------------------------
    /// Hands every complete message waiting in `slot`'s result ring to `handler(kind, bytes)`; the bytes are only valid
    /// during the call. Returns true if anything was read.
    template <class Handler>
    bool drain(std::size_t slot, Handler&& handler) {
        RingConsumer& ring = result_rings_[slot];
        bool any = false;
        while (std::optional<Fragment> fragment = ring.peek()) {
            any = true;
            if (fragment->first() && fragment->last()) {
                if (fragment->header.kind == kResultInAreaMessage) {
                    // Consumed before it is handed over: if the handler threw, a second drain must not read the
                    // area again (the worker may be writing its next message there by then).
                    std::array<std::byte, sizeof(ResultInArea)> message{};
                    const bool well_formed = fragment->header.size == message.size();
                    if (well_formed) std::memcpy(message.data(), fragment->payload, message.size());
                    ring.consume(*fragment);
                    hand_over(slot, kResultInAreaMessage,
                              well_formed ? std::span<const std::byte>(message) : std::span<const std::byte>(),
                              handler);
                    continue;
                }
                handler(fragment->header.kind, std::span<const std::byte>(fragment->bytes()));
                ring.consume(*fragment);
                continue;
            }
            Buffer& partial = reassembly_[slot];
            if (fragment->first()) partial.clear();
            partial.append(fragment->payload, fragment->header.size);
            const bool last = fragment->last();
            const std::uint16_t kind = fragment->header.kind;
            ring.consume(*fragment);
            ring.state().writable.ring();  // a worker streaming a large result may wait for this space
            if (last) {
                hand_over(slot, kind, partial.view(), handler);
                if (partial.capacity() > (std::size_t{64} << 20)) partial = Buffer();  // keep up to 64 MiB warm
                partial.clear();
            }
        }
        if (any) ring.state().writable.ring();
        return any;
    }

    /// Passes one message to `handler`; a message in the worker's result area (kResultInAreaMessage) as the
    /// result message it stands for, read where it lies, after which the area is the worker's again. A malformed
    /// one reaches the handler as an empty result message (a protocol error there).
    template <class Handler>
    void hand_over(std::size_t slot, std::uint16_t kind, std::span<const std::byte> bytes, Handler& handler) {
        if (kind != kResultInAreaMessage) {
            handler(kind, bytes);
            return;
        }
        ResultInArea message{};
        std::byte* area = memory_.areas().area(slot);
        if (bytes.size() != sizeof message || area == nullptr) {
            handler(kResultMessage, std::span<const std::byte>());
            return;
        }
        std::memcpy(&message, bytes.data(), sizeof message);
        if (message.offset >= ResultAreas::kBytesPerSlot) {  // names no half: a protocol error, the worker is killed
            handler(kResultMessage, std::span<const std::byte>());
            return;
        }
        // The half it is in, freed after it was read (the message must lie within it).
        const std::size_t half = message.offset / ResultAreas::kBytesPerHalf;
        struct Release {  // also if the handler throws
            const ResultAreas& areas;
            ResultAreaState& state;
            std::size_t slot;
            std::size_t half;
            ~Release() {
                areas.trim(slot, half, state);
                state.halves[half].busy.store(0, std::memory_order_release);
            }
        } release{memory_.areas(), layout_.slot(base_, slot)->result_area, slot, half};
        const std::uint64_t half_end = (half + 1) * ResultAreas::kBytesPerHalf;  // (offset < half_end)
        if (message.size > half_end - message.offset) {
            handler(kResultMessage, std::span<const std::byte>());
            return;
        }
        handler(kResultMessage, std::span<const std::byte>(area + message.offset, message.size));
    }

    /// True (once) after a worker freed task ring space that a partly written message waits for.
    bool take_space_freed() noexcept {
        return control_->task_ring_space_freed.load(std::memory_order_relaxed) != 0 &&
               control_->task_ring_space_freed.exchange(0, std::memory_order_acquire) != 0;
    }
    [[nodiscard]] bool space_freed_pending() const noexcept {
        return control_->task_ring_space_freed.load(std::memory_order_acquire) != 0;
    }

    [[nodiscard]] bool reports_pending() const noexcept {
        return control_->reports_posted.load(std::memory_order_acquire) !=
               reports_read_.load(std::memory_order_relaxed);
    }
    /// The next report from the fork server, if one is waiting. Never blocks.
    std::optional<WorkerEvent> poll_report() noexcept {
        WorkerEvent report{};
        if (receive_packet(socket_, &report, sizeof report, false) != static_cast<ssize_t>(sizeof report)) {
            return std::nullopt;
        }
        reports_read_.fetch_add(1, std::memory_order_relaxed);
        return report;
    }

    // ---- processes ---------------------------------------------------------------------------------------------
    /// Empties a dead worker's rings and status, then has the fork server fork a new worker into the slot.
    void respawn(std::size_t slot) noexcept {
        reset_slot(slot);
        spawn(slot);
    }
    void reset_slot(std::size_t slot) noexcept {
        SlotBlock* block = layout_.slot(base_, slot);
        task_rings_[slot].reset();
        block->result_ring.tail.store(0, std::memory_order_relaxed);
        block->result_ring.head.store(0, std::memory_order_relaxed);
        block->result_ring.readable.reset();
        block->result_ring.writable.reset();
        result_rings_[slot].resync();
        reassembly_[slot].clear();
        // Its last messages, if it sent any, were read before; it may have died writing a large one.
        memory_.areas().trim_all(slot, block->result_area);
        for (auto& half : block->result_area.halves) half.busy.store(0, std::memory_order_relaxed);
        block->status.task.store(0, std::memory_order_relaxed);
        block->status.item.store(0, std::memory_order_relaxed);
        block->status.item_start_ns.store(0, std::memory_order_relaxed);
        block->status.initialized.store(0, std::memory_order_relaxed);
    }
    void signal(std::size_t slot, int signal) noexcept {
        request({kSignalWorker, static_cast<std::uint32_t>(slot), signal, 0});
    }
    /// The fork server exits once its workers have (send them exit messages first).
    void shutdown() noexcept { request({kShutdownServer, 0, 0, 0}); }
    /// The fork server SIGKILLs and reaps every worker, reports them, and exits.
    void terminate() noexcept { request({kTerminateServer, 0, 0, 0}); }

    /// True once the fork server is gone or saying goodbye as it exits (it reaps every worker first). Never blocks,
    /// never reaps: wait_workers_gone() does, outside the scheduler's locks (an exit may take milliseconds when the
    /// program's address space is large).
    [[nodiscard]] bool workers_gone() const noexcept { return server_exiting() || !server_alive(); }
    /// Blocks until the fork server has exited and reaps it (every worker is gone then). One thread at a time.
    void wait_workers_gone() noexcept { wait_server_exit(); }

    // ---- waiting ------------------------------------------------------------------------------------------------
    /// True when a worker posted a message, the fork server a report, or a worker freed task ring space the parent
    /// waits for: something for the thread that polls the rings. Any thread of the parent may ask, also while
    /// another one polls (it reads shared positions only, not the polling thread's ring cursors).
    [[nodiscard]] bool pending() const noexcept {
        if (reports_pending() || space_freed_pending()) return true;
        for (const RingConsumer& ring : result_rings_) {
            if (ring.unreleased()) return true;
        }
        return false;
    }
    /// Sleeps until `ready()` (which should include pending()) or `deadline`, after spinning for `spin`.
    /// While workers may hold results back (set_result_bell_low_water), sleeps at most kDeferredResultBound; a sleep
    /// begun before they could ends when they can (set_result_bell_low_water wakes it), so the caller sleeps again
    /// with that bound.
    template <class Ready>
    void wait(Deadline deadline, std::chrono::nanoseconds spin, Ready&& ready) {
        const bool batched = control_->result_bell_low_water.load(std::memory_order_relaxed) != 0;
        if (batched) {
            const auto bound = MonotonicClock::now() + kDeferredResultBound;
            if (!deadline || bound < *deadline) deadline = bound;
        }
        control_->parent_bell.wait(
            [&] {
                return ready() || (!batched && control_->result_bell_low_water.load(std::memory_order_relaxed) != 0);
            },
            deadline, spin);
    }
    /// Workers ring for a result only when fewer than `low_water` tasks wait behind their running one (0: for every
    /// result; ControlBlock::result_bell_low_water). While it is nonzero, wait() looks every kDeferredResultBound;
    /// turning it on wakes a thread that sleeps without that bound. Any thread of the parent.
    void set_result_bell_low_water(std::uint32_t low_water) noexcept {
        // Read first: workers read this word for every result, so it is written only when it changes.
        if (control_->result_bell_low_water.load(std::memory_order_relaxed) == low_water) return;
        const std::uint32_t was = control_->result_bell_low_water.exchange(low_water, std::memory_order_seq_cst);
        if (was == 0 && low_water != 0) control_->parent_bell.wake_sleepers();  // toggled often: no idle syscall
    }
    /// The longest a result a worker did not ring for waits for the parent to look (a short task's result held
    /// behind a long one queued after it).
    static constexpr std::chrono::microseconds kDeferredResultBound{1000};
    /// The workers keep off `cpu` (-1: none) from their next task on (ControlBlock::keep_off_cpu). Any thread of the
    /// parent.
    void keep_workers_off(int cpu) noexcept { control_->keep_off_cpu.store(cpu, std::memory_order_relaxed); }
    /// Wakes the thread in wait() (from another thread of the parent).
    void wake() noexcept { control_->parent_bell.wake_all(); }
    /// While muted, workers and the fork server do not wake the thread in wait(): another thread polls.
    void mute_doorbell() noexcept { control_->parent_bell.mute(); }
    void unmute_doorbell() noexcept { control_->parent_bell.unmute(); }

private:
    /// True while the fork server runs. Never blocks, never reaps (wait_server_exit() does, and may run meanwhile
    /// in another thread: the pidfd stays open until the transport is destroyed).
    [[nodiscard]] bool server_alive() const noexcept {
        if (server_pid_.load() <= 0) return false;
        pollfd exited{server_pidfd_, POLLIN, 0};
        return ::poll(&exited, 1, 0) != 1;  // readable once it has exited (EINTR: look again next time)
    }
    /// True once the fork server is about to exit (it rang the parent's doorbell after saying so); it may still be
    /// tearing down its address space. wait_server_exit() reaps it.
    [[nodiscard]] bool server_exiting() const noexcept {
        return control_->server_exiting.load(std::memory_order_acquire) != 0;
    }
    /// Blocks until the fork server has exited and reaps it, through its pidfd (a pid the program reaped itself
    /// might name another child by now). One thread at a time.
    void wait_server_exit() noexcept {
        const pid_t pid = server_pid_.load();
        if (pid > 0) server_exited_normally_ = reap_through_pidfd(server_pidfd_, pid);
        server_pid_.store(-1);
    }

    std::atomic<std::uint32_t>& claim_word(std::size_t slot, std::uint64_t position) noexcept {
        std::byte* at = layout_.task_ring_data(base_, slot) + (position & (config_.ring_bytes - 1)) +
                        sizeof(FragmentHeader) + offsetof(TaskHeader, claim);
        return *reinterpret_cast<std::atomic<std::uint32_t>*>(at);
    }

    void request(const ServerRequest& r) noexcept {
        if (server_pid_.load() > 0) send_packet(socket_, &r, sizeof r);
    }
    void spawn(std::size_t slot) noexcept { request({kSpawnWorker, static_cast<std::uint32_t>(slot), 0, 0}); }

    void start_server() {
        int fds[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) {
            throw std::system_error(errno, std::generic_category(), "procpool: socketpair() failed");
        }
        flush_standard_streams();  // or buffered output would be written again by every process
        const pid_t parent = ::getpid();
        const pid_t pid = ::fork();
        if (pid < 0) {
            const int error = errno;
            ::close(fds[0]);
            ::close(fds[1]);
            throw std::system_error(error, std::generic_category(), "procpool: could not fork the fork server");
        }
        if (pid == 0) {
            ::close(fds[0]);
            ForkServer server(ForkServerConfig{fds[1], parent, config_.workers, control_, &become_worker, this});
            server.run();
        }
        ::close(fds[1]);
        socket_ = fds[0];
        server_pid_ = pid;
        server_pidfd_ = pidfd_open(pid);  // not reaped yet: it cannot be another process
        if (server_pidfd_ < 0) abort_start(errno, "procpool: pidfd_open() failed for the fork server");
    }

    void await_initial_workers() {
        std::size_t spawned = 0;
        while (spawned < config_.workers) {
            WorkerEvent report{};
            const ssize_t n = receive_packet(socket_, &report, sizeof report, true);
            if (n != static_cast<ssize_t>(sizeof report)) {
                abort_start(EIO, "procpool: the fork server died while starting the workers");
            }
            reports_read_.fetch_add(1, std::memory_order_relaxed);
            if (report.kind == kSpawnFailed) {
                abort_start(report.error, "procpool: could not fork worker " + std::to_string(report.slot + 1) +
                                              " of " + std::to_string(config_.workers));
            }
            if (report.kind == kWorkerSpawned) {
                initial_pids_.resize(config_.workers);
                initial_pids_[report.slot] = report.pid;
                ++spawned;
            }
            // A kWorkerExited here is a worker that died at once; the scheduler sees it as a crash later... but
            // its report was consumed here, so record it for the scheduler.
            if (report.kind == kWorkerExited) early_exits_.push_back(report);
        }
    }

    [[noreturn]] void abort_start(int error, const std::string& what) {
        terminate();
        wait_server_exit();
        close_quietly(socket_);  // (the destructor does not run)
        close_quietly(server_pidfd_);
        throw std::system_error(error, std::generic_category(), what);
    }

    static void become_worker(void* context, std::size_t slot, pid_t server_pid) noexcept {
        auto* self = static_cast<ForkTransport*>(context);
        WorkerEnvironment env;
        env.shared_base = self->base_;
        env.layout = self->layout_;
        env.slot = slot;
        env.initializer = &self->config_.initializer;
        env.server_pid = server_pid;
        env.spin = self->config_.worker_spin;
        env.flush_interval = self->config_.flush_interval;
        env.memory_limit = self->config_.memory_limit;
        env.result_area = self->memory_.areas().area(slot);
        Worker(env).run();
    }

public:
    /// Pids of the first workers, in slot order, and reports the constructor consumed that the scheduler must see.
    [[nodiscard]] const std::vector<pid_t>& initial_pids() const noexcept { return initial_pids_; }
    std::vector<WorkerEvent> take_early_exits() noexcept { return std::move(early_exits_); }

private:
    Config config_;
    SharedLayout layout_;
    PoolMemory memory_;  // mapped (or reused) before the fork server is forked
    void* base_ = nullptr;
    ControlBlock* control_ = nullptr;
    std::vector<RingProducer> task_rings_;
    std::vector<RingConsumer> result_rings_;
    std::vector<Buffer> reassembly_;
    int socket_ = -1;
    int server_pidfd_ = -1;                // the fork server's: tells whether it exited without reaping it
    bool server_exited_normally_ = false;  // set by wait_server_exit()
    std::atomic<pid_t> server_pid_{-1};    // -1 once reaped (by wait_server_exit()); read by any thread
    unsigned generation_ = fork_generation();
    // Written by the thread that holds the scheduler's poller role, read by the service thread's wait (pending()).
    std::atomic<std::uint64_t> reports_read_{0};
    std::vector<pid_t> initial_pids_;
    std::vector<WorkerEvent> early_exits_;
};

static_assert(Transport<ForkTransport> && StreamingWrites<ForkTransport> && RevocableQueue<ForkTransport> &&
                  ReplaceableWorkers<ForkTransport> && SharedMemoryWorkers<ForkTransport> &&
                  MutableDoorbell<ForkTransport> && BatchedResultBells<ForkTransport>,
              "ForkTransport has every capability of detail/transport.hpp");

}  // namespace procpool::detail
