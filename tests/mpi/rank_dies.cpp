// A task kills its whole rank (as a lost node would end it), not only its worker: the job must end (not hang) with
// mpirun naming the dead rank. With a fork pool per rank the task runs in a worker forked by the rank's fork server,
// which the rank forked: the rank is its parent's parent.
#include <procpool/mpi.hpp>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <string>

namespace {
pid_t parent_of(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const auto close = text.rfind(')');
    return close == std::string::npos ? 0 : static_cast<pid_t>(std::stol(text.substr(close + 4)));
}
}  // namespace

int main(int argc, char** argv) {
    procpool::mpi::Session session(argc, argv, procpool::PoolOptions{.processes = 1});
    auto& pool = session.pool();
    // Items go to every rank; the one on rank 1 kills that rank.
    pool.map(
        [](int) {
            if (procpool::detail::MpiWorld::instance().rank == 1) ::kill(parent_of(::getppid()), SIGKILL);
            return 0;
        },
        std::views::iota(0, 16), {.chunksize = 1});
    std::puts("not reached: the job should have ended");
    return 0;
}
