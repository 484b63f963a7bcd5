// procpool internals: the compile-time checks behind every submission, with messages that say what to do.
#pragma once

#include <tuple>
#include <type_traits>

#include "procpool/detail/task.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

/// How an argument of apply/apply_async travels: decayed like std::async, with C strings sent as std::string
/// (like a Python str) since a pointer means nothing in another process.
template <class T>
using arg_t = std::conditional_t<std::is_same_v<std::decay_t<T>, const char*> || std::is_same_v<std::decay_t<T>, char*>,
                                 std::string, std::decay_t<T>>;

template <class F>
consteval bool check_callable() {
    static_assert(transferable_callable_v<F>,
                  "procpool: this callable cannot be sent to a worker process. std::function, and lambdas or "
                  "function objects that capture non-trivially-copyable values (std::string, std::vector, "
                  "smart pointers...), are rejected. Pass such data as task arguments instead, capture only "
                  "trivially copyable values, or use a function pointer or a captureless lambda.");
    return transferable_callable_v<F>;
}

template <class F, class Item, bool Unpack>
struct lazy_result {
    using type = task_result_t<F, Item, Unpack>;
};

/// Checks that F can be sent, Item can be sent, F can be called with Item, and its result can come back.
/// Fails to compile with a specific message otherwise; returns true when everything is fine.
/// The parameter messages appear only when the callable and the arguments passed their own checks: a callable
/// rejected for what it captures (or whose body did not compile) is not also told to check its parameters.
template <class F, class Item, bool Unpack>
consteval bool check_task() {
    constexpr bool callable_ok = transferable_callable_v<F>;
    constexpr bool item_ok = serializable<std::remove_cvref_t<Item>>();
    (void)check_callable<F>();
    (void)check_serializable<Item>();
    constexpr bool invocable = Invocation<F, Item, Unpack>::invocable;
    constexpr bool explain_parameters = callable_ok && item_ok && !invocable;
    static_assert(!explain_parameters || !Unpack,
                  "procpool: the callable cannot be called with these arguments (for starmap: with the elements "
                  "of each tuple). Check the parameter types; parameters taken by non-const reference cannot "
                  "receive the values procpool decodes.");
    static_assert(!explain_parameters || Unpack,
                  "procpool: the callable cannot be called with an element of this range. Check its parameter "
                  "type; a parameter taken by non-const reference cannot receive the values procpool decodes.");
    if constexpr (invocable) {
        using R = typename lazy_result<F, Item, Unpack>::type;
        if constexpr (!std::is_void_v<R>) {
            return callable_ok && item_ok && check_serializable<R>();
        }
    }
    return callable_ok && item_ok && invocable;
}

template <class T>
struct is_shared_handle : std::bool_constant<has_handle_codec<T>> {};

/// Checks what a transport that cannot carry shared memory (MPI) adds: no shared objects among the arguments
/// and results, and a callable whose bytes mean the same on another machine.
template <bool SharedObjects, class F, class Item, class R>
consteval bool check_transport() {
    if constexpr (SharedObjects) {
        return true;
    } else {
        constexpr bool no_handles = !any_leaf<is_shared_handle, Item>() && !any_leaf<is_shared_handle, R>();
        static_assert(no_handles,
                      "procpool: shared-memory objects (SharedArray, SharedValue, Lock, Queue...) cannot cross "
                      "machines: the MPI pool cannot send them. Send the values themselves.");
        constexpr bool plain_callable = bitwise<F>() || serialized_callable_v<F>;
        static_assert(plain_callable,
                      "procpool: the MPI pool copies the callable to other machines: its captures must be trivially "
                      "copyable values (numbers, structs of numbers), not shared objects. Pass them as arguments.");
        return no_handles && plain_callable;
    }
}

/// The task's result type when check_task passed, void otherwise (so a failed check does not cascade).
template <class F, class Item, bool Unpack>
using checked_result_t = typename std::conditional_t<Invocation<F, Item, Unpack>::invocable,
                                                     lazy_result<F, Item, Unpack>, std::type_identity<void>>::type;

}  // namespace procpool::detail
