// procpool: your own exception types, back from a worker as themselves.
//
//     struct ParseError : std::exception {
//         std::string message;
//         int line = 0;
//         ParseError() = default;
//         ParseError(std::string text, int at) : message(std::move(text)), line(at) {}
//         const char* what() const noexcept override { return message.c_str(); }
//         template <class Archive>
//         void serialize(Archive& ar) { ar(message, line); }  // its whole state, message included
//     };
//     procpool::register_exception<ParseError>();  // once, in the process that builds the pool
//     try { pool.apply(parse, text); } catch (const ParseError& e) { std::printf("line %d\n", e.line); }
//
// Without registration a task's exception of a type of yours comes back as RemoteError (its type's name and what()).
#pragma once

#include <exception>
#include <type_traits>

#include "procpool/detail/exception_registry.hpp"
#include "procpool/serialize.hpp"

namespace procpool {

/// An E thrown by a task from now on comes back to the caller as an E (catchable as E and as its bases), decoded
/// with E's `serialize(Archive&)` member, which must carry everything the caller needs, its message included.
/// Call it in the process that builds the pool, before or after the pool is built (over MPI: on every rank, before
/// the Session's pool is used). Only exactly E is matched: a type derived from E needs its own registration.
/// Registering twice does nothing. Throws std::length_error past 1024 types. Thread-safe.
template <class E>
void register_exception() {
    static_assert(std::is_class_v<E> && std::is_base_of_v<std::exception, E>,
                  "procpool::register_exception<E>: E must derive from std::exception");
    static_assert(std::is_default_constructible_v<E>,
                  "procpool::register_exception<E>: E needs a default constructor (the caller's copy is made with "
                  "it, then filled by E's serialize())");
    static_assert(std::is_copy_constructible_v<E>,
                  "procpool::register_exception<E>: E must be copyable (exceptions are copied when rethrown)");
    static_assert(detail::has_member_serialize<E>,
                  "procpool::register_exception<E>: E needs a member `template <class Archive> void "
                  "serialize(Archive& ar)` that encodes its state, its message included");
    detail::ExceptionRegistry::instance().add(detail::ExceptionCodec{
        &typeid(E), &detail::encode_registered_exception<E>, &detail::decode_registered_exception<E>});
}

}  // namespace procpool
