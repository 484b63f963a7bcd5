// A validate -> transform -> load pipeline whose stages really overlap, the "chain imap calls" pattern of Python
// multiprocessing guides:
//
//     validated = pool.imap(validate, read_lines(), chunksize=16)
//     rows = pool.imap(transform, (r for r in validated if r is not None), chunksize=16)
//     for row in rows:
//         load(row)
//
// The output of one pool.imap is the input of the next: imap reads its input only as its results are consumed,
// so the load loop pulls rows from `transform`, which pulls records from `validate`, which pulls lines. Each stage
// is at most a window of chunks ahead of the next (back-pressure): memory stays bounded however long the input,
// and the first rows are loaded while validation is still going on. Both stages share one pool.
// Invalid lines are dropped and counted between the stages. The totals are checked against a serial pipeline.
//
//     ./pipeline            100,000 lines
//     ./pipeline --quick    5,000 lines (the smoke test)
#include <procpool/procpool.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <ranges>
#include <string>
#include <vector>

// A line "id,name,amount" once validated, and the row the load stage receives. Both travel through serialize().
struct Record {
    long id = 0;
    std::string name;
    long cents = 0;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(id, name, cents);
    }
};
struct Row {
    std::string customer;  // upper-cased name
    long cents = 0;        // with 20% tax
    template <class Archive>
    void serialize(Archive& ar) {
        ar(customer, cents);
    }
};

std::int64_t now_ns() {  // CLOCK_MONOTONIC: the same clock in every process
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Some CPU work per record and stage, as a real parser or enrichment step would do (about 20 us).
std::uint64_t busy(const std::string& text) {
    std::uint64_t h = 1469598103934665603ULL;
    for (int round = 0; round < 300; ++round) {
        for (const char c : text) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
    }
    return h;
}

// Stage 1 (workers): parse and validate one line. No record if the line is invalid.
struct Validated {
    std::optional<Record> record;
    std::int64_t finished_ns = 0;  // when this worker finished it
    template <class Archive>
    void serialize(Archive& ar) {
        ar(record, finished_ns);
    }
};
Validated validate(const std::string& line) {
    Validated out{.record = std::nullopt, .finished_ns = 0};
    if (busy(line) != 0) {  // (always true: keeps the work from being optimised away)
        const auto first = line.find(','), second = line.find(',', first + 1);
        if (first != std::string::npos && second != std::string::npos && second > first + 1) {
            const std::string amount = line.substr(second + 1);
            const auto dot = amount.find('.');
            const bool digits = dot != std::string::npos && dot > 0 && amount.size() == dot + 3 &&
                                std::all_of(
                                    amount.begin(), amount.end(),
                                    [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.'; }) &&
                                std::count(amount.begin(), amount.end(), '.') == 1;
            if (digits) {
                out.record = Record{std::stol(line.substr(0, first)), line.substr(first + 1, second - first - 1),
                                    std::stol(amount.substr(0, dot)) * 100 + std::stol(amount.substr(dot + 1))};
            }
        }
    }
    out.finished_ns = now_ns();
    return out;
}

// Stage 2 (workers): normalise and enrich.
Row transform(const Record& record) {
    Row row{record.name, record.cents + (record.cents * 20 + 50) / 100};
    for (char& c : row.customer) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (busy(row.customer) == 0) row.cents = 0;  // (never)
    return row;
}

// Stage 3 (parent): aggregate.
struct Totals {
    std::map<std::string, long> cents_by_customer;
    long loaded = 0;
    long invalid = 0;
    void load(const Row& row) {
        cents_by_customer[row.customer] += row.cents;
        ++loaded;
    }
    friend bool operator==(const Totals&, const Totals&) = default;
};

// Input: "17,alice,12.34"; about one line in 20 is broken.
std::vector<std::string> make_lines(long count) {
    static const char* const kNames[] = {"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"};
    static const char* const kBroken[] = {"17,alice", "18,,3.50", "19,bob,12.3x", "20,carol,-4.00", "garbage"};
    std::vector<std::string> lines;
    std::uint64_t state = 7;
    for (long i = 0; i < count; ++i) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        const std::uint64_t r = state >> 33;
        if (r % 20 == 0) {
            lines.emplace_back(kBroken[r / 20 % 5]);
        } else {
            char cents[8];
            std::snprintf(cents, sizeof cents, "%02u", static_cast<unsigned>(r / 7 % 100));
            lines.push_back(std::to_string(i) + "," + kNames[r % 8] + "," + std::to_string(r / 700 % 500) + "." +
                            cents);
        }
    }
    return lines;
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const std::vector<std::string> lines = make_lines(quick ? 5'000 : 100'000);
    constexpr std::size_t kChunk = 16;

    procpool::Pool pool;
    const std::int64_t start = now_ns();
    long lines_read = 0;       // lines stage 1 took from the input
    long validated_taken = 0;  // stage 1 results stage 2 took
    long taken_at_first_load = -1;
    std::int64_t first_load_ns = 0, last_validated_ns = 0;
    long most_in_pipeline = 0;  // lines read but not yet loaded or dropped
    Totals totals;

    {
        auto input = lines | std::views::transform([&](const std::string& line) -> const std::string& {
                         ++lines_read;
                         return line;
                     });
        auto validated = pool.imap(validate, input, {.chunksize = kChunk});
        // Between the stages, in this process: drop (and count) the invalid lines.
        auto records = validated | std::views::filter([&](const Validated& v) {
                           ++validated_taken;
                           last_validated_ns = std::max(last_validated_ns, v.finished_ns);
                           if (!v.record) ++totals.invalid;
                           return v.record.has_value();
                       }) |
                       std::views::transform([](const Validated& v) { return *v.record; });
        auto rows = pool.imap(transform, records, {.chunksize = kChunk});
        for (const Row& row : rows) {
            if (taken_at_first_load < 0) {
                first_load_ns = now_ns();
                taken_at_first_load = validated_taken;
            }
            totals.load(row);
            most_in_pipeline = std::max(most_in_pipeline, lines_read - totals.loaded - totals.invalid);
        }
    }
    const double total_ms = static_cast<double>(now_ns() - start) / 1e6;

    std::printf("%zu lines through validate -> transform -> load on %zu workers in %.0f ms\n", lines.size(),
                pool.size(), total_ms);
    std::printf("loaded %ld rows, dropped %ld invalid lines\n", totals.loaded, totals.invalid);
    for (const auto& [customer, cents] : totals.cents_by_customer) {
        std::printf("  %-6s %10ld.%02ld\n", customer.c_str(), cents / 100, cents % 100);
    }
    std::printf(
        "overlap: the first row was loaded at %.1f ms, when %ld of %zu lines had come out of validation; "
        "the last line was validated at %.1f ms\n",
        static_cast<double>(first_load_ns - start) / 1e6, taken_at_first_load, lines.size(),
        static_cast<double>(last_validated_ns - start) / 1e6);
    const long window = static_cast<long>((4 * pool.size() + 8) * kChunk);  // per stage, in items
    std::printf("back-pressure: at most %ld lines were inside the pipeline at once (two stages of at most %ld)\n",
                most_in_pipeline, window);

    // The same pipeline, serially.
    Totals serial;
    for (const std::string& line : lines) {
        if (const Validated v = validate(line); v.record) {
            serial.load(transform(*v.record));
        } else {
            ++serial.invalid;
        }
    }
    bool ok = totals == serial && totals.loaded + totals.invalid == static_cast<long>(lines.size());
    if (!ok) std::fprintf(stderr, "FAILED: the pipeline's totals differ from a serial pipeline\n");
    if (first_load_ns >= last_validated_ns) {
        std::fprintf(stderr, "FAILED: the stages did not overlap\n");
        ok = false;
    }
    if (most_in_pipeline > 2 * window + 2 * static_cast<long>(kChunk)) {
        std::fprintf(stderr, "FAILED: no back-pressure: %ld lines in the pipeline at once\n", most_in_pipeline);
        ok = false;
    }
    if (ok) std::printf("matches a serial pipeline\n");
    return ok ? 0 : 1;
}
