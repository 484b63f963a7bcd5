// procpool internals: the MPI transport, rank 0's side of the pool over MPI ranks.
//
// The wire format is the fork transport's (TaskHeader/ResultHeader messages), one MPI message each, the message kind in
// the tag. Sends are MPI_Isend from buffers the transport keeps until they complete, so the scheduler never blocks on
// a busy rank. Every MPI call on rank 0 goes through one mutex (MPI_THREAD_SERIALIZED): the service thread, a thread
// waiting for a result and submitting threads all use MPI.
//
// Two layouts (MpiLayout, chosen by procpool::mpi::Session):
//   fork_pool_per_rank (the default)  every rank, rank 0 included, is a group of workers: a fork pool of its own
//       (detail/rank_server.hpp) that splits each task it receives among its workers. The slots are the ranks; slot 0
//       is rank 0's own pool, reached in-process. Crashes, timeouts, recycling, memory limits and retries are each
//       rank's pool's business, so they work as on one machine; the scheduler here sizes tasks for whole ranks.
//   one_worker_per_rank  ranks 1..N-1 each run tasks themselves (detail/mpi_worker.hpp); slot i is rank i + 1. No
//       queued task can be taken back from a rank, and no rank can be signalled or replaced: the options that need it
//       are refused.
// With Open MPI's default error handling a rank that dies ends the whole job: mpirun reports which rank died and of
// what, and kills the others (Open MPI 4.1 has no ULFM fault tolerance).
#pragma once

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/events.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/detail/mpi_world.hpp"
#include "procpool/detail/process.hpp"
#include "procpool/detail/rank_server.hpp"
#include "procpool/detail/ring.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/detail/transport.hpp"
#include "procpool/options.hpp"

namespace procpool::detail {

/// MPI ranks as workers, or as groups of workers (WorkerGroups). Of the other capabilities of detail/transport.hpp
/// it has none: a rank's queued tasks cannot be taken back, a rank cannot be signalled or replaced, ranks share no
/// memory, and whole messages are sent at once.
class MpiTransport {
public:
    struct Config {
        MPI_Comm comm = MPI_COMM_WORLD;
        bool grouped = true;                        // fork_pool_per_rank
        std::size_t slots = 0;                      // ranks with work to do
        std::vector<std::size_t> workers_per_slot;  // grouped: each rank's pool size
        std::uint64_t max_message = std::uint64_t{64} << 20;
        PoolOptions local_options;  // grouped: rank 0's own pool
    };

    /// The configuration for a pool over the ranks of the session. Throws std::invalid_argument for options the
    /// layout cannot honour (one worker per rank: a `processes` other than the ranks', timeouts, recycling, retries),
    /// and when there is no rank to run tasks.
    static Config make_config(const PoolOptions& options) {
        const MpiWorld& world = MpiWorld::instance();
        if (!world.ready()) {
            throw std::logic_error("procpool: make the MPI pool through procpool::mpi::Session (it starts MPI)");
        }
        Config config;
        config.comm = world.comm;
        if (world.layout == MpiLayout::fork_pool_per_rank) {
            config.grouped = true;
            config.slots = static_cast<std::size_t>(world.size);
            config.workers_per_slot = world.rank_workers;
            config.local_options = options;
            config.local_options.processes = world.rank_workers.at(0);
            return config;
        }
        const int size = world.size;
        if (size < 2) {
            throw std::invalid_argument(
                "procpool: with one worker per rank the MPI pool needs at least 2 ranks: rank 0 runs the program, "
                "the others run tasks (mpirun -n 3 ...)");
        }
        if (options.processes && *options.processes != static_cast<std::size_t>(size - 1)) {
            throw std::invalid_argument(
                "procpool: with one worker per rank the MPI pool has one worker per rank "
                "other than 0 (" +
                std::to_string(size - 1) + "); set `processes` to that or leave it empty");
        }
        if (options.task_timeout || options.max_tasks_per_child || options.retries != 0) {
            throw std::invalid_argument(
                "procpool: task_timeout, max_tasks_per_child and retries need workers the pool can stop and "
                "replace: with one worker per rank MPI ranks are not (the default layout, a fork pool per rank, has "
                "them)");
        }
        config.grouped = false;
        config.slots = static_cast<std::size_t>(size - 1);
        config.workers_per_slot.assign(config.slots, 1);
        return config;
    }

    /// Grouped: starts rank 0's own pool (its workers fork now). Throws PoolStateError when the session's other
    /// ranks were stopped already (one pool per session).
    explicit MpiTransport(Config config)
        : config_(std::move(config)), world_(MpiWorld::instance()), mutex_(world_.mutex), received_(config_.slots),
          rank_pids_(static_cast<std::size_t>(world_.size)) {
        {
            std::lock_guard lock(mutex_);
            if (world_.finished || std::count(world_.exit_sent.begin(), world_.exit_sent.end(), true) != 0) {
                throw PoolStateError("procpool: the MPI worker ranks were already stopped (one pool per session)");
            }
        }
        if (config_.grouped) {
            local_ = std::make_unique<RankServer>(
                config_.local_options, world_.where(0),
                [this](Buffer message) {
                    {
                        std::lock_guard lock(mutex_);
                        received_[0].push_back(Received{kResultMessage, std::move(message)});
                    }
                    local_ready_.notify_all();
                },
                &resolve_task_names);
            initial_pids_ = world_.rank_pids;
        } else {
            initial_pids_.assign(world_.rank_pids.begin() + 1, world_.rank_pids.end());
        }
    }
    MpiTransport(const MpiTransport&) = delete;
    MpiTransport& operator=(const MpiTransport&) = delete;
    ~MpiTransport() {
        if (local_) local_->terminate();
        std::lock_guard lock(mutex_);
        for (Send& send : sends_) MPI_Wait(&send.request, MPI_STATUS_IGNORE);
    }

    [[nodiscard]] std::size_t size() const noexcept { return config_.slots; }
    [[nodiscard]] std::uint64_t max_fragment() const noexcept { return config_.max_message; }
    [[nodiscard]] static std::uint64_t entry_id(TaskEntry entry) { return mpi_entry_id(entry); }
    /// One pid per slot: the ranks' processes.
    [[nodiscard]] const std::vector<pid_t>& initial_pids() const noexcept { return initial_pids_; }

    // ---- WorkerGroups ----
    [[nodiscard]] bool grouped() const noexcept { return config_.grouped; }
    [[nodiscard]] std::size_t workers_in_slot(std::size_t slot) const noexcept {
        return config_.workers_per_slot[slot];
    }
    /// Every rank's pool's workers, as each last reported (rank 0's: now).
    std::vector<pid_t> worker_pids() {
        std::vector<pid_t> pids = local_ ? local_->worker_pids() : std::vector<pid_t>();
        receive_all();
        std::lock_guard lock(mutex_);
        for (std::size_t rank = 1; rank < rank_pids_.size(); ++rank) {
            pids.insert(pids.end(), rank_pids_[rank].begin(), rank_pids_[rank].end());
        }
        return pids;
    }

    /// Sends a whole message to `slot`; never blocks (for rank 0's own pool: hands it the task), always complete.
    bool write(std::size_t slot, std::uint16_t kind, std::span<const Piece> pieces, std::size_t total,
               std::size_t& written, std::uint64_t* = nullptr) {
        if (total > static_cast<std::size_t>(INT32_MAX)) {
            throw SerializationError("procpool: an MPI message over 2 GiB");
        }
        written = total;
        if (config_.grouped && slot == 0) return write_local(kind, pieces, total);
        const int rank = rank_of(slot);
        std::lock_guard lock(mutex_);
        if (kind == kExitMessage) {
            world_.send_exit_locked(rank);
            return true;
        }
        Buffer buffer(total);
        for (const Piece& piece : pieces) buffer.append(piece.data, piece.size);
        translate_code_pointer_callable(buffer.data(), true);  // a function pointer means nothing on another rank
        sends_.push_back(Send{std::move(buffer), MPI_REQUEST_NULL});
        Send& send = sends_.back();
        MPI_Isend(send.buffer.data(), static_cast<int>(total), MPI_BYTE, rank, kMpiTask, config_.comm, &send.request);
        reap_sends_locked();
        return true;
    }

    /// Hands every complete message from `slot` to `handler(kind, bytes)`. Returns true if any.
    template <class Handler>
    bool drain(std::size_t slot, Handler&& handler) {
        receive_all();
        std::deque<Received>& queue = received_[slot];
        bool any = false;
        while (true) {
            Received message;
            {
                std::lock_guard lock(mutex_);
                if (queue.empty()) break;
                message = std::move(queue.front());
                queue.pop_front();
            }
            any = true;
            handler(message.kind, message.bytes.view());
        }
        return any;
    }

    [[nodiscard]] bool pending() {
        receive_all();
        std::lock_guard lock(mutex_);
        for (const auto& queue : received_) {
            if (!queue.empty()) return true;
        }
        return false;
    }
    /// Polls until `ready()` or `deadline`, backing off to 1 ms between looks (MPI has no blocking wait that an
    /// in-process event can interrupt); a result of rank 0's own pool ends a pause at once.
    template <class Ready>
    void wait(Deadline deadline, std::chrono::nanoseconds spin, Ready&& ready) {
        const auto start = MonotonicClock::now();
        auto pause = std::chrono::microseconds(5);
        while (!ready()) {
            const auto now = MonotonicClock::now();
            if (deadline && now >= *deadline) return;
            if (now - start >= spin) {
                std::unique_lock lock(local_mutex_);
                local_ready_.wait_for(lock, pause);
                pause = std::min(pause * 2, std::chrono::microseconds(1000));
            }
        }
    }
    void wake() noexcept { local_ready_.notify_all(); }
    /// Plays the fork server's part in the life cycle: gone once every rank was told to stop.
    [[nodiscard]] bool workers_gone() {
        std::lock_guard lock(mutex_);
        const auto told = std::count(world_.exit_sent.begin() + (config_.grouped ? 0 : 1), world_.exit_sent.end(),
                                     true);
        return static_cast<std::size_t>(told) == config_.slots;
    }
    /// Nothing to reap: the other ranks' goodbyes are collected by the session (MpiWorld::finish) before
    /// MPI_Finalize, and rank 0's own pool is reaped when it is stopped.
    void wait_workers_gone() noexcept {}
    /// Every rank stops once the task it runs is done (a rank's pool: once its queue is empty; it is by then).
    void shutdown() { stop_workers(); }
    /// Stops every rank: with one worker per rank after the task it runs (a rank cannot be stopped in the middle of
    /// one; its late results are dropped), a rank's pool at once.
    void terminate() { stop_workers(); }

private:
    struct Send {
        Buffer buffer;
        MPI_Request request;
    };
    struct Received {
        std::uint16_t kind = 0;
        Buffer bytes;
    };

    [[nodiscard]] int rank_of(std::size_t slot) const noexcept {
        return static_cast<int>(config_.grouped ? slot : slot + 1);
    }

    /// A message for rank 0's own pool: a task it runs, or the word to stop.
    bool write_local(std::uint16_t kind, std::span<const Piece> pieces, std::size_t total) {
        if (kind == kExitMessage) {
            stop_local();
            return true;
        }
        // Shareable memory: the pool's workers read a large task's items where they are, as on any rank.
        Buffer task = Buffer::shareable();
        task.reserve(total);
        for (const Piece& piece : pieces) task.append(piece.data, piece.size);
        translate_code_pointer_callable(task.data(), true);  // named as for any rank: the server resolves names
        local_->flush_due();  // (forgets finished tasks; rank 0's own results are not held back)
        local_->run(std::move(task));
        return true;
    }
    void stop_local() {
        {
            std::lock_guard lock(mutex_);
            if (world_.exit_sent[0]) return;
            world_.exit_sent[0] = true;
        }
        local_->terminate();
    }

    void stop_workers() {
        if (config_.grouped) stop_local();
        std::lock_guard lock(mutex_);
        for (int rank = 1; rank < world_.size; ++rank) world_.send_exit_locked(rank);
    }

    void reap_sends_locked() {
        while (!sends_.empty()) {
            int done = 0;
            MPI_Test(&sends_.front().request, &done, MPI_STATUS_IGNORE);
            if (done == 0) break;
            sends_.pop_front();
        }
    }

    /// Receives every message that has arrived, into the per-slot queues (pid reports into rank_pids_).
    void receive_all() {
        std::lock_guard lock(mutex_);
        reap_sends_locked();
        if (local_ && !local_broken_reported_ && local_->broken()) {
            // Rank 0's own pool cannot go on (an initializer failed): the whole pool breaks, as on one machine.
            received_[0].push_back(Received{kInitFailedMessage, local_->broken_message()});
            local_broken_reported_ = true;
        }
        for (;;) {
            int arrived = 0;
            MPI_Status status;
            MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, config_.comm, &arrived, &status);
            if (arrived == 0) return;
            if (status.MPI_TAG == kMpiBye) return;  // left for MpiWorld::finish()
            int count = 0;
            MPI_Get_count(&status, MPI_BYTE, &count);
            Received message;
            message.kind = status.MPI_TAG == kMpiInitFailed ? kInitFailedMessage : kResultMessage;
            std::byte* into = message.bytes.extend(static_cast<std::size_t>(count));
            MPI_Recv(into, count, MPI_BYTE, status.MPI_SOURCE, status.MPI_TAG, config_.comm, MPI_STATUS_IGNORE);
            const auto rank = static_cast<std::size_t>(status.MPI_SOURCE);
            if (status.MPI_TAG == kMpiWorkerPids) {
                if (rank < rank_pids_.size()) {
                    rank_pids_[rank].resize(message.bytes.size() / sizeof(pid_t));
                    std::memcpy(rank_pids_[rank].data(), message.bytes.data(), rank_pids_[rank].size() * sizeof(pid_t));
                }
                continue;
            }
            const std::size_t slot = config_.grouped ? rank : rank - 1;
            if (slot < received_.size()) received_[slot].push_back(std::move(message));
        }
    }

    Config config_;
    MpiWorld& world_;
    std::mutex& mutex_;  // the world's: every MPI call (MPI_THREAD_SERIALIZED), and received_
    std::list<Send> sends_;
    std::vector<std::deque<Received>> received_;
    std::vector<std::vector<pid_t>> rank_pids_;  // grouped: each rank's pool's workers, as reported
    std::vector<pid_t> initial_pids_;
    std::mutex local_mutex_;               // (for local_ready_ only)
    std::condition_variable local_ready_;  // a result of rank 0's own pool arrived, or wake()
    std::unique_ptr<RankServer> local_;    // grouped: rank 0's own pool (slot 0)
    bool local_broken_reported_ = false;   // (mutex_)
};

static_assert(Transport<MpiTransport> && WorkerGroups<MpiTransport> && !StreamingWrites<MpiTransport> &&
                  !RevocableQueue<MpiTransport> && !ReplaceableWorkers<MpiTransport> &&
                  !SharedMemoryWorkers<MpiTransport> && !MutableDoorbell<MpiTransport>,
              "MpiTransport has worker groups and no other optional capability");

}  // namespace procpool::detail
