// Compiled (not run) with -Wall -Wextra -Wpedantic -Wshadow -Wuseless-cast -Wconversion -Werror against
// procpool's headers as a plain include directory: users with strict warnings see none from procpool, however they
// include it. It touches every public header and the templates a program instantiates most.
#include <procpool/procpool.hpp>
#ifdef PROCPOOL_STRICT_MPI
#include <procpool/mpi.hpp>
#endif

#include <chrono>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Sample {
    std::string name;
    std::vector<double> values;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(name, values);
    }
};

struct AppError : std::exception {
    std::string message;
    const char* what() const noexcept override { return message.c_str(); }
    template <class Archive>
    void serialize(Archive& ar) {
        ar(message);
    }
};

double mean(const Sample& s) {
    double total = 0;
    for (double v : s.values) total += v;
    return s.values.empty() ? 0.0 : total / static_cast<double>(s.values.size());
}

template <class Pool>
long exercise(Pool& pool) {
    long total = 0;
    for (long v : pool.map([](long x) { return x * x; }, std::views::iota(0L, 100L))) total += v;
    for (long v : pool.imap([](long x) { return x; }, std::views::iota(0L, 10L), {.chunksize = 2, .buffersize = 8}))
        total += v;
    for (int v : pool.imap_unordered([](int x) { return x; }, std::vector<int>{1, 2, 3})) total += v;
    total += pool.apply([](int a, int b) { return a + b; }, 1, 2);
    auto r = pool.apply_async([](const std::string& s) { return s.size(); }, std::string("abc"));
    total += static_cast<long>(r.get(std::chrono::seconds(5)));
    const std::vector<Sample> samples{{"a", {1.0, 2.0}}};
    total += static_cast<long>(pool.map(mean, samples).size());
    total += static_cast<long>(
        pool.starmap([](int a, double b) { return a * b; }, std::vector<std::pair<int, double>>{{1, 2.0}}).size());
    const std::vector<std::filesystem::path> paths{"x.txt"};
    total += static_cast<long>(pool.map([](const std::filesystem::path& p) { return p.filename(); }, paths).size());
    return total;
}

}  // namespace

int main(int argc, char** argv) {
    (void)argc;
    (void)argv;
    procpool::register_exception<AppError>();
    long total = 0;
    {
        procpool::Pool pool(procpool::PoolOptions{.processes = 2, .task_timeout = std::chrono::seconds(5)});
        total += exercise(pool);
        procpool::SharedValue<long> value(0);
        procpool::SharedArray<double> array(4);
        procpool::Queue<std::string> queue;
        procpool::Lock lock;
        procpool::Condition condition;
        procpool::Barrier barrier(1);
        procpool::Event event;
        procpool::Semaphore semaphore(2);
        pool.map(
            [value, array, queue, lock](int i) {
                std::lock_guard guard(value.get_lock());
                value.value() += i;
                array[0] += 1.0;
                queue.put(std::to_string(i));
                std::lock_guard other(lock);
            },
            std::views::iota(0, 4), {.progress = procpool::progress_bar("strict")});
        {
            std::scoped_lock both(lock, condition);
            condition.notify_all();
        }
        (void)barrier.wait();
        event.set();
        semaphore.acquire();
        semaphore.release();
        total += value.value();
    }
#ifdef PROCPOOL_STRICT_MPI
    procpool::mpi::Session session(argc, argv);
    total += exercise(session.pool());
#endif
    return total > 0 ? 0 : 1;
}
