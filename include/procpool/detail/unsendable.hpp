// procpool internals: standard types that cannot cross into another process, each with the message that says what
// to send instead.
//
// Nobody can add a `serialize` member to a std type, so the generic "this type cannot be sent" message would leave a
// user stuck: serialize.hpp's check_serializable() names the family and the way out. Families are recognised by
// shape (members), not by including their headers: a program that sends none of them pays nothing for <thread>,
// <future> or <any>. A trait here is only asked about a type procpool cannot serialize, so a user type with such
// members and a serialize() is never mistaken for one.
#pragma once

#include <concepts>
#include <functional>
#include <iosfwd>
#include <memory>
#include <type_traits>
#include <typeinfo>

namespace procpool::detail {

template <class T>
struct is_smart_pointer : std::false_type {};
template <class T, class D>
struct is_smart_pointer<std::unique_ptr<T, D>> : std::true_type {};
template <class T>
struct is_smart_pointer<std::shared_ptr<T>> : std::true_type {};
template <class T>
struct is_smart_pointer<std::weak_ptr<T>> : std::true_type {};

template <class T>
struct is_std_function : std::false_type {};
template <class R, class... A>
struct is_std_function<std::function<R(A...)>> : std::true_type {};

/// std::atomic<T> and std::atomic_flag: neither copyable nor movable, with load()/store() or test_and_set().
template <class T>
struct is_atomic_like
    : std::bool_constant<!std::is_copy_constructible_v<T> &&
                         (requires(T & t) {
    t.load();
    t.is_lock_free();
} || requires(T& t) {
    t.test_and_set();
})> {};

/// The standard streams (std::fstream, std::stringstream, std::cout...): derived from std::ios_base.
template <class T>
struct is_stream : std::bool_constant<std::is_class_v<T> && std::is_base_of_v<std::ios_base, T>> {};

/// std::mutex and friends, std::condition_variable, std::unique_lock, std::lock_guard: objects of one process.
template <class T>
struct is_thread_sync
    : std::bool_constant<!std::is_trivially_copyable_v<T> &&
                         (requires(T & t) {
    t.lock();
    t.unlock();
} || requires(T& t) {
    t.notify_one();
    t.notify_all();
}
|| requires(T& t) {
    t.mutex();
    t.owns_lock();
})> {};

/// std::thread, std::jthread.
template <class T>
    struct is_thread_like : std::bool_constant < requires(T& t) {
    t.join();
    t.detach();
    t.get_id();
} > {};

/// std::future, std::shared_future, std::promise, std::packaged_task.
template <class T>
    struct is_future_like : std::bool_constant < requires(T& t) {
    t.get();
    t.wait();
    t.valid();
} || requires(T& t) {
    t.get_future();
}
> {};

/// std::any: a value whose type is only known at run time.
template <class T>
        struct is_any_like : std::bool_constant < !std::is_trivially_copyable_v<T> &&
    requires(const T& t) {
    { t.type() } -> std::same_as<const std::type_info&>;
    t.has_value();
} > {};

}  // namespace procpool::detail
