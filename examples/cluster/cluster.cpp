// The cluster example: a parameter sweep written once against any pool, run over MPI ranks (mpirun, or srun
// under Slurm) or, with --local, over forked processes on this machine. See run.sh and slurm.sbatch.
//
// Over MPI every rank runs a fork pool (one rank per node, its cores as workers: under Slurm, --cpus-per-task), so a
// task that crashes fails alone and the job goes on: the program makes one segfault on purpose first, to show it.
// The sweep integrates a damped oscillator for a grid of (damping, frequency) parameters and reports the one whose
// energy decays closest to a target; each task is about half a millisecond of CPU.
#include <procpool/mpi.hpp>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>
#include <unistd.h>
#include <utility>
#include <vector>

namespace {

struct Params {
    double damping;
    double frequency;
};

struct Outcome {
    double damping;
    double frequency;
    double energy;  // energy left after the simulated time
    int host_pid;   // which process computed it
};

Outcome simulate(Params p) {
    double x = 1.0;
    double v = 0.0;
    const double dt = 1e-4;
    for (int step = 0; step < 200000; ++step) {  // symplectic Euler: about half a millisecond
        v += dt * (-2.0 * p.damping * v - p.frequency * p.frequency * x);
        x += dt * v;
    }
    const double energy = 0.5 * v * v + 0.5 * p.frequency * p.frequency * x * x;
    return {p.damping, p.frequency, energy, static_cast<int>(::getpid())};
}

/// The whole program's parallel part, written once: runs on procpool::Pool and on procpool::mpi::Pool.
Outcome sweep(procpool::ProcessPool auto& pool, int grid) {
    std::vector<Params> params;
    for (int i = 0; i < grid; ++i) {
        for (int j = 0; j < grid; ++j) params.push_back({0.05 + 0.5 * i / grid, 1.0 + 4.0 * j / grid});
    }
    const auto start = std::chrono::steady_clock::now();
    const std::vector<Outcome> outcomes = pool.map(simulate, params);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double target = 0.01;
    Outcome best = outcomes.front();
    std::set<int> processes;
    for (const Outcome& o : outcomes) {
        processes.insert(o.host_pid);
        if (std::abs(o.energy - target) < std::abs(best.energy - target)) best = o;
    }
    std::printf("%zu simulations on %zu worker processes in %.2f s\n", outcomes.size(), processes.size(), seconds);
    std::printf("closest to energy %.3f: damping %.4f, frequency %.4f (energy %.5f)\n", target, best.damping,
                best.frequency, best.energy);
    return best;
}

/// Workers on each rank: Slurm's --cpus-per-task when the job runs under Slurm, else the CPUs the rank may use.
std::optional<std::size_t> workers_per_rank() {
    if (const char* cpus = std::getenv("SLURM_CPUS_PER_TASK")) return static_cast<std::size_t>(std::atol(cpus));
    return std::nullopt;
}

/// A task that crashes its worker on purpose: the job survives it (WorkerCrashed names the rank and host).
void show_a_crash_is_contained(procpool::ProcessPool auto& pool) {
    try {
        pool.apply(
            [](int) -> int {
                std::raise(SIGSEGV);
                return 0;
            },
            0);
    } catch (const procpool::WorkerCrashed& e) {
        std::printf("a task segfaulted on purpose: %s; the job goes on\n", e.what());
    }
}

}  // namespace

int main(int argc, char** argv) {
    const int grid = 24;
    if (argc > 1 && std::strcmp(argv[1], "--local") == 0) {
        procpool::Pool pool;  // this machine's cores
        sweep(pool, grid);
        return 0;
    }
    procpool::mpi::Session session(argc, argv, procpool::PoolOptions{.processes = workers_per_rank()});
    auto& pool = session.pool();  // ranks 1..N-1 serve tasks from here on and never return
    std::printf("MPI job of %d ranks, each with a fork pool: %zu workers in all\n", session.size(), pool.size());
    show_a_crash_is_contained(pool);
    sweep(pool, grid);
    return 0;
}
