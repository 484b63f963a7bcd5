// procpool internals: the scheduler, the parent's side of a pool, written against a Transport.
//
// Jobs wait in a FIFO. Workers are kept `depth` tasks deep (one running, the next ones already in the worker's
// task ring so it never waits for a round trip); a worker that runs dry while others still have unstarted tasks
// queued takes one of them over (the parent revokes it in the other task ring with a compare-exchange the worker
// races). Chunks of automatic size follow guided self-scheduling (shrinking towards the end of a map) capped by a
// time target derived from measured item times, so results stream and skewed loads balance.
//
// The service thread drains result rings, routes results to their jobs, handles the fork server's reports
// (crashes, replacements) and moves the life cycle along. Everything mutable here is guarded by `mutex_`, except
// what the service thread alone touches (noted).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "procpool/async_result.hpp"
#include "procpool/detail/events.hpp"
#include "procpool/detail/exceptions.hpp"
#include "procpool/detail/fifo.hpp"
#include "procpool/detail/jobs.hpp"
#include "procpool/detail/process.hpp"
#include "procpool/detail/spin.hpp"
#include "procpool/detail/spin_mutex.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/detail/transport.hpp"
#include "procpool/errors.hpp"

namespace procpool::detail {

/// `reason`, followed by ": " and the exception's message when `error` holds a std::exception.
inline std::string with_message(std::string reason, const std::exception_ptr& error) {
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        reason += ": " + std::string(e.what());
    } catch (...) {
    }
    return reason;
}

struct SchedulerSettings {
    std::optional<std::size_t> max_tasks_per_child;
    std::optional<std::chrono::milliseconds> task_timeout;
    bool has_initializer = false;
    std::chrono::nanoseconds service_spin = std::chrono::microseconds(50);
    std::chrono::nanoseconds chunk_target = std::chrono::milliseconds(10);   // automatic chunks take about this long
    std::chrono::nanoseconds queue_target = std::chrono::microseconds(200);  // work kept queued per worker
    std::size_t max_depth = 64;
    std::chrono::nanoseconds kill_grace = std::chrono::milliseconds(250);  // SIGTERM, then SIGKILL after this
    std::chrono::nanoseconds housekeeping_period = std::chrono::milliseconds(50);
};

template <class Transport>
class Scheduler final : public WaitHelper {
public:
    Scheduler(Transport& transport, SchedulerSettings settings)
        : transport_(transport), settings_(settings), workers_(transport.size()), generation_(fork_generation()) {
        const auto& pids = transport_.initial_pids();
        for (std::size_t i = 0; i < workers_.size(); ++i) {
            workers_[i].pid = pids[i];
            workers_[i].phase = Phase::running;
            workers_[i].budget = settings_.max_tasks_per_child.value_or(kUnlimited);
        }
        // Workers that died while the pool was being built are handled by the service thread like any other
        // death (it first reads what they sent, an initializer's error for instance).
        if constexpr (ReplaceableWorkers<Transport>) early_events_ = transport_.take_early_exits();
        service_ = std::make_unique<std::thread>([this] { service_loop(); });
    }

    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;

    ~Scheduler() {
        if (fork_generation() != generation_) {
            // In a process forked after the pool was built the service thread does not exist, and the workers
            // belong to the original process: touch nothing.
            (void)service_.release();  // NOLINT: deliberately leaked; destroying it would std::terminate
            return;
        }
        if (service_->joinable()) terminate();
    }

    [[nodiscard]] std::size_t size() const noexcept { return workers_.size(); }

    /// Pids of the live workers. While the pool runs, a worker being replaced (its death, timeout or recycling may
    /// already have been reported to a caller) is waited for, briefly: the caller sees size() pids, unless a
    /// replacement cannot be forked within kReplacementWait. From a callback it does not wait.
    std::vector<pid_t> worker_pids() const {
        std::unique_lock lock(mutex_);
        if (!in_callback_thread()) {
            idle_cv_.wait_for(lock, kReplacementWait, [&] {
                return (state_ != State::running && state_ != State::closed) || every_worker_started_locked();
            });
        }
        std::vector<pid_t> pids;
        for (const WorkerSlot& w : workers_) {
            if (w.pid > 0 && w.phase != Phase::dead) pids.push_back(w.pid);
        }
        return pids;
    }

    // ---- submission (any thread) ------------------------------------------------------------------------------
    /// Queues a job with its first items (none for an imap that reads its input later) and starts sending it.
    /// Throws PoolStateError after close()/terminate().
    void submit(const std::shared_ptr<JobBase>& job, Segment items) {
        check_owner();  // before the lock: in a forked child another thread may have held it at the fork
        std::lock_guard lock(mutex_);
        check_open_locked();
        add_segment_locked(*job, std::move(items));
        enqueue_locked(job);
        dispatch_locked();
    }

    /// Adds items to a job submitted earlier (imap reading more input). Allowed after close() until join() has
    /// begun; throws PoolStateError after that, after terminate(), and in a process forked after the pool was
    /// built (its dispatch would write tasks into the rings the original process's workers read).
    void extend(const std::shared_ptr<JobBase>& job, Segment segment) {
        check_owner();
        std::lock_guard lock(mutex_);
        if (state_ != State::running && state_ != State::closed) throw_state_error_locked();
        add_segment_locked(*job, std::move(segment));
        enqueue_locked(job);
        dispatch_locked();
    }

    /// Drops a job's items that were not sent yet (an imap range abandoned by its reader). Never blocks on workers.
    void abandon(JobBase& job) {
        std::lock_guard lock(mutex_);
        job.ready.clear();
        job.unsent_items = 0;
        idle_cv_.notify_all();
    }

    // ---- life cycle -------------------------------------------------------------------------------------------
    void close() {
        std::lock_guard lock(mutex_);
        check_owner();
        if (state_ == State::running) state_ = State::closed;
    }

    /// Waits until all queued work is done, then stops the workers and the fork server. A terminate() from
    /// another thread ends the wait. Not from a callback (the service thread runs the work being waited for).
    void join() {
        check_owner();
        if (in_callback_thread()) {
            throw PoolStateError("procpool: join() cannot be called from an AsyncResult callback");
        }
        {
            std::unique_lock lock(mutex_);
            if (state_ == State::running) {
                throw PoolStateError("procpool: join() called before close() or terminate()");
            }
            idle_cv_.wait(lock, [&] { return state_ != State::closed || !work_left_locked(); });
            if (state_ == State::closed) {
                state_ = State::joining;
                send_shutdown_locked();  // now, rather than after waking the service thread
            }
        }
        transport_.wake();
        stop_service();
    }

    /// Stops the workers now; every unfinished result fails with PoolStateError. Returns once all processes are
    /// reaped (from a callback: once they are told to stop).
    void terminate() {
        check_owner();
        {
            std::lock_guard lock(mutex_);
            fail_everything_locked(
                std::make_exception_ptr(PoolStateError("procpool: the pool was terminated before this task finished")),
                State::terminated);
        }
        deliver_failures();
        transport_.terminate();
        stop_service();
    }

    /// WaitHelper, and every public call: throws PoolStateError in a process forked after the pool was built.
    void check_owner() const override {
        if (fork_generation() != generation_) {
            throw PoolStateError("procpool: a pool cannot be used from a process forked after it was built");
        }
    }

    [[nodiscard]] bool closed() const {
        std::lock_guard lock(mutex_);
        return state_ != State::running;
    }

private:
    static constexpr std::size_t kUnlimited = ~std::size_t{0};
    /// How long worker_pids() waits for replacements at most (a fork takes well under a millisecond; a failed one is
    /// retried after 100 ms).
    static constexpr std::chrono::milliseconds kReplacementWait{1000};

    enum class State { running, closed, joining, terminated, broken };
    enum class Phase { starting, running, exiting, dead };

    struct Task {
        std::uint64_t id = 0;
        std::shared_ptr<JobBase> job;
        Segment segment;
        std::uint64_t delivered = 0;  // items of the segment whose results arrived (a prefix)
        TaskHeader header{};
        std::size_t written = 0;  // message bytes in the worker's task ring so far
        std::size_t total = 0;
        std::uint64_t position = 0;  // ring position of the message
        bool fragmented = false;
        [[nodiscard]] bool fully_written() const noexcept { return written == total; }
    };

    struct WorkerSlot {
        Phase phase = Phase::starting;
        pid_t pid = 0;
        Fifo<Task, 4> inflight;           // in task ring order; only the front can be running
        std::size_t budget = kUnlimited;  // items it may still be given (max_tasks_per_child)
        std::int64_t last_active_ns = 0;
        std::int64_t respawn_at_ns = 0;  // retry time after a failed fork
        int failed_starts = 0;           // consecutive workers that died before their initializer finished
        /// Set when the worker is being killed because an item ran past task_timeout: which item, and when
        /// SIGTERM escalates to SIGKILL. A worker being killed gets no more tasks.
        struct {
            bool active = false;
            std::uint64_t task = 0;
            std::uint64_t item = 0;
            std::int64_t start_ns = 0;
            std::int64_t sigkill_at_ns = 0;
        } timeout_kill;
        [[nodiscard]] bool usable() const noexcept {
            return (phase == Phase::running || phase == Phase::starting) && !timeout_kill.active;
        }
    };

    // ---- submission helpers (mutex_ held) ----------------------------------------------------------------------
    void check_open_locked() const {  // (submit() checked the owner before taking the lock)
        if (state_ != State::running) throw_state_error_locked();
    }
    [[noreturn]] void throw_state_error_locked() const {
        switch (state_) {
            case State::broken: throw PoolStateError("procpool: the pool is broken: " + broken_reason_);
            case State::terminated: throw PoolStateError("procpool: the pool was terminated");
            default: throw PoolStateError("procpool: the pool is closed; no more tasks can be submitted");
        }
    }

    void add_segment_locked(JobBase& job, Segment segment) {
        if (segment.count == 0) return;
        job.unsent_items += segment.count;
        job.encoded_items += segment.count;
        job.encoded_bytes += segment.block->items(segment.block_first, segment.count).size();
        job.ready.push_back(std::move(segment));
    }
    void enqueue_locked(const std::shared_ptr<JobBase>& job, bool front = false) {
        if (job->queued || job->ready.empty()) return;
        job->queued = true;
        if (front) jobs_.push_front(job);
        else jobs_.push_back(job);
    }

    /// True if some job still has items to send (stops at the first such job: O(1) unless many jobs failed).
    [[nodiscard]] bool unsent_work_locked() const noexcept {
        for (const auto& job : jobs_) {
            if (!job->ready.empty() && !job->cancelled()) return true;
        }
        return false;
    }
    [[nodiscard]] bool work_left_locked() const noexcept {
        if (unsent_work_locked()) return true;
        for (const WorkerSlot& w : workers_) {
            if (!w.inflight.empty()) return true;
        }
        return false;
    }

    // ---- dispatch (mutex_ held) -------------------------------------------------------------------------------
    void dispatch_locked() {
        if (state_ == State::terminated || state_ == State::broken) return;
        // 1. Finish messages that did not fit in an task ring at once.
        for (std::size_t slot = 0; slot < workers_.size(); ++slot) {
            WorkerSlot& w = workers_[slot];
            if (!w.inflight.empty() && !w.inflight.back().fully_written()) write_task_locked(slot, w.inflight.back());
        }
        // 2. Hand out new tasks, least loaded worker first, most recently active among equals (it is still awake).
        for (;;) {
            const std::optional<std::size_t> slot = pick_worker_locked();
            if (!slot) break;
            std::optional<Task> task = next_task_locked(workers_[*slot]);
            if (!task) break;
            WorkerSlot& w = workers_[*slot];
            w.budget -= task->segment.count;
            w.inflight.push_back(std::move(*task));
            write_task_locked(*slot, w.inflight.back());
        }
        // 3. A worker with nothing to do takes over a task queued behind another worker's running task.
        if constexpr (RevocableQueue<Transport>) rebalance_locked();
        // 4. Workers that used up their budget leave once their queue is empty; at shutdown all of them do.
        for (std::size_t slot = 0; slot < workers_.size(); ++slot) {
            WorkerSlot& w = workers_[slot];
            const bool leave = w.budget == 0 || state_ == State::joining;
            if (leave && w.inflight.empty() && w.usable()) {
                std::size_t written = 0;
                if (transport_.write(slot, kExitMessage, {}, 0, written)) w.phase = Phase::exiting;
            }
        }
    }

    [[nodiscard]] std::size_t depth_locked() const noexcept {
        // A task queued behind a long one can be taken back only where the transport allows it; elsewhere a
        // worker gets one long task at a time (it pulls the next when it is done).
        constexpr std::size_t kMinimum = RevocableQueue<Transport> ? 2 : 1;
        if (task_ns_ <= 0) return kMinimum;
        const double wanted = static_cast<double>(settings_.queue_target.count()) / task_ns_ + 1.0;
        return std::clamp<std::size_t>(static_cast<std::size_t>(wanted), kMinimum, settings_.max_depth);
    }

    std::optional<std::size_t> pick_worker_locked() const noexcept {
        const std::size_t depth = depth_locked();
        std::optional<std::size_t> best;
        for (std::size_t slot = 0; slot < workers_.size(); ++slot) {
            const WorkerSlot& w = workers_[slot];
            if (!w.usable() || w.budget == 0 || w.inflight.size() >= depth) continue;
            if (!w.inflight.empty() && !w.inflight.back().fully_written()) continue;
            if (!best) {
                best = slot;
                continue;
            }
            const WorkerSlot& b = workers_[*best];
            if (w.inflight.size() < b.inflight.size() ||
                (w.inflight.size() == b.inflight.size() && w.last_active_ns > b.last_active_ns)) {
                best = slot;
            }
        }
        return best;
    }

    std::optional<Task> next_task_locked(const WorkerSlot& w) {
        while (!jobs_.empty()) {
            std::shared_ptr<JobBase>& job = jobs_.front();
            if (job->cancelled()) {
                job->ready.clear();
                job->unsent_items = 0;
            }
            if (job->ready.empty()) {
                job->queued = false;
                jobs_.pop_front();
                continue;
            }
            Segment& front = job->ready.front();
            const std::uint64_t n = std::min<std::uint64_t>({chunk_size_locked(*job, front), front.count, w.budget});
            Task task;
            task.id = ++last_task_id_;
            task.job = job;
            if (n == front.count) {
                task.segment = std::move(front);
                job->ready.pop_front();
            } else {
                task.segment = front.take_front(n);
            }
            job->unsent_items -= n;
            ++job->tasks_sent;
            if (job->ready.empty()) {
                job->queued = false;
                jobs_.pop_front();
            } else if (jobs_.size() > 1) {
                // Round-robin between jobs: the next task goes to the next job.
                jobs_.push_back(std::move(jobs_.front()));
                jobs_.pop_front();
            }
            return task;
        }
        return std::nullopt;
    }

    /// Items per task for `job`'s next task.
    std::uint64_t chunk_size_locked(const JobBase& job, const Segment& front) const noexcept {
        if (job.chunksize_ != 0) return job.chunksize_;
        if (job.presized_segments_) return front.count;
        const std::uint64_t workers = workers_.size();
        // Guided self-scheduling: a share of what is left, so chunks shrink as the end nears.
        const std::uint64_t guided = (job.unsent_items + 2 * workers - 1) / (2 * workers);
        // Time target: chunks of about chunk_target once items were measured; doubling probes before.
        std::uint64_t timed;
        if (const double item_ns = job.item_ns.load(std::memory_order_relaxed); item_ns > 0) {
            timed = static_cast<std::uint64_t>(static_cast<double>(settings_.chunk_target.count()) / item_ns);
        } else {
            timed = std::uint64_t{1} << std::min<std::uint32_t>(job.tasks_sent, 16);
        }
        // Size target: a chunk should fit one ring fragment (decoded in place, revocable).
        const std::uint64_t per_item = job.encoded_items == 0
                                           ? 1
                                           : std::max<std::uint64_t>(1, job.encoded_bytes / job.encoded_items);
        const std::uint64_t sized = transport_.max_fragment() / 2 / per_item;
        return std::max<std::uint64_t>(1, std::min({guided, timed, sized}));
    }

    /// Items of at least this many bytes go by reference when the workers can read them where they are.
    static constexpr std::size_t kByReferenceMin = std::size_t{16} << 10;

    void write_task_locked(std::size_t slot, Task& task) {
        const auto items = task.segment.block->items(task.segment.block_first, task.segment.count);
        if (task.total == 0) {
            const JobBase& job = *task.job;
            bool by_reference = false;
            if constexpr (SharedMemoryWorkers<Transport>) {
                by_reference = items.size() >= kByReferenceMin && transport_.readable_by_workers(items);
            }
            task.header = TaskHeader{
                task.id,
                Transport::entry_id(job.entry()),
                kUnclaimed,
                static_cast<std::uint32_t>(task.segment.count),
                static_cast<std::uint32_t>(job.callable().size()),
                (settings_.task_timeout ? static_cast<std::uint32_t>(kTimedItems) : 0u) |
                    (job.code_pointer_callable ? static_cast<std::uint32_t>(kCodePointerCallable) : 0u) |
                    (by_reference ? static_cast<std::uint32_t>(kItemsByReference) : 0u)};
            task.total = sizeof(TaskHeader) + align8(job.callable().size()) +
                         (by_reference ? sizeof(ItemsReference) : items.size());
            task.fragmented = task.total > transport_.max_fragment();
        }
        static constexpr std::byte zeros[8] = {};
        const Buffer& callable = task.job->callable();
        // The task keeps its segment, and so the block, until its final result: the worker reads it till then.
        const ItemsReference reference{reinterpret_cast<std::uint64_t>(items.data()), items.size()};
        const bool by_reference = (task.header.flags & kItemsByReference) != 0;
        const Piece pieces[] = {{&task.header, sizeof task.header},
                                {callable.data(), callable.size()},
                                {zeros, align8(callable.size()) - callable.size()},
                                by_reference ? Piece{&reference, sizeof reference} : Piece{items.data(), items.size()}};
        // An unfinished message is continued by dispatch_locked() when the worker frees space.
        transport_.write(slot, kTaskMessage, pieces, task.total, task.written,
                         task.written == 0 ? &task.position : nullptr);
    }

    /// Moves unstarted tasks from busy workers to idle ones while no unsent work is left.
    void rebalance_locked() {
        for (;;) {
            if (unsent_work_locked()) return;
            std::optional<std::size_t> idle;
            std::optional<std::size_t> victim;
            for (std::size_t slot = 0; slot < workers_.size(); ++slot) {
                const WorkerSlot& w = workers_[slot];
                if (w.usable() && w.budget > 0 && w.inflight.empty() && !idle) idle = slot;
                if (w.inflight.size() >= 2 && (!victim || w.inflight.size() > workers_[*victim].inflight.size())) {
                    victim = slot;
                }
            }
            if (!idle || !victim) return;
            WorkerSlot& from = workers_[*victim];
            Task& last = from.inflight.back();
            if (!last.fully_written() || last.fragmented || last.segment.count > workers_[*idle].budget ||
                !transport_.revoke(*victim, last.position)) {
                return;
            }
            Task moved = std::move(last);
            from.inflight.pop_back();
            from.budget += moved.segment.count;
            moved.written = moved.total = 0;
            moved.header.claim = kUnclaimed;
            WorkerSlot& to = workers_[*idle];
            to.budget -= moved.segment.count;
            to.inflight.push_back(std::move(moved));
            write_task_locked(*idle, to.inflight.back());
        }
    }

    // ---- polling: the service thread, or a thread waiting for a result -----------------------------------------
    /// Reads every result ring, the fork server's reports and the workers' "task ring space freed" flag. Only the
    /// holder of `poller_mutex_` (each ring and the report socket have one reader).
    bool poll_rings() {
        bool worked = false;
        for (std::size_t slot = 0; slot < workers_.size(); ++slot) {
            worked |= transport_.drain(
                slot, [&](std::uint16_t kind, std::span<const std::byte> bytes) { handle_message(slot, kind, bytes); });
        }
        finish_completions();
        if constexpr (ReplaceableWorkers<Transport>) {
            if (transport_.reports_pending()) {
                while (std::optional<WorkerEvent> report = transport_.poll_report()) {
                    handle_event(*report);
                    worked = true;
                }
            }
        }
        if constexpr (StreamingWrites<Transport>) {
            if (transport_.take_space_freed()) {
                std::lock_guard lock(mutex_);
                dispatch_locked();  // continue messages that were waiting for task ring space
                worked = true;
            }
        }
        return worked;
    }

    /// WaitHelper: a thread waiting for a result polls the rings itself while the service thread sleeps, and the
    /// workers' doorbell is muted meanwhile (a wake-up would only wake the service thread for nothing). Waiters
    /// call check_owner() first: in a process forked later the rings are the original process's.
    Outcome help(bool (*ready)(const void*), const void* context, std::chrono::nanoseconds budget) noexcept override {
        if (std::this_thread::get_id() == service_id_.load(std::memory_order_relaxed)) return Outcome::busy;
        std::unique_lock role(poller_mutex_, std::try_to_lock);
        if (!role.owns_lock()) return Outcome::busy;
        poller_id_.store(std::this_thread::get_id(), std::memory_order_relaxed);
        polling_waiters_.fetch_add(1, std::memory_order_acq_rel);
        if constexpr (MutableDoorbell<Transport>) transport_.mute_doorbell();
        const std::int64_t end = monotonic_ns() + budget.count();
        bool done = false;
        try {
            for (unsigned round = 0;; ++round) {
                if (poll_rings()) round = 0;
                done = ready(context);
                if (done || ((round & 15) == 15 && monotonic_ns() >= end)) break;
                cpu_relax();
            }
            // Leave: from here on workers wake the service thread again; look once more for what they
            // published while the doorbell was muted.
            polling_waiters_.fetch_sub(1, std::memory_order_acq_rel);
            if constexpr (MutableDoorbell<Transport>) transport_.unmute_doorbell();
            poll_rings();
        } catch (...) {
            polling_waiters_.store(0, std::memory_order_release);
            if constexpr (MutableDoorbell<Transport>) transport_.unmute_doorbell();
            transport_.wake();
            poller_id_.store(std::thread::id(), std::memory_order_relaxed);
            return Outcome::busy;
        }
        poller_id_.store(std::thread::id(), std::memory_order_relaxed);
        return done || ready(context) ? Outcome::done : Outcome::timed_out;
    }

    // ---- the service thread ------------------------------------------------------------------------------------
    void service_loop() {
        service_id_ = std::this_thread::get_id();
        {
            std::lock_guard role(poller_mutex_);
            for (const WorkerEvent& event : early_events_) handle_event(event);
            early_events_.clear();
        }
        std::int64_t next_housekeeping = 0;
        for (;;) {
            bool worked = false;
            if (polling_waiters_.load(std::memory_order_acquire) == 0) {
                std::unique_lock role(poller_mutex_, std::try_to_lock);
                if (role.owns_lock()) worked = poll_rings();
            }
            if (monotonic_ns() >= next_housekeeping || stop_requested_.load(std::memory_order_acquire)) {
                std::optional<std::int64_t> next;
                {
                    // Housekeeping may reset a dead worker's rings (a delayed respawn), so it is the poller meanwhile:
                    // no waiting thread may be reading those rings meanwhile (a helper keeps it ~100 us at most).
                    std::lock_guard role(poller_mutex_);
                    next = housekeeping();
                    // Ending: the fork server's last reports (its workers' exits) may still wait on the socket.
                    if (!next) poll_rings();
                }
                deliver_failures();
                if (!next) return;
                next_housekeeping = *next;
            }
            if (worked) continue;
            if (stop_requested_.load(std::memory_order_acquire)) {
                // Shutting down: the fork server reports each worker's exit and rings once more as it exits
                // itself. Sleep until then (the reports are read on the way out) rather than wake for each one or
                // poll, which would take a core from the processes that are exiting; look every millisecond all the
                // same, in case the fork server was killed.
                const auto wake = std::min(MonotonicClock::time_point(std::chrono::nanoseconds(next_housekeeping)),
                                           MonotonicClock::now() + std::chrono::milliseconds(1));
                transport_.wait(wake, std::chrono::nanoseconds::zero(), [&] { return transport_.workers_gone(); });
                continue;
            }
            // Sleep until there is something to poll, unless a waiting thread polls (it looks once more when it
            // leaves, and later messages ring the doorbell again).
            const auto wake = MonotonicClock::time_point(std::chrono::nanoseconds(next_housekeeping));
            const bool helped = polling_waiters_.load(std::memory_order_acquire) != 0;
            transport_.wait(wake, helped ? std::chrono::nanoseconds::zero() : settings_.service_spin, [&] {
                return stop_requested_.load(std::memory_order_acquire) ||
                       (polling_waiters_.load(std::memory_order_acquire) == 0 && transport_.pending());
            });
        }
    }

    /// A worker life-cycle event. For a death, the results the worker published before it died are valid and
    /// read first (an initializer's error among them).
    void handle_event(const WorkerEvent& event) {
        if (event.kind == kWorkerExited && event.slot < workers_.size()) {
            transport_.drain(event.slot, [&](std::uint16_t kind, std::span<const std::byte> bytes) {
                handle_message(event.slot, kind, bytes);
            });
        }
        finish_completions();
        {
            std::lock_guard lock(mutex_);
            handle_report(event);
        }
        deliver_failures();
    }

    /// Periodic and life-cycle work. Returns when it wants to run next (CLOCK_MONOTONIC ns), or nothing when the
    /// service thread should end.
    std::optional<std::int64_t> housekeeping() {
        std::lock_guard lock(mutex_);
        const std::int64_t now = monotonic_ns();
        const std::int64_t next = now + settings_.housekeeping_period.count();
        // Gone, or saying goodbye as it exits: wait_workers_gone() reaps it later, outside these locks.
        const bool server_gone = transport_.workers_gone();
        if (state_ == State::terminated) {
            if (workers_gone_locked() || server_gone) return std::nullopt;
            return next;
        }
        if (server_gone && state_ != State::joining) {
            break_locked("the fork server process died");
            return std::nullopt;
        }
        if (state_ == State::joining) {
            send_shutdown_locked();
            // Done when every worker and the fork server are gone; a dead fork server took its workers along.
            if (server_gone) return std::nullopt;
            return std::min(next, check_timeouts_locked(now));
        }
        for (std::size_t slot = 0; slot < workers_.size(); ++slot) {
            WorkerSlot& w = workers_[slot];
            if constexpr (ReplaceableWorkers<Transport>) {
                if (w.phase == Phase::dead && w.respawn_at_ns != 0 && now >= w.respawn_at_ns) {
                    w.respawn_at_ns = 0;
                    w.phase = Phase::starting;
                    transport_.respawn(slot);
                }
            }
        }
        dispatch_locked();
        return std::min(next, check_timeouts_locked(now));
    }

    /// Joining: exit messages to the workers, and the fork server exits once they are gone. Once.
    void send_shutdown_locked() {
        if (shutdown_sent_) return;
        dispatch_locked();  // sends the exit messages
        transport_.shutdown();
        shutdown_sent_ = true;
    }

    /// Kills workers whose current item ran past task_timeout (SIGTERM, SIGKILL after the grace period).
    /// Returns the next time a deadline falls due.
    std::int64_t check_timeouts_locked(std::int64_t now) {
        std::int64_t next = std::numeric_limits<std::int64_t>::max();
        if constexpr (ReplaceableWorkers<Transport>) {  // (a transport that cannot stop a worker has no timeouts)
            if (settings_.task_timeout) next = kill_late_workers_locked(now);
        }
        return next;
    }

    std::int64_t kill_late_workers_locked(std::int64_t now) {
        std::int64_t next = std::numeric_limits<std::int64_t>::max();
        const std::int64_t timeout = std::chrono::nanoseconds(*settings_.task_timeout).count();
        for (std::size_t slot = 0; slot < workers_.size(); ++slot) {
            WorkerSlot& w = workers_[slot];
            if (w.phase == Phase::dead) continue;
            if (w.timeout_kill.active) {
                if (w.timeout_kill.sigkill_at_ns != 0 && now >= w.timeout_kill.sigkill_at_ns) {
                    transport_.signal(slot, SIGKILL);  // it ignored or handled SIGTERM
                    w.timeout_kill.sigkill_at_ns = 0;
                }
                if (w.timeout_kill.sigkill_at_ns != 0) next = std::min(next, w.timeout_kill.sigkill_at_ns);
                continue;
            }
            if (w.inflight.empty()) continue;
            const auto& status = transport_.status(slot);
            // Read item before and after its start time: the worker writes the start first.
            const std::uint64_t task = status.task.load(std::memory_order_acquire);
            const std::uint64_t item = status.item.load(std::memory_order_acquire);
            const std::int64_t start = status.item_start_ns.load(std::memory_order_acquire);
            if (item != status.item.load(std::memory_order_acquire) ||
                task != status.task.load(std::memory_order_acquire) || task == 0 || task != w.inflight.front().id ||
                start == 0) {
                continue;  // between items or tasks: look again on the next pass
            }
            if (now - start < timeout) {
                next = std::min(next, start + timeout);
                continue;
            }
            w.timeout_kill = {true, task, item, start, now + settings_.kill_grace.count()};
            transport_.signal(slot, SIGTERM);
            next = std::min(next, w.timeout_kill.sigkill_at_ns);
        }
        return next;
    }

    /// True when every slot holds a forked worker (none dead or waiting for its replacement's fork).
    [[nodiscard]] bool every_worker_started_locked() const noexcept {
        for (const WorkerSlot& w : workers_) {
            if (w.pid <= 0 || w.phase == Phase::dead || w.phase == Phase::starting) return false;
        }
        return true;
    }

    [[nodiscard]] bool workers_gone_locked() const noexcept {
        for (const WorkerSlot& w : workers_) {
            if (w.phase != Phase::dead) return false;
        }
        return true;
    }

    /// True in a thread that may be running an AsyncResult callback of this pool: the service thread, or a thread
    /// waiting for a result while it polls the rings itself (it completes results, and so runs callbacks).
    [[nodiscard]] bool in_callback_thread() const noexcept {
        const auto self = std::this_thread::get_id();
        return self == service_id_.load(std::memory_order_relaxed) ||
               self == poller_id_.load(std::memory_order_relaxed);
    }

    /// Ends the service thread and reaps the fork server. Called from a callback (the service thread, or a
    /// waiting thread that polls), it only asks: the thread ends later, and the pool's destructor reaps it.
    void stop_service() {
        stop_requested_.store(true, std::memory_order_release);
        transport_.wake();
        if (in_callback_thread()) return;        // it is the poller, which the service thread may be waiting to be
        std::lock_guard life(lifecycle_mutex_);  // one thread joins, the others wait for it
        // The fork server first: this thread sleeps until it is gone rather than until the service thread noticed.
        // Every worker is gone then (the fork server reaps them before it exits).
        transport_.wait_workers_gone();
        if (service_->joinable()) service_->join();
        std::vector<std::shared_ptr<const ItemBlock>> inputs;
        {
            std::lock_guard lock(mutex_);
            inputs.swap(inputs_until_exit_);
        }
    }

    void handle_message(std::size_t slot, std::uint16_t kind, std::span<const std::byte> bytes) {
        if (kind == kResultMessage) {
            handle_result(slot, bytes);
        } else if (kind == kInitFailedMessage) {
            std::exception_ptr error;
            try {
                InputArchive ar(bytes);
                error = decode_error(ar);
            } catch (...) {
                error = std::current_exception();
            }
            std::lock_guard lock(mutex_);
            init_error_ = error;
            if constexpr (!ReplaceableWorkers<Transport>) {
                // No exit report will follow (the rank lives on): the pool cannot work, say so now.
                break_locked(with_message("the initializer failed on worker " + std::to_string(slot + 1), error),
                             error);
            }
        }
    }

    void handle_result(std::size_t slot, std::span<const std::byte> bytes) {
        ResultHeader header;
        if (bytes.size() < sizeof header) return protocol_error(slot, "short result message");
        std::memcpy(&header, bytes.data(), sizeof header);
        if (bytes.size() - sizeof header < header.errors_size) return protocol_error(slot, "bad result message");

        std::shared_ptr<JobBase> job;
        std::shared_ptr<const ItemBlock> finished_input;  // dropped after the lock: freeing it can take a while
        std::uint64_t first = 0;
        {
            std::lock_guard lock(mutex_);
            if (state_ == State::terminated || state_ == State::broken) return;  // already failed
            WorkerSlot& w = workers_[slot];
            if (w.inflight.empty() || w.inflight.front().id != header.task_id) {
                return protocol_error_locked(slot, "result for a task the worker does not hold");
            }
            Task& task = w.inflight.front();
            if (task.delivered != header.first || header.first + header.count > task.segment.count) {
                return protocol_error_locked(slot, "result out of order");
            }
            job = task.job;
            first = task.segment.job_first + header.first;
            // These items are delivered from here on: a terminate() while they are decoded must not fail them.
            task.delivered += header.count;
            if ((header.flags & kFinalResult) != 0) {  // the worker holds it no more
                finished_input = std::move(task.segment.block);
                w.inflight.pop_front();
            }
        }

        std::vector<ItemError> errors;
        InputArchive error_ar(bytes.subspan(sizeof header, header.errors_size));
        InputArchive values(bytes.subspan(sizeof header + header.errors_size));
        try {
            errors.reserve(header.error_count);
            for (std::uint32_t i = 0; i < header.error_count; ++i) {
                std::uint32_t index = 0;
                error_ar.read_bytes(&index, sizeof index);
                errors.push_back(ItemError{first - header.first + index, decode_error(error_ar)});
            }
            finished_input.reset();  // before the caller can wake: a next large map finds the range free again
            job->deliver(first, header.count, errors, values);
        } catch (...) {
            job->fail(first, header.count, std::current_exception());
        }
        // Estimates and refills are applied once per batch of messages (finish_completions()).
        completions_.push_back(
            Completion{slot, std::move(job), header.count, header.busy_ns, (header.flags & kFinalResult) != 0});
    }

    struct Completion {
        std::size_t slot;
        std::shared_ptr<JobBase> job;
        std::uint64_t count;
        std::uint64_t busy_ns;
        bool final;
    };

    /// Applies the results read since the last call: time estimates, then one dispatch for all of them.
    /// Poll-role holder only.
    void finish_completions() {
        if (completions_.empty()) return;
        {
            std::lock_guard lock(mutex_);
            const std::int64_t now = monotonic_ns();
            for (const Completion& c : completions_) {
                workers_[c.slot].last_active_ns = now;
                if (c.count != 0) {
                    const double per_item = static_cast<double>(c.busy_ns) / static_cast<double>(c.count);
                    const double old = c.job->item_ns.load(std::memory_order_relaxed);
                    c.job->item_ns.store(old <= 0 ? per_item : 0.7 * old + 0.3 * per_item, std::memory_order_relaxed);
                }
                if (c.final) {
                    const double task_ns = static_cast<double>(c.busy_ns) + 2'000.0;  // plus a hand-off
                    task_ns_ = task_ns_ <= 0 ? task_ns : 0.8 * task_ns_ + 0.2 * task_ns;
                }
            }
            dispatch_locked();
            if (!work_left_locked()) idle_cv_.notify_all();
        }
        completions_.clear();  // drops the job references outside the lock
    }

    void protocol_error(std::size_t slot, const char* what) {
        std::lock_guard lock(mutex_);
        protocol_error_locked(slot, what);
    }
    void protocol_error_locked(std::size_t slot, const char* what) {
        std::fprintf(stderr, "procpool: internal error: %s (worker %d); replacing the worker\n", what,
                     static_cast<int>(workers_[slot].pid));
        if constexpr (ReplaceableWorkers<Transport>) transport_.signal(slot, SIGKILL);
    }

    // ---- the fork server's reports (mutex_ held) ----------------------------------------------------------------
    void handle_report(const WorkerEvent& report) {
        if (report.slot >= workers_.size()) return;
        WorkerSlot& w = workers_[report.slot];
        switch (report.kind) {
            case kWorkerSpawned:
                w.pid = report.pid;
                if (w.phase == Phase::starting) w.phase = Phase::running;
                idle_cv_.notify_all();  // worker_pids() may wait for it
                break;
            case kSpawnFailed:
                // No worker ever read this task ring: everything in it goes back to the queue before the retry resets
                // it.
                if constexpr (ReplaceableWorkers<Transport>) requeue_unstarted_locked(report.slot);
                w.phase = Phase::dead;
                w.respawn_at_ns = monotonic_ns() + 100'000'000;  // retry: fork fails under transient pressure
                break;
            case kWorkerExited:
                if constexpr (ReplaceableWorkers<Transport>) handle_exit(report);
                break;
            default: break;
        }
    }

    void handle_exit(const WorkerEvent& report) {
        const std::size_t slot = report.slot;
        WorkerSlot& w = workers_[slot];
        const bool expected = w.phase == Phase::exiting && w.inflight.empty();
        const bool initialized = transport_.status(slot).initialized.load(std::memory_order_acquire) != 0;
        if (!w.inflight.empty()) requeue_or_fail_locked(slot, report);
        w.phase = Phase::dead;
        if (state_ == State::terminated || state_ == State::broken) return;

        if (!initialized && !expected && settings_.has_initializer) {
            // The initializer threw or crashed, or the worker was killed while it ran.
            if (init_error_ || report.signal != SIGKILL || ++w.failed_starts >= 3) {
                std::exception_ptr cause = init_error_;
                if (!cause) {
                    cause = std::make_exception_ptr(WorkerCrashed(report.pid, report.signal, report.exit_code));
                }
                break_locked(with_message("the initializer failed in worker " + std::to_string(report.pid), cause),
                             cause);
                return;
            }
        } else {
            w.failed_starts = 0;
        }
        if (state_ == State::joining) return;  // leaving for good
        w.budget = settings_.max_tasks_per_child.value_or(kUnlimited);
        w.phase = Phase::starting;
        w.pid = 0;
        w.timeout_kill = {};
        transport_.respawn(slot);
        dispatch_locked();
        if (!work_left_locked()) idle_cv_.notify_all();
    }

    /// Puts a slot's queued tasks, none of them started, back at the front of the queue in their order.
    void requeue_unstarted_locked(std::size_t slot) {
        WorkerSlot& w = workers_[slot];
        std::vector<std::pair<std::shared_ptr<JobBase>, Segment>> back;
        for (Task& task : w.inflight) {
            Segment rest = task.segment;
            rest.take_front(task.delivered);
            if (rest.count != 0) back.emplace_back(task.job, std::move(rest));
        }
        w.inflight.clear();
        requeue_front_locked(back);
    }

    void requeue_front_locked(std::vector<std::pair<std::shared_ptr<JobBase>, Segment>>& back_to_queue) {
        // Back to front, so the queue keeps the original order. (clang-tidy 14 suggests std::ranges::reverse_view,
        // which clang 14 cannot compile against libstdc++ 12.)
        for (auto it = back_to_queue.rbegin(); it != back_to_queue.rend(); ++it) {  // NOLINT(modernize-loop-convert)
            JobBase& job = *it->first;
            job.unsent_items += it->second.count;
            job.ready.push_front(std::move(it->second));
            if (job.queued) {
                auto found = std::find(jobs_.begin(), jobs_.end(), it->first);
                if (found != jobs_.end()) jobs_.erase(found);
                job.queued = false;
            }
            enqueue_locked(it->first, true);
        }
    }

    /// A worker died holding tasks: the one it was running fails (from the first undelivered item up to the item
    /// it was in); everything it had not started goes back to the front of the queue.
    void requeue_or_fail_locked(std::size_t slot, const WorkerEvent& report) {
        WorkerSlot& w = workers_[slot];
        const auto& status = transport_.status(slot);
        const std::uint64_t running_task = status.task.load(std::memory_order_acquire);
        const std::uint64_t running_item = status.item.load(std::memory_order_acquire);
        const std::uint64_t head = transport_.task_ring_head(slot);
        std::vector<std::pair<std::shared_ptr<JobBase>, Segment>> back_to_queue;
        std::vector<std::pair<std::shared_ptr<JobBase>, Segment>> failed;
        std::vector<std::pair<std::shared_ptr<JobBase>, Segment>> timed_out;
        for (std::size_t i = 0; i < w.inflight.size(); ++i) {
            Task& task = w.inflight[i];
            Segment rest = task.segment;
            rest.take_front(task.delivered);
            // Only the front task can have been started: a worker claims the next one after it has delivered the
            // previous one's final result (which was drained before this report was handled).
            bool held = false;
            std::uint64_t through = task.delivered;  // task-relative index of the last item that may have run
            if (i == 0 && task.written != 0) {
                if (running_task == task.id) {
                    held = true;
                    through = std::max(through, running_item);
                } else {
                    // Consumed from the task ring, or claimed and died before saying so.
                    held = head > task.position || transport_.claimed(slot, task.position);
                }
            }
            if (held && w.timeout_kill.active) {
                // We killed this worker because an item ran past task_timeout.
                const bool guilty = running_task == task.id && running_item == w.timeout_kill.item &&
                                    w.timeout_kill.task == task.id &&
                                    status.item_start_ns.load(std::memory_order_acquire) == w.timeout_kill.start_ns;
                // With a timeout every finished item is sent before the next starts, so normally nothing before
                // the current item is missing; if something is (it died while sending), it is lost.
                const std::uint64_t current = running_task == task.id ? running_item : task.delivered;
                if (current > task.delivered) {
                    failed.emplace_back(task.job, rest.take_front(std::min(current - task.delivered, rest.count)));
                }
                // The guilty item fails with TaskTimeout. An item it started after finishing the late one just
                // before the signal landed is innocent: it goes back to the queue with the rest.
                if (guilty && rest.count != 0) timed_out.emplace_back(task.job, rest.take_front(1));
            } else if (held) {
                const std::uint64_t lost = std::min<std::uint64_t>(through - task.delivered + 1, rest.count);
                failed.emplace_back(task.job, rest.take_front(lost));
            }
            if (rest.count != 0) back_to_queue.emplace_back(task.job, std::move(rest));
        }
        w.inflight.clear();
        requeue_front_locked(back_to_queue);  // in the original order, ahead of everything else
        if (!failed.empty()) {
            const auto error = std::make_exception_ptr(WorkerCrashed(report.pid, report.signal, report.exit_code));
            for (auto& [job, segment] : failed) failures_.push_back(Failure{std::move(job), segment, error});
        }
        if (!timed_out.empty()) {
            const auto error = std::make_exception_ptr(TaskTimeout(report.pid, *settings_.task_timeout));
            for (auto& [job, segment] : timed_out) failures_.push_back(Failure{std::move(job), segment, error});
        }
    }

    /// The pool cannot go on (its fork server died, an initializer failed): fail everything, stop the workers.
    void break_locked(const std::string& reason, std::exception_ptr cause = nullptr) {
        if (state_ == State::terminated || state_ == State::broken) return;  // keep the first reason
        broken_reason_ = reason;
        if (!cause) cause = std::make_exception_ptr(PoolStateError("procpool: the pool is broken: " + reason));
        fail_everything_locked(cause, State::broken);
        transport_.terminate();
    }

    /// Moves to `final_state` and queues the failure of every unsent or unfinished item with `error`.
    void fail_everything_locked(const std::exception_ptr& error, State final_state) {
        if (state_ == State::terminated || state_ == State::broken) return;
        // Room first: once the state changed, every unfinished item must be failed (or its waiter hangs).
        std::size_t segments = failures_.size();
        std::size_t by_reference = inputs_until_exit_.size();
        for (const auto& job : jobs_) segments += job->ready.size();
        for (const WorkerSlot& w : workers_) {
            segments += w.inflight.size();
            by_reference += w.inflight.size();
        }
        failures_.reserve(segments);
        inputs_until_exit_.reserve(by_reference);
        state_ = final_state;
        for (auto& job : jobs_) {
            for (Segment& segment : job->ready) failures_.push_back(Failure{job, std::move(segment), error});
            job->ready.clear();
            job->unsent_items = 0;
            job->queued = false;
        }
        jobs_.clear();
        for (WorkerSlot& w : workers_) {
            for (Task& task : w.inflight) {
                Segment rest = task.segment;
                rest.take_front(task.delivered);
                if (rest.count != 0) failures_.push_back(Failure{task.job, rest, error});
                // A worker may read a task's items in place (kItemsByReference) until it is gone: keep them.
                if ((task.header.flags & kItemsByReference) != 0) {
                    inputs_until_exit_.push_back(std::move(task.segment.block));
                }
            }
            w.inflight.clear();
        }
        idle_cv_.notify_all();
    }

    /// Tells jobs about failed items collected under the lock (jobs may run user callbacks: never under mutex_).
    void deliver_failures() {
        std::vector<Failure> failures;
        {
            std::lock_guard lock(mutex_);
            failures.swap(failures_);
        }
        for (Failure& f : failures) f.job->fail(f.segment.job_first, f.segment.count, f.error);
    }

    struct Failure {
        std::shared_ptr<JobBase> job;
        Segment segment;
        std::exception_ptr error;
    };

    Transport& transport_;
    const SchedulerSettings settings_;
    mutable SpinMutex mutex_;
    mutable std::condition_variable_any idle_cv_;  // work done, a state change, a worker started
    std::mutex lifecycle_mutex_;
    State state_ = State::running;
    std::string broken_reason_;
    std::exception_ptr init_error_;
    bool shutdown_sent_ = false;
    std::deque<std::shared_ptr<JobBase>> jobs_;
    std::vector<Failure> failures_;  // to deliver once mutex_ is released
    std::vector<WorkerSlot> workers_;
    std::uint64_t last_task_id_ = 0;
    double task_ns_ = 0;  // moving average of worker time per task
    std::atomic<bool> stop_requested_{false};
    unsigned generation_;                    // fork_generation() where the pool was built
    std::vector<WorkerEvent> early_events_;  // deaths seen while the pool was built, for the service thread
    std::atomic<std::thread::id> service_id_{};
    std::atomic<std::thread::id> poller_id_{};  // a thread waiting for a result that polls the rings now
    std::mutex poller_mutex_;                   // the right to read the result rings and the fork server's reports
    std::vector<std::shared_ptr<const ItemBlock>> inputs_until_exit_;  // of tasks failed while workers ran them
    std::vector<Completion> completions_;  // results read but not yet applied (poll-role holder only)
    std::atomic<int> polling_waiters_{0};  // threads waiting for a result that poll instead of the service thread
    std::unique_ptr<std::thread> service_;
};

}  // namespace procpool::detail
