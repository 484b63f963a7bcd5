// procpool internals: what the MPI ranks other than 0 run: a fork pool of their own that runs the tasks rank 0 sends
// (serve_mpi_rank_pool, the default layout), or the tasks themselves, one at a time (serve_mpi_worker, one worker per
// rank). Only the thread that runs these calls MPI on a rank.
#pragma once

#include <mpi.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/exceptions.hpp"
#include "procpool/detail/mpi_world.hpp"
#include "procpool/detail/rank_server.hpp"
#include "procpool/detail/task.hpp"
#include "procpool/detail/worker_setup.hpp"
#include "procpool/options.hpp"

namespace procpool::detail {

/// A fork pool per rank: runs this rank's pool (`options`, its workers' count included) on the tasks rank 0 sends,
/// each split among the pool's workers, and sends the results back as they finish, with the pool's worker pids
/// whenever they change. Returns once rank 0 said to stop (the pool is terminated then: nothing is left to run).
/// A rank holds a task's finished results back for up to this long, for those that finish meanwhile to go in the same
/// message: rank 0 then receives at most one message per running task every 2 ms, however short the items.
inline constexpr std::chrono::milliseconds kResultCoalescing{2};

inline void serve_mpi_rank_pool(MPI_Comm comm, const PoolOptions& options, const std::string& where) {
    struct Outbox {
        std::mutex mutex;
        std::condition_variable ready;
        std::deque<Buffer> messages;
    };
    auto outbox = std::make_shared<Outbox>();
    RankServer server(
        options, where,
        [outbox](Buffer message) {
            {
                std::lock_guard lock(outbox->mutex);
                outbox->messages.push_back(std::move(message));
            }
            outbox->ready.notify_one();
        },
        &resolve_task_names, kResultCoalescing);

    struct Send {
        Buffer buffer;
        MPI_Request request = MPI_REQUEST_NULL;
    };
    std::list<Send> sends;
    auto send = [&](Buffer buffer, int tag) {
        sends.push_back(Send{std::move(buffer), MPI_REQUEST_NULL});
        Send& s = sends.back();
        MPI_Isend(s.buffer.data(), static_cast<int>(s.buffer.size()), MPI_BYTE, 0, tag, comm, &s.request);
    };
    auto reap = [&] {
        while (!sends.empty()) {
            int done = 0;
            MPI_Test(&sends.front().request, &done, MPI_STATUS_IGNORE);
            if (done == 0) return;
            sends.pop_front();
        }
    };
    std::vector<pid_t> reported;
    auto report_pids = [&] {
        std::vector<pid_t> pids = server.worker_pids();
        if (pids == reported) return;
        reported = pids;
        Buffer message(pids.size() * sizeof(pid_t));
        message.append(pids.data(), pids.size() * sizeof(pid_t));
        send(std::move(message), kMpiWorkerPids);
    };
    report_pids();

    constexpr auto kMaxPause = std::chrono::microseconds(1000);
    constexpr auto kPidsPeriod = std::chrono::milliseconds(20);
    auto pause = std::chrono::microseconds(5);
    auto next_pids = std::chrono::steady_clock::now() + kPidsPeriod;
    std::deque<Buffer> ready;
    bool broken_reported = false;
    for (;;) {
        server.flush_due();
        {
            std::lock_guard lock(outbox->mutex);
            ready.swap(outbox->messages);
        }
        if (!broken_reported && server.broken()) {
            // This rank's pool cannot go on (an initializer failed): rank 0's pool breaks too, as on one machine.
            send(server.broken_message(), kMpiInitFailed);
            broken_reported = true;
        }
        const bool had_results = !ready.empty();
        for (Buffer& message : ready) send(std::move(message), kMpiResult);
        ready.clear();
        reap();
        if (std::chrono::steady_clock::now() >= next_pids) {
            report_pids();
            next_pids = std::chrono::steady_clock::now() + kPidsPeriod;
        }
        // A stop overtakes queued tasks (it has its own tag): terminate() does not wait for them.
        int stop = 0;
        MPI_Iprobe(0, kMpiExit, comm, &stop, MPI_STATUS_IGNORE);
        if (stop != 0) {
            MPI_Recv(nullptr, 0, MPI_BYTE, 0, kMpiExit, comm, MPI_STATUS_IGNORE);
            server.terminate();  // what its workers still run is lost: rank 0 stopped waiting for it
            for (Send& s : sends) MPI_Wait(&s.request, MPI_STATUS_IGNORE);
            MPI_Send(nullptr, 0, MPI_BYTE, 0, kMpiBye, comm);
            return;
        }
        int arrived = 0;
        MPI_Status status;
        MPI_Iprobe(0, kMpiTask, comm, &arrived, &status);
        if (arrived != 0) {
            int count = 0;
            MPI_Get_count(&status, MPI_BYTE, &count);
            // Received into shareable memory: the pool's workers read a large task's items where they are.
            Buffer task = Buffer::shareable();
            std::byte* into = task.extend(static_cast<std::size_t>(count));
            MPI_Recv(into, count, MPI_BYTE, 0, kMpiTask, comm, MPI_STATUS_IGNORE);
            server.run(std::move(task));
            pause = std::chrono::microseconds(5);
            continue;
        }
        if (had_results) {
            pause = std::chrono::microseconds(5);
            continue;
        }
        // Nothing to do: wait for a result of the pool (or a moment, then look at MPI again), backing off.
        std::unique_lock lock(outbox->mutex);
        outbox->ready.wait_for(lock, pause, [&] { return !outbox->messages.empty(); });
        pause = std::min<std::chrono::microseconds>(pause * 2, kMaxPause);
    }
}

/// One worker per rank: serves tasks from rank 0 itself, one at a time, until it says to stop. Runs `initializer`
/// first; if it throws, rank 0 is told and the pool breaks there. Returns when done.
inline void serve_mpi_worker(MPI_Comm comm, const std::function<void()>& initializer,
                             std::optional<std::size_t> memory_limit) {
    struct Sink final : ResultSink {
        MPI_Comm comm;
        Buffer message;
        void send_result(std::span<const Piece> pieces, std::size_t total) override {
            message.clear();
            message.reserve(total);
            for (const Piece& piece : pieces) message.append(piece.data, piece.size);
            MPI_Send(message.data(), static_cast<int>(message.size()), MPI_BYTE, 0, kMpiResult, comm);
        }
    } sink;
    sink.comm = comm;
    apply_memory_limit(memory_limit);
    Buffer error;
    if (!run_initializer(initializer, error)) {
        MPI_Send(error.data(), static_cast<int>(error.size()), MPI_BYTE, 0, kMpiInitFailed, comm);
    }
    Buffer task;
    Buffer values;
    Buffer errors;
    for (;;) {
        // A stop request overtakes queued tasks (it has its own tag): terminate() does not wait for them.
        int stop = 0;
        MPI_Iprobe(0, kMpiExit, comm, &stop, MPI_STATUS_IGNORE);
        MPI_Status status;
        if (stop != 0) {
            MPI_Recv(nullptr, 0, MPI_BYTE, 0, kMpiExit, comm, MPI_STATUS_IGNORE);
            MPI_Send(nullptr, 0, MPI_BYTE, 0, kMpiBye, comm);
            return;
        }
        MPI_Probe(0, MPI_ANY_TAG, comm, &status);
        if (status.MPI_TAG == kMpiExit) continue;  // handled at the top
        int count = 0;
        MPI_Get_count(&status, MPI_BYTE, &count);
        task.clear();
        std::byte* into = task.extend(static_cast<std::size_t>(count));
        MPI_Recv(into, count, MPI_BYTE, 0, status.MPI_TAG, comm, MPI_STATUS_IGNORE);
        TaskHeader header;
        std::memcpy(&header, task.data(), sizeof header);
        const std::span<const std::byte> body = task.view();
        bool translated = true;
        try {
            translate_code_pointer_callable(task.data(), false);
        } catch (...) {
            translated = false;
        }
        const std::size_t items_at = sizeof(TaskHeader) + align8(header.callable_size);
        TaskRunner runner(header, body.subspan(sizeof(TaskHeader), header.callable_size), body.subspan(items_at), sink,
                          ProgressWords{}, values, errors, std::chrono::microseconds(200));
        TaskEntry entry = nullptr;
        try {
            if (!translated) throw SerializationError("procpool: a task's function is not in this rank's program");
            entry = mpi_entry_from_id(header.entry);
        } catch (...) {
            runner.fail_rest(0);
            runner.finish();
            continue;
        }
        entry(runner);
    }
}

}  // namespace procpool::detail
