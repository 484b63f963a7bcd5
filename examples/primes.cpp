// imap over an infinite input with an early break, as in Python multiprocessing guides:
//
//     found = []
//     for n, prime in pool.imap(check, itertools.count(start), chunksize=8):
//         if prime:
//             found.append(n)
//             if len(found) == N: break
//
// The workers test the candidates 10^12, 10^12 + 1, ... by trial division (a few ms per prime); the loop stops at
// the N-th prime. Two things Python's imap does not promise and procpool does:
//   - bounded input: imap reads the candidates only as results are consumed, at most a window of chunks ahead
//     (4 per worker + 8), so reading std::views::iota(start) never runs away. A counting view shows how much was
//     read.
//   - break returns at once: leaving the loop destroys the range, which drops the unsent input and ignores the
//     results still in flight instead of waiting for them.
// The primes found are checked against a serial scan with a different test (deterministic Miller-Rabin).
//
//     ./primes            200 primes
//     ./primes --quick    20 primes (the smoke test)
#include <procpool/procpool.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ranges>
#include <utility>
#include <vector>

// The task: trial division by odd numbers up to sqrt(n).
bool is_prime(long n) {
    if (n < 2) return false;
    if (n % 2 == 0) return n == 2;
    for (long d = 3; d * d <= n; d += 2) {
        if (n % d == 0) return false;
    }
    return true;
}

__extension__ using u128 = unsigned __int128;  // (__extension__: a GNU type, fine under -Wpedantic)

// The check: Miller-Rabin with the first 12 prime bases, exact for every 64-bit n.
bool miller_rabin(std::uint64_t n) {
    if (n < 2) return false;
    auto mulmod = [n](std::uint64_t a, std::uint64_t b) {
        return static_cast<std::uint64_t>(static_cast<u128>(a) * b % n);
    };
    auto powmod = [&](std::uint64_t a, std::uint64_t e) {
        std::uint64_t r = 1;
        for (; e != 0; e >>= 1, a = mulmod(a, a)) {
            if (e & 1) r = mulmod(r, a);
        }
        return r;
    };
    std::uint64_t d = n - 1;
    int s = 0;
    for (; d % 2 == 0; d /= 2) ++s;
    for (std::uint64_t a : {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37}) {
        if (n == a) return true;
        if (n % a == 0) return false;
        std::uint64_t x = powmod(a, d);
        if (x == 1 || x == n - 1) continue;
        bool composite = true;
        for (int r = 1; r < s && composite; ++r) composite = (x = mulmod(x, x)) != n - 1;
        if (composite) return false;
    }
    return true;
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const std::size_t wanted = quick ? 20 : 200;
    constexpr long kStart = 1'000'000'000'000;  // 10^12
    constexpr std::size_t kChunk = 8;

    procpool::Pool pool;
    long read = 0;      // candidates the pool took from the input
    long consumed = 0;  // results this loop looked at
    std::vector<long> primes;
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    clock::time_point broke;
    {
        // The input: an infinite range that counts what is read from it (read here, in this thread).
        auto candidates = std::views::iota(kStart) | std::views::transform([&read](long n) {
                              ++read;
                              return n;
                          });
        auto results = pool.imap(
            [](long n) {
                return std::pair{n, is_prime(n)};
            },
            std::move(candidates), {.chunksize = kChunk});
        for (const auto& [n, prime] : results) {
            ++consumed;
            if (prime) {
                primes.push_back(n);
                if (primes.size() == wanted) {
                    broke = clock::now();
                    break;
                }
            }
        }
    }  // `results` is destroyed here: the rest of the input is never read, the results in flight are ignored
    const auto after = clock::now();
    const double search_ms = std::chrono::duration<double, std::milli>(broke - start).count();
    const double break_ms = std::chrono::duration<double, std::milli>(after - broke).count();

    std::printf("the %zu primes after 10^12: %ld ... %ld, found in %.0f ms by %zu workers\n", primes.size(),
                primes.front(), primes.back(), search_ms, pool.size());
    const long window = static_cast<long>((4 * pool.size() + 8) * kChunk);
    std::printf("results consumed: %ld; candidates read from the infinite input: %ld (%ld ahead, window %ld)\n",
                consumed, read, read - consumed, window);
    std::printf("break and destroying the range took %.3f ms, with %ld candidates still in flight\n", break_ms,
                read - consumed);

    // The same primes, found serially with another test.
    std::vector<long> serial;
    for (long n = kStart; serial.size() < wanted; ++n) {
        if (miller_rabin(static_cast<std::uint64_t>(n))) serial.push_back(n);
    }
    bool ok = primes == serial;
    if (!ok) std::fprintf(stderr, "FAILED: the primes differ from a serial Miller-Rabin scan\n");
    if (read - consumed > window) {
        std::fprintf(stderr, "FAILED: imap read %ld candidates ahead, more than its window of %ld\n", read - consumed,
                     window);
        ok = false;
    }
    if (break_ms > 250) {  // it takes microseconds; the bound only leaves room for a loaded machine
        std::fprintf(stderr, "FAILED: leaving the loop took %.0f ms: it waited for the results in flight\n", break_ms);
        ok = false;
    }
    if (ok) std::printf("matches a serial Miller-Rabin scan\n");
    return ok ? 0 : 1;
}
