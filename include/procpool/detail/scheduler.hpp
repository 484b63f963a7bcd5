// procpool internals: the scheduler, the parent's side of a pool, written against a Transport (detail/transport.hpp).
//
// Jobs wait in a FIFO. Workers are kept `depth` tasks deep (one running, the next ones already in the worker's task
// ring so it never waits for a round trip); a worker that runs dry while others still have unstarted tasks queued
// takes one of them over (the parent revokes it in the other task ring with a compare-exchange the worker races).
// Chunk sizes and depths come from detail/chunk_policy.hpp.
//
// The service thread (or a caller waiting for a result, when it is the poller) drains result rings, routes results
// to their jobs, handles the workers' life-cycle reports (crashes, replacements) and moves the life cycle along.
//
// This file is the table of contents: the class with its data and one line per member. The bodies are in
// detail/scheduler/, one file per responsibility:
//   submission.hpp  the public calls and the job queue      dispatch.hpp  tasks to workers, rebalancing
//   polling.hpp     the poller and the service thread       results.hpp   result messages to their jobs
//   workers.hpp     worker life cycle: deaths (with detail/crash_attribution.hpp), replacements, timeouts, failures
//
// Locks. `mutex_` guards everything mutable here except what the poller alone touches (completions_, batch_; noted).
// `poller_mutex_` is the right to be the poller. Jobs run user callbacks: never call into a job under `mutex_`.
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
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "procpool/async_result.hpp"
#include "procpool/detail/assert.hpp"
#include "procpool/detail/chunk_policy.hpp"
#include "procpool/detail/crash_attribution.hpp"
#include "procpool/detail/events.hpp"
#include "procpool/detail/exceptions.hpp"
#include "procpool/detail/fifo.hpp"
#include "procpool/detail/jobs.hpp"
#include "procpool/detail/process.hpp"
#include "procpool/detail/spin.hpp"
#include "procpool/detail/spin_mutex.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/detail/transport.hpp"
#include "procpool/detail/worker_placement.hpp"
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
    std::size_t retries = 0;                                                // PoolOptions::retries
    std::chrono::nanoseconds service_spin = std::chrono::microseconds(50);  // the service thread polls before it sleeps
    std::chrono::nanoseconds chunk_target = ChunkPolicy::kMapChunkTarget;
    std::chrono::nanoseconds queue_target = ChunkPolicy::kQueueTarget;
    std::size_t max_depth = ChunkPolicy::kMaxDepth;
    std::chrono::nanoseconds kill_grace = std::chrono::milliseconds(250);  // SIGTERM, then SIGKILL after this
    std::chrono::nanoseconds housekeeping_period = std::chrono::milliseconds(50);
};

template <class Transport>
class Scheduler final : public WaitHelper {
    static_assert(detail::Transport<Transport>, "the scheduler needs a transport (detail/transport.hpp)");

public:
    /// Takes over the transport's workers and starts the service thread.
    Scheduler(Transport& transport, SchedulerSettings settings);
    /// terminate() unless joined (in a process forked after the pool was built: nothing).
    ~Scheduler();
    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;

    /// Workers: one per slot, or every group's (WorkerGroups).
    [[nodiscard]] std::size_t size() const noexcept { return total_workers_; }
    /// Workers behind each slot on average: 1, or a group's (automatic chunks are sized for a whole group).
    [[nodiscard]] std::size_t workers_per_slot() const noexcept {
        return std::max<std::size_t>(1, total_workers_ / std::max<std::size_t>(1, workers_.size()));
    }
    std::vector<pid_t> worker_pids() const;

    // ---- submission (any thread; submission.hpp) ----
    void submit(const std::shared_ptr<JobBase>& job, Segment items);
    void extend(const std::shared_ptr<JobBase>& job, std::vector<Segment>& segments);  // moves them out
    void abandon(JobBase& job);

    // ---- life cycle (any thread; submission.hpp) ----
    void close();
    void join();
    void terminate();
    void check_owner() const override;
    [[nodiscard]] bool closed() const;
    /// Whether jobs with unsent items take turns, a task each (the default: a long map does not hold up an
    /// apply_async submitted after it), or go in submission order (a group's server: each task it received then
    /// finishes as soon as it can, and fewer run at once). Call before the first submission.
    void set_jobs_take_turns(bool take_turns) {
        std::lock_guard lock(mutex_);
        jobs_take_turns_ = take_turns;
    }
    /// Once the pool broke (an initializer failed, the fork server died): the error its items failed with, naming
    /// the cause. Otherwise null. Never blocks: for a group's server, whose pool breaks on another thread.
    [[nodiscard]] std::exception_ptr broken_error() const noexcept;

    // ---- WaitHelper: a caller waiting for a result polls the rings itself (polling.hpp) ----
    Outcome help(bool (*ready)(const void*), const void* context, std::chrono::nanoseconds budget,
                 Deadline deadline) noexcept override;

private:
    static constexpr std::size_t kUnlimited = ~std::size_t{0};
    /// How long worker_pids() waits for replacements at most (a fork takes well under a millisecond; a failed one is
    /// retried after kForkRetryDelay).
    static constexpr std::chrono::milliseconds kReplacementWait{1000};
    /// A fork that failed (transient memory or process-count pressure) is retried after this.
    static constexpr std::chrono::milliseconds kForkRetryDelay{100};
    /// Workers in a row that may be killed (SIGKILL from outside) while their initializer runs before the pool
    /// gives up and breaks.
    static constexpr int kMaxFailedStarts = 3;
    /// With more tasks than this in a worker's queue (its running one included), it holds back the doorbell for a
    /// result until the queue runs down to this (BatchedResultBells): two behind the running one cover the refill.
    static constexpr std::uint32_t kResultBellLowWater = 2;
    /// Items of at least this many bytes go by reference when the workers can read them where they are.
    static constexpr std::size_t kByReferenceMin = std::size_t{16} << 10;

    enum class State { running, closed, joining, terminated, broken };
    enum class Phase { starting, running, exiting, dead };

    /// A chunk of a job sent (or being sent) to one worker.
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
        std::vector<std::uint64_t> item_index;  // the ItemIndex a group of workers receives (WorkerGroups)
        std::size_t load = 1;  // the workers it can keep busy: its items, at most the workers behind its slot
        /// False until its message is built (total != 0) and all of it is in the worker's ring: a task whose
        /// message could not be built (std::bad_alloc) is built and written by the next dispatch.
        [[nodiscard]] bool fully_written() const noexcept { return total != 0 && written == total; }
        /// Whether it may be long (WorkerPlacement::long_task, by its job's item time): it runs with every CPU.
        [[nodiscard]] bool may_be_long() const noexcept {
            return WorkerPlacement::long_task(job->item_ns.load(std::memory_order_relaxed), segment.count);
        }
    };

    /// The parent's record of one worker slot.
    struct WorkerSlot {
        Phase phase = Phase::starting;
        pid_t pid = 0;
        Fifo<Task, 4> inflight;           // in task ring order; only the front can be running
        std::size_t load = 0;             // the inflight tasks' `load` summed: inflight.size() for one worker
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

    /// What a result message took from its task under mutex_ (take_result_locked), to deliver without it.
    struct TakenResult {
        ResultHeader header{};
        std::shared_ptr<JobBase> job;                     // null: nothing to deliver (malformed, or the pool failed)
        std::shared_ptr<const ItemBlock> finished_input;  // the task's input once its last result is in: freed first
        std::uint64_t first = 0;                          // the job index of the message's first item
    };

    /// Small result messages read in one poll pass, copied out of the rings so that one hold of mutex_ takes all
    /// their tasks (flush_results()) rather than one hold each: during an apply_async burst a pass reads a hundred
    /// results while the submitting thread takes the same lock for every task. Sized at construction, so the poll
    /// path allocates nothing for it. The poller's.
    struct ResultBatch {
        static constexpr std::size_t kMaxMessages = 256;
        static constexpr std::size_t kMaxMessageBytes = 128;  // larger ones are handled as they are read
        struct Entry {
            std::size_t slot;
            std::size_t size;     // its bytes: kMaxMessageBytes apart in `bytes`, in entry order
            TakenResult taken{};  // filled under mutex_ by flush_results()
        };
        std::vector<Entry> entries;
        std::vector<std::byte> bytes;
        ResultBatch() {
            entries.reserve(kMaxMessages);
            bytes.resize(kMaxMessages * kMaxMessageBytes);
        }
        [[nodiscard]] bool full() const noexcept { return entries.size() == kMaxMessages; }
        [[nodiscard]] std::span<const std::byte> message(std::size_t i) const noexcept {
            return {bytes.data() + i * kMaxMessageBytes, entries[i].size};
        }
    };

    /// Results read but not yet applied to the estimates and the dispatch (the poller's, between two passes).
    struct Completion {
        std::size_t slot;
        std::shared_ptr<JobBase> job;
        std::uint64_t count;
        std::uint64_t busy_ns;
        bool final;
    };

    /// Items that failed, to tell their job once mutex_ is released.
    struct Failure {
        std::shared_ptr<JobBase> job;
        Segment segment;
        std::exception_ptr error;
    };

    using JobSegments = std::vector<std::pair<std::shared_ptr<JobBase>, Segment>>;

    // ---- submission and the job queue (mutex_ held; submission.hpp) ----
    void check_open_locked() const;
    [[noreturn]] void throw_state_error_locked() const;
    void add_segment_locked(JobBase& job, Segment segment);
    void enqueue_locked(const std::shared_ptr<JobBase>& job, bool front = false);
    [[nodiscard]] bool unsent_work_locked() const noexcept;
    [[nodiscard]] bool work_left_locked() const noexcept;

    // ---- dispatch (mutex_ held; dispatch.hpp) ----
    void dispatch_locked();
    void dispatch_or_leave_locked() noexcept;
    void send_task_locked(std::size_t slot, Task&& task);
    [[nodiscard]] std::size_t depth_locked(std::size_t slot) const noexcept;
    [[nodiscard]] std::size_t workers_behind_locked(std::size_t slot) const noexcept;
    /// The worker to send the next task to; `passed` marks slots to skip (empty: none).
    [[nodiscard]] std::optional<std::size_t> pick_worker_locked(const std::vector<bool>& passed) const noexcept;
    std::optional<Task> next_task_locked(std::size_t slot, bool& avoided);
    [[nodiscard]] bool another_worker_free_locked(std::size_t slot) const noexcept;
    [[nodiscard]] std::uint64_t chunk_size_locked(const JobBase& job, const Segment& front) const noexcept;
    void write_task_locked(std::size_t slot, Task& task);
    void rebalance_locked();
    /// Takes task `index` of `slot`'s queue back from its worker if no worker has claimed it (fully written, in one
    /// piece, revoked from the task ring): the slot's load and budget no longer count it, and it is ready to be
    /// written again. Nothing, and nothing changed, otherwise. Only where the transport can revoke.
    std::optional<Task> take_back_locked(std::size_t slot, std::size_t index) noexcept;

    // ---- the poller and the service thread (polling.hpp) ----
    bool poll_rings();
    bool poll_spinning(bool (*ready)(const void*), const void* context, std::chrono::nanoseconds budget);
    bool poll_sleeping(bool (*ready)(const void*), const void* context, Deadline deadline);
    void service_loop();
    void take_poller_role(std::unique_lock<std::mutex>& role);
    void wake_service() noexcept;
    void handle_event(const WorkerEvent& event);
    std::optional<std::int64_t> housekeeping();
    void send_shutdown_locked();
    [[nodiscard]] bool in_callback_thread() const noexcept;
    [[nodiscard]] bool spinning_pays() const noexcept;
    void stop_service();

    // ---- results (poller; results.hpp) ----
    void handle_message(std::size_t slot, std::uint16_t kind, std::span<const std::byte> bytes);
    void handle_result(std::size_t slot, std::span<const std::byte> bytes);
    void stash_result(std::size_t slot, std::span<const std::byte> bytes);
    void flush_results();
    [[nodiscard]] bool take_result_locked(std::size_t slot, std::span<const std::byte> bytes, TakenResult& taken);
    void deliver_taken(std::size_t slot, std::span<const std::byte> bytes, TakenResult& taken);
    void finish_completions();
    void protocol_error_locked(std::size_t slot, const char* what);

    // ---- worker life cycle, deaths, timeouts, failures (mutex_ held unless noted; workers.hpp) ----
    [[nodiscard]] bool every_worker_started_locked() const noexcept;
    [[nodiscard]] bool grouped() const noexcept;
    [[nodiscard]] bool workers_gone_locked() const noexcept;
    void handle_report(const WorkerEvent& report);
    void handle_exit(const WorkerEvent& report);
    void requeue_unstarted_locked(std::size_t slot);
    void requeue_front_locked(JobSegments& back_to_queue);
    void requeue_or_fail_locked(std::size_t slot, const WorkerEvent& report);
    void fail_or_retry_locked(std::size_t slot, std::shared_ptr<JobBase> job, Segment segment,
                              const std::exception_ptr& error, JobSegments& retried);
    std::int64_t check_timeouts_locked(std::int64_t now);
    std::int64_t kill_late_workers_locked(std::int64_t now);
    void break_locked(const std::string& reason, std::exception_ptr cause = nullptr);
    void fail_everything_locked(const std::exception_ptr& error, State final_state);
    void deliver_failures();  // (without mutex_)

    // ---- worker placement (placement_; results.hpp) ----
    void note_caller_cpu() noexcept;
    void note_submission_locked() noexcept;
    void place_workers_locked(int cpu) noexcept;
    [[nodiscard]] bool long_work_inflight_locked() const noexcept;

    Transport& transport_;
    const SchedulerSettings settings_;
    mutable SpinMutex mutex_;
    mutable std::condition_variable_any idle_cv_;  // work done, a state change, a worker started
    std::mutex lifecycle_mutex_;                   // one thread stops the service, the others wait for it
    State state_ = State::running;
    std::string broken_reason_;
    std::exception_ptr broken_error_;  // set once, before broken_ says so
    std::atomic<bool> broken_{false};
    std::exception_ptr init_error_;
    bool shutdown_sent_ = false;
    bool jobs_take_turns_ = true;
    std::deque<std::shared_ptr<JobBase>> jobs_;  // jobs with unsent items, in submission order (round-robin)
    std::vector<Failure> failures_;              // to deliver once mutex_ is released
    std::vector<WorkerSlot> workers_;
    std::size_t total_workers_ = 0;  // size(): the slots, or the workers of every group
    std::uint64_t last_task_id_ = 0;
    double task_ns_ = 0;                   // moving average of worker time per task
    std::atomic<double> task_ns_seen_{0};  // the same, for threads that do not hold mutex_
    bool spare_core_ = false;              // more usable CPUs than workers: a parent thread may spin for free
    WorkerPlacement placement_;            // where the workers run during streams of tiny tasks (mutex_)
    std::atomic<int> caller_cpu_{-1};      // the CPU of the thread that last submitted or polled, for placement_
    std::atomic<bool> stop_requested_{false};
    unsigned generation_;                    // fork_generation() where the pool was built
    std::vector<WorkerEvent> early_events_;  // deaths seen while the pool was built, for the service thread
    std::atomic<std::thread::id> service_id_{};
    std::atomic<std::thread::id> poller_id_{};  // a caller waiting for a result that is the poller now
    std::mutex poller_mutex_;                   // the right to read the result rings and the life-cycle reports
    std::vector<std::shared_ptr<const ItemBlock>> inputs_until_exit_;  // of tasks failed while workers ran them
    std::vector<Completion> completions_;   // results read but not yet applied (the poller's)
    ResultBatch batch_;                     // small results read but not yet taken (the poller's)
    bool dispatch_owed_ = false;            // a result delivered without its Completion: dispatch anyway (poller's)
    std::atomic<int> polling_waiters_{0};   // callers waiting for a result that poll instead of the service thread
    std::atomic<int> sleeping_pollers_{0};  // of them, one asleep on the workers' doorbell (poll_sleeping)
    std::atomic<bool> role_wanted_{false};  // the service thread waits for the poller role (housekeeping)
    Doorbell service_bell_;                 // the service thread sleeps here while a waiting caller is the poller
    std::unique_ptr<std::thread> service_;
};

template <class Transport>
Scheduler<Transport>::Scheduler(Transport& transport, SchedulerSettings settings)
    : transport_(transport), settings_(settings), workers_(transport.size()), generation_(fork_generation()) {
    const auto& pids = transport_.initial_pids();
    PROCPOOL_ASSERT(pids.size() == workers_.size(), "a transport reports one pid per worker slot");
    PROCPOOL_ASSERT(ReplaceableWorkers<Transport> ||
                        (!settings_.task_timeout && !settings_.max_tasks_per_child && settings_.retries == 0),
                    "timeouts, recycling and retries need workers the scheduler can stop and replace");
    for (std::size_t i = 0; i < workers_.size(); ++i) {
        workers_[i].pid = pids[i];
        workers_[i].phase = Phase::running;
        workers_[i].budget = settings_.max_tasks_per_child.value_or(kUnlimited);
        if constexpr (WorkerGroups<Transport>) {
            total_workers_ += transport_.workers_in_slot(i);
        } else {
            ++total_workers_;
        }
    }
    spare_core_ = usable_cpu_count() > total_workers_;
    if constexpr (PlaceableWorkers<Transport>) placement_ = WorkerPlacement(total_workers_);
    // Workers that died while the pool was being built are handled by the service thread like any other death (it
    // first reads what they sent, an initializer's error for instance).
    if constexpr (ReplaceableWorkers<Transport>) early_events_ = transport_.take_early_exits();
    service_ = std::make_unique<std::thread>([this] { service_loop(); });
}

template <class Transport>
Scheduler<Transport>::~Scheduler() {
    if (fork_generation() != generation_) {
        // In a process forked after the pool was built the service thread does not exist, and the workers belong to
        // the original process: touch nothing.
        (void)service_.release();  // NOLINT: deliberately leaked; destroying it would std::terminate
        return;
    }
    if (service_->joinable()) terminate();
}

}  // namespace procpool::detail

#include "procpool/detail/scheduler/dispatch.hpp"
#include "procpool/detail/scheduler/polling.hpp"
#include "procpool/detail/scheduler/results.hpp"
#include "procpool/detail/scheduler/submission.hpp"
#include "procpool/detail/scheduler/workers.hpp"
