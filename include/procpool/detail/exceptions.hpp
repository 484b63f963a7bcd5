// procpool internals: carrying a task's exception from a worker back to the caller.
//
// Types registered with procpool::register_exception<E>() come back as themselves, with the state their serialize()
// carries (detail/exception_registry.hpp). The standard exceptions of the API table (and std::bad_alloc) come back
// as themselves with the same what(); procpool's own RemoteError and SerializationError keep their type; anything
// else becomes RemoteError carrying the thrown type's demangled name, and for a value that is not a std::exception
// (`throw 42;`) a what() that says what was thrown.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>

#include "procpool/detail/config.hpp"
#include "procpool/errors.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

enum class ErrorKind : std::uint8_t {
    logic_error = 1,
    invalid_argument,
    domain_error,
    length_error,
    out_of_range,
    runtime_error,
    range_error,
    overflow_error,
    underflow_error,
    bad_alloc,
    remote,
    serialization,
    pool_state,
    registered,  // a type registered with register_exception(): type_name is its mangled name, payload its state
    // procpool's own errors, each as itself (a task may meet them: a pipe's dead peer, a broken barrier...; over MPI a
    // rank's pool reports its workers' crashes and timeouts with them). WorkerCrashed and TaskTimeout carry their
    // fields in the payload.
    worker_crashed,
    task_timeout,
    timeout_error,
    broken_barrier,
    broken_pipe,
    broken_segment,
    last_kind = broken_segment,
};

/// The payload of a WorkerCrashed or TaskTimeout record.
struct WorkerFaultFields {
    std::int32_t pid = 0;
    std::int32_t signal = 0;      // WorkerCrashed
    std::int32_t exit_code = 0;   // WorkerCrashed
    std::int64_t timeout_ms = 0;  // TaskTimeout
    std::string where;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(pid, signal, exit_code, timeout_ms, where);
    }
};

struct ErrorRecord {
    ErrorKind kind = ErrorKind::remote;
    std::string type_name;
    std::string message;
    std::string payload;  // ErrorKind::registered: the exception's encoded state
};

/// Whether records of `kind` carry a payload after their message.
constexpr bool carries_payload(ErrorKind kind) noexcept {
    return kind == ErrorKind::registered || kind == ErrorKind::worker_crashed || kind == ErrorKind::task_timeout;
}

PROCPOOL_DECL std::string fields_payload(const WorkerFaultFields& fields);

/// What a thrown value that is not a std::exception was, for RemoteError::what(): "the task threw int 42". Call only
/// inside a catch block.
PROCPOOL_DECL std::string describe_thrown_value(const std::string& type_name);

/// Encodes the exception being handled with its registered codec, if its exact type has one. Call only inside a
/// catch block. Nothing if its serialize() threw: the caller then describes it as an unregistered type.
PROCPOOL_DECL std::optional<ErrorRecord> describe_registered_exception();

/// Describes the exception being handled. Call only inside a catch block.
PROCPOOL_DECL ErrorRecord describe_current_exception();

PROCPOOL_DECL void encode_error(OutputArchive& ar, const ErrorRecord& record);

/// Encodes the exception being handled. Call only inside a catch block.
PROCPOOL_DECL void encode_current_exception(OutputArchive& ar);

/// The registered exception a record carries, decoded with the codec registered here for its type; a RemoteError
/// with its type's readable name and its what() if this process has none (it was registered in the worker only) or
/// the state cannot be decoded.
PROCPOOL_DECL std::exception_ptr make_registered_exception(const ErrorRecord& r);

PROCPOOL_DECL std::exception_ptr make_exception(const ErrorRecord& r);

PROCPOOL_DECL std::exception_ptr decode_error(InputArchive& ar);

}  // namespace procpool::detail

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/exceptions.ipp"
#endif
