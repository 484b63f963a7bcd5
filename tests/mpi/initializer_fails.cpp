// The initializer throws in the workers of rank 1 only: as on one machine, the whole pool breaks (rank 1 tells rank 0),
// its calls fail with the initializer's error, later calls with PoolStateError naming the rank, and the job ends.
// Exits 0 when all of that held; prints what did not.
#include <procpool/mpi.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>

namespace {
int rank_from_environment() {
    for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}) {
        if (const char* value = std::getenv(name)) return std::atoi(value);
    }
    return -1;
}

int fail(const std::string& what) {
    std::fprintf(stderr, "initializer_fails: %s\n", what.c_str());
    return 1;
}
}  // namespace

int main(int argc, char** argv) {
    procpool::mpi::Session session(argc, argv,
                                   procpool::PoolOptions{.processes = 2, .initializer = [] {
                                                             if (rank_from_environment() == 1) {
                                                                 throw std::runtime_error("no licence on rank 1");
                                                             }
                                                         }});
    auto& pool = session.pool();
    if (rank_from_environment() != 0) return fail("this MPI does not say the rank in the environment");
    // Until rank 1's word arrives, items may run; once it has, every call fails.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    std::string last;
    while (std::chrono::steady_clock::now() < deadline) {
        try {
            pool.map([](int x) { return x; }, std::views::iota(0, 64), {.chunksize = 1});
            last = "map succeeded";
        } catch (const procpool::PoolStateError& e) {
            last = e.what();
            if (last.find("initializer failed on rank 1") == std::string::npos ||
                last.find("no licence on rank 1") == std::string::npos) {
                return fail("the pool broke, but its error does not name rank 1 and the cause: " + last);
            }
            std::printf("the pool broke: %s\n", last.c_str());
            return 0;
        } catch (const std::runtime_error& e) {
            last = e.what();  // an item rank 1 took failed with the initializer's error: the break follows
            if (last.find("no licence on rank 1") == std::string::npos) return fail("an unexpected error: " + last);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return fail("the pool did not break within 30 s; last: " + last);
}
