// The scheduler's decisions, deterministically: the chunk policy and crash attribution as pure functions, and
// dispatch, rebalancing, budgets, deaths and timeouts through an in-process fake transport whose workers move only
// when the test moves them (tests/fake_transport.hpp). No processes, no rings, no timing.
#include <catch2/catch.hpp>
#include <procpool/detail/rank_server.hpp>  // a group of workers behind one slot (MPI ranks use it; no MPI needed)
#include <procpool/procpool.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <map>
#include <numeric>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fake_transport.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using procpool::detail::attribute_death;
using procpool::detail::ChunkPolicy;
using procpool::detail::DeathFacts;
using procpool::detail::HeldTask;
using procpool::detail::TaskFate;
using test_support::FakeTransport;

namespace {

/// A pool over the fake. Its end terminates: a test that failed half-way leaves work the fake will never run, and
/// close() + join() would wait for it.
struct FakePool : procpool::BasicPool<FakeTransport> {
    using BasicPool::BasicPool;
    FakePool(const FakePool&) = delete;
    FakePool& operator=(const FakePool&) = delete;
    ~FakePool() { terminate(); }
};

FakeTransport& transport_of(FakePool& pool) { return procpool::detail::PoolAccess::core(pool).transport; }

/// Waits (bounded) until `done()`; the scheduler's service thread applies what the fake reports.
template <class Done>
bool settles(Done&& done) {
    return test_support::eventually(std::forward<Done>(done), 5s);
}

}  // namespace

// ---- the chunk policy
// ------------------------------------------------------------------------------------------------

TEST_CASE("chunk policy: map chunks shrink towards the end, follow the time target, and fit a task's size",
          "[scheduler]") {
    ChunkPolicy::MapInputs in;
    in.workers = 2;
    in.max_task_bytes = 1 << 20;
    // Before items are timed: probes that double with each task sent.
    in.unsent_items = 1'000'000;
    for (std::uint32_t sent = 0; sent < 5; ++sent) {
        in.tasks_sent = sent;
        CHECK(ChunkPolicy::map_chunk(in) == (std::uint64_t{1} << sent));
    }
    // Timed at 1 us per item: 10 ms of work per chunk.
    in.item_ns = 1'000;
    CHECK(ChunkPolicy::map_chunk(in) == 10'000);
    // Guided: never more than a quarter of what is left with 2 workers, so the last chunks are small.
    in.unsent_items = 100;
    CHECK(ChunkPolicy::map_chunk(in) == 25);
    in.unsent_items = 3;
    CHECK(ChunkPolicy::map_chunk(in) == 1);
    // Large items: a task stays under max_task_bytes.
    in.unsent_items = 1'000'000;
    in.bytes_per_item = 4096;
    CHECK(ChunkPolicy::map_chunk(in) == 256);
    // Never zero.
    in.bytes_per_item = std::uint64_t{1} << 30;
    CHECK(ChunkPolicy::map_chunk(in) == 1);
}

TEST_CASE("chunk policy: imap chunks, queue depth and moving averages", "[scheduler]") {
    CHECK(ChunkPolicy::imap_chunk(0, 0, 1000) == 1);
    CHECK(ChunkPolicy::imap_chunk(3, 0, 1000) == 8);
    CHECK(ChunkPolicy::imap_chunk(9, 0, 1000) == ChunkPolicy::kMaxImapProbe);
    CHECK(ChunkPolicy::imap_chunk(9, 1'000, 100'000) == 2'000);  // 2 ms of 1 us items
    CHECK(ChunkPolicy::imap_chunk(9, 10, 682) == 682);           // capped by the read-ahead bound's share
    CHECK(ChunkPolicy::imap_chunk(9, 5e6, 682) == 1);            // a 5 ms item: one per chunk
    CHECK(ChunkPolicy::imap_chunk(9, 1e6, 682, 16) == 32);       // a group of 16 workers: 2 ms of 1 ms items each
    CHECK(ChunkPolicy::queue_depth(0, 2) == 2);                  // not measured: the minimum
    CHECK(ChunkPolicy::queue_depth(50'000, 2) == 5);             // 200 us of 50 us tasks, plus one
    CHECK(ChunkPolicy::queue_depth(10, 2) == ChunkPolicy::kMaxDepth);
    CHECK(ChunkPolicy::queue_depth(1e9, 1) == 1);
    CHECK(ChunkPolicy::smoothed(0, 10, 0.3) == 10);
    CHECK(ChunkPolicy::smoothed(10, 20, 0.3) == Approx(13));
}

// ---- crash attribution ---------------------------------------------------------------------------------------------

TEST_CASE("crash attribution: which items a dead worker held", "[scheduler]") {
    const std::vector<HeldTask> held{{7, 4, 0, true, 100}, {8, 3, 0, true, 200}, {9, 2, 0, false, 0}};
    SECTION("died running item 2 of its first task: items 0-2 fail, the rest is requeued") {
        DeathFacts facts;
        facts.running_task = 7;
        facts.running_item = 2;
        facts.ring_head = 100;
        const std::vector<TaskFate> fates = attribute_death(held, facts);
        CHECK(fates[0].crashed == 3);
        CHECK_FALSE(fates[0].timed_out);
        CHECK(fates[1].failed() == 0);
        CHECK(fates[2].failed() == 0);
    }
    SECTION("items already delivered are not failed again") {
        std::vector<HeldTask> partly = held;
        partly[0].delivered = 2;
        DeathFacts facts;
        facts.running_task = 7;
        facts.running_item = 2;
        CHECK(attribute_death(partly, facts)[0].crashed == 1);
    }
    SECTION("died before taking its first task: everything is requeued") {
        DeathFacts facts;
        facts.ring_head = 100;  // not consumed, not claimed
        for (const TaskFate& fate : attribute_death(held, facts)) CHECK(fate.failed() == 0);
    }
    SECTION("claimed its first task and died before saying which item: its first undelivered item fails") {
        DeathFacts facts;
        facts.ring_head = 100;
        facts.first_task_claimed = true;
        const std::vector<TaskFate> fates = attribute_death(held, facts);
        CHECK(fates[0].crashed == 1);
        CHECK(fates[1].failed() == 0);
    }
    SECTION("consumed its first task's message (a multi-fragment task) and died: counted as started") {
        DeathFacts facts;
        facts.ring_head = 150;
        CHECK(attribute_death(held, facts)[0].crashed == 1);
    }
    SECTION("killed for a timeout: the late item fails with TaskTimeout, nothing else") {
        DeathFacts facts;
        facts.running_task = 7;
        facts.running_item = 1;
        facts.item_start_ns = 5'000;
        facts.timeout_kill = DeathFacts::TimeoutKill{7, 1, 5'000};
        std::vector<HeldTask> partly = held;
        partly[0].delivered = 1;  // item 0 was sent before item 1 started (a timeout sends every finished item)
        const std::vector<TaskFate> fates = attribute_death(partly, facts);
        CHECK(fates[0].crashed == 0);
        CHECK(fates[0].timed_out);
        CHECK(fates[1].failed() == 0);
    }
    SECTION("killed for a timeout, but the late item finished and the next began: that one is innocent") {
        DeathFacts facts;
        facts.running_task = 7;
        facts.running_item = 2;
        facts.item_start_ns = 9'000;  // not the late item's start
        facts.timeout_kill = DeathFacts::TimeoutKill{7, 1, 5'000};
        std::vector<HeldTask> partly = held;
        partly[0].delivered = 2;
        const std::vector<TaskFate> fates = attribute_death(partly, facts);
        CHECK(fates[0].failed() == 0);  // item 2 goes back to the queue
    }
}

// ---- dispatch, rebalancing, budgets, deaths and timeouts through the fake
// --------------------------------------------

TEST_CASE("dispatch keeps every worker two tasks deep before tasks were timed, least loaded first", "[scheduler]") {
    FakePool pool(procpool::PoolOptions{.processes = 3});
    FakeTransport& fake = transport_of(pool);
    auto result = pool.map_async([](int x) { return x * 10; }, std::views::iota(0, 10), {.chunksize = 1});
    REQUIRE(settles([&] { return fake.writes().size() == 6; }));
    for (std::size_t slot = 0; slot < 3; ++slot) CHECK(fake.queued(slot) == 2);
    // As workers finish, the rest follows, each to the worker with room.
    while (!result.ready()) {
        bool ran = false;
        for (std::size_t slot = 0; slot < 3; ++slot) ran |= fake.run_next(slot) == FakeTransport::Step::ran;
        if (!ran) std::this_thread::sleep_for(1ms);
    }
    const std::vector<int> values = result.get();
    CHECK(values == std::vector<int>{0, 10, 20, 30, 40, 50, 60, 70, 80, 90});
    CHECK(fake.writes().size() == 10);
}

TEST_CASE("apply_async is sent by the submitting call while a worker has room, and by the next result when none has",
          "[scheduler]") {
    FakePool pool(procpool::PoolOptions{.processes = 2});
    FakeTransport& fake = transport_of(pool);
    std::vector<procpool::AsyncResult<int>> results;
    const auto submit = [&](int x) { results.push_back(pool.apply_async([](int v) { return v * 2; }, x)); };
    // Room: each call writes its task before it returns (two per worker before tasks are timed).
    for (int i = 0; i < 4; ++i) {
        submit(i);
        CHECK(fake.writes().size() == static_cast<std::size_t>(i + 1));
    }
    // Full: the task waits in the queue.
    submit(4);
    std::this_thread::sleep_for(20ms);
    CHECK(fake.writes().size() == 4);
    // A result makes room: the poller sends the waiting task to that worker.
    REQUIRE(fake.run_next(1) == FakeTransport::Step::ran);
    REQUIRE(settles([&] { return fake.writes().size() == 5; }));
    CHECK(fake.writes().back().slot == 1);
    CHECK(fake.queued(1) == 2);
    // Every task runs; then, on idle workers, a call writes its task itself again.
    while (fake.run_next(0) == FakeTransport::Step::ran || fake.run_next(1) == FakeTransport::Step::ran) {
    }
    for (int i = 0; i < 5; ++i) CHECK(results[static_cast<std::size_t>(i)].get(5s) == 2 * i);
    submit(5);
    CHECK(fake.writes().size() == 6);
    REQUIRE(fake.run_next(fake.writes().back().slot) == FakeTransport::Step::ran);
    CHECK(results.back().get(5s) == 10);
}

TEST_CASE("a poll pass reads a worker's results in the order it sent them, small and large, however many",
          "[scheduler]") {
    // Small result messages are copied aside and taken together under one hold of the scheduler's lock; a large
    // one is handled as it is read, after those before it.
    SECTION("a small result, then a large one") {
        FakePool pool(procpool::PoolOptions{.processes = 1});
        FakeTransport& fake = transport_of(pool);
        const auto text = [](int n) { return std::string(static_cast<std::size_t>(n), 'x'); };
        auto small = pool.apply_async(text, 1);
        auto large = pool.apply_async(text, 1000);
        REQUIRE(settles([&] { return fake.queued(0) == 2; }));
        fake.hold_results(true);
        REQUIRE(fake.run_next(0) == FakeTransport::Step::ran);
        REQUIRE(fake.run_next(0) == FakeTransport::Step::ran);
        REQUIRE(fake.results_waiting(0) == 2);
        fake.hold_results(false);  // one drain reads both
        CHECK(small.get(5s) == text(1));
        CHECK(large.get(5s) == text(1000));
        CHECK(fake.signals().empty());  // no result was taken for a task the worker does not hold
    }
    SECTION("more small results than one batch holds") {
        // With a task timeout a worker sends each item's result as the next item starts: 300 messages of ~110
        // bytes from one task, more than a batch's 256 messages.
        FakePool pool(procpool::PoolOptions{.processes = 1, .task_timeout = std::chrono::hours(1)});
        FakeTransport& fake = transport_of(pool);
        const auto text = [](int n) { return std::string(64, static_cast<char>('a' + n % 26)); };
        auto result = pool.map_async(text, std::views::iota(0, 300), {.chunksize = 300});
        REQUIRE(settles([&] { return fake.queued(0) == 1; }));
        fake.hold_results(true);
        REQUIRE(fake.run_next(0) == FakeTransport::Step::ran);
        REQUIRE(fake.results_waiting(0) == 300);
        fake.hold_results(false);
        const std::vector<std::string> values = result.get(5s);
        REQUIRE(values.size() == 300);
        for (int i = 0; i < 300; ++i) CHECK(values[static_cast<std::size_t>(i)] == text(i));
        CHECK(fake.signals().empty());
    }
}

TEST_CASE("dispatch keeps every worker of a group two tasks deep, the least loaded group for its size first",
          "[scheduler]") {
    struct GroupedPool : procpool::BasicPool<test_support::GroupedFakeTransport> {
        using BasicPool::BasicPool;
        GroupedPool(const GroupedPool&) = delete;
        GroupedPool& operator=(const GroupedPool&) = delete;
        ~GroupedPool() { terminate(); }
    };
    GroupedPool pool(procpool::PoolOptions{.processes = 2});  // a group of 4 workers and a group of 1
    auto& fake = procpool::detail::PoolAccess::core(pool).transport;
    CHECK(pool.size() == 5);
    SECTION("one-item tasks: two for each worker of a group") {
        std::vector<procpool::AsyncResult<int>> results;
        for (int i = 0; i < 20; ++i) results.push_back(pool.apply_async([](int x) { return x; }, i));
        REQUIRE(settles([&] { return fake.writes().size() == 10; }));
        CHECK(fake.queued(0) == 8);
        CHECK(fake.queued(1) == 2);
        // Filled in proportion to size: the group of 1 gets its second task when the group of 4 has 4 queued and
        // a tie with its 1 (ties go to the first slot).
        std::vector<std::size_t> order;
        for (const auto& write : fake.writes()) order.push_back(write.slot);
        CHECK(order == std::vector<std::size_t>{0, 1, 0, 0, 0, 0, 1, 0, 0, 0});
    }
    SECTION("tasks of as many items as the group has workers: two of them") {
        auto result = pool.map_async([](int x) { return x; }, std::views::iota(0, 40), {.chunksize = 4});
        REQUIRE(settles([&] { return fake.writes().size() == 4; }));
        std::this_thread::sleep_for(20ms);  // nothing more follows while no task finishes
        CHECK(fake.writes().size() == 4);
        CHECK(fake.queued(0) == 2);
        CHECK(fake.queued(1) == 2);
    }
}

TEST_CASE("rebalancing: an idle worker takes over a task queued behind another's running one", "[scheduler]") {
    FakePool pool(procpool::PoolOptions{.processes = 2});
    FakeTransport& fake = transport_of(pool);
    auto result = pool.map_async([](int x) { return x + 1; }, std::views::iota(0, 4), {.chunksize = 1});
    REQUIRE(settles([&] { return fake.queued(0) == 2 && fake.queued(1) == 2; }));
    REQUIRE(fake.start_next(0, 0));  // worker 0 is busy with a long first task; its second waits behind it
    CHECK(fake.run_next(1) == FakeTransport::Step::ran);
    CHECK(fake.run_next(1) == FakeTransport::Step::ran);
    // Worker 1 ran dry with nothing unsent: the parent revokes worker 0's queued task and sends it to worker 1.
    REQUIRE(settles([&] { return fake.revocations() == 1 && fake.queued(1) == 1; }));
    CHECK(fake.run_next(1) == FakeTransport::Step::ran);
    CHECK(fake.run_next(0) == FakeTransport::Step::ran);              // the long one finishes
    CHECK(fake.run_next(0) == FakeTransport::Step::skipped_revoked);  // the revoked one is skipped
    CHECK(result.get(5s) == std::vector<int>{1, 2, 3, 4});
    const std::vector<FakeTransport::Run> runs = fake.runs();
    CHECK(std::count_if(runs.begin(), runs.end(), [](const auto& r) { return r.slot == 1; }) == 3);
}

TEST_CASE("budgets: max_tasks_per_child gives a worker that many items, then an exit, then a replacement",
          "[scheduler]") {
    FakePool pool(procpool::PoolOptions{.processes = 1, .max_tasks_per_child = 3});
    FakeTransport& fake = transport_of(pool);
    auto result = pool.map_async([](int x) { return x; }, std::views::iota(0, 7), {.chunksize = 1});
    std::map<pid_t, std::uint32_t> items_per_worker;
    int exits = 0;
    REQUIRE(settles([&] {
        const FakeTransport::Step step = fake.run_next(0);
        if (step == FakeTransport::Step::exited) ++exits;
        return result.ready();
    }));
    for (const FakeTransport::Run& run : fake.runs()) items_per_worker[run.pid] += run.items;
    CHECK(result.get() == std::vector<int>{0, 1, 2, 3, 4, 5, 6});
    CHECK(items_per_worker.size() == 3);  // 3 + 3 + 1
    for (const auto& [pid, items] : items_per_worker) CHECK(items <= 3);
    CHECK(exits == 2);
    CHECK(pool.worker_pids() == std::vector<pid_t>{fake.pid(0)});
}

TEST_CASE("a worker killed in a task fails that task, and what it had not started runs elsewhere", "[scheduler]") {
    FakePool pool(procpool::PoolOptions{.processes = 1});
    FakeTransport& fake = transport_of(pool);
    auto a = pool.apply_async([](int x) { return x; }, 1);
    auto b = pool.apply_async([](int x) { return x; }, 2);
    auto c = pool.apply_async([](int x) { return x; }, 3);
    REQUIRE(settles([&] { return fake.queued(0) == 2; }));  // a and b sent, c waits
    const pid_t first = fake.pid(0);
    REQUIRE(fake.start_next(0, 0));
    fake.kill(0, SIGSEGV);
    // The replacement gets b (requeued at the front, never claimed) and c.
    REQUIRE(settles([&] { return fake.pid(0) != first && fake.queued(0) == 2; }));
    while (fake.run_next(0) == FakeTransport::Step::ran) {
    }
    try {
        (void)a.get(5s);
        FAIL("no exception");
    } catch (const procpool::WorkerCrashed& e) {
        CHECK(e.pid() == first);
        CHECK(e.signal() == SIGSEGV);
    }
    CHECK(b.get(5s) == 2);
    CHECK(c.get(5s) == 3);
}

TEST_CASE("a task past task_timeout: its worker is signalled and the late item fails with TaskTimeout", "[scheduler]") {
    FakePool pool(procpool::PoolOptions{.processes = 1, .task_timeout = 100ms});
    FakeTransport& fake = transport_of(pool);
    auto late = pool.apply_async([](int x) { return x; }, 1);
    auto next = pool.apply_async([](int x) { return x; }, 2);
    REQUIRE(settles([&] { return fake.queued(0) == 2; }));
    REQUIRE(fake.start_next(0, 0, procpool::detail::monotonic_ns() - 1'000'000'000));  // started a second ago
    REQUIRE(settles([&] { return !fake.signals().empty(); }));
    CHECK(fake.signals().front() == std::pair<std::size_t, int>{0, SIGTERM});
    CHECK_THROWS_AS(late.get(5s), procpool::TaskTimeout);
    REQUIRE(settles([&] { return fake.queued(0) == 1; }));  // `next` went to the replacement
    CHECK(fake.run_next(0) == FakeTransport::Step::ran);
    CHECK(next.get(5s) == 2);
}

TEST_CASE("a retried item goes to another worker when there is one", "[scheduler]") {
    FakePool pool(procpool::PoolOptions{.processes = 2, .retries = 1});
    FakeTransport& fake = transport_of(pool);
    auto result = pool.map_async([](int x) { return x; }, std::views::iota(0, 2), {.chunksize = 1});
    REQUIRE(settles([&] { return fake.queued(0) == 1 && fake.queued(1) == 1; }));
    const std::uint64_t first_task = fake.writes().front().task;
    REQUIRE(fake.start_next(0, 0));
    fake.kill(0, SIGKILL);
    // The item is retried: not on slot 0 (replaced, idle) but on slot 1, behind the task already there.
    const bool retried = settles([&] { return fake.writes().size() == 3; });
    REQUIRE(retried);
    const FakeTransport::Write retry = fake.writes().back();
    CHECK(retry.slot == 1);
    CHECK(retry.task != first_task);
    CHECK(fake.queued(0) == 0);
    while (fake.run_next(1) == FakeTransport::Step::ran) {
    }
    CHECK(result.get(5s) == std::vector<int>{0, 1});
}

// ---- a group's side: how the results of a task it received go back
// ---------------------------------------------------

namespace {

/// A result message a group sent, decoded: its header, its errors by item, its values.
struct SentResult {
    procpool::detail::ResultHeader header{};
    std::map<std::uint32_t, std::string> errors;  // item index in the task -> what()
    std::vector<int> values;
};

SentResult decode_sent(const procpool::detail::Buffer& message) {
    SentResult out;
    std::memcpy(&out.header, message.data(), sizeof out.header);
    const std::span<const std::byte> bytes(message.data(), message.size());
    procpool::InputArchive errors(bytes.subspan(sizeof out.header, out.header.errors_size));
    for (std::uint32_t i = 0; i < out.header.error_count; ++i) {
        std::uint32_t index = 0;
        errors.read_bytes(&index, sizeof index);
        try {
            std::rethrow_exception(procpool::detail::decode_error(errors));
        } catch (const std::exception& e) {
            out.errors[index] = e.what();
        }
    }
    procpool::InputArchive values(bytes.subspan(sizeof out.header + out.header.errors_size));
    while (values.remaining() != 0) {
        int value = 0;
        values(value);
        out.values.push_back(value);
    }
    return out;
}

/// Delivers items [first, first + count) to `job` as a group's pool would: value i * 10 for item i, an error for
/// the items in `failing`.
void deliver_run(procpool::detail::ReceivedTaskJob& job, std::uint64_t first, std::uint64_t count,
                 const std::set<std::uint64_t>& failing = {}) {
    procpool::detail::Buffer values;
    procpool::OutputArchive ar(values);
    std::vector<procpool::detail::ItemError> errors;
    for (std::uint64_t i = first; i < first + count; ++i) {
        if (failing.contains(i)) {
            errors.push_back({i, std::make_exception_ptr(std::runtime_error("item " + std::to_string(i)))});
        } else {
            ar(static_cast<int>(i * 10));
        }
    }
    procpool::InputArchive in(std::span<const std::byte>(values.data(), values.size()));
    job.deliver(first, count, errors, in, 1000 * count);
}

}  // namespace

TEST_CASE("a group sends a task's results in item order, gathered into few messages, errors on their items",
          "[scheduler]") {
    using procpool::detail::ReceivedTaskJob;
    std::vector<SentResult> sent;
    auto forward = std::make_shared<const procpool::detail::ResultForwarder>(
        [&](procpool::detail::Buffer message) { sent.push_back(decode_sent(message)); });

    SECTION("runs finished close together: one message once the task is done") {
        ReceivedTaskJob job(nullptr, procpool::detail::Buffer(), 7, 8, "rank 3 on node-a", forward, 1h);
        deliver_run(job, 4, 2, {5});  // not next in order: waits for items 0-3
        deliver_run(job, 0, 4, {1});
        CHECK(sent.empty());  // held back: the last message of the task went less than an hour ago
        CHECK_FALSE(job.flush_due(procpool::detail::monotonic_ns()));
        deliver_run(job, 6, 2);
        REQUIRE(sent.size() == 1);
        const SentResult& only = sent[0];
        CHECK(only.header.task_id == 7);
        CHECK(only.header.first == 0);
        CHECK(only.header.count == 8);
        CHECK(only.header.flags == procpool::detail::kFinalResult);
        CHECK(only.header.busy_ns == 8000);
        CHECK(only.errors == std::map<std::uint32_t, std::string>{{1, "item 1"}, {5, "item 5"}});
        CHECK(only.values == std::vector<int>{0, 20, 30, 40, 60, 70});
        CHECK(job.flush_due(procpool::detail::monotonic_ns()));  // every result went
    }
    SECTION("results held back go when due, even if nothing else finishes; indices stay the task's") {
        ReceivedTaskJob job(nullptr, procpool::detail::Buffer(), 9, 6, "rank 1 on node-b", forward, 100ms);
        deliver_run(job, 0, 1);
        CHECK(sent.empty());  // held back for up to 100 ms
        std::this_thread::sleep_for(120ms);
        CHECK_FALSE(job.flush_due(procpool::detail::monotonic_ns()));
        REQUIRE(sent.size() == 1);
        CHECK(sent[0].header.first == 0);
        CHECK(sent[0].header.count == 1);
        CHECK(sent[0].header.flags == 0);
        deliver_run(job, 1, 3, {2, 3});
        CHECK(sent.size() == 1);  // a new message gathers from here
        std::this_thread::sleep_for(120ms);
        job.flush_due(procpool::detail::monotonic_ns());
        REQUIRE(sent.size() == 2);
        CHECK(sent[1].header.first == 1);
        CHECK(sent[1].header.count == 3);
        CHECK(sent[1].errors == std::map<std::uint32_t, std::string>{{2, "item 2"}, {3, "item 3"}});
        CHECK(sent[1].values == std::vector<int>{10});
        deliver_run(job, 4, 2, {5});  // the task is done: it goes at once
        REQUIRE(sent.size() == 3);
        CHECK(sent[2].header.first == 4);
        CHECK(sent[2].header.flags == procpool::detail::kFinalResult);
        CHECK(sent[2].errors == std::map<std::uint32_t, std::string>{{5, "item 5"}});
        CHECK(sent[2].values == std::vector<int>{40});
        CHECK(job.flush_due(procpool::detail::monotonic_ns()));
    }
    SECTION("without coalescing every run goes as it finishes in order") {
        ReceivedTaskJob job(nullptr, procpool::detail::Buffer(), 11, 4, "rank 0 on node-c", forward);
        deliver_run(job, 2, 2);
        CHECK(sent.empty());
        deliver_run(job, 0, 1);
        deliver_run(job, 1, 1);
        REQUIRE(sent.size() == 2);  // item 0; then 1 with the waiting 2-3
        CHECK(sent[1].header.first == 1);
        CHECK(sent[1].header.count == 3);
        CHECK(sent[1].values == std::vector<int>{10, 20, 30});
    }
}
