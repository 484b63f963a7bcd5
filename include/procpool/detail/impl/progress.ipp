// procpool internals: the definitions of procpool/progress.hpp (header-only: included by it; in the separately compiled
// mode: compiled by procpool/src.hpp).
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <unistd.h>
#include <utility>

#include "procpool/progress.hpp"

namespace procpool {

namespace detail {

PROCPOOL_DECL std::string format_seconds(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "?";
    const auto s = static_cast<long>(seconds);  // whole seconds gone, as tqdm shows them
    char text[32];
    if (s >= 3600) {
        std::snprintf(text, sizeof text, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    } else {
        std::snprintf(text, sizeof text, "%02ld:%02ld", s / 60, s % 60);
    }
    return text;
}

PROCPOOL_DECL void ProgressBar::operator()(const ProgressInfo& info) {
    std::lock_guard lock(mutex_);
    if (terminal_) {
        std::fprintf(out_, "\r%s\033[K", line(info, true).c_str());
        if (info.finished) std::fputc('\n', out_);
        std::fflush(out_);
        return;
    }
    // Not a terminal: a line per 10% (or per 10 s without a total), and the last one.
    const double seconds = info.elapsed.count();
    const int decile = info.total && *info.total != 0 ? static_cast<int>(10 * info.done / *info.total)
                                                      : static_cast<int>(seconds / 10);
    if (!info.finished && decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(out_, "%s\n", line(info, false).c_str());
    std::fflush(out_);
}

PROCPOOL_DECL std::string ProgressBar::line(const ProgressInfo& info, bool bar) const {
    std::string text = label_.empty() ? std::string() : label_ + " ";
    char buffer[160];
    if (info.total) {
        const double fraction = *info.total == 0 ? 1.0
                                                 : static_cast<double>(info.done) / static_cast<double>(*info.total);
        std::snprintf(buffer, sizeof buffer, "%3.0f%% ", 100.0 * fraction);
        text += buffer;
        if (bar) {
            constexpr int kWidth = 25;
            static const char* const kEighths[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
            const int eighths = static_cast<int>(fraction * kWidth * 8);
            text += '|';
            for (int i = 0; i < eighths / 8; ++i) text += "█";
            int cells = eighths / 8;
            if (cells < kWidth && eighths % 8 != 0) {
                text += kEighths[eighths % 8];
                ++cells;
            }
            text.append(static_cast<std::size_t>(kWidth - cells), ' ');
            text += "| ";
        }
        std::snprintf(buffer, sizeof buffer, "%llu/%llu [%s<%s, %.1f it/s]", static_cast<unsigned long long>(info.done),
                      static_cast<unsigned long long>(*info.total), format_seconds(info.elapsed.count()).c_str(),
                      format_seconds(info.remaining ? info.remaining->count() : -1).c_str(), info.rate);
    } else {
        std::snprintf(buffer, sizeof buffer, "%llu [%s, %.1f it/s]", static_cast<unsigned long long>(info.done),
                      format_seconds(info.elapsed.count()).c_str(), info.rate);
    }
    return text + buffer;
}

}  // namespace detail

PROCPOOL_DECL ProgressCallback progress_bar(std::string label) {
    auto bar = std::make_shared<detail::ProgressBar>(std::move(label), stderr, ::isatty(STDERR_FILENO) == 1);
    return [bar](const ProgressInfo& info) { (*bar)(info); };
}

}  // namespace procpool
