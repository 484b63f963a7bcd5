// A task kills its own rank: the job must end (not hang) with mpirun naming the dead rank.
#include <procpool/mpi.hpp>

#include <csignal>
#include <cstdio>

int main(int argc, char** argv) {
    procpool::mpi::Session session(argc, argv);
    auto& pool = session.pool();
    pool.apply([](int) { return std::raise(SIGKILL); }, 0);
    std::puts("not reached: the job should have ended");
    return 0;
}
