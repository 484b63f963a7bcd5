// The MPI pool with one worker per rank (Layout::one_worker_per_rank), run by CTest under `mpirun -n 3`: rank 0 runs
// these test cases, ranks 1 and 2 run the tasks themselves.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <procpool/mpi.hpp>

#include <map>
#include <numeric>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

procpool::mpi::Pool* g_pool = nullptr;

long square(long x) { return x * x; }

struct Point {
    double x, y;
    bool operator==(const Point&) const = default;
};

struct Named {
    std::string name;
    std::map<std::string, std::vector<int>> data;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(name, data);
    }
    bool operator==(const Named&) const = default;
};

/// A registered exception type: registered on every rank in main(), before the pool is used.
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

/// Written once against any pool: runs on the fork pool and on the MPI pool.
long sum_of_squares(procpool::ProcessPool auto& pool, long n) {
    const auto squares = pool.map(square, std::views::iota(0L, n));
    return std::accumulate(squares.begin(), squares.end(), 0L);
}

}  // namespace

TEST_CASE("map, starmap and apply run on the other ranks") {
    procpool::mpi::Pool& pool = *g_pool;
    CHECK(pool.size() == 2);
    CHECK(pool.worker_pids().size() == 2);
    CHECK(sum_of_squares(pool, 1000) == 332833500L);
    CHECK(pool.apply([](long a, long b) { return a + b; }, 40L, 2L) == 42);
    CHECK(pool.starmap([](int a, int b) { return a * b; }, std::vector<std::pair<int, int>>{{2, 3}, {4, 5}}) ==
          std::vector<int>{6, 20});
    const std::vector<pid_t> pids = pool.map([](int) { return ::getpid(); }, std::views::iota(0, 40), {.chunksize = 1});
    const std::set<pid_t> distinct(pids.begin(), pids.end());
    CHECK(distinct.size() == 2);  // both worker ranks took work
    CHECK(distinct.count(::getpid()) == 0);
}

TEST_CASE("imap and imap_unordered stay lazy over MPI") {
    procpool::mpi::Pool& pool = *g_pool;
    long total = 0;
    long n = 0;
    for (long v : pool.imap(square, std::views::iota(0L))) {  // infinite input
        total += v;
        if (++n == 500) break;
    }
    CHECK(total == 41541750L);
    std::multiset<long> seen;
    for (long v : pool.imap_unordered(square, std::views::iota(0L, 100L), {.chunksize = 3})) seen.insert(v);
    CHECK(seen.size() == 100);
}

TEST_CASE("values of every kind, large ones included, travel between ranks") {
    procpool::mpi::Pool& pool = *g_pool;
    const Named named{"n", {{"a", {1, 2}}, {"b", {}}}};
    CHECK(pool.apply([](Named v) { return v; }, named) == named);
    CHECK(pool.apply([](Point p) { return Point{p.y, p.x}; }, Point{1, 2}) == Point{2, 1});
    const std::string big(32u << 20, 'm');
    CHECK(pool.apply([](const std::string& s) { return s.size(); }, big) == big.size());
    const std::string back = pool.apply([](std::size_t n) { return std::string(n, 'r'); }, std::size_t{24} << 20);
    CHECK(back.size() == (std::size_t{24} << 20));
    const int offset = 5;
    CHECK(pool.apply([offset](int x) { return x + offset; }, 1) == 6);  // trivially copyable captures
}

TEST_CASE("task exceptions come back with their type over MPI") {
    procpool::mpi::Pool& pool = *g_pool;
    CHECK_THROWS_AS(pool.apply([](int) -> int { throw std::invalid_argument("bad"); }, 1), std::invalid_argument);
    try {
        pool.apply([](int) -> int { throw 7; }, 1);
        FAIL("no exception");
    } catch (const procpool::RemoteError& e) {
        CHECK(e.type_name() == "int");
    }
    CHECK_THROWS_AS(pool.map(
                        [](int x) {
                            if (x == 30) throw std::range_error("thirty");
                            return x;
                        },
                        std::views::iota(0, 100)),
                    std::range_error);
    CHECK(pool.apply(square, 3L) == 9);  // the pool goes on
    // A type registered on every rank comes back as itself, with its state (the rank that threw it).
    try {
        pool.apply([](int) -> int { throw RankError("from a rank", procpool::detail::MpiWorld::instance().rank); }, 0);
        FAIL("no exception");
    } catch (const RankError& e) {
        CHECK(std::string(e.what()) == "from a rank");
        CHECK(e.rank_seen >= 1);
    }
}

TEST_CASE("AsyncResult works over MPI") {
    procpool::mpi::Pool& pool = *g_pool;
    std::vector<procpool::AsyncResult<long>> results;
    for (long i = 0; i < 200; ++i) results.push_back(pool.apply_async(square, i));
    long total = 0;
    for (auto& r : results) total += r.get();
    CHECK(total == 2646700L);
    auto mapped = pool.map_async(square, std::views::iota(0L, 10L));
    CHECK(mapped.get().back() == 81);
}

TEST_CASE("options one worker per rank cannot honour are refused") {
    CHECK_THROWS_AS(procpool::mpi::Pool(procpool::PoolOptions{.task_timeout = std::chrono::seconds(1)}),
                    std::invalid_argument);
    CHECK_THROWS_AS(procpool::mpi::Pool(procpool::PoolOptions{.retries = 1}), std::invalid_argument);
}

int main(int argc, char** argv) {
    procpool::mpi::Session session(argc, argv, {}, procpool::mpi::Layout::one_worker_per_rank);
    procpool::register_exception<RankError>();   // on every rank
    procpool::mpi::Pool& pool = session.pool();  // ranks 1 and 2 serve from here and exit
    g_pool = &pool;
    return Catch::Session().run(argc, argv);
}
