// procpool benchmarks (Google Benchmark). benchmarks/run.sh runs them next to Python's multiprocessing.Pool
// (benchmarks/python_pool.py) and writes benchmarks/results/.
//
// Every benchmark reports its headline figure as the counter "figure" and names it in its label as
// "<workload>|<unit>", the key report.py matches with the Python side. Baselines measured in the same process
// (a thread pool doing the same work, a serial loop) are reported as "<workload>_threads" and "_serial".
#include <benchmark/benchmark.h>
#include <procpool/procpool.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <numeric>
#include <ranges>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values.empty() ? 0 : values[values.size() / 2];
}

void report(benchmark::State& state, const std::string& workload, double figure, const std::string& unit) {
    state.counters["figure"] = figure;
    state.SetLabel(workload + "|" + unit);
}

std::size_t cpus() { return procpool::detail::usable_cpu_count(); }

/// Burns `seconds` of CPU (the same busy loop as python_pool.py's spin).
/// CPU time of the calling thread, in seconds.
double thread_cpu_seconds() {
    timespec now{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

/// A CPU-bound task: spins until this thread has used `seconds` of CPU time. Counting CPU time, not wall time, keeps
/// the work fixed when workers share cores (more workers than cores), so speedups cannot exceed the core count.
long spin(double seconds) {
    const double end = thread_cpu_seconds() + seconds;
    long x = 0;
    while (thread_cpu_seconds() < end) benchmark::DoNotOptimize(++x);
    return x;
}

/// The in-process baseline: a plain thread pool (one queue, N threads) doing the same work. It has the calls of
/// procpool::Pool the benchmarks use, so one benchmark body measures both.
class ThreadPool {
public:
    explicit ThreadPool(std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) threads_.emplace_back([this] { run(); });
    }
    ~ThreadPool() {
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : threads_) t.join();
    }
    std::size_t size() const { return threads_.size(); }

    /// Runs f() on a thread of the pool; the future holds its result.
    template <class F>
    auto submit(F f) {
        auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
        auto future = task->get_future();
        {
            std::lock_guard lock(mutex_);
            queue_.emplace_back([task] { (*task)(); });
        }
        cv_.notify_one();
        return future;
    }
    template <class F, class... Args>
    auto apply_async(F f, Args... args) {
        return submit([f, args...] { return f(args...); });
    }
    template <class F, class... Args>
    auto apply(F f, Args... args) {
        return apply_async(f, args...).get();
    }

    /// f over a random-access range in tasks of options.chunksize items (0: Python's default, about four tasks per
    /// thread). Tasks read the items in place, nothing is copied; each result is moved into the vector returned, in
    /// input order. f must not throw.
    template <class F, class Range>
    auto map(F f, const Range& items, const procpool::MapOptions& options = {}) {
        std::vector<std::invoke_result_t<F&, std::ranges::range_reference_t<const Range>>> out(
            std::ranges::size(items));
        const auto work = [&](std::size_t first, std::size_t last) {
            for (std::size_t i = first; i < last; ++i) out[i] = f(items[i]);
        };
        for (auto& task : submit_chunks(std::ranges::size(items), options.chunksize, work)) task.get();
        return out;
    }

    /// imap (`ordered`) and imap_unordered: f over `items` in tasks as map makes them; consume(result) gets the
    /// results in input order, or each task's results as soon as it finished. f must not throw.
    template <class F, class Range, class Consume>
    void imap(F f, const Range& items, const procpool::MapOptions& options, bool ordered, Consume consume) {
        using Results = std::vector<std::invoke_result_t<F&, std::ranges::range_reference_t<const Range>>>;
        std::mutex mutex;
        std::condition_variable finished_cv;
        std::deque<Results> finished;  // unordered: results of finished tasks, not consumed yet
        const auto work = [&](std::size_t first, std::size_t last) {
            Results results;
            results.reserve(last - first);
            for (std::size_t i = first; i < last; ++i) results.push_back(f(items[i]));
            if (ordered) return results;
            {
                std::lock_guard lock(mutex);
                finished.push_back(std::move(results));
            }
            finished_cv.notify_one();
            return Results{};
        };
        auto tasks = submit_chunks(std::ranges::size(items), options.chunksize, work);
        for (auto& task : tasks) {
            Results results;
            if (ordered) {
                results = task.get();
            } else {
                std::unique_lock lock(mutex);
                finished_cv.wait(lock, [&] { return !finished.empty(); });
                results = std::move(finished.front());
                finished.pop_front();
            }
            for (auto& r : results) consume(std::move(r));
        }
        for (auto& task : tasks) {
            if (task.valid()) task.get();  // unordered: a task may still be returning, with references to the locals
        }
    }

private:
    /// Submits work(first, last) for consecutive chunks of [0, n) of `chunksize` items (0: Python's default,
    /// n / (4 * threads) rounded up); their futures, in order.
    template <class Work>
    auto submit_chunks(std::size_t n, std::size_t chunksize, Work work) {
        if (chunksize == 0) chunksize = std::max<std::size_t>(1, (n + 4 * size() - 1) / (4 * size()));
        std::vector<std::future<std::invoke_result_t<Work&, std::size_t, std::size_t>>> tasks;
        tasks.reserve((n + chunksize - 1) / chunksize);
        for (std::size_t first = 0; first < n; first += chunksize) {
            tasks.push_back(submit([work, first, last = std::min(n, first + chunksize)] { return work(first, last); }));
        }
        return tasks;
    }
    void run() {
        for (;;) {
            std::function<void()> job;
            {
                std::unique_lock lock(mutex_);
                cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
                if (queue_.empty()) return;
                job = std::move(queue_.front());
                queue_.pop_front();
            }
            job();
        }
    }
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> queue_;
    std::vector<std::thread> threads_;
    bool stop_ = false;
};

/// The serial baseline: map as a loop in the calling thread (std::transform into a fresh vector).
struct SerialLoop {
    explicit SerialLoop(std::size_t /*workers*/) {}
    template <class F, class Range>
    auto map(F f, const Range& items) {
        std::vector<std::invoke_result_t<F&, std::ranges::range_reference_t<const Range>>> out(
            std::ranges::size(items));
        std::ranges::transform(items, out.begin(), f);
        return out;
    }
};

/// The name a figure of `Pool` is reported under: the workload's for procpool, with "_threads" or "_serial"
/// appended for the baselines.
template <class Pool>
std::string workload_name(const std::string& workload) {
    if constexpr (std::is_same_v<Pool, ThreadPool>) {
        return workload + "_threads";
    } else if constexpr (std::is_same_v<Pool, SerialLoop>) {
        return workload + "_serial";
    } else {
        return workload;
    }
}

int identity(int x) { return x; }

// 6. (registered first, so it runs while this process is small: fork copies the page tables of what the
// forking process maps) Pool of 2: construction + first apply + destruction.
template <class Pool>
void BM_start_teardown(benchmark::State& state) {
    std::vector<double> samples;
    for (auto _ : state) {
        const auto start = Clock::now();
        {
            Pool pool(2);
            benchmark::DoNotOptimize(pool.apply(identity, 1));
        }
        samples.push_back(seconds_since(start) * 1e3);
    }
    report(state, workload_name<Pool>("pool2_start_apply_teardown"), median(samples), "ms");
}
BENCHMARK_TEMPLATE(BM_start_teardown, procpool::Pool)->Iterations(50)->UseRealTime()->Unit(benchmark::kMillisecond);

// 6b. The floor for 6.: one fork + _exit + waitpid of this process. A pool of 2 needs three forks (the fork
// server and two workers) and their exits.
void BM_fork_floor(benchmark::State& state) {
    std::vector<double> samples;
    for (auto _ : state) {
        const auto start = Clock::now();
        const pid_t child = ::fork();
        if (child == 0) ::_exit(0);
        int status = 0;
        ::waitpid(child, &status, 0);
        samples.push_back(seconds_since(start) * 1e3);
    }
    report(state, "fork_exit_wait_floor", median(samples), "ms");
}
BENCHMARK(BM_fork_floor)->Iterations(50)->UseRealTime()->Unit(benchmark::kMillisecond);

// 6c. The floor for 6. with a pool's process structure and nothing else: this process forks a child (the fork
// server), which forks two grandchildren (the workers) that exit at once, reaps them and exits; this process
// reaps it. No memory is shared, no message is sent.
void BM_process_tree_floor(benchmark::State& state) {
    std::vector<double> samples;
    for (auto _ : state) {
        const auto start = Clock::now();
        const pid_t server = ::fork();
        if (server == 0) {
            const pid_t first = ::fork();
            if (first == 0) ::_exit(0);
            const pid_t second = ::fork();
            if (second == 0) ::_exit(0);
            ::waitpid(first, nullptr, 0);
            ::waitpid(second, nullptr, 0);
            ::_exit(0);
        }
        ::waitpid(server, nullptr, 0);
        samples.push_back(seconds_since(start) * 1e3);
    }
    report(state, "pool2_process_tree_floor", median(samples), "ms");
}
BENCHMARK(BM_process_tree_floor)->Iterations(50)->UseRealTime()->Unit(benchmark::kMillisecond);

// 6. in a thread pool of 2 (after the floors: its threads leave this process a little bigger).
BENCHMARK_TEMPLATE(BM_start_teardown, ThreadPool)->Iterations(50)->UseRealTime()->Unit(benchmark::kMillisecond);

// 1. apply round trip of a no-op, back to back; and 1b. the same when the caller works for state.range(0) us
// between calls (a wall-clock busy loop): what the workers' and the caller's polling before they sleep buys once
// calls are not back to back.
template <class Pool>
void BM_apply_round_trip(benchmark::State& state) {
    const auto caller_work = std::chrono::microseconds(state.range(0));
    Pool pool(cpus());
    for (int i = 0; i < 2000; ++i) pool.apply(identity, i);
    std::vector<double> samples;
    int i = 0;
    for (auto _ : state) {
        const auto work_end = Clock::now() + caller_work;
        while (Clock::now() < work_end) {
        }
        const auto start = Clock::now();
        benchmark::DoNotOptimize(pool.apply(identity, i++));
        samples.push_back(seconds_since(start) * 1e6);
    }
    const std::string workload = caller_work.count() == 0
                                     ? "apply_round_trip"
                                     : "apply_after_" + std::to_string(caller_work.count()) + "us_caller_work";
    report(state, workload_name<Pool>(workload), median(samples), "us");
}
BENCHMARK_TEMPLATE(BM_apply_round_trip, procpool::Pool)->Arg(0)->Iterations(20000)->UseRealTime();
BENCHMARK_TEMPLATE(BM_apply_round_trip, procpool::Pool)->Arg(20)->Iterations(5000)->UseRealTime();
BENCHMARK_TEMPLATE(BM_apply_round_trip, ThreadPool)->Arg(0)->Iterations(20000)->UseRealTime();
BENCHMARK_TEMPLATE(BM_apply_round_trip, ThreadPool)->Arg(20)->Iterations(5000)->UseRealTime();

// 2. apply_async burst: 20 000 no-op tasks submitted, then all gathered.
template <class Pool>
void BM_apply_async_burst(benchmark::State& state) {
    Pool pool(cpus());
    pool.apply(identity, 0);
    std::vector<double> rates;
    for (auto _ : state) {
        const auto start = Clock::now();
        std::vector<decltype(pool.apply_async(identity, 0))> results;
        results.reserve(20000);
        for (int k = 0; k < 20000; ++k) results.push_back(pool.apply_async(identity, k));
        for (auto& r : results) benchmark::DoNotOptimize(r.get());
        rates.push_back(20000 / seconds_since(start));
    }
    report(state, workload_name<Pool>("apply_async_burst"), median(rates), "tasks/s");
}
BENCHMARK_TEMPLATE(BM_apply_async_burst, procpool::Pool)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_apply_async_burst, ThreadPool)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);

// 3. map of a tiny function over 10 million integers, default chunksize (the thread pool's: Python's rule). The
// baselines make their result as std::vector<int>(n) does, in the calling thread: on a virtual machine, faulting in
// those 40 MB can take most of their time. Every contender first runs the whole map kWarmMaps times untimed (as
// python_pool.py does): the steady state of a program that maps repeatedly. On a VM whose balloon reports free
// memory to the host, the first 2 MiB pages a process takes cost the host's faults (~4.6 ms each here against
// ~0.2 ms once recycled), which made the first few maps 3-6x slower and the median of five a lottery.
constexpr int kWarmMaps = 3;
template <class Pool>
void BM_map_tiny(benchmark::State& state) {
    Pool pool(cpus());
    std::vector<int> input(10'000'000);
    std::iota(input.begin(), input.end(), 0);
    for (int warm = 0; warm < kWarmMaps; ++warm) benchmark::DoNotOptimize(pool.map([](int x) { return 2 * x; }, input));
    std::vector<double> rates;
    for (auto _ : state) {
        const auto start = Clock::now();
        benchmark::DoNotOptimize(pool.map([](int x) { return 2 * x; }, input));
        rates.push_back(static_cast<double>(input.size()) / seconds_since(start));
    }
    report(state, workload_name<Pool>("map_tiny"), median(rates), "items/s");
}
BENCHMARK_TEMPLATE(BM_map_tiny, procpool::Pool)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_map_tiny, ThreadPool)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_map_tiny, SerialLoop)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);

// 4. imap and imap_unordered over 200 000 integers, chunksize 1 and default, each result consumed as it comes.
/// The sum of identity over 0..n-1 through imap (`ordered`) or imap_unordered.
long imap_sum(procpool::Pool& pool, int n, const procpool::MapOptions& options, bool ordered) {
    long sum = 0;
    if (ordered) {
        for (int v : pool.imap(identity, std::views::iota(0, n), options)) sum += v;
    } else {
        for (int v : pool.imap_unordered(identity, std::views::iota(0, n), options)) sum += v;
    }
    return sum;
}
long imap_sum(ThreadPool& pool, int n, const procpool::MapOptions& options, bool ordered) {
    long sum = 0;
    pool.imap(identity, std::views::iota(0, n), options, ordered, [&](int v) { sum += v; });
    return sum;
}

template <class Pool>
void BM_imap(benchmark::State& state) {
    const bool ordered = state.range(0) == 1;
    const std::size_t chunksize = static_cast<std::size_t>(state.range(1));
    Pool pool(cpus());
    pool.apply(identity, 0);
    std::vector<double> rates;
    for (auto _ : state) {
        const auto start = Clock::now();
        benchmark::DoNotOptimize(imap_sum(pool, 200000, {.chunksize = chunksize}, ordered));
        rates.push_back(200000 / seconds_since(start));
    }
    const std::string method = ordered ? "imap" : "imap_unordered";
    report(state, workload_name<Pool>(method + (chunksize == 1 ? "_chunksize_1" : "_default")), median(rates),
           "items/s");
}
void imap_args(benchmark::internal::Benchmark* b) {
    b->Args({1, 1})->Args({0, 1})->Args({1, 0})->Args({0, 0})->Iterations(5)->UseRealTime()->Unit(
        benchmark::kMillisecond);
}
BENCHMARK_TEMPLATE(BM_imap, procpool::Pool)->Apply(imap_args);
BENCHMARK_TEMPLATE(BM_imap, ThreadPool)->Apply(imap_args);

// 5. 10 MiB arguments and 10 MiB results through map. The thread pool copies no argument (a task reads the
// caller's string through a reference) and moves each result string into the vector the caller gets: of the bytes,
// only a result's, written once as it is made, are touched by anything but the function.
template <class Pool>
void BM_payload(benchmark::State& state) {
    const bool arguments = state.range(0) == 1;
    Pool pool(cpus());
    const std::size_t size = std::size_t{10} << 20;
    const std::vector<std::string> items(16, std::string(size, 'x'));
    const std::vector<std::size_t> sizes(16, size);
    std::vector<double> rates;
    for (int warm = 0; warm < 2; ++warm) {
        pool.map([](const std::string& s) { return s.size(); }, items);
        pool.map([](std::size_t n) { return std::string(n, 'y'); }, sizes);
    }
    for (auto _ : state) {
        const auto start = Clock::now();
        if (arguments) {
            benchmark::DoNotOptimize(pool.map([](const std::string& s) { return s.size(); }, items));
        } else {
            benchmark::DoNotOptimize(pool.map([](std::size_t n) { return std::string(n, 'y'); }, sizes));
        }
        rates.push_back(16.0 * static_cast<double>(size) / seconds_since(start) / 1e9);
    }
    report(state, workload_name<Pool>(arguments ? "payload_10mib_args" : "payload_10mib_results"), median(rates),
           "GB/s");
}
void payload_args(benchmark::internal::Benchmark* b) {
    b->Arg(1)->Arg(0)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);
}
BENCHMARK_TEMPLATE(BM_payload, procpool::Pool)->Apply(payload_args);
BENCHMARK_TEMPLATE(BM_payload, ThreadPool)->Apply(payload_args);

// 5b. The floor for 5.: sixteen fresh 10 MiB strings made in this process by copying a warm one, the way procpool
// decodes a string (one copy into fresh capacity, with the same huge-page advice). A result has to become a fresh
// object in the caller; on a virtual machine, where the kernel's zeroing of every fresh page is slow, that alone
// bounds the result rate.
void BM_payload_floor(benchmark::State& state) {
    const std::string source(std::size_t{10} << 20, 'y');
    std::vector<double> rates;
    for (auto _ : state) {
        const auto start = Clock::now();
        std::vector<std::string> out(16);
        for (std::string& s : out) {
            procpool::detail::assign_string_bytes(s, reinterpret_cast<const std::byte*>(source.data()), source.size());
        }
        benchmark::DoNotOptimize(out.data());
        rates.push_back(16.0 * static_cast<double>(source.size()) / seconds_since(start) / 1e9);
    }
    report(state, "payload_10mib_results_floor_in_process", median(rates), "GB/s");
}
BENCHMARK(BM_payload_floor)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);

// 7. CPU-bound scaling: fixed sets of ~0.3 ms and ~10 ms tasks at 1..2N workers (N = cores), against a serial loop and
// a thread pool of the same size.
void BM_cpu_scaling(benchmark::State& state) {
    const double task_ms = state.range(0) == 0 ? 0.3 : 10.0;
    const std::size_t count = state.range(0) == 0 ? 2000 : 60;
    const auto workers = static_cast<std::size_t>(state.range(1));
    const std::vector<double> tasks(count, task_ms / 1e3);
    double serial = 0;
    double pooled = 0;
    double threaded = 0;
    for (auto _ : state) {
        auto start = Clock::now();
        for (double t : tasks) benchmark::DoNotOptimize(spin(t));
        serial = seconds_since(start);
        {
            procpool::Pool pool(workers);
            pool.map(spin, std::vector<double>(workers, 0.0));
            start = Clock::now();
            benchmark::DoNotOptimize(pool.map(spin, tasks));
            pooled = seconds_since(start);
        }
        {
            ThreadPool threads(workers);
            start = Clock::now();
            benchmark::DoNotOptimize(threads.map(spin, tasks, {.chunksize = 1}));
            threaded = seconds_since(start);
        }
    }
    const std::string name = "cpu_scaling_" + std::string(task_ms < 1 ? "0.3" : "10.0") + "ms_" +
                             std::to_string(workers) + "workers";
    report(state, name, pooled * 1e3, "ms");
    state.counters["serial_ms"] = serial * 1e3;
    state.counters["threads_ms"] = threaded * 1e3;
    state.counters["speedup"] = serial / pooled;
    state.counters["vs_threads"] = threaded / pooled;
}
void cpu_scaling_args(benchmark::internal::Benchmark* b) {
    for (int size : {0, 1}) {
        // Up to twice the cores: past the core count the speedup must flatten, not fall.
        for (std::size_t w = 1; w <= 2 * cpus(); ++w) b->Args({size, static_cast<long>(w)});
    }
}
BENCHMARK(BM_cpu_scaling)->Apply(cpu_scaling_args)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// 7b. Utilisation: streams of 0.1 ms CPU-bound tasks at chunksize 1 (map, imap, apply_async), as many workers as
// cores. The figure is the workers' task time (their CPU time, which each task measures) over workers x wall time:
// the share of the time the workers ran tasks, which this VM's drifting clock speed does not distort (the wall-time
// speedup over a serial loop in the same run stands beside it).
double task_cpu_seconds(double seconds) {
    const double start = thread_cpu_seconds();
    benchmark::DoNotOptimize(spin(seconds));
    return thread_cpu_seconds() - start;
}
void BM_utilisation(benchmark::State& state) {
    const int form = static_cast<int>(state.range(0));  // 0 map, 1 imap, 2 apply_async
    const std::size_t workers = cpus();
    const std::size_t count = 4000;
    const std::vector<double> tasks(count, 0.0001);
    procpool::Pool pool(workers);
    pool.map(task_cpu_seconds, std::vector<double>(64, 0.0001), {.chunksize = 1});  // warm, and times the tasks
    std::vector<double> shares;
    std::vector<double> speedups;
    for (auto _ : state) {
        auto start = Clock::now();
        for (double t : tasks) benchmark::DoNotOptimize(task_cpu_seconds(t));
        const double serial = seconds_since(start);
        double busy = 0;
        start = Clock::now();
        if (form == 0) {
            for (double b : pool.map(task_cpu_seconds, tasks, {.chunksize = 1})) busy += b;
        } else if (form == 1) {
            for (double b : pool.imap(task_cpu_seconds, tasks, {.chunksize = 1})) busy += b;
        } else {
            std::vector<procpool::AsyncResult<double>> results;
            results.reserve(count);
            for (double t : tasks) results.push_back(pool.apply_async(task_cpu_seconds, t));
            for (auto& r : results) busy += r.get();
        }
        const double wall = seconds_since(start);
        shares.push_back(busy / (static_cast<double>(workers) * wall));
        speedups.push_back(serial / wall);
    }
    static const char* const names[] = {"map", "imap", "apply_async"};
    report(state, std::string("utilisation_0.1ms_cs1_") + names[form], 100.0 * median(shares), "% busy");
    state.counters["speedup"] = median(speedups);
}
BENCHMARK(BM_utilisation)->DenseRange(0, 2)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);

// 8. Skewed load: one task 100x longer than the rest; makespan against the ideal. procpool chooses its chunks; the
// thread pool takes one item per task, its best schedule (the ceiling), which costs nothing next to 2 ms items.
template <class Pool>
void BM_skew(benchmark::State& state) {
    const std::size_t workers = cpus();
    std::vector<double> tasks(400, 0.002);
    tasks[17] = 0.2;
    const double total = std::accumulate(tasks.begin(), tasks.end(), 0.0);
    const double ideal = std::max(total / static_cast<double>(workers), *std::max_element(tasks.begin(), tasks.end()));
    const procpool::MapOptions options{.chunksize = std::is_same_v<Pool, ThreadPool> ? 1U : 0U};
    Pool pool(workers);
    pool.map(spin, std::vector<double>(workers, 0.0));
    std::vector<double> ratios;
    for (auto _ : state) {
        const auto start = Clock::now();
        benchmark::DoNotOptimize(pool.map(spin, tasks, options));
        ratios.push_back(seconds_since(start) / ideal);
    }
    report(state, workload_name<Pool>("skewed_makespan"), median(ratios), "x ideal");
}
BENCHMARK_TEMPLATE(BM_skew, procpool::Pool)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_skew, ThreadPool)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);

long cpu_ticks(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    std::istringstream fields(text.substr(text.rfind(')') + 2));
    std::string field;
    long ticks = 0;
    for (int i = 3; i <= 15; ++i) {
        fields >> field;
        if (i == 14 || i == 15) ticks += std::stol(field);
    }
    return ticks;
}

long private_kib(pid_t pid) {
    std::ifstream rollup("/proc/" + std::to_string(pid) + "/smaps_rollup");
    std::string key;
    long total = 0;
    while (rollup >> key) {
        long value = 0;
        if (key == "Private_Clean:" || key == "Private_Dirty:") {
            rollup >> value;
            total += value;
        }
    }
    return total;
}

// 9. An idle pool for 5 s: CPU burned by all its processes (percent of one core), and private memory per worker.
void BM_idle(benchmark::State& state) {
    for (auto _ : state) {
        procpool::Pool pool(cpus());
        pool.map(identity, std::views::iota(0, 1000));
        std::this_thread::sleep_for(std::chrono::milliseconds(300));  // past every spin phase
        std::vector<pid_t> pids = pool.worker_pids();
        long before = 0;
        for (pid_t p : pids) before += cpu_ticks(p);
        const long self_before = cpu_ticks(::getpid());
        std::this_thread::sleep_for(std::chrono::seconds(5));
        long after = 0;
        for (pid_t p : pids) after += cpu_ticks(p);
        const long self_after = cpu_ticks(::getpid());
        const double ticks = static_cast<double>(after - before + self_after - self_before);
        report(state, "idle_cpu", ticks / static_cast<double>(sysconf(_SC_CLK_TCK)) / 5.0 * 100.0, "% of a core");
        long memory = 0;
        for (pid_t p : pids) memory += private_kib(p);
        state.counters["private_kib_per_worker"] = static_cast<double>(memory) / static_cast<double>(pids.size());
    }
}
BENCHMARK(BM_idle)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// 10. Shared objects: an uncontended Lock acquire + release (next to std::mutex in the same process), and Queue
// throughput from one process to another (small items).
void BM_lock_uncontended(benchmark::State& state) {
    procpool::Lock lock;
    std::mutex plain;
    constexpr int kRounds = 1'000'000;
    double lock_ns = 0;
    double mutex_ns = 0;
    for (auto _ : state) {
        auto start = Clock::now();
        for (int i = 0; i < kRounds; ++i) {
            lock.acquire();
            lock.release();
        }
        lock_ns = seconds_since(start) * 1e9 / kRounds;
        start = Clock::now();
        for (int i = 0; i < kRounds; ++i) {
            plain.lock();
            benchmark::ClobberMemory();
            plain.unlock();
        }
        mutex_ns = seconds_since(start) * 1e9 / kRounds;
    }
    report(state, "lock_acquire_release", lock_ns, "ns");
    state.counters["std_mutex_ns"] = mutex_ns;
}
BENCHMARK(BM_lock_uncontended)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_queue_throughput(benchmark::State& state) {
    procpool::Queue<int> queue;
    procpool::Pool pool(1);
    constexpr int kItems = 200'000;
    std::vector<double> rates;
    for (auto _ : state) {
        const auto start = Clock::now();
        auto consumer = pool.apply_async([queue]() mutable {
            long sum = 0;
            for (int i = 0; i < kItems; ++i) sum += queue.get();
            return sum;
        });
        for (int i = 0; i < kItems; ++i) queue.put(i);
        benchmark::DoNotOptimize(consumer.get());
        rates.push_back(kItems / seconds_since(start));
    }
    report(state, "queue_throughput", median(rates), "items/s");
}
BENCHMARK(BM_queue_throughput)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);

// 11. Pipes: a round trip through make_pipe<int>() to a worker that echoes (Python: multiprocessing.Pipe()).
void BM_pipe_round_trip(benchmark::State& state) {
    auto [parent_end, worker_end] = procpool::make_pipe<int>();
    procpool::Pool pool(1);
    auto echo = pool.apply_async([worker_end] {
        for (int v = worker_end.recv(); v >= 0; v = worker_end.recv()) worker_end.send(v);
    });
    constexpr int kTrips = 20'000;
    for (int i = 0; i < 1000; ++i) {  // untimed: the worker has claimed its end and runs
        parent_end.send(i);
        benchmark::DoNotOptimize(parent_end.recv());
    }
    std::vector<double> samples;
    for (auto _ : state) {
        const auto start = Clock::now();
        for (int i = 0; i < kTrips; ++i) {
            parent_end.send(i);
            benchmark::DoNotOptimize(parent_end.recv());
        }
        samples.push_back(seconds_since(start) * 1e6 / kTrips);
    }
    parent_end.send(-1);
    echo.get();
    report(state, "pipe_round_trip", median(samples), "us");
}
BENCHMARK(BM_pipe_round_trip)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);

// 12. Shared dicts: SharedDict against Python's Manager().dict() (python_pool.py runs the same operations), from
// 1 process (the caller) and from 2 (pool workers, started before the clock): set, get, and `d[k] += 1` on one key
// (update() here; Python needs a Manager().Lock() around it to count right). Keys "k0".."k999", long values.
enum DictOp { kDictSet, kDictGet, kDictIncrement };
constexpr int kDictOps = 200'000;  // per process

void dict_ops(const procpool::SharedDict<std::string, long>& d, int op, int n) {
    std::string key;
    for (int i = 0; i < n; ++i) {
        key = "k" + std::to_string(i % 1000);
        switch (op) {
            case kDictSet: d.set(key, i); break;
            case kDictGet: benchmark::DoNotOptimize(d.get(key)); break;
            default: benchmark::DoNotOptimize(d.update("counter", [](long& v) { ++v; })); break;
        }
    }
}

void BM_shared_dict(benchmark::State& state) {
    const int op = static_cast<int>(state.range(0));
    const int processes = static_cast<int>(state.range(1));
    const procpool::SharedDict<std::string, long> d;
    for (int i = 0; i < 1000; ++i) d.set("k" + std::to_string(i), i);
    procpool::Pool pool(2);
    auto run = [&] {
        if (processes == 1) {
            dict_ops(d, op, kDictOps);
        } else {
            pool.map([d, op](int) { dict_ops(d, op, kDictOps); }, std::views::iota(0, processes), {.chunksize = 1});
        }
    };
    run();  // untimed: pages faulted in, workers running
    std::vector<double> rates;
    for (auto _ : state) {
        const auto start = Clock::now();
        run();
        rates.push_back(kDictOps * processes / seconds_since(start));
    }
    const char* names[] = {"set", "get", "increment"};
    report(state, std::string("dict_") + names[op] + (processes == 1 ? "_1proc" : "_2procs"), median(rates), "ops/s");
}
BENCHMARK(BM_shared_dict)
    ->ArgsProduct({{kDictSet, kDictGet, kDictIncrement}, {1, 2}})
    ->Iterations(3)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// 9. The first map of a process next to the later ones (issue 19): a program that maps once only ever sees the
// first. Each sample is a fresh process (this binary run again with --first-map=<kind>, so nothing is warm: not the
// heap, the shared arena, the result areas or the VM's fresh pages); it builds a pool, runs the same map 4 times
// and prints the rate of each, and the page faults it took (the caller's and the workers'). The first is reported
// as "<workload>_first_map", the fourth beside it as "fourth_map" (the steady rows above run 3 more maps before
// they time any). Three kinds map nothing: "fresh" writes 40 MiB into fresh shared memory and then 3 times more into
// the same pages, the price this machine puts on the first touch of memory; "copy" makes the "args" map's copies
// alone (16 x 10 MiB on two threads with the pool's own copy) into fresh shared memory, then the same pages: the
// least that map's first run can take; "fault" measures what one fresh page costs, touched on every CPU at once,
// which with the first map's fault count gives the least time those faults can take (the fault floor).
constexpr int kMapsInChild = 4;
struct FirstMapKind {
    const char* kind;      // --first-map=<kind>
    const char* workload;  // the steady row it matches
    const char* unit;
};
constexpr FirstMapKind kFirstMapKinds[] = {{"ints", "map_tiny", "items/s"},
                                           {"args", "payload_10mib_args", "GB/s"},
                                           {"results", "payload_10mib_results", "GB/s"},
                                           {"imap", "imap_default", "items/s"},
                                           {"fresh", "write_40mib_shared_memory", "GB/s"},
                                           {"copy", "copy_16x10mib_shared_memory", "GB/s"},
                                           {"fault", "fresh_page_fault", "ns/page"}};
/// Minor page faults of process `pid` so far (/proc/PID/stat), 0 if it is gone.
long minor_faults_of(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    const std::size_t after_name = line.rfind(')');
    if (after_name == std::string::npos) return 0;
    std::istringstream fields(line.substr(after_name + 2));
    std::string skipped;
    for (int i = 0; i < 7; ++i) fields >> skipped;  // state, ppid, pgrp, session, tty_nr, tpgid, flags
    long minflt = 0;
    fields >> minflt;
    return minflt;
}
/// Minor page faults of this process and of the pool's workers so far.
long pool_minor_faults(const procpool::Pool& pool) {
    long faults = minor_faults_of(::getpid());
    for (const pid_t worker : pool.worker_pids()) faults += minor_faults_of(worker);
    return faults;
}
/// CPU time one fresh page costs, in ns: 80 MiB of fresh memory (shared or private) touched on every CPU at once.
double fresh_page_ns(bool shared) {
    const std::size_t bytes = std::size_t{80} << 20;
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    void* mapped = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS,
                          -1, 0);
    if (mapped == MAP_FAILED) return 0;
    auto* base = static_cast<volatile char*>(mapped);
    const std::size_t threads = cpus();
    const std::size_t part = bytes / threads;
    const auto start = Clock::now();
    std::vector<std::thread> touching;
    for (std::size_t t = 0; t < threads; ++t) {
        touching.emplace_back([=] {
            for (std::size_t at = t * part; at < (t + 1) * part; at += page) base[at] = 1;
        });
    }
    for (std::thread& thread : touching) thread.join();
    const double seconds = seconds_since(start);
    ::munmap(mapped, bytes);
    return seconds * 1e9 * static_cast<double>(threads) / static_cast<double>(bytes / page);
}
/// Runs in the child: maps `bytes` of fresh shared memory and times `write(start of the mapping)` kMapsInChild times
/// (fresh pages the first time, the same pages after), one "rate faults seconds" line each. 0, or 1 if nothing was
/// mapped.
template <class Write>
int time_writes_into_fresh_shared_memory(std::size_t bytes, Write write) {
    void* mapped = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) return 1;
    for (int k = 0; k < kMapsInChild; ++k) {
        const auto start = Clock::now();
        write(static_cast<char*>(mapped));
        benchmark::ClobberMemory();
        const double seconds = seconds_since(start);
        std::printf("%.6g 0 %.6g\n", static_cast<double>(bytes) / seconds / 1e9, seconds);
    }
    ::munmap(mapped, bytes);
    return 0;
}
/// Runs in the child: the maps of `kind` (see kFirstMapKinds), one "rate faults" line per map.
int first_map_child(const std::string& kind) {
    const std::size_t size = std::size_t{10} << 20;
    if (kind == "fresh") {  // no pool: fresh shared pages written once, then the same pages again
        const std::vector<char> source(std::size_t{40} << 20, 'z');
        return time_writes_into_fresh_shared_memory(source.size(),
                                                    [&](char* to) { std::memcpy(to, source.data(), source.size()); });
    }
    if (kind == "copy") {  // no pool: the args kind's copies alone, into fresh shared memory, then the same pages
        const std::vector<std::string> items(16, std::string(size, 'x'));
        return time_writes_into_fresh_shared_memory(items.size() * size, [&](char* to) {
            for (std::size_t i = 0; i < items.size(); ++i) {
                // The copy a map's arguments take into the pool's arena (two threads, streaming stores).
                procpool::detail::stream_copy_parallel(to + i * size, items[i].data(), size);
            }
        });
    }
    if (kind == "fault") {  // no pool: what a fresh page costs, private memory (the cheaper kind) and shared
        for (int k = 0; k < kMapsInChild; ++k) std::printf("%.6g %.6g 0\n", fresh_page_ns(false), fresh_page_ns(true));
        return 0;
    }
    procpool::Pool pool(cpus());
    pool.apply(identity, 0);
    std::vector<int> iota_input(kind == "ints" ? 10'000'000 : 0);
    std::iota(iota_input.begin(), iota_input.end(), 0);
    const std::vector<std::string> items(kind == "args" ? 16 : 0, std::string(size, 'x'));
    const std::vector<std::size_t> sizes(16, size);
    for (int k = 0; k < kMapsInChild; ++k) {
        const long faults_before = pool_minor_faults(pool);
        const auto start = Clock::now();
        double amount = 0;  // in the kind's unit: items, or GB
        if (kind == "ints") {
            benchmark::DoNotOptimize(pool.map([](int x) { return 2 * x; }, iota_input));
            amount = static_cast<double>(iota_input.size());
        } else if (kind == "args") {
            benchmark::DoNotOptimize(pool.map([](const std::string& text) { return text.size(); }, items));
            amount = 16.0 * static_cast<double>(size) / 1e9;
        } else if (kind == "results") {
            benchmark::DoNotOptimize(pool.map([](std::size_t n) { return std::string(n, 'y'); }, sizes));
            amount = 16.0 * static_cast<double>(size) / 1e9;
        } else if (kind == "imap") {
            benchmark::DoNotOptimize(imap_sum(pool, 200000, {}, true));
            amount = 200000;
        } else {
            return 2;
        }
        const double seconds = seconds_since(start);
        std::printf("%.6g %ld %.6g\n", amount / seconds, pool_minor_faults(pool) - faults_before, seconds);
    }
    return 0;
}
/// One line of a first-map child: the map's rate, the page faults it took and its seconds (for "fault": the ns per
/// fresh private page and per fresh shared page).
struct FirstMapLine {
    double rate;
    double faults;
    double seconds;
};
/// Runs this binary as a first-map child and returns its lines (empty if it failed).
std::vector<FirstMapLine> run_first_map_child(const std::string& kind) {
    const std::string command = "/proc/" + std::to_string(::getpid()) + "/exe --first-map=" + kind;
    std::vector<FirstMapLine> lines;
    if (FILE* child = ::popen(command.c_str(), "r")) {
        FirstMapLine line{};
        while (std::fscanf(child, "%lf %lf %lf", &line.rate, &line.faults, &line.seconds) == 3) lines.push_back(line);
        if (::pclose(child) != 0) lines.clear();
    }
    return lines;
}
void BM_first_map(benchmark::State& state) {
    const FirstMapKind& kind = kFirstMapKinds[state.range(0)];
    const bool fault_kind = kind.kind == std::string("fault");
    std::vector<FirstMapLine> first;
    std::vector<FirstMapLine> fourth;
    for (auto _ : state) {
        const std::vector<FirstMapLine> lines = run_first_map_child(kind.kind);
        if (lines.size() != kMapsInChild) {
            state.SkipWithError("the first-map child process failed");
            return;
        }
        if (fault_kind) {
            first.insert(first.end(), lines.begin(), lines.end());  // every line is one measurement
        } else {
            first.push_back(lines.front());
            fourth.push_back(lines.back());
        }
    }
    const auto median_of = [](const std::vector<FirstMapLine>& lines, double FirstMapLine::*field) {
        std::vector<double> values;
        for (const FirstMapLine& line : lines) values.push_back(line.*field);
        return median(values);
    };
    if (fault_kind) {
        report(state, kind.workload, median_of(first, &FirstMapLine::rate), kind.unit);
        state.counters["shared_ns_per_page"] = median_of(first, &FirstMapLine::faults);
        state.counters["cpus"] = static_cast<double>(cpus());
        return;
    }
    report(state, std::string(kind.workload) + "_first_map", median_of(first, &FirstMapLine::rate), kind.unit);
    state.counters["fourth_map"] = median_of(fourth, &FirstMapLine::rate);
    state.counters["first_vs_fourth"] = median_of(first, &FirstMapLine::rate) / median_of(fourth, &FirstMapLine::rate);
    state.counters["first_ms"] = median_of(first, &FirstMapLine::seconds) * 1e3;
    state.counters["fourth_ms"] = median_of(fourth, &FirstMapLine::seconds) * 1e3;
    state.counters["first_faults"] = median_of(first, &FirstMapLine::faults);
    state.counters["fourth_faults"] = median_of(fourth, &FirstMapLine::faults);
}
BENCHMARK(BM_first_map)
    ->DenseRange(0, std::size(kFirstMapKinds) - 1)
    ->Iterations(5)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

// BENCHMARK_MAIN, but a run with --first-map=<kind> is a first-map child process (BM_first_map).
int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg.rfind("--first-map=", 0) == 0) return first_map_child(arg.substr(std::strlen("--first-map=")));
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
