// The MPI pool in its default layout, a fork pool per rank, run by CTest under `mpirun -n 2` and `-n 3`: rank 0 runs
// these test cases and, like every other rank, runs a pool of 2 workers that splits the tasks it receives. Every
// fault a fork pool contains is contained here too, on every rank: crashes, timeouts, recycling, memory limits,
// retries, the initializer.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <procpool/mpi.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <fcntl.h>
#include <map>
#include <numeric>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

#include "../support.hpp"

namespace {

constexpr std::size_t kWorkersPerRank = 2;
procpool::mpi::Pool* g_pool = nullptr;
int g_ranks = 0;
int g_initialized = 0;  // set by the pool's initializer in every worker of every rank

long square(long x) { return x * x; }

/// The rank a worker belongs to (inherited from the rank that forked it).
int my_rank() { return procpool::detail::MpiWorld::instance().rank; }

/// Creates `path` if it does not exist: true for the one caller that made it (across processes and ranks of this
/// machine): "the first run of this item".
bool first_to_create(const std::string& path) {
    const int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
    if (fd < 0) return false;
    ::close(fd);
    return true;
}

struct RankError : std::exception {
    std::string message;
    int rank_seen = 0;
    RankError() = default;
    RankError(std::string text, int r) : message(std::move(text)), rank_seen(r) {}
    const char* what() const noexcept override { return message.c_str(); }
    template <class Archive>
    void serialize(Archive& ar) {
        ar(message, rank_seen);
    }
};

}  // namespace

TEST_CASE("every rank's pool runs tasks: map, starmap, apply, imap") {
    procpool::mpi::Pool& pool = *g_pool;
    CHECK(pool.size() == kWorkersPerRank * static_cast<std::size_t>(g_ranks));
    const auto squares = pool.map(square, std::views::iota(0L, 1000L));
    CHECK(std::accumulate(squares.begin(), squares.end(), 0L) == 332833500L);
    CHECK(pool.apply([](long a, long b) { return a + b; }, 40L, 2L) == 42);
    CHECK(pool.starmap([](int a, int b) { return a * b; }, std::vector<std::pair<int, int>>{{2, 3}, {4, 5}}) ==
          std::vector<int>{6, 20});
    // Slow items spread over every rank and over the workers of each.
    const auto where = pool.map(
        [](int) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
            return std::pair<int, pid_t>{my_rank(), ::getpid()};
        },
        std::views::iota(0, 24 * g_ranks), {.chunksize = 1});
    std::set<int> ranks;
    std::set<pid_t> pids;
    for (const auto& [rank, pid] : where) {
        ranks.insert(rank);
        pids.insert(pid);
    }
    CHECK(ranks.size() == static_cast<std::size_t>(g_ranks));  // rank 0's own workers included
    CHECK(pids.size() >= static_cast<std::size_t>(g_ranks));
    long total = 0;
    long n = 0;
    for (long v : pool.imap(square, std::views::iota(0L))) {
        total += v;
        if (++n == 300) break;
    }
    CHECK(total == 8955050L);
    std::multiset<long> seen;
    for (long v : pool.imap_unordered(square, std::views::iota(0L, 100L), {.chunksize = 3})) seen.insert(v);
    CHECK(seen.size() == 100);
    const std::vector<pid_t> worker_pids = pool.worker_pids();
    CHECK(worker_pids.size() == pool.size());
}

TEST_CASE("the initializer ran in every worker of every rank") {
    const auto seen = g_pool->map([](int) { return g_initialized; }, std::views::iota(0, 40), {.chunksize = 1});
    for (int v : seen) CHECK(v == 42);
}

TEST_CASE("a segfault fails its item with WorkerCrashed naming the rank, and the job goes on") {
    procpool::mpi::Pool& pool = *g_pool;
    for (int victim_rank = 0; victim_rank < g_ranks; ++victim_rank) {
        CAPTURE(victim_rank);
        // Every item that lands on the victim rank crashes its worker (each time: the retry fails too); the first
        // tasks go to every rank, so some do.
        std::vector<procpool::AsyncResult<int>> results;
        for (int i = 0; i < 8 * g_ranks; ++i) {
            results.push_back(pool.apply_async(
                [](int victim, int item) {
                    std::this_thread::sleep_for(std::chrono::milliseconds(2));
                    if (my_rank() == victim) std::raise(SIGSEGV);
                    return item;
                },
                victim_rank, i));
        }
        int crashed = 0;
        for (int i = 0; i < static_cast<int>(results.size()); ++i) {
            try {
                const int value = results[static_cast<std::size_t>(i)].get(std::chrono::seconds(60));
                CHECK(value == i);
            } catch (const procpool::WorkerCrashed& e) {
                ++crashed;
                CHECK(e.signal() == SIGSEGV);
                CHECK(e.where().rfind("rank " + std::to_string(victim_rank) + " on ", 0) == 0);
                CHECK(std::string(e.what()).find("rank " + std::to_string(victim_rank)) != std::string::npos);
            }
        }
        CHECK(crashed >= 1);
        CHECK((crashed < static_cast<int>(results.size()) || g_ranks == 1));
        CHECK(pool.apply(square, 7L) == 49);  // the pool goes on
    }
}

TEST_CASE("a hanging item fails with TaskTimeout on its rank, in bounded time") {
    const auto start = std::chrono::steady_clock::now();
    try {
        g_pool->apply(
            [](int) -> int {
                for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
            },
            0);
        FAIL("no exception");
    } catch (const procpool::TaskTimeout& e) {
        CHECK(e.timeout() == std::chrono::milliseconds(1500));
        CHECK(e.where().rfind("rank ", 0) == 0);
    }
    // The first run and one retry, each killed after 1.5 s (plus its grace period).
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30));
    CHECK(g_pool->apply(square, 3L) == 9);
}

TEST_CASE("retries: an item that crashes on its first run only succeeds, one that always crashes fails") {
    const std::string stem = "/tmp/procpool-mpi-retry-" + std::to_string(::getpid()) + "-";
    const auto out = g_pool->map(
        [](std::pair<std::string, int> job) {
            if (job.second % 5 == 0 && first_to_create(job.first + std::to_string(job.second))) std::raise(SIGKILL);
            return job.second;
        },
        std::views::iota(0, 30) | std::views::transform([&](int i) {
            return std::pair{stem, i};
        }),
        {.chunksize = 2});
    for (int i = 0; i < 30; ++i) {
        CHECK(out[static_cast<std::size_t>(i)] == i);
        if (i % 5 == 0) ::unlink((stem + std::to_string(i)).c_str());
    }
    CHECK_THROWS_AS(g_pool->apply([](int) -> int { std::abort(); }, 0), procpool::WorkerCrashed);
}

TEST_CASE("max_tasks_per_child recycles the workers of every rank") {
    const auto seen = g_pool->map(
        [](int) {
            return std::pair<int, pid_t>{my_rank(), ::getpid()};
        },
        std::views::iota(0, 200 * g_ranks), {.chunksize = 1});
    std::map<int, std::set<pid_t>> pids_per_rank;
    std::map<pid_t, int> items_per_pid;
    for (const auto& [rank, pid] : seen) {
        pids_per_rank[rank].insert(pid);
        ++items_per_pid[pid];
    }
    for (const auto& [rank, pids] : pids_per_rank) {
        CAPTURE(rank);
        CHECK(pids.size() > kWorkersPerRank);  // replaced at least once
    }
    for (const auto& [pid, items] : items_per_pid) CHECK(items <= 40);  // max_tasks_per_child
}

TEST_CASE("memory_limit: a task allocating past it gets std::bad_alloc on its rank") {
    auto too_much = [] {
        g_pool->apply([](std::size_t bytes) { return std::vector<char>(bytes, 'x').size(); }, std::size_t{3} << 30);
    };
    CHECK(test_support::fails_past_memory_limit(too_much));
    CHECK(g_pool->apply([](std::size_t bytes) { return std::vector<char>(bytes, 'x').size(); }, std::size_t{1} << 20) ==
          (std::size_t{1} << 20));
}

TEST_CASE("exceptions keep their type across ranks, registered ones included") {
    procpool::mpi::Pool& pool = *g_pool;
    CHECK_THROWS_AS(pool.apply([](int) -> int { throw std::invalid_argument("bad"); }, 1), std::invalid_argument);
    try {
        pool.apply([](int) -> int { throw RankError("from a rank", my_rank()); }, 0);
        FAIL("no exception");
    } catch (const RankError& e) {
        CHECK(std::string(e.what()) == "from a rank");
        CHECK(e.rank_seen >= 0);
    }
    CHECK_THROWS_AS(pool.map(
                        [](int x) {
                            if (x == 30) throw std::range_error("thirty");
                            return x;
                        },
                        std::views::iota(0, 100)),
                    std::range_error);
}

TEST_CASE("errors in the middle of a task fail their own items, whichever message of the rank carries them") {
    // Tasks of 8 items, split among a rank's workers: the items of a task come back in several messages or one, and
    // every error must land on its own item.
    auto results = g_pool->imap(
        [](int x) {
            if (x % 8 == 5 || x % 8 == 6) throw std::domain_error("item " + std::to_string(x));
            return x;
        },
        std::views::iota(0, 64), {.chunksize = 8});
    int index = 0;
    for (auto it = results.begin(); it != results.end(); ++it, ++index) {
        if (index % 8 == 5 || index % 8 == 6) {
            CHECK_THROWS_WITH(*it, "item " + std::to_string(index));
        } else {
            CHECK(*it == index);
        }
    }
    CHECK(index == 64);
}

TEST_CASE("large values travel both ways through every rank's pool") {
    const std::string big(8u << 20, 'm');
    const auto sizes = g_pool->map([](const std::string& s) { return s.size(); }, std::vector<std::string>(4, big),
                                   {.chunksize = 1});
    for (std::size_t s : sizes) CHECK(s == big.size());
    const std::string back = g_pool->apply([](std::size_t n) { return std::string(n, 'r'); }, std::size_t{6} << 20);
    CHECK(back.size() == (std::size_t{6} << 20));
}

int main(int argc, char** argv) {
    procpool::mpi::Session session(argc, argv,
                                   procpool::PoolOptions{.processes = kWorkersPerRank,
                                                         .initializer = [] { g_initialized = 42; },
                                                         .max_tasks_per_child = 40,
                                                         .task_timeout = std::chrono::milliseconds(1500),
                                                         .memory_limit = std::size_t{1} << 30,
                                                         .retries = 1});
    procpool::register_exception<RankError>();  // on every rank, before the pool serves
    g_ranks = session.size();
    procpool::mpi::Pool& pool = session.pool();  // the other ranks serve from here and exit
    g_pool = &pool;
    return Catch::Session().run(argc, argv);
}
