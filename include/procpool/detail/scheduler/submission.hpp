// procpool internals: the scheduler's public calls (submit, extend, abandon, close, join, terminate) and its job
// queue. Part of detail/scheduler.hpp, the table of contents.
#pragma once

#include "procpool/detail/scheduler.hpp"

namespace procpool::detail {

/// Queues a job with its first items (none for an imap that reads its input later) and starts sending it.
/// Throws PoolStateError after close()/terminate().
template <class Transport>
void Scheduler<Transport>::submit(const std::shared_ptr<JobBase>& job, Segment items) {
    check_owner();  // before the lock: in a forked child another thread may have held it at the fork
    note_caller_cpu();
    std::lock_guard lock(mutex_);
    check_open_locked();
    note_submission_locked();
    add_segment_locked(*job, std::move(items));
    enqueue_locked(job);
    dispatch_or_leave_locked();  // the job is queued, and the caller gets its result
}

/// Adds segments to a job submitted earlier (imap reading more input), in order: one lock and one dispatch. All or
/// none are added (the job is unchanged when it throws). Allowed after close() until join() has begun; throws
/// PoolStateError after that, after terminate(), and in a process forked after the pool was built (its dispatch
/// would write tasks into the rings the original process's workers read).
template <class Transport>
void Scheduler<Transport>::extend(const std::shared_ptr<JobBase>& job, std::vector<Segment>& segments) {
    check_owner();
    note_caller_cpu();
    std::lock_guard lock(mutex_);
    if (state_ != State::running && state_ != State::closed) throw_state_error_locked();
    note_submission_locked();
    std::size_t added = 0;
    try {
        for (; added < segments.size(); ++added) add_segment_locked(*job, std::move(segments[added]));
        enqueue_locked(job);
    } catch (...) {  // std::bad_alloc growing the job's queue: take back what went in, into `segments`
        while (added-- != 0) {
            Segment& segment = segments[added];
            if (segment.count == 0) continue;  // (add_segment_locked skips empty segments)
            segment = std::move(job->ready.back());
            job->ready.pop_back();
            job->unsent_items -= segment.count;
            job->encoded_items -= segment.count;
            job->encoded_bytes -= segment.block->items(segment.block_first, segment.count).size();
        }
        throw;
    }
    // The segments are the job's now: the caller is not told they were not taken.
    dispatch_or_leave_locked();
}

/// Drops a job's items that were not sent yet (an imap range abandoned by its reader), and where the transport can
/// take tasks back, those queued in workers' rings that no worker has started: nobody wants their results, and a
/// pool being closed would otherwise wait for them to run. Never blocks on workers.
template <class Transport>
void Scheduler<Transport>::abandon(JobBase& job) {
    if (fork_generation() != generation_) return;  // a forked child's copy: the lock may have been held at the fork
    std::vector<std::shared_ptr<const ItemBlock>> dropped;  // freed after the lock (an arena range, a mapping)
    std::lock_guard lock(mutex_);
    job.ready.clear();
    job.unsent_items = 0;
    if constexpr (RevocableQueue<Transport>) {
        for (std::size_t slot = 0; slot < workers_.size(); ++slot) {
            WorkerSlot& w = workers_[slot];
            for (std::size_t i = w.inflight.size(); i-- > 0;) {
                if (w.inflight[i].job.get() != &job) continue;
                std::optional<Task> taken = take_back_locked(slot, i);
                if (!taken) continue;  // being written, claimed or consumed: the worker runs it
                try {
                    dropped.push_back(std::move(taken->segment.block));
                } catch (...) {  // no memory for the list: the block is freed with the task, under the lock
                }
            }
        }
        dispatch_or_leave_locked();  // other jobs' tasks, or the exit messages of a pool being joined
    }
    idle_cv_.notify_all();
}

template <class Transport>
void Scheduler<Transport>::close() {
    check_owner();  // before the lock: in a forked child another thread may have held it at the fork
    std::lock_guard lock(mutex_);
    if (state_ == State::running) state_ = State::closed;
}

/// Waits until all queued work is done, then stops the workers and the fork server. A terminate() from
/// another thread ends the wait. Not from a callback (the service thread runs the work being waited for).
template <class Transport>
void Scheduler<Transport>::join() {
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
    wake_service();
    stop_service();
}

/// Stops the workers now; every unfinished result fails with PoolStateError. Returns once all processes are
/// reaped (from a callback: once they are told to stop).
template <class Transport>
void Scheduler<Transport>::terminate() {
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
template <class Transport>
void Scheduler<Transport>::check_owner() const {
    if (fork_generation() != generation_) {
        throw PoolStateError("procpool: a pool cannot be used from a process forked after it was built");
    }
}

template <class Transport>
bool Scheduler<Transport>::closed() const {
    check_owner();
    std::lock_guard lock(mutex_);
    return state_ != State::running;
}

template <class Transport>
std::exception_ptr Scheduler<Transport>::broken_error() const noexcept {
    return broken_.load(std::memory_order_acquire) ? broken_error_ : nullptr;
}

template <class Transport>
void Scheduler<Transport>::check_open_locked() const {  // (submit() checked the owner before taking the lock)
    if (state_ != State::running) throw_state_error_locked();
}

template <class Transport>
void Scheduler<Transport>::throw_state_error_locked() const {
    switch (state_) {
        case State::broken: throw PoolStateError("procpool: the pool is broken: " + broken_reason_);
        case State::terminated: throw PoolStateError("procpool: the pool was terminated");
        default: throw PoolStateError("procpool: the pool is closed; no more tasks can be submitted");
    }
}

template <class Transport>
void Scheduler<Transport>::add_segment_locked(JobBase& job, Segment segment) {
    if (segment.count == 0) return;
    const std::uint64_t count = segment.count;
    const std::uint64_t bytes = segment.block->items(segment.block_first, segment.count).size();
    job.ready.push_back(std::move(segment));  // first: if it throws, the job is unchanged
    job.unsent_items += count;
    job.encoded_items += count;
    job.encoded_bytes += bytes;
}

template <class Transport>
void Scheduler<Transport>::enqueue_locked(const std::shared_ptr<JobBase>& job, bool front) {
    if (job->queued || job->ready.empty()) return;
    if (front) jobs_.push_front(job);
    else jobs_.push_back(job);
    job->queued = true;  // after the push: if that throws, the job is not marked queued
}

/// True if some job still has items to send (stops at the first such job: O(1) unless many jobs failed).
template <class Transport>
bool Scheduler<Transport>::unsent_work_locked() const noexcept {
    for (const auto& job : jobs_) {
        if (!job->ready.empty() && !job->cancelled()) return true;
    }
    return false;
}

template <class Transport>
bool Scheduler<Transport>::work_left_locked() const noexcept {
    if (unsent_work_locked()) return true;
    for (const WorkerSlot& w : workers_) {
        if (!w.inflight.empty()) return true;
    }
    return false;
}

}  // namespace procpool::detail
