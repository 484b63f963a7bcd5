// procpool internals: crash attribution, deciding which items a worker that died was holding.
//
// When a worker dies, the parent knows the tasks it had sent it (in queue order, with how many items of each were
// delivered back) and reads what the worker published: the task and item it was running, when that item started,
// how far it consumed its task ring, and whether it claimed the first task's message. From these alone (a pure
// function, tested in tests/test_scheduler.cpp) it decides each task's fate: the items that may have run and were not
// delivered fail with WorkerCrashed (or, for the item the pool killed past task_timeout, TaskTimeout); everything the
// worker never started goes back to the queue, to run on another worker. No item runs twice.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace procpool::detail {

/// One task the dead worker held, as the parent recorded it.
struct HeldTask {
    std::uint64_t id = 0;
    std::uint64_t items = 0;      // items in the task
    std::uint64_t delivered = 0;  // items whose results arrived (a prefix)
    bool sent = false;            // any of its message was written to the worker's task ring
    std::uint64_t position = 0;   // where its message starts in the task ring
};

/// What the dead worker published, read after its death.
struct DeathFacts {
    std::uint64_t running_task = 0;   // task it was running, 0 between tasks
    std::uint64_t running_item = 0;   // item (within that task) it was running
    std::int64_t item_start_ns = 0;   // when that item started (timed tasks only)
    std::uint64_t ring_head = 0;      // task-ring position up to which it consumed messages
    bool first_task_claimed = false;  // it claimed the first held task's message (and may have died before saying so)
    /// The pool was killing it because an item ran past task_timeout: which one, and that item's start time.
    struct TimeoutKill {
        std::uint64_t task = 0;
        std::uint64_t item = 0;
        std::int64_t start_ns = 0;
    };
    std::optional<TimeoutKill> timeout_kill;
};

/// A held task's fate, over its undelivered items in order: `crashed` of them fail with WorkerCrashed, then one more
/// fails with TaskTimeout if `timed_out`, and the rest go back to the queue.
struct TaskFate {
    std::uint64_t crashed = 0;
    bool timed_out = false;
    [[nodiscard]] std::uint64_t failed() const noexcept { return crashed + (timed_out ? 1 : 0); }
};

/// The fate of each of `held` (in the order the worker got them) after the worker's death described by `facts`.
inline std::vector<TaskFate> attribute_death(std::span<const HeldTask> held, const DeathFacts& facts) {
    std::vector<TaskFate> fates(held.size());
    for (std::size_t i = 0; i < held.size(); ++i) {
        const HeldTask& task = held[i];
        const std::uint64_t undelivered = task.items - std::min(task.delivered, task.items);
        // Only the first task can have been started: a worker claims the next one after it delivered the previous
        // one's final result (which the parent read before it handles the death).
        bool started = false;
        std::uint64_t through = task.delivered;  // task-relative index of the last item that may have run
        const bool running_it = facts.running_task == task.id;
        if (i == 0 && task.sent) {
            if (running_it) {
                started = true;
                through = std::max(through, facts.running_item);
            } else {
                // Consumed from the ring, or claimed and died before saying which item it ran.
                started = facts.ring_head > task.position || facts.first_task_claimed;
            }
        }
        if (!started) continue;  // everything goes back to the queue
        TaskFate& fate = fates[i];
        if (facts.timeout_kill) {
            // Killed by the pool for a late item. With a timeout every finished item is sent before the next starts,
            // so normally nothing before the current item is missing; if something is (it died while sending), it is
            // lost. The late item fails with TaskTimeout; an item it started after finishing the late one just
            // before the signal landed is innocent and goes back to the queue.
            const DeathFacts::TimeoutKill& kill = *facts.timeout_kill;
            const bool guilty = running_it && facts.running_item == kill.item && kill.task == task.id &&
                                facts.item_start_ns == kill.start_ns;
            const std::uint64_t current = running_it ? facts.running_item : task.delivered;
            if (current > task.delivered) fate.crashed = std::min(current - task.delivered, undelivered);
            fate.timed_out = guilty && fate.crashed < undelivered;
        } else {
            fate.crashed = std::min(through - task.delivered + 1, undelivered);
        }
    }
    return fates;
}

}  // namespace procpool::detail
