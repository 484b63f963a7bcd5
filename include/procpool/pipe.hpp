// procpool: pipes between processes: `auto [left, right] = procpool::make_pipe<T>();` gives two Connection<T> ends,
// duplex like Python's multiprocessing.Pipe(): what one end sends, the other receives, in order.
//
// Handles like the other shared objects (they pass to tasks as arguments or captures, made before or after the
// pool; the pipe is freed with the last handle in the process that made it). Messages live in procpool's shared
// heap: no file descriptor, nothing in /dev/shm, any serializable T of any size.
//
// Who is the peer. An end belongs to the process that last sent or received through it: each send() and recv()
// records its process (pid and start time) in the pipe when another one was recorded. The peer of an end is the
// process the other end belongs to. recv() on an end whose peer has died (or exited) throws BrokenPipeError once
// nothing sent before is left to receive, instead of waiting forever; a death is noticed within about 50 ms. An
// end nobody has used yet has no peer, so recv() waits for it (use the timed form where that matters). When an end
// goes to a task in a worker that dies, and the task runs again in a replacement worker (PoolOptions::retries) or
// another task takes the end up, that process becomes the peer from its first send() or recv(): messages already
// sent to the end wait for it. A process using both ends (threads) is its own peer.
//
// Crash safety: the pipe's robust lock is taken over from a process that died holding it, and each change commits
// with one word (detail/shared_journal.hpp): a message being sent by a process that dies is delivered whole or not
// at all; one being received by a process that dies is lost with it.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "procpool/async_result.hpp"
#include "procpool/detail/buffer.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/detail/process.hpp"
#include "procpool/detail/robust_mutex.hpp"
#include "procpool/detail/shared_handle.hpp"
#include "procpool/detail/shared_heap.hpp"
#include "procpool/detail/shared_journal.hpp"
#include "procpool/detail/spin.hpp"
#include "procpool/errors.hpp"
#include "procpool/serialize.hpp"
#include "procpool/sync.hpp"

namespace procpool {

namespace detail {

/// A process as one word: its pid (< 2^22, Linux's PID_MAX_LIMIT) and its start time in clock ticks since boot
/// (41 bits: ~700 years at 100 Hz), so a reused pid is not taken for the process that had it. Bit 63 is free.
inline std::uint64_t process_word(pid_t pid, std::uint64_t start_time) noexcept {
    return (start_time & ((std::uint64_t{1} << 41) - 1)) << 22 | (static_cast<std::uint64_t>(pid) & 0x3fffff);
}

/// The calling process as a process_word() (cached; recomputed in a forked child).
inline std::uint64_t this_process_word() {
    static std::atomic<std::uint64_t> word{0};
    static std::atomic<unsigned> generation{~0u};
    const unsigned now = fork_generation();
    if (generation.load(std::memory_order_acquire) != now) {
        word.store(process_word(::getpid(), process_start_time(::getpid())), std::memory_order_relaxed);
        generation.store(now, std::memory_order_release);
    }
    return word.load(std::memory_order_relaxed);
}

/// True while the process `word` names runs: it exists, has the recorded start time, and is not a zombie.
inline bool process_running(std::uint64_t word) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(word & 0x3fffff));
    std::FILE* file = std::fopen(path, "r");
    if (file == nullptr) return false;
    char text[1024];
    const std::size_t n = std::fread(text, 1, sizeof text - 1, file);
    std::fclose(file);
    text[n] = '\0';
    const char* at = std::strrchr(text, ')');
    if (at == nullptr || at[1] != ' ' || at[2] == 'Z' || at[2] == 'X') return false;  // field 3: the state
    int field = 2;
    for (++at; *at != '\0' && field < 22; ++at) {
        if (*at == ' ') ++field;
    }
    return process_word(static_cast<pid_t>(word & 0x3fffff), std::strtoull(at, nullptr, 10)) == word;
}

struct PipeMessage {
    std::uint64_t next;  // commit word of the send after this one
    std::uint64_t bytes;
    // encoded value
};

/// Messages sent through one end, to be received at the other: a list from `head`, each linked in by one word
/// (the previous message's `next`, or `head`) and taken out by one (`head`).
struct PipeChannel {
    std::uint64_t head;                   // oldest message, 0 = none
    std::uint64_t tail;                   // newest (rebuilt from head by a locker that took the lock over)
    std::uint64_t count;                  // messages (rebuilt likewise)
    std::atomic<std::uint32_t> sent;      // futex word: bumped after every send
    std::atomic<std::uint32_t> sleepers;  // receivers asleep on `sent`
};

struct PipeState {
    RobustMutex mutex;
    PipeChannel channels[2];                  // channels[i]: sent through end i, received at end 1 - i
    std::atomic<std::uint64_t> users[2];      // process_word() of the process end i belongs to; 0 = none yet
    std::atomic<std::uint64_t> verdicts[2];   // the last liveness check of users[i]: its word, bit 63 set if dead
    std::atomic<std::int64_t> checked_at[2];  // when (monotonic ns)
    Journal journal;
};
static_assert(std::is_standard_layout_v<PipeState> && std::is_trivially_destructible_v<PipeState> &&
                  std::atomic<std::uint64_t>::is_always_lock_free,
              "a pipe's state lives in shared memory: no pointers, no destructor, lock-free atomics");

class PipeCore {
public:
    static constexpr auto kLivenessPeriod = std::chrono::milliseconds(50);
    static constexpr auto kSpin = std::chrono::microseconds(20);

    static PipeMessage* message(std::uint64_t offset) noexcept {
        return std::launder(reinterpret_cast<PipeMessage*>(SharedHeap::instance().address(offset)));
    }

    /// Records that end `side` belongs to the calling process (one relaxed load when it does already).
    static void claim(PipeState& s, int side) {
        const std::uint64_t me = this_process_word();
        if (s.users[side].load(std::memory_order_relaxed) != me) s.users[side].store(me, std::memory_order_release);
    }

    /// True when the peer of end `side` (the process the other end belongs to) is known and has ended. Reads /proc
    /// at most every kLivenessPeriod per end (the verdict is shared by every process using the end).
    static bool peer_died(PipeState& s, int side) {
        const int other = 1 - side;
        const std::uint64_t peer = s.users[other].load(std::memory_order_acquire);
        const std::uint64_t me = this_process_word();
        if (peer == 0 || peer == me) return false;
        if ((me >> 22) == 0) return false;  // no /proc to tell (our own start time is unknown): assume it runs
        constexpr std::uint64_t kDead = std::uint64_t{1} << 63;
        const std::uint64_t verdict = s.verdicts[other].load(std::memory_order_acquire);
        const std::int64_t now =
            std::chrono::duration_cast<std::chrono::nanoseconds>(MonotonicClock::now().time_since_epoch()).count();
        if ((verdict & ~kDead) == peer) {
            if ((verdict & kDead) != 0) return true;  // a process that ended stays ended
            if (now - s.checked_at[other].load(std::memory_order_relaxed) <
                std::chrono::nanoseconds(kLivenessPeriod).count()) {
                return false;
            }
        }
        const bool dead = !process_running(peer);
        s.verdicts[other].store(peer | (dead ? kDead : 0), std::memory_order_release);
        s.checked_at[other].store(now, std::memory_order_relaxed);
        return dead;
    }

    /// Appends `offset` (a message made by the caller) to the channel of end `side`. Lock held.
    static void append(PipeState& s, int side, std::uint64_t offset) noexcept {
        PipeChannel& c = s.channels[side];
        std::uint64_t& link = c.tail != 0 ? message(c.tail)->next : c.head;
        swap_word(s.journal, link, offset, offset, 0);
        c.tail = offset;
        ++c.count;
    }

    /// Takes the oldest message out of the channel of end `side` and frees it. Lock held, channel not empty.
    static void pop(PipeState& s, int side) noexcept {
        PipeChannel& c = s.channels[side];
        const std::uint64_t offset = c.head;
        swap_word(s.journal, c.head, message(offset)->next, 0, offset);
        if (c.head == 0) c.tail = 0;
        --c.count;
    }

    static void repair(PipeState& s) noexcept {
        recover(s.journal);
        for (PipeChannel& c : s.channels) {
            std::uint64_t count = 0;
            std::uint64_t last = 0;
            for (std::uint64_t at = c.head; at != 0; at = message(at)->next) {
                last = at;
                ++count;
            }
            c.tail = last;
            c.count = count;
        }
    }

    /// Holds the pipe's lock; a locker that took it over from a dead holder repairs the pipe first.
    using Guard = ContainerLock<PipeState, &repair>;

    /// Frees the messages left (the owner's last handle is going).
    static void destroy(PipeState& s) noexcept {
        repair(s);
        for (PipeChannel& c : s.channels) {
            for (std::uint64_t at = c.head; at != 0;) {
                const std::uint64_t next = message(at)->next;
                SharedHeap::instance().free(at);
                at = next;
            }
        }
    }
};

}  // namespace detail

template <class T>
class Connection;

/// A duplex pipe: two connected ends, like multiprocessing.Pipe(). Throws std::bad_alloc when the shared heap is
/// exhausted.
template <class T>
std::pair<Connection<T>, Connection<T>> make_pipe();

/// One end of a pipe made by make_pipe<T>(): what it sends the other end receives, in order, and the other way round.
/// Thread-safe: several threads and processes may use one end (each message goes to one receiver). See the top of
/// pipe.hpp for which process is an end's peer. (The one handle whose protocol is not detail::SharedHandle's: an end
/// is a pipe and a side, and travels as both.)
template <class T>
class Connection {
    static_assert(Serializable<T>, "procpool: Connection<T> needs a T procpool can serialize");

public:
    /// Sends `value` to the other end. Never blocks (the pipe holds any number of messages, in the shared heap).
    /// Throws what encoding `value` throws, std::bad_alloc when the shared heap is exhausted.
    void send(const T& value) const {
        detail::Buffer encoded;
        OutputArchive ar(encoded);
        encode(ar, value);
        detail::SharedHeap& heap = detail::SharedHeap::instance();
        const std::uint64_t offset = heap.allocate(sizeof(detail::PipeMessage) + encoded.size(), detail::kPipeMessage);
        detail::PipeMessage* m = detail::PipeCore::message(offset);
        m->next = 0;
        m->bytes = encoded.size();
        std::memcpy(reinterpret_cast<std::byte*>(m) + sizeof(detail::PipeMessage), encoded.data(), encoded.size());
        detail::PipeState& s = state();
        detail::PipeCore::claim(s, side_);
        detail::PipeChannel& c = s.channels[side_];
        try {
            detail::PipeCore::Guard guard(s);
            detail::PipeCore::append(s, side_, offset);
        } catch (...) {
            heap.free(offset);
            throw;
        }
        c.sent.fetch_add(1, std::memory_order_release);
        std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the receiver's fence before it sleeps
        if (c.sleepers.load(std::memory_order_relaxed) != 0) detail::futex_wake(c.sent, INT_MAX, true);
    }

    /// Receives the next message, waiting for it. Throws BrokenPipeError when the peer died and nothing is left,
    /// SerializationError when the message cannot be decoded (it is dropped).
    T recv() const { return *receive(std::nullopt); }
    /// Like recv(), waiting at most `timeout`: nothing if no message came in time.
    std::optional<T> recv(std::chrono::milliseconds timeout) const { return receive(detail::deadline_after(timeout)); }
    /// Whether recv() would return at once, waiting up to `timeout` for that (0: just look): a message is there,
    /// or the peer died and recv() would throw BrokenPipeError (like Python's poll(), true at end of file).
    [[nodiscard]] bool poll(std::chrono::milliseconds timeout = {}) const {
        detail::PipeState& s = state();
        detail::PipeCore::claim(s, side_);
        const detail::Deadline deadline = detail::deadline_after(timeout);
        for (;;) {
            if (wait_step(s, deadline)) return true;
            if (deadline && detail::MonotonicClock::now() >= *deadline) return false;
        }
    }

    using procpool_handle_tag = void;
    void procpool_encode(OutputArchive& ar) const {
        ref_.encode(ar);
        ar.write_bytes(&side_, sizeof side_);
    }
    static Connection procpool_decode(InputArchive& ar) {
        detail::SharedRef ref = detail::SharedRef::decode(ar, detail::kPipeObject);
        int side = 0;
        ar.read_bytes(&side, sizeof side);
        if (side != 0 && side != 1) throw SerializationError("procpool: corrupt pipe end");
        return Connection(std::move(ref), side);
    }
    /// Handles are equal when they are the same end of the same pipe.
    friend bool operator==(const Connection& a, const Connection& b) noexcept {
        return a.ref_ == b.ref_ && a.side_ == b.side_;
    }

private:
    friend std::pair<Connection<T>, Connection<T>> make_pipe<T>();

    Connection(detail::SharedRef ref, int side) : ref_(std::move(ref)), side_(side) {}
    [[nodiscard]] detail::PipeState& state() const noexcept {
        return *std::launder(reinterpret_cast<detail::PipeState*>(ref_.address()));
    }
    /// The channel this end receives from.
    [[nodiscard]] detail::PipeChannel& incoming() const noexcept { return state().channels[1 - side_]; }

    /// Waits until a message is there, the peer died, a liveness period passed, or `deadline` (after which it only
    /// looks). Returns whether a message is there or the peer died (what poll() reports).
    bool wait_step(detail::PipeState& s, detail::Deadline deadline) const {
        detail::PipeChannel& c = incoming();
        auto arrived = [&] { return detail::load_word(c.head) != 0; };
        const auto now = detail::MonotonicClock::now();
        const auto spin = deadline ? std::min<std::chrono::nanoseconds>(detail::PipeCore::kSpin, *deadline - now)
                                   : std::chrono::nanoseconds(detail::PipeCore::kSpin);
        if (detail::spin_until(arrived, spin)) return true;
        if (detail::PipeCore::peer_died(s, side_)) return true;
        if (deadline && detail::MonotonicClock::now() >= *deadline) return false;
        detail::Deadline step = detail::MonotonicClock::now() + detail::PipeCore::kLivenessPeriod;
        if (deadline && *deadline < *step) step = deadline;
        const std::uint32_t seen = c.sent.load(std::memory_order_acquire);
        c.sleepers.fetch_add(1, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the sender's fence
        if (!arrived()) detail::futex_wait(c.sent, seen, step, true);
        c.sleepers.fetch_sub(1, std::memory_order_relaxed);
        return arrived();
    }

    std::optional<T> receive(detail::Deadline deadline) const {
        detail::PipeState& s = state();
        detail::PipeCore::claim(s, side_);
        const int from = 1 - side_;
        for (;;) {
            {
                detail::PipeCore::Guard guard(s);
                if (s.channels[from].head != 0) {
                    // Decoded before it is taken out: a receiver that dies while decoding leaves it in the pipe.
                    const detail::PipeMessage* m = detail::PipeCore::message(s.channels[from].head);
                    std::optional<T> value;
                    try {
                        InputArchive ar(std::span<const std::byte>(
                            reinterpret_cast<const std::byte*>(m) + sizeof(detail::PipeMessage), m->bytes));
                        value.emplace(detail::decode_as<T>(ar));
                    } catch (...) {
                        detail::PipeCore::pop(s, from);  // an undecodable message would block the pipe for good
                        throw;
                    }
                    detail::PipeCore::pop(s, from);
                    return value;
                }
            }
            if (detail::PipeCore::peer_died(s, side_)) {
                detail::PipeCore::Guard guard(s);
                if (s.channels[from].head == 0) {
                    throw BrokenPipeError(
                        "procpool: the process at the other end of this pipe has ended, and nothing is left to "
                        "receive");
                }
                continue;  // it sent something before it ended
            }
            if (deadline && detail::MonotonicClock::now() >= *deadline) return std::nullopt;
            (void)wait_step(s, deadline);
        }
    }

    static void destroy(void* state) { detail::PipeCore::destroy(*static_cast<detail::PipeState*>(state)); }

    detail::SharedRef ref_;
    int side_ = 0;
    // Fills side_'s word: a lambda capturing a pipe end is read word by word by the stack check, and padding would
    // hold stale stack bytes (see detail::SharedRef).
    std::int32_t unused_ = 0;
};

template <class T>
std::pair<Connection<T>, Connection<T>> make_pipe() {
    detail::SharedRef ref = detail::SharedRef::create(sizeof(detail::PipeState), detail::kPipeObject,
                                                      &Connection<T>::destroy);
    auto* s = new (ref.address()) detail::PipeState();
    s->mutex.init(false);
    return {Connection<T>(ref, 0), Connection<T>(ref, 1)};
}

}  // namespace procpool
