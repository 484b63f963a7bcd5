// procpool internals: dispatch, the scheduler handing tasks to workers. Each worker is kept `depth` tasks deep, least
// loaded first; a job's items are cut into chunks (detail/chunk_policy.hpp) as they are sent; a worker that runs dry
// takes over a task queued behind another worker's running one (rebalancing, where the transport can revoke). Every
// member here runs with the scheduler's mutex_ held. Part of detail/scheduler.hpp, the table of contents.
#pragma once

#include "procpool/detail/scheduler.hpp"

namespace procpool::detail {

template <class Transport>
void Scheduler<Transport>::dispatch_locked() {
    if (state_ == State::terminated || state_ == State::broken) return;
    // 1. Finish messages that did not fit in a task ring at once.
    for (std::size_t slot = 0; slot < workers_.size(); ++slot) {
        WorkerSlot& w = workers_[slot];
        if (!w.inflight.empty() && !w.inflight.back().fully_written()) write_task_locked(slot, w.inflight.back());
    }
    // 2. Hand out new tasks, least loaded worker first, most recently active among equals (it is still awake). A
    //    worker the next item is to avoid (it died there and is retried) is passed over this time.
    std::vector<bool> passed;  // sized on the first worker passed over (rare: allocates nothing per call)
    for (;;) {
        const std::optional<std::size_t> slot = pick_worker_locked(passed);
        if (!slot) break;
        workers_[*slot].inflight.reserve_one();  // a task once cut from its job must not be lost to bad_alloc
        bool avoided = false;
        std::optional<Task> task = next_task_locked(*slot, avoided);
        if (avoided) {
            if (passed.empty()) passed.resize(workers_.size());
            passed[*slot] = true;
            continue;
        }
        if (!task) break;
        send_task_locked(*slot, std::move(*task));
    }
    // 3. A worker with nothing to do takes over a task queued behind another worker's running task.
    if constexpr (RevocableQueue<Transport>) rebalance_locked();
    // 3b. Short tasks queued deep: workers need not wake the parent for each result, only when their queue runs low
    //     (two tasks behind the running one: the parent refills while the last one runs).
    if constexpr (BatchedResultBells<Transport>) {
        bool deep = false;
        for (const WorkerSlot& w : workers_) deep = deep || w.inflight.size() > kResultBellLowWater;
        transport_.set_result_bell_low_water(deep ? kResultBellLowWater : 0);
    }
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

/// dispatch_locked() for a caller that must not fail once its work is queued (submit, extend, abandon): what a
/// std::bad_alloc stopped (building a task's message, growing a queue) waits for the next dispatch, at the next
/// result or housekeeping. Nothing is lost: a task is its worker's before anything can throw (send_task_locked).
template <class Transport>
void Scheduler<Transport>::dispatch_or_leave_locked() noexcept {
    try {
        dispatch_locked();
    } catch (...) {
    }
}

template <class Transport>
std::size_t Scheduler<Transport>::depth_locked(std::size_t slot) const noexcept {
    // A task queued behind a long one can be taken back only where the transport allows it; elsewhere a
    // worker gets one long task at a time (it pulls the next when it is done).
    // A group of workers (WorkerGroups) gets that depth for each of its workers, so that every one of them has an
    // item and the next one queued: its own pool starts them as its workers free up. Depth is counted in loads
    // (WorkerSlot::load): a task sized for the whole group (map) counts for all its workers, so two of them
    // suffice; one-item tasks (apply_async, imap with chunksize 1) count one each, so a group holds two per worker.
    if constexpr (WorkerGroups<Transport>) {
        if (grouped()) {
            const std::size_t per_worker = ChunkPolicy::queue_depth(task_ns_, 2, settings_.queue_target,
                                                                    settings_.max_depth);
            return per_worker * workers_behind_locked(slot);
        }
    }
    (void)slot;
    const std::size_t minimum = RevocableQueue<Transport> ? 2 : 1;
    // Where workers batch their doorbell for results, deeper queues of short tasks save the parent wake-ups.
    const std::chrono::nanoseconds target = BatchedResultBells<Transport>
                                                ? std::max(settings_.queue_target, ChunkPolicy::kBatchedQueueTarget)
                                                : settings_.queue_target;
    return ChunkPolicy::queue_depth(task_ns_, minimum, target, settings_.max_depth);
}

/// The number of workers that run the tasks sent to `slot`: one, or the size of a group's pool.
template <class Transport>
std::size_t Scheduler<Transport>::workers_behind_locked(std::size_t slot) const noexcept {
    if constexpr (WorkerGroups<Transport>) {
        if (grouped()) return std::max<std::size_t>(1, transport_.workers_in_slot(slot));
    }
    (void)slot;
    return 1;
}

template <class Transport>
std::optional<std::size_t> Scheduler<Transport>::pick_worker_locked(const std::vector<bool>& passed) const noexcept {
    std::optional<std::size_t> best;
    for (std::size_t slot = 0; slot < workers_.size(); ++slot) {
        const WorkerSlot& w = workers_[slot];
        if ((!passed.empty() && passed[slot]) || !w.usable() || w.budget == 0 || w.load >= depth_locked(slot)) {
            continue;
        }
        if (!w.inflight.empty() && !w.inflight.back().fully_written()) continue;
        if (!best) {
            best = slot;
            continue;
        }
        // The least loaded for its size (a group's queue is shared by its workers), then the one active last.
        const WorkerSlot& b = workers_[*best];
        const std::size_t w_load = w.load * workers_behind_locked(*best);
        const std::size_t b_load = b.load * workers_behind_locked(slot);
        if (w_load < b_load || (w_load == b_load && w.last_active_ns > b.last_active_ns)) {
            best = slot;
        }
    }
    return best;
}

/// True when a worker other than `slot` can be given work now or soon (alive, not being killed, with budget).
template <class Transport>
bool Scheduler<Transport>::another_worker_free_locked(std::size_t slot) const noexcept {
    for (std::size_t other = 0; other < workers_.size(); ++other) {
        if (other != slot && workers_[other].usable() && workers_[other].budget != 0) return true;
    }
    return false;
}

/// The next task for the worker in `slot`, cut from the front job's next segment; nothing when no job has unsent
/// items, or (`avoided`) when that segment is a retried item that avoids this slot and another worker can take it.
template <class Transport>
auto Scheduler<Transport>::next_task_locked(std::size_t slot, bool& avoided) -> std::optional<Task> {
    const WorkerSlot& w = workers_[slot];
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
        if (front.avoid_slot == slot && another_worker_free_locked(slot)) {
            avoided = true;
            return std::nullopt;
        }
        const std::uint64_t n = std::min<std::uint64_t>({chunk_size_locked(*job, front), front.count, w.budget});
        // Round-robin between jobs: the next task goes to the next job. The job goes to the back before anything is
        // cut from it, so that a std::bad_alloc there changes nothing; nothing after it throws.
        const bool job_done = n == front.count && job->ready.size() == 1;
        const bool rotate = !job_done && jobs_.size() > 1 && jobs_take_turns_;
        if (rotate) jobs_.push_back(job);  // (a deque's push_back leaves references to its elements valid)
        Task task;
        task.id = ++last_task_id_;
        task.job = job;
        if (n == front.count) {
            task.segment = std::move(front);
            job->ready.pop_front();
        } else {
            task.segment = front.take_front(n);
        }
        PROCPOOL_ASSERT(job->unsent_items >= n, "a job's unsent items count what its segments hold");
        job->unsent_items -= n;
        ++job->tasks_sent;
        if (job_done) job->queued = false;
        if (job_done || rotate) jobs_.pop_front();  // `job` refers to the front: not used after this
        return task;
    }
    return std::nullopt;
}

/// Items per task for `job`'s next task: the caller's chunksize, an imap's chunk as it was read, or map's automatic
/// size (detail/chunk_policy.hpp).
template <class Transport>
std::uint64_t Scheduler<Transport>::chunk_size_locked(const JobBase& job, const Segment& front) const noexcept {
    if (job.chunksize_ != 0) return job.chunksize_;
    if (job.presized_segments_) return front.count;
    ChunkPolicy::MapInputs in;
    in.unsent_items = job.unsent_items;
    in.workers = workers_.size();
    in.item_ns = job.item_ns.load(std::memory_order_relaxed);
    in.tasks_sent = job.tasks_sent;
    in.bytes_per_item = job.encoded_items == 0 ? 1 : std::max<std::uint64_t>(1, job.encoded_bytes / job.encoded_items);
    in.max_task_bytes = transport_.max_fragment() / 2;  // a task should fit one fragment: decoded in place, revocable
    in.target = settings_.chunk_target;
    if (grouped()) {
        // Tasks sized for a whole group: a group's pool splits each among its workers, so the time target scales
        // with the group (the parent's cost per item shrinks as groups grow).
        in.target *= static_cast<std::int64_t>(workers_per_slot());
    }
    return ChunkPolicy::map_chunk(in);
}

template <class Transport>
void Scheduler<Transport>::write_task_locked(std::size_t slot, Task& task) {
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
        if (grouped()) {
            // Where each item starts, for the group to split the task (stride, or 0 and the offsets). (A first
            // attempt that threw may have left part of it.)
            task.item_index.clear();
            task.header.flags |= kItemIndex;
            const ItemBlock& block = *task.segment.block;
            if (block.stride != 0) {
                task.item_index = {block.stride};
            } else {
                task.item_index.reserve(task.segment.count + 2);
                task.item_index.push_back(0);
                const std::uint64_t start = block.offset(task.segment.block_first);
                for (std::uint64_t i = 0; i <= task.segment.count; ++i) {
                    task.item_index.push_back(block.offset(task.segment.block_first + i) - start);
                }
            }
        }
        task.total = sizeof(TaskHeader) + align8(job.callable().size()) +
                     task.item_index.size() * sizeof(std::uint64_t) +
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
                            {task.item_index.data(), task.item_index.size() * sizeof(std::uint64_t)},
                            by_reference ? Piece{&reference, sizeof reference} : Piece{items.data(), items.size()}};
    // An unfinished message is continued by dispatch_locked() when the worker frees space.
    transport_.write(slot, kTaskMessage, pieces, task.total, task.written,
                     task.written == 0 ? &task.position : nullptr);
}

/// Moves unstarted tasks from busy workers to idle ones while no unsent work is left.
template <class Transport>
void Scheduler<Transport>::rebalance_locked() {
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
        const Task& last = from.inflight.back();
        // (A retried item stays off the worker slot it died in, as in next_task_locked().)
        if (last.segment.count > workers_[*idle].budget || last.segment.avoid_slot == *idle) return;
        workers_[*idle].inflight.reserve_one();  // before the take-back: a task taken back must not be lost
        std::optional<Task> taken = take_back_locked(*victim, from.inflight.size() - 1);
        if (!taken) return;
        send_task_locked(*idle, std::move(*taken));
    }
}

/// Gives `task` to the worker in `slot`, whose `inflight` has room for it (Fifo::reserve_one), so that a task cut
/// from its job or taken back from another worker cannot be lost: it is the worker's before anything can throw
/// (write_task_locked, whose unfinished message dispatch_locked() continues). A task that may be long never starts
/// kept off a CPU: the workers read the placement as they take a task, so it is released before the send.
template <class Transport>
void Scheduler<Transport>::send_task_locked(std::size_t slot, Task&& task) {
    if (placement_.kept_off() >= 0 && task.may_be_long()) place_workers_locked(-1);
    WorkerSlot& w = workers_[slot];
    w.budget -= task.segment.count;
    task.load = std::min<std::size_t>(task.segment.count, workers_behind_locked(slot));
    w.load += task.load;
    w.inflight.push_back(std::move(task));
    write_task_locked(slot, w.inflight.back());
}

template <class Transport>
auto Scheduler<Transport>::take_back_locked(std::size_t slot, std::size_t index) noexcept -> std::optional<Task> {
    static_assert(std::is_nothrow_move_constructible_v<Task>, "abandon() takes tasks back in a destructor");
    WorkerSlot& w = workers_[slot];
    Task& task = w.inflight[index];
    if (!task.fully_written() || task.fragmented || !transport_.revoke(slot, task.position)) return std::nullopt;
    std::optional<Task> taken(std::move(task));
    w.inflight.erase(index);  // the worker skips it (results come for the others, in order)
    w.load -= taken->load;
    w.budget += taken->segment.count;
    taken->written = taken->total = 0;
    taken->header.claim = kUnclaimed;
    return taken;
}

}  // namespace procpool::detail
