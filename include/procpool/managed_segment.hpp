// procpool: ManagedSegment, a Boost.Interprocess managed segment in procpool's shared memory, for
// Boost.Interprocess' containers (boost::interprocess::vector, map, basic_string...) shared zero-copy between a
// program and its workers.
//
//     procpool::ManagedSegment segment(1 << 20);  // bytes
//     using Ints = boost::interprocess::vector<int, procpool::ManagedSegment::allocator<int>>;
//     Ints* ints = segment.find_or_construct<Ints>("ints")(segment.get_allocator<int>());
//     pool.apply([segment] { segment.find<Ints>("ints").first->push_back(1); });
//
// It is a basic_managed_external_buffer<char, rbtree_best_fit<...>, iset_index> over one block of the shared heap,
// which every worker maps at the same address (so a segment made after the pool reaches its workers too), and it
// is passed to tasks like the other shared objects. Its mutex family is procpool's robust mutex: the segment's own
// locks (the allocator's and the name index's) are never left held by a process that died.
//
// Boost's allocator is not crash-safe: a process killed while allocating can leave its free lists corrupt
// (measured with Boost 1.74: 65 of 200 trials). So a segment whose allocator or name index was held by a process
// that died is broken for good: the locker that takes the lock over marks it (a flag in the segment) and every use
// from then on throws BrokenSegmentError, from this class and from the segment's locks themselves (a container
// growing, shrinking or being destroyed in it), instead of reading a corrupt heap. A container's destructor in a
// broken segment therefore terminates the program (it would have to free into the corrupt heap): leave containers
// of a broken segment alone. Your own data in the segment is yours to lock (a procpool::Lock, which Boost's
// scoped_lock can hold).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

// Boost.Date_Time's posix_time (ptime, microsec_clock): the deadlines of timed_lock, here and on Lock.
#include <boost/date_time/posix_time/posix_time_types.hpp>
#include <boost/interprocess/allocators/allocator.hpp>
#include <boost/interprocess/creation_tags.hpp>
#include <boost/interprocess/indexes/iset_index.hpp>
#include <boost/interprocess/managed_external_buffer.hpp>
#include <boost/interprocess/mem_algo/rbtree_best_fit.hpp>
#include <boost/interprocess/segment_manager.hpp>

#include "procpool/detail/robust_mutex.hpp"
#include "procpool/detail/shared_handle.hpp"
#include "procpool/detail/shared_heap.hpp"
#include "procpool/errors.hpp"
#include "procpool/serialize.hpp"

namespace procpool {

namespace detail {

/// What precedes a segment's managed buffer in its heap block.
struct SegmentHeader {
    std::atomic<std::uint32_t> broken;  // 1 once a lock of the segment was taken over from a dead holder
    std::uint32_t reserved0;
    std::uint64_t bytes;  // of the managed buffer
    std::uint64_t reserved[6];
};
inline constexpr std::size_t kSegmentHeader = sizeof(SegmentHeader);
static_assert(kSegmentHeader == 64, "the managed buffer starts on a cache line");

/// The broken flag of the segment whose segment manager the calling thread is constructing (its mutexes find their
/// segment's flag through it once, when they are constructed, and keep its distance from themselves).
inline std::atomic<std::uint32_t>*& segment_being_built() noexcept {
    thread_local std::atomic<std::uint32_t>* flag = nullptr;
    return flag;
}

[[noreturn]] inline void throw_broken_segment() {
    throw BrokenSegmentError(
        "procpool: this ManagedSegment is broken: a process died holding its allocator or name index, which may be "
        "half-updated (Boost.Interprocess' heap is not crash-safe), so it is not read any more");
}

/// A robust mutex of Boost.Interprocess' mutex interface, living in a segment: taken over from a dead holder, it
/// marks its segment broken; in a broken segment, locking throws BrokenSegmentError.
template <bool Recursive>
class SegmentMutex {
public:
    SegmentMutex() {
        mutex_.init(Recursive);
        if (std::atomic<std::uint32_t>* flag = segment_being_built()) {
            broken_offset_ = reinterpret_cast<std::byte*>(flag) - reinterpret_cast<std::byte*>(this);
        }
    }
    SegmentMutex(const SegmentMutex&) = delete;
    SegmentMutex& operator=(const SegmentMutex&) = delete;

    void lock() {
        (void)mutex_.lock();
        checked();
    }
    bool try_lock() {
        if (!mutex_.try_lock()) return false;
        checked();
        return true;
    }
    /// Waits until `abs_time` (a boost::posix_time::ptime, read as UTC, as Boost.Interprocess reads it).
    template <BoostPtime Ptime>
    bool timed_lock(const Ptime& abs_time) {
        const bool got = lock_until_utc(mutex_, abs_time);
        if (got) checked();
        return got;
    }
    void unlock() { mutex_.unlock(); }

private:
    std::atomic<std::uint32_t>* flag() noexcept {
        return broken_offset_ == 0
                   ? nullptr
                   : reinterpret_cast<std::atomic<std::uint32_t>*>(reinterpret_cast<std::byte*>(this) + broken_offset_);
    }
    /// Just locked: a lock taken over from a dead holder breaks the segment; a broken segment is not entered.
    void checked() {
        std::atomic<std::uint32_t>* broken = flag();
        const bool taken_over = mutex_.recovered.load() != 0;
        if (taken_over && broken != nullptr) broken->store(1, std::memory_order_release);
        if (taken_over || (broken != nullptr && broken->load(std::memory_order_acquire) != 0)) {
            mutex_.unlock();
            throw_broken_segment();
        }
    }

    RobustMutex mutex_;
    std::ptrdiff_t broken_offset_ = 0;  // from this mutex to its segment's broken flag; 0 = not in a segment
};

/// Boost.Interprocess' mutex family for procpool's segments (in place of interprocess_mutex, which is not robust).
struct RobustMutexFamily {
    using mutex_type = SegmentMutex<false>;
    using recursive_mutex_type = SegmentMutex<true>;
};

}  // namespace detail

/// A Boost.Interprocess managed segment of a fixed size in procpool's shared memory (see the top of this file).
/// Members check that the segment is not broken (else BrokenSegmentError) and are otherwise Boost's: thread- and
/// process-safe, blocking only on the segment's locks; named construction throws what the constructor throws and
/// boost::interprocess::bad_alloc when the segment is full.
class ManagedSegment : public detail::SharedHandle<ManagedSegment, detail::kSegmentObject> {
public:
    using segment_manager =
        boost::interprocess::segment_manager<char, boost::interprocess::rbtree_best_fit<detail::RobustMutexFamily>,
                                             boost::interprocess::iset_index>;
    /// The allocator of Boost.Interprocess' containers in this segment: `boost::interprocess::vector<int,
    /// ManagedSegment::allocator<int>>`.
    template <class T>
    using allocator = boost::interprocess::allocator<T, segment_manager>;

    /// A segment of `bytes` bytes (what its objects and Boost's bookkeeping share). Throws std::invalid_argument
    /// when that is too small for the segment manager, std::bad_alloc when the shared heap is exhausted.
    explicit ManagedSegment(std::size_t bytes) : SharedHandle(create(bytes)) {}

    /// Boost's segment manager (for what this class does not forward). Throws BrokenSegmentError.
    [[nodiscard]] segment_manager* get_segment_manager() const { return manager(); }
    /// An allocator for containers in this segment.
    template <class T>
    [[nodiscard]] allocator<T> get_allocator() const {
        return allocator<T>(manager());
    }

    /// `segment.construct<T>(name)(args...)`: a new object called `name` (Boost throws if the name is taken);
    /// `segment.construct<T>(name)[n](args...)` an array.
    template <class T>
    [[nodiscard]] auto construct(const char* name) const {
        return manager()->template construct<T>(name);
    }
    /// `segment.find_or_construct<T>(name)(args...)`: the object called `name`, made with `args` if there is none.
    template <class T>
    [[nodiscard]] auto find_or_construct(const char* name) const {
        return manager()->template find_or_construct<T>(name);
    }
    /// The object called `name` and its element count, {nullptr, 0} if there is none.
    template <class T>
    [[nodiscard]] std::pair<T*, std::size_t> find(const char* name) const {
        const auto found = manager()->template find<T>(name);
        return {found.first, static_cast<std::size_t>(found.second)};
    }
    /// Destroys and frees the object called `name`; false if there is none.
    template <class T>
    bool destroy(const char* name) const {
        return manager()->template destroy<T>(name);
    }
    /// Raw memory from the segment; throws boost::interprocess::bad_alloc when it is full.
    [[nodiscard]] void* allocate(std::size_t bytes) const { return manager()->allocate(bytes); }
    void deallocate(void* p) const { manager()->deallocate(p); }

    [[nodiscard]] std::size_t get_size() const { return manager()->get_size(); }
    [[nodiscard]] std::size_t get_free_memory() const { return manager()->get_free_memory(); }
    /// Boost's consistency check of the allocator's free lists.
    [[nodiscard]] bool check_sanity() const { return manager()->check_sanity(); }
    /// True once a process died holding one of the segment's locks: every other member throws BrokenSegmentError.
    [[nodiscard]] bool broken() const noexcept { return header().broken.load(std::memory_order_acquire) != 0; }

private:
    friend class detail::SharedHandle<ManagedSegment, detail::kSegmentObject>;
    using Buffer = boost::interprocess::basic_managed_external_buffer<
        char, boost::interprocess::rbtree_best_fit<detail::RobustMutexFamily>, boost::interprocess::iset_index>;

    explicit ManagedSegment(detail::SharedRef ref) : SharedHandle(std::move(ref)) {}

    static detail::SharedRef create(std::size_t bytes) {
        if (bytes < segment_manager::get_min_size() + 64) {
            throw std::invalid_argument("procpool: a ManagedSegment needs at least " +
                                        std::to_string(segment_manager::get_min_size() + 64) + " bytes");
        }
        if (bytes > (std::size_t{1} << 45)) throw std::bad_alloc();
        detail::SharedRef ref = detail::SharedRef::create(detail::kSegmentHeader + bytes, detail::kSegmentObject);
        auto* header = new (ref.address()) detail::SegmentHeader();
        header->bytes = bytes;
        struct Building {
            explicit Building(std::atomic<std::uint32_t>* flag) { detail::segment_being_built() = flag; }
            ~Building() { detail::segment_being_built() = nullptr; }
            Building(const Building&) = delete;
            Building& operator=(const Building&) = delete;
        } building(&header->broken);
        // Places the segment manager at the start of the buffer; the Buffer object itself only points there (its
        // destructor leaves the segment as it is), and every process finds the manager at that address.
        const Buffer buffer(boost::interprocess::create_only, ref.address() + detail::kSegmentHeader, bytes);
        return ref;
    }

    [[nodiscard]] detail::SegmentHeader& header() const noexcept { return object<detail::SegmentHeader>(); }
    [[nodiscard]] segment_manager* manager() const {
        if (broken()) detail::throw_broken_segment();
        return std::launder(reinterpret_cast<segment_manager*>(ref_.address() + detail::kSegmentHeader));
    }
};

}  // namespace procpool
