// The cluster example: a parameter sweep written once against any pool, run over MPI ranks (mpirun, or srun
// under Slurm) or, with --local, over forked processes on this machine. See run.sh and slurm.sbatch.
//
// The sweep integrates a damped oscillator for a grid of (damping, frequency) parameters and reports the one
// whose energy decays closest to a target; each task is about half a millisecond of CPU.
#include <procpool/mpi.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
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

}  // namespace

int main(int argc, char** argv) {
    const int grid = 24;
    if (argc > 1 && std::strcmp(argv[1], "--local") == 0) {
        procpool::Pool pool;  // this machine's cores
        sweep(pool, grid);
        return 0;
    }
    procpool::mpi::Session session(argc, argv);
    auto& pool = session.pool();  // ranks 1..N-1 serve tasks from here on and never return
    std::printf("MPI job of %d ranks: rank 0 runs the program, %zu ranks run tasks\n", session.size(), pool.size());
    sweep(pool, grid);
    return 0;
}
