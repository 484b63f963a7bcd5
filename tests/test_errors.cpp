// Exceptions thrown by tasks come back with their type: each standard type, registered types of yours, RemoteError
// for the rest; values that cannot be encoded or decoded fail with SerializationError.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <csignal>
#include <new>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

namespace {

enum class Kind { logic, invalid_argument, domain, length, out_of_range, runtime, range, overflow, underflow };

int throw_kind(Kind kind) {
    switch (kind) {
        case Kind::logic: throw std::logic_error("logic");
        case Kind::invalid_argument: throw std::invalid_argument("invalid_argument");
        case Kind::domain: throw std::domain_error("domain");
        case Kind::length: throw std::length_error("length");
        case Kind::out_of_range: throw std::out_of_range("out_of_range");
        case Kind::runtime: throw std::runtime_error("runtime");
        case Kind::range: throw std::range_error("range");
        case Kind::overflow: throw std::overflow_error("overflow");
        case Kind::underflow: throw std::underflow_error("underflow");
    }
    return 0;
}

struct CustomError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// A family of registered exceptions, as an application would have: a base with state, and derived types.
struct AppError : std::exception {
    std::string message;
    int code = 0;
    AppError() = default;
    AppError(std::string text, int c) : message(std::move(text)), code(c) {}
    const char* what() const noexcept override { return message.c_str(); }
    template <class Archive>
    void serialize(Archive& ar) {
        ar(message, code);
    }
};
struct ParseError : AppError {  // registered before the pool is built
    int line = 0;
    std::vector<std::string> context;
    ParseError() = default;
    ParseError(std::string text, int at, std::vector<std::string> near)
        : AppError(std::move(text), 2), line(at), context(std::move(near)) {}
    template <class Archive>
    void serialize(Archive& ar) {
        AppError::serialize(ar);
        ar(line, context);
    }
};
struct LateError : AppError {  // registered after the pool's workers were forked
    std::optional<double> value;
    LateError() = default;
    LateError(std::string text, double v) : AppError(std::move(text), 3), value(v) {}
    template <class Archive>
    void serialize(Archive& ar) {
        AppError::serialize(ar);
        ar(value);
    }
};
struct NotRegistered : AppError {  // derived from a registered type, not registered itself
    using AppError::AppError;
};
struct UnencodableError : std::runtime_error {  // registered, but its serialize() fails on the worker's side
    UnencodableError() : std::runtime_error("") {}
    explicit UnencodableError(const std::string& what) : std::runtime_error(what) {}
    template <class Archive>
    void serialize(Archive&) {
        throw std::runtime_error("cannot encode me");
    }
};

}  // namespace

namespace app {
struct NotAnException {
    int code;
};
}  // namespace app

TEST_CASE("each standard exception comes back as the same type with the same message", "[errors]") {
    procpool::Pool pool(2);
    CHECK_THROWS_MATCHES(pool.apply(throw_kind, Kind::logic), std::logic_error, Catch::Message("logic"));
    CHECK_THROWS_MATCHES(pool.apply(throw_kind, Kind::invalid_argument), std::invalid_argument,
                         Catch::Message("invalid_argument"));
    CHECK_THROWS_MATCHES(pool.apply(throw_kind, Kind::domain), std::domain_error, Catch::Message("domain"));
    CHECK_THROWS_MATCHES(pool.apply(throw_kind, Kind::length), std::length_error, Catch::Message("length"));
    CHECK_THROWS_MATCHES(pool.apply(throw_kind, Kind::out_of_range), std::out_of_range, Catch::Message("out_of_range"));
    CHECK_THROWS_MATCHES(pool.apply(throw_kind, Kind::runtime), std::runtime_error, Catch::Message("runtime"));
    CHECK_THROWS_MATCHES(pool.apply(throw_kind, Kind::range), std::range_error, Catch::Message("range"));
    CHECK_THROWS_MATCHES(pool.apply(throw_kind, Kind::overflow), std::overflow_error, Catch::Message("overflow"));
    CHECK_THROWS_MATCHES(pool.apply(throw_kind, Kind::underflow), std::underflow_error, Catch::Message("underflow"));
}

TEST_CASE("the exact type is kept, not only a base of it", "[errors]") {
    procpool::Pool pool(1);
    try {
        pool.apply(throw_kind, Kind::runtime);
        FAIL("no exception");
    } catch (const std::runtime_error& e) {
        CHECK(typeid(e) == typeid(std::runtime_error));
    }
    try {
        pool.apply(throw_kind, Kind::out_of_range);
        FAIL("no exception");
    } catch (const std::logic_error& e) {
        CHECK(typeid(e) == typeid(std::out_of_range));
    }
}

TEST_CASE("other exceptions become RemoteError with the type's readable name", "[errors]") {
    procpool::Pool pool(1);
    try {
        pool.apply([](int) -> int { throw CustomError("custom message"); }, 0);
        FAIL("no exception");
    } catch (const procpool::RemoteError& e) {
        CHECK(e.type_name() == "(anonymous namespace)::CustomError");
        CHECK(std::string(e.what()) == "custom message");
    }
    try {
        pool.apply([](int) -> int { throw app::NotAnException{7}; }, 0);
        FAIL("no exception");
    } catch (const procpool::RemoteError& e) {
        CHECK(e.type_name() == "app::NotAnException");
    }
    try {
        pool.apply([](int) -> int { throw 42; }, 0);
        FAIL("no exception");
    } catch (const procpool::RemoteError& e) {
        CHECK(e.type_name() == "int");
        CHECK(std::string(e.what()) == "procpool: the task threw int 42");  // what was thrown, not an empty what()
    }
    try {
        pool.apply([](double x) -> int { throw x; }, 2.5);
        FAIL("no exception");
    } catch (const procpool::RemoteError& e) {
        CHECK(std::string(e.what()).find("double 2.5") != std::string::npos);
    }
    try {
        pool.apply([](int) -> int { throw app::NotAnException{7}; }, 0);
        FAIL("no exception");
    } catch (const procpool::RemoteError& e) {
        CHECK(std::string(e.what()).find("app::NotAnException, which is not a std::exception") != std::string::npos);
    }
    try {
        pool.apply([](int) -> int { throw "a C string"; }, 0);
        FAIL("no exception");
    } catch (const procpool::RemoteError& e) {
        CHECK(e.type_name() == "const char*");
        CHECK(std::string(e.what()) == "a C string");
    }
    // RemoteError is a procpool::Error, itself a std::runtime_error.
    CHECK_THROWS_AS(pool.apply([](int) -> int { throw CustomError("x"); }, 0), procpool::Error);
    CHECK_THROWS_AS(pool.apply([](int) -> int { throw CustomError("x"); }, 0), std::runtime_error);
}

TEST_CASE("registered exception types come back as themselves, with their state, registered before or after the pool",
          "[errors]") {
    procpool::register_exception<ParseError>();
    procpool::register_exception<ParseError>();  // twice: nothing happens
    procpool::Pool pool(2);
    procpool::register_exception<LateError>();  // the workers were forked before this
    procpool::register_exception<UnencodableError>();
    try {
        pool.apply([](int at) -> int { throw ParseError("unexpected token", at, {"let x =", "}"}); }, 12);
        FAIL("no exception");
    } catch (const ParseError& e) {
        CHECK(typeid(e) == typeid(ParseError));
        CHECK(std::string(e.what()) == "unexpected token");
        CHECK(e.code == 2);
        CHECK(e.line == 12);
        CHECK(e.context == std::vector<std::string>{"let x =", "}"});
    }
    // Catchable as its bases, and from a map.
    CHECK_THROWS_AS(pool.map(
                        [](int i) -> int {
                            if (i == 50) throw LateError("late", 0.5);
                            return i;
                        },
                        std::views::iota(0, 100)),
                    AppError);
    try {
        pool.apply([](double v) -> int { throw LateError("late", v); }, 0.25);
        FAIL("no exception");
    } catch (const std::exception& e) {
        const auto* late = dynamic_cast<const LateError*>(&e);
        REQUIRE(late != nullptr);
        CHECK(late->value == 0.25);
        CHECK(late->code == 3);
    }
    // A replacement worker, forked after the registration from the fork server, which never saw it, knows it too.
    CHECK_THROWS_AS(pool.apply(
                        [](int) -> int {
                            std::raise(SIGKILL);
                            return 0;
                        },
                        0),
                    procpool::WorkerCrashed);
    for (int i = 0; i < 20; ++i) {
        CHECK_THROWS_AS(pool.apply([](int) -> int { throw LateError("again", 1.0); }, 0), LateError);
    }
    // Exactly the registered type: a derived type that is not registered is a RemoteError with its own name.
    try {
        pool.apply([](int) -> int { throw NotRegistered("derived", 9); }, 0);
        FAIL("no exception");
    } catch (const procpool::RemoteError& e) {
        CHECK(e.type_name() == "(anonymous namespace)::NotRegistered");
        CHECK(std::string(e.what()) == "derived");
    }
    // A registered type whose serialize() throws still reaches the caller, as RemoteError with its name and what().
    try {
        pool.apply([](int) -> int { throw UnencodableError("original message"); }, 0);
        FAIL("no exception");
    } catch (const procpool::RemoteError& e) {
        CHECK(e.type_name() == "(anonymous namespace)::UnencodableError");
        CHECK(std::string(e.what()) == "original message");
    }
}

TEST_CASE("procpool's own errors thrown in a task come back as themselves, with their fields", "[errors]") {
    procpool::Pool pool(1);
    CHECK_THROWS_AS(pool.apply([](int) -> int { throw procpool::BrokenBarrierError("broken"); }, 0),
                    procpool::BrokenBarrierError);
    CHECK_THROWS_AS(pool.apply([](int) -> int { throw procpool::BrokenPipeError("gone"); }, 0),
                    procpool::BrokenPipeError);
    CHECK_THROWS_AS(pool.apply([](int) -> int { throw procpool::BrokenSegmentError("torn"); }, 0),
                    procpool::BrokenSegmentError);
    CHECK_THROWS_AS(pool.apply([](int) -> int { throw procpool::TimeoutError("late"); }, 0), procpool::TimeoutError);
    try {  // (a task that ran a pool of its own, say)
        pool.apply([](int) -> int { throw procpool::WorkerCrashed(1234, SIGSEGV, 0, "rank 3 on node07"); }, 0);
        FAIL("no exception");
    } catch (const procpool::WorkerCrashed& e) {
        CHECK(e.pid() == 1234);
        CHECK(e.signal() == SIGSEGV);
        CHECK(e.where() == "rank 3 on node07");
        CHECK(std::string(e.what()).find("on rank 3 on node07") != std::string::npos);
    }
    try {
        pool.apply([](int) -> int { throw procpool::TaskTimeout(99, std::chrono::milliseconds(250), "rank 1"); }, 0);
        FAIL("no exception");
    } catch (const procpool::TaskTimeout& e) {
        CHECK(e.pid() == 99);
        CHECK(e.timeout() == std::chrono::milliseconds(250));
        CHECK(e.where() == "rank 1");
    }
}

TEST_CASE("std::bad_alloc comes back as std::bad_alloc", "[errors]") {
    procpool::Pool pool(1);
    CHECK_THROWS_AS(pool.apply([](int) -> int { throw std::bad_alloc(); }, 0), std::bad_alloc);
}

TEST_CASE("an exception in map fails the map with that exception", "[errors][threads]") {
    procpool::Pool pool(2);
    auto f = [](int x) {
        if (x == 77) throw std::domain_error("seventy-seven");
        return x;
    };
    CHECK_THROWS_MATCHES(pool.map(f, std::views::iota(0, 200)), std::domain_error, Catch::Message("seventy-seven"));
    auto async = pool.map_async(f, std::views::iota(0, 200), {.chunksize = 1});
    CHECK_THROWS_AS(async.get(), std::domain_error);
    CHECK_FALSE(async.successful());
    CHECK_THROWS_AS(pool.starmap([](int a, int) -> int { throw std::length_error(std::to_string(a)); },
                                 std::vector<std::pair<int, int>>{{1, 2}}),
                    std::length_error);
    CHECK(pool.map(f, std::views::iota(0, 10)).size() == 10);  // the pool goes on
}

TEST_CASE("an exception thrown while reading map's input reaches the caller as it is", "[errors]") {
    procpool::Pool pool(2);
    auto broken = std::views::iota(0, 100) | std::views::transform([](int x) {
                      if (x == 42) throw std::overflow_error("input 42");
                      return x;
                  });
    CHECK_THROWS_MATCHES(pool.map([](int x) { return x; }, broken), std::overflow_error, Catch::Message("input 42"));
}

TEST_CASE("a large map whose input throws while its result vector is being sized reaches the caller", "[errors]") {
    // 4 M results (16 MB) are sized on a second thread while the input is read: the error must still come through,
    // after that thread is done, and the pool must go on.
    procpool::Pool pool(2);
    auto broken = std::views::iota(0, 4'000'000) | std::views::transform([](int x) {
                      if (x == 3'999'000) throw std::overflow_error("input 3999000");
                      return x;
                  });
    CHECK_THROWS_MATCHES(pool.map([](int x) { return x; }, broken), std::overflow_error,
                         Catch::Message("input 3999000"));
    const auto doubled = pool.map([](int x) { return 2 * x; }, std::views::iota(0, 4'000'000));
    REQUIRE(doubled.size() == 4'000'000);
    bool all = true;
    for (int i = 0; i < 4'000'000; ++i) all = all && doubled[static_cast<std::size_t>(i)] == 2 * i;
    CHECK(all);
}

struct ThrowsOnEncode {
    int value = 0;
    template <class Archive>
    void serialize(Archive& ar) {
        if (value < 0) throw procpool::SerializationError("negative values cannot be sent");
        ar(value);
    }
};

struct ThrowsStdError {  // a serialize() that throws a std exception of its own, in one direction only
    int value = 0;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(value);
        if (value == -1 && std::is_same_v<Archive, procpool::OutputArchive>)
            throw std::invalid_argument("-1 on the way out");
        if (value == -2 && std::is_same_v<Archive, procpool::InputArchive>) throw std::domain_error("-2 on the way in");
    }
};

TEST_CASE("a serialize() that throws gives SerializationError naming the type and the original exception", "[errors]") {
    procpool::Pool pool(1);
    const auto check = [](const auto& call, const char* direction, const char* original) {
        try {
            call();
            FAIL("no exception");
        } catch (const procpool::SerializationError& e) {
            const std::string what = e.what();
            CHECK(what.find(direction) != std::string::npos);
            CHECK(what.find("ThrowsStdError") != std::string::npos);
            CHECK(what.find(original) != std::string::npos);
        }
    };
    // Encoding an argument (in this process), a result (in the worker), decoding an argument (in the worker) and
    // a result (here): never the std::invalid_argument or std::domain_error itself, which would look like the task's.
    check([&] { (void)pool.apply([](ThrowsStdError v) { return v.value; }, ThrowsStdError{-1}); }, "encoding",
          "-1 on the way out");
    check([&] { (void)pool.apply([](int v) { return ThrowsStdError{v}; }, -1); }, "encoding", "-1 on the way out");
    check([&] { (void)pool.apply([](ThrowsStdError v) { return v.value; }, ThrowsStdError{-2}); }, "decoding",
          "-2 on the way in");
    check([&] { (void)pool.apply([](int v) { return ThrowsStdError{v}; }, -2); }, "decoding", "-2 on the way in");
    check(
        [&] {
            (void)pool.map([](int v) { return ThrowsStdError{v}; }, std::vector<int>{1, -1, 3});
        },
        "encoding", "-1 on the way out");
    CHECK(pool.apply([](ThrowsStdError v) { return v.value; }, ThrowsStdError{5}) == 5);
}

TEST_CASE("a value that cannot be encoded fails with SerializationError", "[errors]") {
    procpool::Pool pool(1);
    // In the parent: the argument cannot be encoded, so apply_async throws before anything is queued.
    CHECK_THROWS_AS(pool.apply_async([](ThrowsOnEncode v) { return v.value; }, ThrowsOnEncode{-1}),
                    procpool::SerializationError);
    // In the worker: the result cannot be encoded, so the task fails with it.
    CHECK_THROWS_AS(pool.apply([](int v) { return ThrowsOnEncode{v}; }, -5), procpool::SerializationError);
    CHECK(pool.apply([](int v) { return ThrowsOnEncode{v}; }, 5).value == 5);
}
