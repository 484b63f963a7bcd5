// procpool internals: the poller (the one thread at a time that reads the result rings and the workers' life-cycle
// reports: the service thread, or a caller waiting for its result) and the service thread's loop, housekeeping and
// end. Part of detail/scheduler.hpp, the table of contents.
#pragma once

#include "procpool/detail/scheduler.hpp"

namespace procpool::detail {

/// Reads every result ring, the fork server's reports and the workers' "task ring space freed" flag. Only the
/// holder of `poller_mutex_` (each ring and the report socket have one reader).
template <class Transport>
bool Scheduler<Transport>::poll_rings() {
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

/// WaitHelper: a thread waiting for a result becomes the poller, so a result reaches it without passing through the
/// service thread (two threads to wake rather than three). Where spinning pays it polls in a loop for `budget`, with
/// the workers' doorbell muted (a ring would only wake the service thread for nothing). Otherwise it sleeps on the
/// doorbell itself, as the service thread would, until its result is ready, `deadline`, or the service thread wants
/// the poller role back (housekeeping); the service thread sleeps elsewhere meanwhile (service_bell_). Waiters call
/// check_owner() first: in a process forked later the rings are the original process's.
template <class Transport>
auto Scheduler<Transport>::help(bool (*ready)(const void*), const void* context, std::chrono::nanoseconds budget,
                                Deadline deadline) noexcept -> Outcome {
    if (std::this_thread::get_id() == service_id_.load(std::memory_order_relaxed)) return Outcome::busy;
    note_caller_cpu();
    if (role_wanted_.load(std::memory_order_acquire)) return Outcome::busy;
    std::unique_lock role(poller_mutex_, std::try_to_lock);
    if (!role.owns_lock()) return Outcome::busy;
    poller_id_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    polling_waiters_.fetch_add(1, std::memory_order_acq_rel);
    // A poller that sleeps on the workers' doorbell sends the service thread to sleep on its own bell meanwhile (it
    // would be woken with the poller for every result); a spinning one mutes the doorbell instead.
    const bool sleeping = !spinning_pays();
    if (sleeping) sleeping_pollers_.fetch_add(1, std::memory_order_acq_rel);
    bool done = false;
    try {
        done = sleeping ? poll_sleeping(ready, context, deadline) : poll_spinning(ready, context, budget);
    } catch (...) {
        polling_waiters_.store(0, std::memory_order_release);
        if (sleeping) sleeping_pollers_.fetch_sub(1, std::memory_order_acq_rel);
        if constexpr (MutableDoorbell<Transport>) transport_.unmute_doorbell();
        poller_id_.store(std::thread::id(), std::memory_order_relaxed);
        wake_service();
        return Outcome::busy;
    }
    poller_id_.store(std::thread::id(), std::memory_order_relaxed);
    role.unlock();
    polling_waiters_.fetch_sub(1, std::memory_order_acq_rel);
    // The last sleeping poller gone: the service thread sleeps on the workers' doorbell again. ring(), not
    // wake_all(): a system call only if it sleeps on its bell (after a spinning poller it never does; an
    // unconditional wake there cost every apply() round trip ~0.4 us, eb270ea).
    if (sleeping && sleeping_pollers_.fetch_sub(1, std::memory_order_acq_rel) == 1) service_bell_.ring();
    return done || ready(context) ? Outcome::done : Outcome::timed_out;
}

/// help() where spinning pays: polls in a loop for `budget` with the doorbell muted. True when ready(context).
template <class Transport>
bool Scheduler<Transport>::poll_spinning(bool (*ready)(const void*), const void* context,
                                         std::chrono::nanoseconds budget) {
    if constexpr (MutableDoorbell<Transport>) transport_.mute_doorbell();
    const std::int64_t end = monotonic_ns() + budget.count();
    bool done = false;
    for (unsigned round = 0;; ++round) {
        if (poll_rings()) round = 0;
        done = ready(context);
        if (done || ((round & 15) == 15 && monotonic_ns() >= end)) break;
        cpu_relax();
    }
    // Leave: from here on workers ring the doorbell again; look once more for what they published while it was muted.
    if constexpr (MutableDoorbell<Transport>) transport_.unmute_doorbell();
    poll_rings();
    return done || ready(context);
}

/// help() where spinning does not pay: sleeps on the workers' doorbell as the poller until ready(context),
/// `deadline`, or the service thread wants the role. True when ready(context).
template <class Transport>
bool Scheduler<Transport>::poll_sleeping(bool (*ready)(const void*), const void* context, Deadline deadline) {
    for (;;) {
        poll_rings();
        if (ready(context)) return true;
        if (role_wanted_.load(std::memory_order_acquire)) return false;
        if (deadline && MonotonicClock::now() >= *deadline) return false;
        transport_.wait(deadline, std::chrono::nanoseconds::zero(), [&] {
            return transport_.pending() || role_wanted_.load(std::memory_order_acquire) ||
                   stop_requested_.load(std::memory_order_acquire);
        });
        if (stop_requested_.load(std::memory_order_acquire)) {
            poll_rings();
            return ready(context);
        }
    }
}

/// Takes the poller role for the service thread, waking a caller that sleeps as the poller so that it hands it over.
template <class Transport>
void Scheduler<Transport>::take_poller_role(std::unique_lock<std::mutex>& role) {
    if (role.try_lock()) return;
    role_wanted_.store(true, std::memory_order_release);
    transport_.wake();
    role.lock();
    role_wanted_.store(false, std::memory_order_release);
}

/// Wakes the service thread wherever it sleeps: on the workers' doorbell, or on its own while a caller polls.
template <class Transport>
void Scheduler<Transport>::wake_service() noexcept {
    transport_.wake();
    service_bell_.wake_all();
}

/// Whether the parent's threads should spin before they sleep (detail/chunk_policy.hpp).
template <class Transport>
bool Scheduler<Transport>::spinning_pays() const noexcept {
    return ChunkPolicy::spinning_pays(task_ns_seen_.load(std::memory_order_relaxed), spare_core_);
}

template <class Transport>
void Scheduler<Transport>::service_loop() {
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
                // no waiting thread may be reading those rings meanwhile (a caller sleeping as the poller is woken to
                // hand the role over).
                std::unique_lock role(poller_mutex_, std::defer_lock);
                take_poller_role(role);
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
        const auto wake = MonotonicClock::time_point(std::chrono::nanoseconds(next_housekeeping));
        if (sleeping_pollers_.load(std::memory_order_acquire) != 0) {
            // A waiting caller sleeps as the poller: sleep apart from the workers' doorbell (their rings are its),
            // until it leaves, housekeeping is due or the pool stops.
            service_bell_.wait(
                [&] {
                    return stop_requested_.load(std::memory_order_acquire) ||
                           sleeping_pollers_.load(std::memory_order_acquire) == 0;
                },
                wake, std::chrono::nanoseconds::zero());
            continue;
        }
        // Sleep until there is something to poll.
        const bool spin = spinning_pays();
        transport_.wait(wake, spin ? settings_.service_spin : std::chrono::nanoseconds::zero(), [&] {
            return stop_requested_.load(std::memory_order_acquire) ||
                   sleeping_pollers_.load(std::memory_order_acquire) != 0 ||
                   (polling_waiters_.load(std::memory_order_acquire) == 0 && transport_.pending());
        });
    }
}

/// A worker life-cycle event. For a death, the results the worker published before it died are valid and
/// read first (an initializer's error among them).
template <class Transport>
void Scheduler<Transport>::handle_event(const WorkerEvent& event) {
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
template <class Transport>
std::optional<std::int64_t> Scheduler<Transport>::housekeeping() {
    std::lock_guard lock(mutex_);
    const std::int64_t now = monotonic_ns();
    const std::int64_t next = now + settings_.housekeeping_period.count();
    if (placement_.paused(now)) place_workers_locked(-1);
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
template <class Transport>
void Scheduler<Transport>::send_shutdown_locked() {
    if (shutdown_sent_) return;
    dispatch_locked();  // sends the exit messages
    transport_.shutdown();
    shutdown_sent_ = true;
}

/// True in a thread that may be running an AsyncResult callback of this pool: the service thread, or a thread
/// waiting for a result while it polls the rings itself (it completes results, and so runs callbacks).
template <class Transport>
bool Scheduler<Transport>::in_callback_thread() const noexcept {
    const auto self = std::this_thread::get_id();
    return self == service_id_.load(std::memory_order_relaxed) || self == poller_id_.load(std::memory_order_relaxed);
}

/// Ends the service thread and reaps the fork server. Called from a callback (the service thread, or a
/// waiting thread that polls), it only asks: the thread ends later, and the pool's destructor reaps it.
template <class Transport>
void Scheduler<Transport>::stop_service() {
    stop_requested_.store(true, std::memory_order_release);
    wake_service();
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

}  // namespace procpool::detail
