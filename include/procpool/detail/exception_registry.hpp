// procpool internals: the exception types registered with procpool::register_exception<E>(), which come back from a
// worker as themselves.
//
// A worker encodes the exception it caught with E's serialize() member; the caller's process decodes it into a new E.
// Both sides find E by its exact type: the worker by the type_info of the exception in flight, the caller by its
// mangled name (the same in every process of the program, across MPI ranks too).
//
// Registration may come after the pool was built, when the workers are already forked: so every entry is also
// written into a table in the shared heap that the workers read. Its function pointers are valid there because every
// worker runs the same program image, forked from the process that registered (share() makes the table before the
// first fork). A type registered in a worker alone is encoded by that worker but reaches the caller as RemoteError.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>

#include "procpool/detail/shared_handle.hpp"
#include "procpool/detail/shared_heap.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

/// How one registered type crosses: its type, and the two halves of its codec.
struct ExceptionCodec {
    const std::type_info* type = nullptr;
    /// Encodes the exception in flight, which must be exactly of `type`. Call only inside a catch block.
    void (*encode)(OutputArchive& ar) = nullptr;
    /// Decodes a value written by encode() and returns it as an exception_ptr of the original type.
    std::exception_ptr (*decode)(InputArchive& ar) = nullptr;
};

template <class E>
void encode_registered_exception(OutputArchive& ar) {
    try {
        throw;
    } catch (const E& error) {
        encode(ar, error);
    }
}

template <class E>
std::exception_ptr decode_registered_exception(InputArchive& ar) {
    E error;
    decode(ar, error);
    return std::make_exception_ptr(std::move(error));
}

class ExceptionRegistry {
public:
    /// Types that can be registered at most.
    static constexpr std::uint32_t kCapacity = 1024;

    static ExceptionRegistry& instance() {
        static ExceptionRegistry* registry = new ExceptionRegistry();  // never destroyed: workers may read it late
        return *registry;
    }

    /// Registers `codec` (again for a type already registered: nothing happens). Throws std::length_error past
    /// kCapacity types. Thread-safe, and lock-free: a worker forked while another thread registered never waits.
    void add(const ExceptionCodec& codec) {
        if (find(*codec.type)) return;
        if (!claim(local_, codec)) {
            throw std::length_error("procpool: at most " + std::to_string(kCapacity) +
                                    " exception types can be registered");
        }
        if (Table* shared = shared_.load(std::memory_order_acquire)) (void)claim(*shared, codec);
    }

    /// Makes the table the workers read, before a pool forks its first process (ForkTransport's constructor), and
    /// copies what was registered so far into it. Without a shared heap the workers see only what they inherit.
    void share() noexcept {
        if (shared_.load(std::memory_order_acquire) != nullptr) return;
        Table* table = nullptr;
        try {
            SharedHeap& heap = SharedHeap::instance();
            table = new (heap.address(heap.allocate(sizeof(Table), kExceptionTable))) Table();
        } catch (...) {
            return;
        }
        Table* expected = nullptr;
        if (!shared_.compare_exchange_strong(expected, table, std::memory_order_acq_rel)) return;  // (leaks a table)
        // An add() running now may also copy its entry: a duplicate is harmless (the first match wins).
        for_each_entry(local_, [&](const ExceptionCodec& codec) {
            (void)claim(*table, codec);
            return false;
        });
    }

    /// The codec for exactly `type`, if registered. Lock-free; safe in a worker at any time.
    [[nodiscard]] std::optional<ExceptionCodec> find(const std::type_info& type) const noexcept {
        return find_if([&](const ExceptionCodec& codec) { return *codec.type == type; });
    }
    /// The codec for the type whose mangled name is `name`, if registered.
    [[nodiscard]] std::optional<ExceptionCodec> find(const std::string& name) const noexcept {
        return find_if([&](const ExceptionCodec& codec) { return name == codec.type->name(); });
    }

private:
    struct Entry {
        std::atomic<std::uint32_t> ready;  // set (release) once `codec` is written
        ExceptionCodec codec;
    };
    struct Table {
        std::atomic<std::uint32_t> used{0};  // entries claimed
        Entry entries[kCapacity];
    };

    ExceptionRegistry() = default;

    static bool claim(Table& table, const ExceptionCodec& codec) noexcept {
        const std::uint32_t index = table.used.fetch_add(1, std::memory_order_acq_rel);
        if (index >= kCapacity) return false;
        table.entries[index].codec = codec;
        table.entries[index].ready.store(1, std::memory_order_release);
        return true;
    }

    /// Calls visit(codec) on every entry written so far, until it returns true.
    template <class Visit>
    static bool for_each_entry(const Table& table, Visit&& visit) noexcept {
        const std::uint32_t used = std::min(table.used.load(std::memory_order_acquire), kCapacity);
        for (std::uint32_t i = 0; i < used; ++i) {
            const Entry& entry = table.entries[i];
            if (entry.ready.load(std::memory_order_acquire) != 0 && visit(entry.codec)) return true;
        }
        return false;
    }

    template <class Match>
    std::optional<ExceptionCodec> find_if(Match match) const noexcept {
        std::optional<ExceptionCodec> found;
        auto look = [&](const ExceptionCodec& codec) {
            if (match(codec)) found = codec;
            return found.has_value();
        };
        if (for_each_entry(local_, look)) return found;
        if (const Table* shared = shared_.load(std::memory_order_acquire)) (void)for_each_entry(*shared, look);
        return found;
    }

    Table local_;                          // registered in this process, or inherited from the one that forked it
    std::atomic<Table*> shared_{nullptr};  // in the shared heap, once share() ran
};

}  // namespace procpool::detail
