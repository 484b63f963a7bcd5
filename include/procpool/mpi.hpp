// procpool over MPI: the same pool, over the ranks of an MPI job.
//
//     #include <procpool/mpi.hpp>
//
//     int main(int argc, char** argv) {
//         procpool::mpi::Session session(argc, argv);
//         auto& pool = session.pool();      // rank 0: the pool; other ranks: serve tasks, then exit
//         auto squares = pool.map([](long x) { return x * x; }, std::views::iota(0L, 1000L));
//     }
//
//     mpirun --map-by ppr:1:node ./app    # or, under Slurm: srun --ntasks-per-node=1 --cpus-per-task=40 ./app
//
// Every rank runs main(). Rank 0 runs your program; session.pool() on the other ranks serves tasks until rank 0's
// pool is done, then finalizes MPI and ends the process, so the rest of main() only runs on rank 0. By default every
// rank, rank 0 included, runs a fork pool of its own and splits the tasks it receives among its workers
// (Layout::fork_pool_per_rank): a crash, a hang or a leak stays in its rank as on one machine (WorkerCrashed and
// TaskTimeout name the rank and host), and task_timeout, max_tasks_per_child, memory_limit, retries and the
// initializer work on every rank. Layout::one_worker_per_rank makes each rank but 0 one worker instead.
//
// Code written against a pool template (procpool::ProcessPool auto& pool) runs unchanged on procpool::Pool and on
// procpool::mpi::Pool. Tasks, results and exceptions travel as with the fork pool (register your exception types on
// every rank); shared-memory objects (SharedArray, Lock...) cannot cross machines and are rejected at compile time.
// A rank that dies (a node lost) ends the whole job, with mpirun's or srun's message naming it: Open MPI 4.1 has no
// fault tolerance for lost ranks (ULFM).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "procpool/detail/mpi_transport.hpp"
#include "procpool/detail/mpi_worker.hpp"
#include "procpool/procpool.hpp"

namespace procpool::mpi {

/// The pool over MPI ranks: BasicPool with the MPI transport, the same API as procpool::Pool.
using Pool = BasicPool<detail::MpiTransport>;

/// How the ranks of the job work.
enum class Layout {
    /// Every rank, rank 0 included, runs a fork pool of its own (PoolOptions::processes workers; by default one per
    /// CPU the rank may use) and splits the tasks it receives among them: crashes, hangs and leaks stay contained in a
    /// rank, and task_timeout, max_tasks_per_child, memory_limit, retries and the initializer work on every rank.
    /// Launch one rank per node (srun --ntasks-per-node=1 --cpus-per-task=40; mpirun --map-by ppr:1:node).
    fork_pool_per_rank,
    /// Each rank but 0 runs tasks itself, one at a time (for sites that place one rank per core). A task that
    /// crashes ends the job, and the options that need stoppable workers are refused.
    one_worker_per_rank,
};

/// Starts and ends MPI for the program, and decides what each rank does. One per program.
class Session {
public:
    /// MPI_Init_thread (MPI_THREAD_SERIALIZED). `options` configure each rank's pool (every rank must pass the same
    /// options and layout); with the default layout `processes` is the number of workers on each rank. Throws
    /// std::runtime_error if MPI cannot start, std::invalid_argument for bad options.
    Session(int& argc, char**& argv, PoolOptions options = {}, Layout layout = Layout::fork_pool_per_rank)
        : options_(std::move(options)), layout_(layout) {
        detail::validate(options_);
        int provided = 0;
        if (MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS) {
            throw std::runtime_error("procpool: MPI_Init_thread failed");
        }
        if (provided < MPI_THREAD_SERIALIZED) {
            MPI_Finalize();
            throw std::runtime_error("procpool: this MPI library does not support MPI_THREAD_SERIALIZED");
        }
        detail::MpiWorld& world = detail::MpiWorld::instance();
        MPI_Comm_rank(world.comm, &world.rank);
        MPI_Comm_size(world.comm, &world.size);
        world.layout = layout == Layout::fork_pool_per_rank ? detail::MpiLayout::fork_pool_per_rank
                                                            : detail::MpiLayout::one_worker_per_rank;
        // What each rank brings: its pid, its pool's size, its host (for errors that name where a worker ran).
        struct Report {
            std::int64_t pid;
            std::int64_t workers;
            char host[MPI_MAX_PROCESSOR_NAME];
        } mine{};
        mine.pid = ::getpid();
        mine.workers = layout == Layout::fork_pool_per_rank
                           ? static_cast<std::int64_t>(options_.processes.value_or(detail::usable_cpu_count()))
                           : (world.rank == 0 ? 0 : 1);
        int length = 0;
        MPI_Get_processor_name(mine.host, &length);
        const auto ranks = static_cast<std::size_t>(world.size);
        std::vector<Report> all(ranks);
        MPI_Gather(&mine, sizeof(Report), MPI_BYTE, all.data(), sizeof(Report), MPI_BYTE, 0, world.comm);
        if (world.rank == 0) {
            for (const Report& r : all) {
                world.rank_pids.push_back(static_cast<pid_t>(r.pid));
                world.rank_workers.push_back(static_cast<std::size_t>(r.workers));
                world.rank_hosts.emplace_back(r.host, ::strnlen(r.host, sizeof r.host));
            }
            world.exit_sent.assign(ranks, false);
        } else {
            where_ = "rank " + std::to_string(world.rank) + " on " +
                     std::string(mine.host, ::strnlen(mine.host, sizeof mine.host));
        }
    }
    /// The default layout with `processes` workers on each rank.
    Session(int& argc, char**& argv, std::size_t processes)
        : Session(argc, argv, PoolOptions{.processes = processes}) {}
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    /// Rank 0: finishes the pool (queued work completes), stops the other ranks; every rank: MPI_Finalize.
    ~Session() {
        try {
            pool_.reset();
            if (rank() == 0) detail::MpiWorld::instance().finish();
        } catch (...) {
            std::fprintf(stderr, "procpool: an error while ending the MPI session\n");
        }
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (finalized == 0) MPI_Finalize();
    }

    [[nodiscard]] int rank() const noexcept { return detail::MpiWorld::instance().rank; }
    [[nodiscard]] int size() const noexcept { return detail::MpiWorld::instance().size; }
    [[nodiscard]] bool is_root() const noexcept { return rank() == 0; }
    [[nodiscard]] Layout layout() const noexcept { return layout_; }

    /// Rank 0: the pool (made on the first call; size() is every rank's workers). Other ranks: serve tasks until
    /// rank 0's pool is done, then end the process (MPI_Finalize, std::exit(0)): this call does not return there.
    Pool& pool() {
        if (!is_root()) {
            serve();
            MPI_Finalize();
            std::exit(0);
        }
        if (!pool_) pool_.emplace(options_);
        return *pool_;
    }

    /// Other ranks: serve tasks until rank 0's pool is done, then return false (for programs that clean up
    /// themselves). Rank 0: returns true at once.
    bool serve() {
        if (is_root()) return true;
        if (layout_ == Layout::fork_pool_per_rank) {
            detail::serve_mpi_rank_pool(detail::MpiWorld::instance().comm, rank_pool_options(), where_);
        } else {
            detail::serve_mpi_worker(detail::MpiWorld::instance().comm, options_.initializer, options_.memory_limit);
        }
        return false;
    }

private:
    /// This rank's pool: the session's options with the rank's worker count.
    [[nodiscard]] PoolOptions rank_pool_options() const {
        PoolOptions local = options_;
        local.processes = options_.processes.value_or(detail::usable_cpu_count());
        return local;
    }

    PoolOptions options_;
    Layout layout_;
    std::string where_;  // "rank 3 on node07" (other ranks)
    std::optional<Pool> pool_;
};

}  // namespace procpool::mpi
