// Progress reports for map/imap/starmap: monotonic counts, one final report, totals where known, zero cost when off.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <ranges>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

int slow_square(int x) {
    std::this_thread::sleep_for(2ms);
    return x * x;
}
int fail_at_7(int x) {
    if (x == 7) throw std::runtime_error("seven");
    return x;
}
int add(int a, int b) { return a + b; }

/// Collects every report it is given.
struct Recorder {
    std::mutex mutex;
    std::vector<procpool::ProgressInfo> reports;
    procpool::ProgressCallback callback() {
        return [this](const procpool::ProgressInfo& info) {
            std::lock_guard lock(mutex);
            reports.push_back(info);
        };
    }
    /// done never decreases, exactly one report is final and it is the last one.
    void check_well_formed() {
        std::lock_guard lock(mutex);
        REQUIRE_FALSE(reports.empty());
        for (std::size_t i = 1; i < reports.size(); ++i) {
            CHECK(reports[i].done >= reports[i - 1].done);
            CHECK(reports[i].elapsed >= reports[i - 1].elapsed);
        }
        for (std::size_t i = 0; i + 1 < reports.size(); ++i) CHECK_FALSE(reports[i].finished);
        CHECK(reports.back().finished);
    }
};

}  // namespace

TEST_CASE("map reports progress with a known total and ends with one final report", "[progress][threads]") {
    procpool::Pool pool(2);
    Recorder recorder;
    std::vector<int> items(200);
    for (int i = 0; i < 200; ++i) items[static_cast<std::size_t>(i)] = i;
    // 200 items x 2 ms over 2 workers: ~200 ms, so there are intermediate reports as well as the final one.
    const auto results = pool.map(slow_square, items, {.chunksize = 1, .progress = recorder.callback()});
    REQUIRE(results.size() == 200);
    recorder.check_well_formed();
    const auto& last = recorder.reports.back();
    CHECK(last.done == 200);
    REQUIRE(last.total.has_value());
    CHECK(*last.total == 200);
    CHECK(last.rate > 0);
    CHECK(recorder.reports.size() >= 2);
    for (const auto& report : recorder.reports) {
        REQUIRE(report.total.has_value());
        CHECK(*report.total == 200);
        CHECK(report.done <= 200);
        if (report.done > 0 && !report.finished) CHECK(report.remaining.has_value());
    }
}

TEST_CASE("a failing map still gives its final report", "[progress][threads]") {
    procpool::Pool pool(2);
    Recorder recorder;
    std::vector<int> items{1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    CHECK_THROWS_AS(pool.map(fail_at_7, items, {.chunksize = 1, .progress = recorder.callback()}), std::runtime_error);
    // The report is given before the result is marked ready, so it is there when map throws.
    recorder.check_well_formed();
}

TEST_CASE("starmap and map_async report progress", "[progress][threads]") {
    procpool::Pool pool(2);
    Recorder starmap_recorder;
    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    CHECK(pool.starmap(add, pairs, {.progress = starmap_recorder.callback()}) == std::vector<int>{3, 7, 11});
    starmap_recorder.check_well_formed();
    CHECK(starmap_recorder.reports.back().done == 3);

    Recorder async_recorder;
    auto result = pool.map_async(slow_square, std::vector<int>{1, 2, 3}, {.progress = async_recorder.callback()});
    CHECK(result.get() == std::vector<int>{1, 4, 9});
    async_recorder.check_well_formed();
    CHECK(async_recorder.reports.back().done == 3);
}

TEST_CASE("imap reports progress: a total for sized ranges, none for unbounded ones", "[progress][threads]") {
    procpool::Pool pool(2);
    SECTION("sized") {
        Recorder recorder;
        std::vector<int> items{1, 2, 3, 4, 5, 6, 7, 8};
        long sum = 0;
        for (int value : pool.imap(slow_square, items, {.chunksize = 1, .progress = recorder.callback()})) sum += value;
        CHECK(sum == 204);
        recorder.check_well_formed();
        CHECK(recorder.reports.back().done == 8);
        REQUIRE(recorder.reports.back().total.has_value());
        CHECK(*recorder.reports.back().total == 8);
    }
    SECTION("unbounded, left with break") {
        Recorder recorder;
        {
            int seen = 0;
            for (int value : pool.imap_unordered(slow_square, std::views::iota(0), {.progress = recorder.callback()})) {
                (void)value;
                if (++seen == 20) break;
            }
        }
        std::lock_guard lock(recorder.mutex);
        REQUIRE_FALSE(recorder.reports.empty());
        for (const auto& report : recorder.reports) {
            CHECK_FALSE(report.total.has_value());
            CHECK_FALSE(report.remaining.has_value());
        }
    }
}

TEST_CASE("a throwing progress callback does not break the map", "[progress][threads]") {
    procpool::Pool pool(2);
    std::vector<int> items{1, 2, 3, 4};
    auto throwing = [](const procpool::ProgressInfo&) { throw std::runtime_error("drawing failed"); };
    CHECK(pool.map(slow_square, items, {.progress = throwing}) == std::vector<int>{1, 4, 9, 16});
}

TEST_CASE("progress_bar draws percentage, counts and rate", "[progress]") {
    // The drawing itself, on a file: not a terminal, so periodic lines.
    std::FILE* file = std::tmpfile();
    REQUIRE(file != nullptr);
    procpool::detail::ProgressBar bar("work", file, false);
    procpool::ProgressInfo info;
    info.total = 10;
    for (std::uint64_t done = 0; done <= 10; ++done) {
        info.done = done;
        info.elapsed = std::chrono::duration<double>(0.1 * static_cast<double>(done));
        info.rate = 10;
        info.remaining = std::chrono::duration<double>(0.1 * static_cast<double>(10 - done));
        info.finished = done == 10;
        bar(info);
    }
    std::rewind(file);
    std::string text;
    char buffer[256];
    while (std::fgets(buffer, sizeof buffer, file) != nullptr) text += buffer;
    std::fclose(file);
    CHECK(text.find("work  50% 5/10 [00:00<00:00, 10.0 it/s]") != std::string::npos);
    CHECK(text.find("work 100% 10/10") != std::string::npos);
    CHECK(text.find('\r') == std::string::npos);  // no in-place redraw off a terminal

    std::FILE* terminal = std::tmpfile();
    procpool::detail::ProgressBar redrawn("", terminal, true);
    info.done = 4;
    info.finished = false;
    redrawn(info);
    std::rewind(terminal);
    text.clear();
    while (std::fgets(buffer, sizeof buffer, terminal) != nullptr) text += buffer;
    std::fclose(terminal);
    CHECK(text.rfind("\r 40% |██████████", 0) == 0);
}
