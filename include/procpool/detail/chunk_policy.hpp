// procpool internals: how many items go into one task, how many tasks wait in a worker's queue, and how the measured
// times behind both are smoothed. Pure functions of their inputs, so tests/test_scheduler.cpp checks them without a
// pool (as Taskflow tests its partitioners).
//
// map: guided self-scheduling (a share of what is left, so chunks shrink as the end nears and skewed loads balance),
// capped by a time target once items were timed (doubling probes before) and by the size a task should stay under.
// imap: the same time target, shorter (results stream to a reader), capped so a few chunks per worker fit in its
// read-ahead bound. Depth: enough tasks queued per worker to cover a hand-off, at least one queued behind the running
// one where the transport can take it back.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace procpool::detail {

struct ChunkPolicy {
    /// Automatic map chunks take about this long once items were timed.
    static constexpr std::chrono::nanoseconds kMapChunkTarget = std::chrono::milliseconds(10);
    /// Automatic imap chunks take about this long: results reach a reader that is waiting for them.
    static constexpr std::chrono::nanoseconds kImapChunkTarget = std::chrono::milliseconds(2);
    /// Work kept queued per worker, so that it never waits for a round trip to the parent.
    static constexpr std::chrono::nanoseconds kQueueTarget = std::chrono::microseconds(200);
    /// Work kept queued per worker where a worker wakes the parent for results only when its queue runs low
    /// (BatchedResultBells, the fork pool): deep enough that short tasks cost the parent one wake-up for several
    /// results. Measured on 2 cores with 0.1 ms tasks at chunksize 1 (BM_utilisation): workers busy 92-98% of the
    /// time against 74-85% with a wake-up per result (the parent's thread took a core from a worker for each);
    /// 2 ms gave 1-2 points more than 1 ms.
    static constexpr std::chrono::nanoseconds kBatchedQueueTarget = std::chrono::milliseconds(2);
    /// Tasks queued per worker at most.
    static constexpr std::size_t kMaxDepth = 64;
    /// Largest automatic imap chunk, in items.
    static constexpr std::uint64_t kMaxImapChunk = 16384;
    /// Before items were timed, map chunks double from 1 item up to 2^kMaxMapProbeShift; imap chunks up to
    /// kMaxImapProbe items.
    static constexpr std::uint32_t kMaxMapProbeShift = 16;
    static constexpr std::uint64_t kMaxImapProbe = 16;
    /// Weight of the newest sample in the moving averages of item and task times.
    static constexpr double kItemTimeWeight = 0.3;
    static constexpr double kTaskTimeWeight = 0.2;
    /// What a hand-off to a worker adds to a task's time, for the depth estimate.
    static constexpr double kHandOffNs = 2'000.0;

    /// What map_chunk() decides from.
    struct MapInputs {
        std::uint64_t unsent_items = 0;  // items of the job not sent yet
        std::uint64_t workers = 1;
        double item_ns = 0;            // measured worker time per item, 0 = not measured yet
        std::uint32_t tasks_sent = 0;  // tasks of the job sent so far (the probe doubles with each)
        std::uint64_t bytes_per_item = 1;
        std::uint64_t max_task_bytes = 1;  // a task should stay under this (half a ring fragment)
        std::chrono::nanoseconds target = kMapChunkTarget;
    };

    /// Items in the next automatic map task: at least 1.
    static std::uint64_t map_chunk(const MapInputs& in) noexcept {
        const std::uint64_t workers = std::max<std::uint64_t>(1, in.workers);
        const std::uint64_t guided = (in.unsent_items + 2 * workers - 1) / (2 * workers);
        std::uint64_t timed = 0;
        if (in.item_ns > 0) {
            timed = static_cast<std::uint64_t>(static_cast<double>(in.target.count()) / in.item_ns);
        } else {
            timed = std::uint64_t{1} << std::min(in.tasks_sent, kMaxMapProbeShift);
        }
        const std::uint64_t sized = in.max_task_bytes / std::max<std::uint64_t>(1, in.bytes_per_item);
        return std::max<std::uint64_t>(1, std::min({guided, timed, sized}));
    }

    /// Items in the next automatic imap chunk: doubling until items were timed (`chunks_formed` so far), then about
    /// kImapChunkTarget of work for each of the `workers_per_task` that share a task (a group's); between 1 and
    /// `max_items`.
    static std::uint64_t imap_chunk(std::uint64_t chunks_formed, double item_ns, std::uint64_t max_items,
                                    std::size_t workers_per_task = 1) noexcept {
        std::uint64_t items = 0;
        if (item_ns <= 0) {
            items = std::min<std::uint64_t>(std::uint64_t{1} << std::min<std::uint64_t>(chunks_formed, 4),
                                            kMaxImapProbe);
        } else {
            const double target = static_cast<double>(kImapChunkTarget.count()) * static_cast<double>(workers_per_task);
            items = static_cast<std::uint64_t>(std::max(1.0, target / item_ns));
        }
        return std::clamp<std::uint64_t>(items, 1, std::max<std::uint64_t>(1, max_items));
    }

    /// Tasks to keep queued on each worker, given the measured time per task (0 = not measured): enough to cover
    /// `queue_target`, at least `minimum` (2 where a queued task can be taken back, so one always waits behind the
    /// running one; 1 elsewhere: a worker then pulls long tasks one at a time), at most `max_depth`.
    static std::size_t queue_depth(double task_ns, std::size_t minimum,
                                   std::chrono::nanoseconds queue_target = kQueueTarget,
                                   std::size_t max_depth = kMaxDepth) noexcept {
        if (task_ns <= 0) return minimum;
        const double wanted = static_cast<double>(queue_target.count()) / task_ns + 1.0;
        return std::clamp<std::size_t>(static_cast<std::size_t>(wanted), minimum, std::max(minimum, max_depth));
    }

    /// Tasks at least this long (measured mean) keep every worker busy for long enough that a parent thread spinning
    /// while it waits would only take a core from them when no core is spare.
    static constexpr double kSpinWorthTaskNs = 20'000.0;

    /// Whether a thread of the parent should poll (spin) before it sleeps while it waits for results: when a core is
    /// spare for it, or when tasks are short (a round trip then costs more than a task, and workers mostly wait
    /// for the parent). Not when every core runs a worker busy with long tasks: measured on 2 cores, an imap of
    /// 0.1 ms tasks over 2 workers kept them busy 44-70% of the time while its reader spun.
    static bool spinning_pays(double task_ns, bool spare_core) noexcept {
        return spare_core || task_ns < kSpinWorthTaskNs;
    }

    /// An exponential moving average: the first sample as it is, then `weight` of each new one.
    static double smoothed(double average, double sample, double weight) noexcept {
        return average <= 0 ? sample : (1.0 - weight) * average + weight * sample;
    }
};

}  // namespace procpool::detail
