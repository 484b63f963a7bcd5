// procpool over MPI: the same pool, with ranks 1..N-1 of an MPI job as its workers.
//
//     #include <procpool/mpi.hpp>
//
//     int main(int argc, char** argv) {
//         procpool::mpi::Session session(argc, argv);
//         auto& pool = session.pool();      // rank 0: the pool; other ranks: serve tasks, then exit
//         auto squares = pool.map([](long x) { return x * x; }, std::views::iota(0L, 1000L));
//     }
//
//     mpirun -n 4 ./app                  # or, under Slurm: srun -n 160 ./app
//
// Every rank runs main(). Rank 0 runs your program; session.pool() on the other ranks serves tasks until rank 0's
// pool is done, then finalizes MPI and ends the process, so the rest of main() only runs on rank 0. Code written
// against a pool template (template <class Pool> void f(Pool& pool)) runs unchanged on procpool::Pool and on
// procpool::mpi::Pool. Tasks, results and exceptions travel as with the fork pool; shared-memory objects
// (SharedArray, Lock...) cannot cross machines and are rejected at compile time.
//
// What MPI changes: there is no task_timeout or max_tasks_per_child (ranks cannot be stopped or replaced); a rank
// that dies ends the whole job, with mpirun's message naming the rank and the signal (Open MPI's default error
// handling); terminate() stops each rank after the task it runs.
#pragma once

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "procpool/detail/mpi_transport.hpp"
#include "procpool/procpool.hpp"

namespace procpool::mpi {

/// The pool over MPI ranks: BasicPool with the MPI transport, the same API as procpool::Pool.
using Pool = BasicPool<detail::MpiTransport>;

/// Starts and ends MPI for the program, and decides what each rank does. One per program.
class Session {
public:
    /// MPI_Init_thread (MPI_THREAD_SERIALIZED). `options` configure the pool (initializer and memory_limit run
    /// on every worker rank; give every rank the same options). Throws std::runtime_error if MPI cannot start.
    Session(int& argc, char**& argv, PoolOptions options = {}) : options_(std::move(options)) {
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
        int pid = ::getpid();
        std::vector<int> pids(static_cast<std::size_t>(world.size));
        MPI_Gather(&pid, 1, MPI_INT, pids.data(), 1, MPI_INT, 0, world.comm);
        if (world.rank == 0) {
            world.worker_pids.assign(pids.begin() + 1, pids.end());
            world.exit_sent.assign(static_cast<std::size_t>(world.size - 1), false);
        }
    }
    Session(int& argc, char**& argv, std::size_t processes)
        : Session(argc, argv, PoolOptions{.processes = processes}) {}
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    /// Rank 0: finishes the pool (queued work completes), stops the worker ranks; every rank: MPI_Finalize.
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

    /// Rank 0: the pool (made on the first call). Other ranks: serve tasks until rank 0's pool is done, then end
    /// the process (MPI_Finalize, std::exit(0)): this call does not return there.
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
        detail::serve_mpi_worker(detail::MpiWorld::instance().comm, options_.initializer, options_.memory_limit);
        return false;
    }

private:
    PoolOptions options_;
    std::optional<Pool> pool_;
};

}  // namespace procpool::mpi
