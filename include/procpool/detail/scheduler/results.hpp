// procpool internals: result intake, the poller routing each result message to its job (which decodes it without
// the scheduler's lock) and applying the measured times once per pass. Part of detail/scheduler.hpp, the table of
// contents.
#pragma once

#include <cstring>

#include "procpool/detail/scheduler.hpp"

namespace procpool::detail {

template <class Transport>
void Scheduler<Transport>::handle_message(std::size_t slot, std::uint16_t kind, std::span<const std::byte> bytes) {
    if (kind == kResultMessage && bytes.size() <= ResultBatch::kMaxMessageBytes) return stash_result(slot, bytes);
    // A worker's results are taken in the order it sent them: the batch first. This message is the poller's alone
    // now (the transport consumed it), so a job's failure to take a failure does not cost it.
    std::exception_ptr flush_error;
    try {
        flush_results();
    } catch (...) {
        flush_error = std::current_exception();
    }
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
            const std::string where = grouped() ? "rank " + std::to_string(slot) : "worker " + std::to_string(slot + 1);
            break_locked(with_message("the initializer failed on " + where, error), error);
        }
    }
    if (flush_error) std::rethrow_exception(flush_error);
}

/// One result message, taken and delivered at once (a large one: small ones go through batch_).
template <class Transport>
void Scheduler<Transport>::handle_result(std::size_t slot, std::span<const std::byte> bytes) {
    TakenResult taken;
    {
        std::lock_guard lock(mutex_);
        if (!take_result_locked(slot, bytes, taken)) return;
    }
    try {
        deliver_taken(slot, bytes, taken);
    } catch (...) {
        dispatch_owed_ = true;  // its Completion was not recorded
        throw;
    }
}

/// Keeps a copy of a small result message for flush_results() (the ring's bytes are the worker's again once the
/// handler returns). Never allocates.
template <class Transport>
void Scheduler<Transport>::stash_result(std::size_t slot, std::span<const std::byte> bytes) {
    if (batch_.full()) flush_results();
    PROCPOOL_ASSERT(!batch_.full(), "a full batch is flushed first");
    const std::size_t at = batch_.entries.size() * ResultBatch::kMaxMessageBytes;
    if (!bytes.empty()) std::memcpy(batch_.bytes.data() + at, bytes.data(), bytes.size());
    batch_.entries.push_back({slot, bytes.size()});  // within the capacity reserved at construction
}

/// Takes the tasks of every stashed result under one hold of mutex_, then delivers them without it. Every one is
/// delivered and the batch emptied even if a job throws (only its fail() can); the first such exception is rethrown
/// afterwards.
template <class Transport>
void Scheduler<Transport>::flush_results() {
    if (batch_.entries.empty()) return;
    {
        std::lock_guard lock(mutex_);
        for (std::size_t i = 0; i < batch_.entries.size(); ++i) {
            auto& e = batch_.entries[i];
            (void)take_result_locked(e.slot, batch_.message(i), e.taken);  // false: e.taken.job stays null
        }
    }
    std::exception_ptr error;
    for (std::size_t i = 0; i < batch_.entries.size(); ++i) {
        auto& e = batch_.entries[i];
        if (!e.taken.job) continue;
        try {
            deliver_taken(e.slot, batch_.message(i), e.taken);
        } catch (...) {
            if (!error) error = std::current_exception();
            dispatch_owed_ = true;  // its Completion was not recorded
        }
    }
    batch_.entries.clear();  // (drops what a delivery that threw left)
    if (error) std::rethrow_exception(error);
}

/// Checks a result message and takes it from its task: the items it covers are delivered from here on, and its
/// task leaves the worker's queue with its last one. False (a protocol error reported, or the pool already failed)
/// when there is nothing to deliver. Never throws.
template <class Transport>
bool Scheduler<Transport>::take_result_locked(std::size_t slot, std::span<const std::byte> bytes, TakenResult& taken) {
    ResultHeader& header = taken.header;
    const char* malformed = nullptr;
    if (bytes.size() < sizeof header) {
        malformed = "short result message";
    } else {
        std::memcpy(&header, bytes.data(), sizeof header);
        if (bytes.size() - sizeof header < header.errors_size) malformed = "bad result message";
    }
    if (malformed != nullptr) {
        protocol_error_locked(slot, malformed);
        return false;
    }
    if (state_ == State::terminated || state_ == State::broken) return false;  // already failed
    WorkerSlot& w = workers_[slot];
    // A worker finishes its tasks in order: results are for the front one. A group of workers (WorkerGroups) runs
    // its tasks side by side: any of them.
    std::size_t at = 0;
    const std::size_t searched = grouped() ? w.inflight.size() : std::min<std::size_t>(w.inflight.size(), 1);
    while (at < searched && w.inflight[at].id != header.task_id) ++at;
    if (at == searched) {
        protocol_error_locked(slot, "result for a task the worker does not hold");
        return false;
    }
    Task& task = w.inflight[at];
    if (task.delivered != header.first || header.first + header.count > task.segment.count) {
        protocol_error_locked(slot, "result out of order");
        return false;
    }
    taken.first = task.segment.job_first + header.first;
    // These items are delivered from here on: a terminate() while they are decoded must not fail them.
    task.delivered += header.count;
    if ((header.flags & kFinalResult) == 0) {
        taken.job = task.job;
    } else {
        // The worker holds it no more. Its reference moves: no count to touch in the job's record (likely cold, on
        // the submitting thread's core) under the lock.
        taken.job = std::move(task.job);
        taken.finished_input = std::move(task.segment.block);
        w.load -= task.load;
        w.inflight.erase(at);
    }
    return true;
}

/// Decodes a taken result message (without mutex_) and hands it to its job; records it for finish_completions().
template <class Transport>
void Scheduler<Transport>::deliver_taken(std::size_t slot, std::span<const std::byte> bytes, TakenResult& taken) {
    const ResultHeader& header = taken.header;
    std::shared_ptr<JobBase> job = std::move(taken.job);
    std::vector<ItemError> errors;
    InputArchive error_ar(bytes.subspan(sizeof header, header.errors_size));
    InputArchive values(bytes.subspan(sizeof header + header.errors_size));
    try {
        errors.reserve(header.error_count);
        for (std::uint32_t i = 0; i < header.error_count; ++i) {
            std::uint32_t index = 0;
            error_ar.read_bytes(&index, sizeof index);
            errors.push_back(ItemError{taken.first - header.first + index, decode_error(error_ar)});
        }
        taken.finished_input.reset();  // before the caller can wake: a next large map finds the range free again
        job->deliver(taken.first, header.count, errors, values, header.busy_ns);
    } catch (...) {
        job->fail(taken.first, header.count, std::current_exception());
    }
    taken.finished_input.reset();
    // Estimates and refills are applied once per batch of messages (finish_completions()). Without room for the
    // record, only the estimates miss this result: the refill still happens.
    try {
        completions_.push_back(
            Completion{slot, std::move(job), header.count, header.busy_ns, (header.flags & kFinalResult) != 0});
    } catch (const std::bad_alloc&) {
        dispatch_owed_ = true;
    }
}

/// Applies the results read since the last call: time estimates, then one dispatch for all of them.
/// Poller only.
template <class Transport>
void Scheduler<Transport>::finish_completions() {
    flush_results();
    if (completions_.empty() && !dispatch_owed_) return;
    dispatch_owed_ = false;
    {
        std::lock_guard lock(mutex_);
        const std::int64_t now = monotonic_ns();
        for (const Completion& c : completions_) {
            workers_[c.slot].last_active_ns = now;
            if (c.count != 0) {
                const double per_item = static_cast<double>(c.busy_ns) / static_cast<double>(c.count);
                const double old = c.job->item_ns.load(std::memory_order_relaxed);
                c.job->item_ns.store(ChunkPolicy::smoothed(old, per_item, ChunkPolicy::kItemTimeWeight),
                                     std::memory_order_relaxed);
            }
            if (c.final) {
                const double task_ns = static_cast<double>(c.busy_ns) + ChunkPolicy::kHandOffNs;
                task_ns_ = ChunkPolicy::smoothed(task_ns_, task_ns, ChunkPolicy::kTaskTimeWeight);
                task_ns_seen_.store(task_ns_, std::memory_order_relaxed);
            }
            if (placement_.add_result(c.busy_ns, now)) {
                const auto placement = placement_.decide(now, caller_cpu_.load(std::memory_order_relaxed),
                                                         long_work_inflight_locked());
                if (placement) place_workers_locked(*placement);
            }
        }
        dispatch_locked();
        if (!work_left_locked()) idle_cv_.notify_all();
    }
    completions_.clear();  // drops the job references outside the lock
}

/// Records the CPU the calling thread (a caller submitting or polling, never the service thread) runs on: the one
/// placement_ keeps the workers off during a stream of tiny tasks.
template <class Transport>
void Scheduler<Transport>::note_caller_cpu() noexcept {
    if (placement_.active()) caller_cpu_.store(::sched_getcpu(), std::memory_order_relaxed);
}

/// Work was submitted (submit, extend): it counts towards a stream, and after a pause the workers get every CPU back
/// before it is sent.
template <class Transport>
void Scheduler<Transport>::note_submission_locked() noexcept {
    placement_.count_submission();
    // The clock only while kept off: an apply_async burst submits a few million a second.
    if (placement_.kept_off() >= 0 && placement_.paused(monotonic_ns())) place_workers_locked(-1);
}

/// The workers keep off `cpu` from their next task on, or may use every CPU again (-1).
template <class Transport>
void Scheduler<Transport>::place_workers_locked(int cpu) noexcept {
    if constexpr (PlaceableWorkers<Transport>) transport_.keep_workers_off(cpu);
    placement_.moved(cpu);
}

/// Whether a task that may be long (WorkerPlacement::long_task) is queued or running: the workers then keep every CPU.
template <class Transport>
bool Scheduler<Transport>::long_work_inflight_locked() const noexcept {
    for (const WorkerSlot& w : workers_) {
        for (const Task& task : w.inflight) {
            if (task.may_be_long()) return true;
        }
    }
    return false;
}

template <class Transport>
void Scheduler<Transport>::protocol_error_locked(std::size_t slot, const char* what) {
    std::fprintf(stderr, "procpool: internal error: %s (worker %d); replacing the worker\n", what,
                 static_cast<int>(workers_[slot].pid));
    if constexpr (ReplaceableWorkers<Transport>) transport_.signal(slot, SIGKILL);
}

}  // namespace procpool::detail
