// procpool: a ready-made progress report for long maps, drawn on stderr like Python's tqdm.
//
//     pool.map(f, items, {.progress = procpool::progress_bar("simulations")});
//
//     simulations  42% |██████████▌              | 4200/10000 [00:03<00:04, 1234.5 it/s]
//
// On a terminal the line is redrawn in place; otherwise (a log file, CI) a line is printed every 10% or 10 s.
#pragma once

#include <cstdio>
#include <mutex>
#include <string>
#include <utility>

#include "procpool/detail/config.hpp"
#include "procpool/options.hpp"

namespace procpool {

namespace detail {

/// `seconds` as tqdm shows a time (MM:SS, or H:MM:SS from an hour up), "?" when not known.
PROCPOOL_DECL std::string format_seconds(double seconds);

/// Draws ProgressInfo on a stream: a redrawn bar on a terminal, periodic lines elsewhere.
class ProgressBar {
public:
    ProgressBar(std::string label, std::FILE* out, bool terminal)
        : label_(std::move(label)), out_(out), terminal_(terminal) {}

    PROCPOOL_DECL void operator()(const ProgressInfo& info);

private:
    [[nodiscard]] PROCPOOL_DECL std::string line(const ProgressInfo& info, bool bar) const;

    std::string label_;
    std::FILE* out_;
    bool terminal_;
    int last_decile_ = -1;
    std::mutex mutex_;
};

}  // namespace detail

/// A progress report on stderr for MapOptions::progress: a bar redrawn in place when stderr is a terminal,
/// a line every 10% (or 10 s) otherwise.
PROCPOOL_DECL ProgressCallback progress_bar(std::string label = {});

}  // namespace procpool

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/progress.ipp"
#endif
