// Processing a list of files in parallel, the first example of most Python multiprocessing guides:
//
//     with Pool() as pool:
//         stats = pool.map(file_stats, glob.glob("data/*.txt"))
//
// Here the files are generated first, in a fresh temporary directory (mkdtemp), then the pool maps over their
// paths (std::filesystem::path travels as it is): each worker opens its file and returns its line count, word count
// and a checksum (FNV-1a). The results are printed as a table and compared with a serial pass; the directory is
// removed in any case.
//
//     ./files            200 files
//     ./files --quick    40 files (the smoke test)
#include <procpool/procpool.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;

// What a worker sends back for one file: a trivially copyable struct travels as it is.
struct FileStats {
    long lines = 0;
    long words = 0;
    std::uint64_t checksum = 0;  // FNV-1a over the file's bytes
    bool ok = false;             // the file could be read
    friend bool operator==(const FileStats&, const FileStats&) = default;
};

// The task: runs in a worker, reads one file.
FileStats file_stats(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return {};
    FileStats stats{.ok = true};
    std::uint64_t hash = 14695981039346656037ULL;
    bool in_word = false;
    char c;
    while (in.get(c)) {
        hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
        if (c == '\n') ++stats.lines;
        const bool space = c == ' ' || c == '\n' || c == '\t';
        if (!space && !in_word) ++stats.words;
        in_word = !space;
    }
    stats.checksum = hash;
    return stats;
}

// Writes `count` text files of varying length into `dir`; returns their paths.
std::vector<fs::path> make_files(const fs::path& dir, int count) {
    static const char* const kWords[] = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"};
    std::vector<fs::path> paths;
    std::uint64_t state = 42;
    auto next = [&state] { return (state = state * 6364136223846793005ULL + 1442695040888963407ULL) >> 33; };
    for (int f = 0; f < count; ++f) {
        const fs::path path = dir / ("file" + std::to_string(f) + ".txt");
        std::ofstream out(path);
        const std::uint64_t lines = 100 + next() % 2000;
        for (std::uint64_t l = 0; l < lines; ++l) {
            const std::uint64_t words = next() % 12;
            for (std::uint64_t w = 0; w < words; ++w) out << (w ? " " : "") << kWords[next() % 8];
            out << '\n';
        }
        paths.push_back(path);
    }
    return paths;
}

// Removes the directory when main returns, whatever happened.
struct TempDir {
    fs::path path;
    TempDir() {
        std::string pattern = (fs::temp_directory_path() / "procpool-files-XXXXXX").string();
        if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
        path = pattern;
    }
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    procpool::Pool pool;  // built first: the workers are forked from a small process

    int status = 0;
    fs::path removed;
    {
        TempDir dir;
        removed = dir.path;
        const std::vector<fs::path> paths = make_files(dir.path, quick ? 40 : 200);
        std::printf("%zu files in %s, %zu workers\n\n", paths.size(), dir.path.c_str(), pool.size());

        const std::vector<FileStats> stats = pool.map(file_stats, paths);

        std::printf("%-14s %8s %8s  %-16s\n", "file", "lines", "words", "checksum");
        long lines = 0, words = 0;
        for (std::size_t i = 0; i < paths.size(); ++i) {
            if (i < 5 || i + 2 >= paths.size()) {
                std::printf("%-14s %8ld %8ld  %016llx\n", paths[i].filename().c_str(), stats[i].lines, stats[i].words,
                            static_cast<unsigned long long>(stats[i].checksum));
            } else if (i == 5) {
                std::printf("%-14s\n", "...");
            }
            lines += stats[i].lines;
            words += stats[i].words;
        }
        std::printf("%-14s %8ld %8ld\n\n", "total", lines, words);

        // The same, one file after another in this process.
        std::vector<FileStats> serial;
        serial.reserve(paths.size());
        for (const fs::path& path : paths) serial.push_back(file_stats(path));
        const bool all_read = std::all_of(stats.begin(), stats.end(), [](const FileStats& s) { return s.ok; });
        if (stats != serial || !all_read) {
            std::fprintf(stderr, "FAILED: the pool's results differ from the serial pass\n");
            status = 1;
        } else {
            std::printf("the pool's results match a serial pass over the same files\n");
        }
    }
    if (fs::exists(removed)) {
        std::fprintf(stderr, "FAILED: %s was not removed\n", removed.c_str());
        status = 1;
    }
    return status;
}
