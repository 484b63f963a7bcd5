// procpool internals: the contract between the scheduler and a transport, the part that moves tasks to workers and
// results back (ForkTransport: forked workers and shared-memory rings; MpiTransport: MPI ranks).
//
// A transport is every `Transport` member below, plus the capabilities it has: each is a concept the scheduler
// tests with `if constexpr`, so a transport implements only what it can do and nothing empty. A new transport
// states what it is with static_asserts beside its class (see the end of fork_transport.hpp and mpi_transport.hpp),
// and tests/test_scheduler.cpp drives the scheduler through an in-process fake (tests/fake_transport.hpp) with
// the capabilities its decisions depend on (RevocableQueue, ReplaceableWorkers).
//
// Threads. The scheduler calls the members that touch one worker's queue of tasks (write, revoke, claimed,
// task_ring_head, status, respawn, signal) with its lock held, so they need no lock of their own. The members that
// read what workers sent (drain, take_space_freed, reports_pending, poll_report) are called by one thread at a time,
// the poller: the service thread, or a caller waiting for a result that polls itself. pending(), wait(), wake() and
// the doorbell members may be called by any thread at any time. shutdown(), terminate() and workers_gone() may be
// called with or without the scheduler's lock held (terminate() is, when the pool breaks), and from any thread;
// wait_workers_gone() from one thread at a time, without the lock.
//
// Messages. The wire format is the tasks' (detail/task.hpp): a task message (TaskHeader, callable, items) goes to a
// worker, result messages (ResultHeader, error records, values) come back, plus an exit message (kExitMessage, no
// body) that tells a worker to leave and an initializer failure (kInitFailedMessage, an encoded exception).
#pragma once

#include <chrono>
#include <concepts>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <sys/types.h>
#include <vector>

#include "procpool/detail/events.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/detail/ring.hpp"
#include "procpool/detail/shared_layout.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/options.hpp"

namespace procpool::detail {

/// What drain() hands each message to, for the concepts' sake (the scheduler passes a lambda).
using MessageHandlerArchetype = void (*)(std::uint16_t kind, std::span<const std::byte> bytes);
/// What wait() is asked to wait for.
using ReadyArchetype = bool (*)();

/// Every transport.
template <class T>
concept Transport = requires(T& transport, const T& constant, const PoolOptions& options, std::size_t slot,
                             std::uint16_t kind, std::span<const Piece> pieces, std::size_t& written,
                             std::uint64_t* first_position, MessageHandlerArchetype handler, Deadline deadline,
                             std::chrono::nanoseconds spin, ReadyArchetype ready, TaskEntry entry) {
    typename T::Config;
    /// The configuration for a pool built with `options`; throws std::invalid_argument for options it cannot honour.
    { T::make_config(options) } -> std::same_as<typename T::Config>;
    /// Built from its Config, a transport has started its workers (the constructor blocks until they run).
    requires std::constructible_from<T, typename T::Config>;
    /// Number of workers (slots); fixed for the transport's life.
    { constant.size() } -> std::same_as<std::size_t>;
    /// The workers' pids at start, in slot order.
    { constant.initial_pids() } -> std::convertible_to<const std::vector<pid_t>&>;
    /// Bytes a task should stay under to travel in one piece (the chunk policy sizes chunks by it).
    { constant.max_fragment() } -> std::same_as<std::uint64_t>;
    /// How a TaskHeader names the code to run (an address, or an id valid in another process image).
    { T::entry_id(entry) } -> std::same_as<std::uint64_t>;
    /// Writes as much as fits of a message of `total` bytes (the pieces back to back) to worker `slot`, continuing
    /// from `written` (updated); true once all of it is out. On the first call `first_position` (if given) receives
    /// the message's position in the worker's queue (for revoke() and claimed()). Scheduler's lock held.
    { transport.write(slot, kind, pieces, std::size_t{}, written, first_position) } -> std::same_as<bool>;
    {
        transport.write(slot, kind, pieces, std::size_t{}, written)
        } -> std::same_as<bool>;  // (first_position = nullptr)
    /// Hands each complete message worker `slot` sent to handler(kind, bytes); the bytes live during the call only.
    /// True if there was any. Poller only.
    { transport.drain(slot, handler) } -> std::same_as<bool>;
    /// True when something waits for the poller (a message, a report, freed space). Any thread.
    { transport.pending() } -> std::same_as<bool>;
    /// Waits until ready() or `deadline`, spinning for `spin` first. Any thread.
    {transport.wait(deadline, spin, ready)};
    /// Wakes a thread in wait(). Any thread.
    {transport.wake()};
    /// The workers leave once they have run what was sent and read their exit messages.
    {transport.shutdown()};
    /// The workers stop now; what they were running is lost.
    {transport.terminate()};
    /// True once the workers are gone or going (after shutdown(), terminate(), or a failure of the transport).
    { transport.workers_gone() } -> std::same_as<bool>;
    /// Blocks until every process the transport started has ended and is reaped. One thread at a time.
    {transport.wait_workers_gone()};
};

/// Messages larger than a worker's queue stream through it: write() may stop part way, and the transport says when
/// the worker freed space to go on (the scheduler then calls write() again for that message).
template <class T>
concept StreamingWrites = Transport<T> && requires(T& transport) {
    /// True (once) after a worker freed space that a partly written message waits for. Poller only.
    { transport.take_space_freed() } -> std::same_as<bool>;
};

/// A task queued behind a worker's running one can be taken back, to give it to an idle worker (rebalancing).
template <class T>
concept RevocableQueue = Transport<T> && requires(T& transport, std::size_t slot, std::uint64_t position) {
    /// Takes back the unclaimed task message at `position`; true if the worker will now skip it.
    { transport.revoke(slot, position) } -> std::same_as<bool>;
};

/// Workers can be signalled and replaced, and say what they run: what task_timeout, max_tasks_per_child, crash
/// isolation and the initializer's failure need. Their life-cycle events come as reports.
template <class T>
concept ReplaceableWorkers = Transport<T> &&
    requires(T& transport, const T& constant, std::size_t slot, std::uint64_t position, int signal) {
    /// Sends `signal` to the worker in `slot`.
    {transport.signal(slot, signal)};
    /// Resets the slot's queues and starts a new worker in it (a kWorkerSpawned or kSpawnFailed report follows).
    {transport.respawn(slot)};
    /// What the worker in `slot` runs now (task, item, its start), and whether its initializer returned.
    { constant.status(slot) } -> std::same_as<const WorkerStatus&>;
    /// Whether the worker claimed the task message at `position` (valid while position >= task_ring_head()).
    { transport.claimed(slot, position) } -> std::same_as<bool>;
    /// Where the worker's next unread task message starts: messages before it were consumed.
    { constant.task_ring_head(slot) } -> std::same_as<std::uint64_t>;
    /// True when a life-cycle report waits. Poller only.
    { constant.reports_pending() } -> std::same_as<bool>;
    /// The next report (a worker started, exited or could not be started), if one waits. Poller only.
    { transport.poll_report() } -> std::same_as<std::optional<WorkerEvent>>;
    /// Reports consumed while the transport was being built (workers that died at once), for the scheduler.
    { transport.take_early_exits() } -> std::same_as<std::vector<WorkerEvent>>;
};

/// The workers share the caller's memory: shared objects (SharedArray, Lock...) travel as handles, and large inputs
/// encoded into the bulk arena travel by reference.
template <class T>
concept SharedMemoryWorkers = Transport<T> && requires(std::span<const std::byte> bytes) {
    /// Whether the workers can read `bytes` where they are.
    { T::readable_by_workers(bytes) } -> std::same_as<bool>;
};

/// Each slot may be a group of workers with a pool of its own (an MPI rank running a fork pool): a task sent to a
/// group carries an item index (TaskHeader flag kItemIndex) so the group can split it among its workers, the
/// scheduler sizes tasks for a whole group and keeps each group two deep for every one of its workers, and the
/// pool's size and pids are the groups' workers.
template <class T>
concept WorkerGroups = Transport<T> && requires(T& transport, const T& constant, std::size_t slot) {
    /// Whether slots are groups now (a transport may also run one worker per slot).
    { constant.grouped() } -> std::same_as<bool>;
    /// Workers behind `slot`: 1 unless grouped.
    { constant.workers_in_slot(slot) } -> std::same_as<std::size_t>;
    /// Every group's workers' pids, as last reported.
    { transport.worker_pids() } -> std::same_as<std::vector<pid_t>>;
};

/// The workers ring a doorbell to wake the thread in wait(); while a caller polls for its own result, the poller
/// silences it (a wake-up would only wake the service thread for nothing).
template <class T>
concept MutableDoorbell = Transport<T> && requires(T& transport) {
    {transport.mute_doorbell()};
    {transport.unmute_doorbell()};
};

/// The workers run on this machine and keep off a CPU the parent names (WorkerPlacement), each from its next task on.
template <class T>
concept PlaceableWorkers = Transport<T> && requires(T& transport, int cpu) {
    {transport.keep_workers_off(cpu)};
};

/// The workers can hold back the doorbell for a result while enough tasks wait behind the one they run, so that
/// the parent wakes once for several results (short tasks, deep queues). While that is on (`low_water` > 0), the
/// transport's wait() looks at least every so often by itself, which bounds how long a held-back result waits.
template <class T>
concept BatchedResultBells = Transport<T> && requires(T& transport, std::uint32_t low_water) {
    {transport.set_result_bell_low_water(low_water)};
};

}  // namespace procpool::detail
