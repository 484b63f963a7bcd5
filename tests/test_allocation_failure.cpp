// What procpool's internals do when allocations fail: the paths that run because something threw std::bad_alloc
// must not need memory themselves, or a result is lost and a caller waits for ever.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <array>
#include <cstddef>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "failing_allocations.hpp"

using procpool_test::FailingAllocations;

namespace {

using Job = procpool::detail::ImapJob<int>;

Job make_job(bool ordered) { return Job([](procpool::detail::TaskRunner&) {}, procpool::detail::Buffer(), 1, ordered); }

std::string message_of(const std::exception_ptr& error) {
    if (!error) return "(no error)";
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        return e.what();
    }
}

/// The messages of every entry the reader can take now (values as "value").
std::vector<std::string> take_all(Job& job) {
    std::vector<std::string> messages;
    while (std::optional<Job::Entry> entry = job.try_take())
        messages.push_back(entry->value ? "value" : message_of(entry->error));
    return messages;
}

}  // namespace

TEST_CASE("imap: failing items allocates nothing, so a std::bad_alloc cannot lose them", "[allocation_failure]") {
    // The scheduler fails a message's items when delivering them threw, std::bad_alloc included: if failing them
    // needed memory too, they would never resolve and the reader would wait for ever.
    for (const bool ordered : {true, false}) {
        CAPTURE(ordered);
        Job job = make_job(ordered);
        job.expect(0, 3);
        job.expect(3, 2);
        job.expect(5, 1);
        const auto crashed = std::make_exception_ptr(std::runtime_error("crashed"));
        const auto timed_out = std::make_exception_ptr(std::runtime_error("timed out"));
        bool threw = false;
        {
            const FailingAllocations failing;
            try {
                job.fail(3, 2, crashed);
                job.fail(0, 3, timed_out);
                job.fail(5, 1, crashed);
            } catch (...) {
                threw = true;
            }
        }
        CHECK_FALSE(threw);
        const std::vector<std::string> expected =
            ordered ? std::vector<std::string>{"timed out", "timed out", "timed out", "crashed", "crashed", "crashed"}
                    : std::vector<std::string>{"crashed", "crashed", "timed out", "timed out", "timed out", "crashed"};
        CHECK(take_all(job) == expected);
        CHECK(job.unconsumed() == 0);
    }
}

TEST_CASE("imap unordered: failed items reach the reader before values released earlier", "[allocation_failure]") {
    // A reader that stops at the first error then stops as early as it can. The failures are stored within the room
    // expect() made, for every item not taken yet.
    Job job = make_job(false);
    job.expect(0, 2);
    const int value = 42;
    std::array<std::byte, sizeof value> encoded{};
    std::memcpy(encoded.data(), &value, sizeof value);
    procpool::InputArchive values(encoded);
    job.deliver(0, 1, {}, values, 0);
    job.expect(2, 4);
    const auto crashed = std::make_exception_ptr(std::runtime_error("crashed"));
    const auto timed_out = std::make_exception_ptr(std::runtime_error("timed out"));
    {
        const FailingAllocations failing;
        job.fail(2, 4, timed_out);
        job.fail(1, 1, crashed);
    }
    CHECK(take_all(job) == std::vector<std::string>{"timed out", "timed out", "timed out", "timed out", "crashed", "value"});
    CHECK(job.unconsumed() == 0);
}
