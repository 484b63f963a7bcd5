// procpool internals: the worker life cycle as the scheduler sees it: replacements, deaths (which items a dead
// worker held: detail/crash_attribution.hpp), timeouts (SIGTERM, then SIGKILL), and failing everything when the pool
// breaks or terminates. Part of detail/scheduler.hpp, the table of contents.
#pragma once

#include "procpool/detail/scheduler.hpp"

namespace procpool::detail {

/// Pids of the live workers. While the pool runs, a worker being replaced (its death, timeout or recycling may
/// already have been reported to a caller) is waited for, briefly: the caller sees size() pids, unless a
/// replacement cannot be forked within kReplacementWait. From a callback it does not wait.
/// True when the transport's slots are groups of workers with pools of their own (WorkerGroups).
template <class Transport>
bool Scheduler<Transport>::grouped() const noexcept {
    if constexpr (WorkerGroups<Transport>) {
        return transport_.grouped();
    } else {
        return false;
    }
}

template <class Transport>
std::vector<pid_t> Scheduler<Transport>::worker_pids() const {
    check_owner();
    if constexpr (WorkerGroups<Transport>) {
        if (transport_.grouped()) return transport_.worker_pids();  // (what the groups reported last)
    }
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

/// True when every slot holds a forked worker (none dead or waiting for its replacement's fork).
template <class Transport>
bool Scheduler<Transport>::every_worker_started_locked() const noexcept {
    for (const WorkerSlot& w : workers_) {
        if (w.pid <= 0 || w.phase == Phase::dead || w.phase == Phase::starting) return false;
    }
    return true;
}

template <class Transport>
bool Scheduler<Transport>::workers_gone_locked() const noexcept {
    for (const WorkerSlot& w : workers_) {
        if (w.phase != Phase::dead) return false;
    }
    return true;
}

template <class Transport>
void Scheduler<Transport>::handle_report(const WorkerEvent& report) {
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
            w.respawn_at_ns = monotonic_ns() + std::chrono::nanoseconds(kForkRetryDelay).count();
            break;
        case kWorkerExited:
            if constexpr (ReplaceableWorkers<Transport>) handle_exit(report);
            break;
        default: break;
    }
}

template <class Transport>
void Scheduler<Transport>::handle_exit(const WorkerEvent& report) {
    const std::size_t slot = report.slot;
    WorkerSlot& w = workers_[slot];
    const bool expected = w.phase == Phase::exiting && w.inflight.empty();
    const bool initialized = transport_.status(slot).initialized.load(std::memory_order_acquire) != 0;
    if (!w.inflight.empty()) requeue_or_fail_locked(slot, report);
    w.phase = Phase::dead;
    if (state_ == State::terminated || state_ == State::broken) return;

    if (!initialized && !expected && settings_.has_initializer) {
        // The initializer threw or crashed, or the worker was killed while it ran.
        if (init_error_ || report.signal != SIGKILL || ++w.failed_starts >= kMaxFailedStarts) {
            std::exception_ptr cause = init_error_;
            if (!cause) {
                cause = std::make_exception_ptr(WorkerCrashed(report.pid, report.signal, report.exit_code));
            }
            break_locked(with_message("the initializer failed in worker " + std::to_string(report.pid), cause), cause);
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
template <class Transport>
void Scheduler<Transport>::requeue_unstarted_locked(std::size_t slot) {
    WorkerSlot& w = workers_[slot];
    JobSegments back;
    for (Task& task : w.inflight) {
        Segment rest = task.segment;
        rest.take_front(task.delivered);
        if (rest.count != 0) back.emplace_back(task.job, std::move(rest));
    }
    w.inflight.clear();
    w.load = 0;
    requeue_front_locked(back);
}

template <class Transport>
void Scheduler<Transport>::requeue_front_locked(JobSegments& back_to_queue) {
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

/// A worker died holding tasks: the items it may have been running fail (WorkerCrashed, or TaskTimeout for the one
/// the pool killed it for), everything it had not started goes back to the front of the queue (crash attribution:
/// detail/crash_attribution.hpp decides from what the worker published).
template <class Transport>
void Scheduler<Transport>::requeue_or_fail_locked(std::size_t slot, const WorkerEvent& report) {
    WorkerSlot& w = workers_[slot];
    const auto& status = transport_.status(slot);
    DeathFacts facts;
    facts.running_task = status.task.load(std::memory_order_acquire);
    facts.running_item = status.item.load(std::memory_order_acquire);
    facts.item_start_ns = status.item_start_ns.load(std::memory_order_acquire);
    facts.ring_head = transport_.task_ring_head(slot);
    if (!w.inflight.empty() && w.inflight.front().written != 0) {
        facts.first_task_claimed = transport_.claimed(slot, w.inflight.front().position);
    }
    if (w.timeout_kill.active) {
        facts.timeout_kill = DeathFacts::TimeoutKill{w.timeout_kill.task, w.timeout_kill.item, w.timeout_kill.start_ns};
    }
    std::vector<HeldTask> held;
    held.reserve(w.inflight.size());
    for (const Task& task : w.inflight) {
        held.push_back(HeldTask{task.id, task.segment.count, task.delivered, task.written != 0, task.position});
    }
    const std::vector<TaskFate> fates = attribute_death(held, facts);

    std::exception_ptr crash;
    std::exception_ptr timeout;
    JobSegments back_to_queue;  // items to run (again), in their original order
    for (std::size_t i = 0; i < w.inflight.size(); ++i) {
        Task& task = w.inflight[i];
        Segment rest = task.segment;
        rest.take_front(task.delivered);
        PROCPOOL_ASSERT(fates[i].failed() <= rest.count, "a dead worker's failed items are among its undelivered ones");
        if (fates[i].crashed != 0) {
            if (!crash) crash = std::make_exception_ptr(WorkerCrashed(report.pid, report.signal, report.exit_code));
            fail_or_retry_locked(slot, task.job, rest.take_front(fates[i].crashed), crash, back_to_queue);
        }
        if (fates[i].timed_out) {
            if (!timeout) timeout = std::make_exception_ptr(TaskTimeout(report.pid, *settings_.task_timeout));
            fail_or_retry_locked(slot, task.job, rest.take_front(1), timeout, back_to_queue);
        }
        if (rest.count != 0) back_to_queue.emplace_back(task.job, std::move(rest));
    }
    w.inflight.clear();
    w.load = 0;
    requeue_front_locked(back_to_queue);  // in the original order, ahead of everything else
}

/// Items of `segment` whose worker died in `slot` running them: each that has PoolOptions::retries left goes to
/// `retried` (alone, avoiding `slot`), the others fail with `error`.
template <class Transport>
void Scheduler<Transport>::fail_or_retry_locked(std::size_t slot, std::shared_ptr<JobBase> job, Segment segment,
                                                const std::exception_ptr& error, JobSegments& retried) {
    if (settings_.retries == 0) {
        failures_.push_back(Failure{std::move(job), std::move(segment), error});
        return;
    }
    while (segment.count != 0) {
        // The run of items from here that have no retry left fails as one; the next item with one left is retried.
        std::uint64_t failing = 0;
        while (failing < segment.count) {
            if (job->retries_used.spent(segment.job_first + failing) < settings_.retries) break;  // retried
            ++failing;
        }
        if (failing != 0) failures_.push_back(Failure{job, segment.take_front(failing), error});
        if (segment.count == 0) break;
        Segment item = segment.take_front(1);
        job->retries_used.add(item.job_first);
        item.avoid_slot = static_cast<std::uint32_t>(slot);
        retried.emplace_back(job, std::move(item));
    }
}

template <class Transport>
std::int64_t Scheduler<Transport>::check_timeouts_locked(std::int64_t now) {
    std::int64_t next = std::numeric_limits<std::int64_t>::max();
    if constexpr (ReplaceableWorkers<Transport>) {  // (a transport that cannot stop a worker has no timeouts)
        if (settings_.task_timeout) next = kill_late_workers_locked(now);
    }
    return next;
}

template <class Transport>
std::int64_t Scheduler<Transport>::kill_late_workers_locked(std::int64_t now) {
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

/// The pool cannot go on (its fork server died, an initializer failed): fail everything, stop the workers.
template <class Transport>
void Scheduler<Transport>::break_locked(const std::string& reason, std::exception_ptr cause) {
    if (state_ == State::terminated || state_ == State::broken) return;  // keep the first reason
    broken_reason_ = reason;
    if (!cause) cause = std::make_exception_ptr(PoolStateError("procpool: the pool is broken: " + reason));
    broken_error_ = cause;
    broken_.store(true, std::memory_order_release);
    fail_everything_locked(cause, State::broken);
    transport_.terminate();
}

/// Moves to `final_state` and queues the failure of every unsent or unfinished item with `error`.
template <class Transport>
void Scheduler<Transport>::fail_everything_locked(const std::exception_ptr& error, State final_state) {
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
        w.load = 0;
    }
    idle_cv_.notify_all();
}

/// Tells jobs about failed items collected under the lock (jobs may run user callbacks: never under mutex_).
template <class Transport>
void Scheduler<Transport>::deliver_failures() {
    std::vector<Failure> failures;
    {
        std::lock_guard lock(mutex_);
        failures.swap(failures_);
    }
    for (Failure& f : failures) f.job->fail(f.segment.job_first, f.segment.count, f.error);
}

}  // namespace procpool::detail
