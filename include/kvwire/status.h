// kvwire/status.h — the error type of the whole public API.
//
// Every fallible call returns a `Status` or a `Result<T>`. No exception crosses include/.
// `StatusCode::kInProgress` is not an error: it is what an asynchronous operation returns
// while it has not finished (as UCS_INPROGRESS in UCX).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace kvwire {

enum class StatusCode : uint8_t {
  kOk = 0,
  kInProgress,        // asynchronous operation not finished yet; poll or wait again
  kInvalidArgument,   // caller passed something impossible (shape, name, option)
  kCorrupt,           // data read from a file or the network failed validation
  kTruncated,         // data ended before a length it announced
  kVersionMismatch,   // format/protocol version this build does not read
  kUnsupported,       // valid request this build or backend cannot do
  kNotFound,          // named thing (codec, tensor, file) does not exist
  kResourceExhausted, // a bound on memory/size/count would be exceeded
  kIoError,           // operating system I/O failure
  kTimeout,           // deadline or stall timeout hit
  kUnauthenticated,   // peer failed authentication
  kCancelled,         // operation aborted by the caller or the peer
  kInternal,          // a bug in kvwire
};

/// Human-readable name of a code ("corrupt", "truncated", ...).
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status InProgress() { return Status(StatusCode::kInProgress, {}); }

  bool ok() const { return code_ == StatusCode::kOk; }
  bool in_progress() const { return code_ == StatusCode::kInProgress; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  /// "corrupt: chunk 3 at offset 812: payload CRC32C mismatch"
  std::string ToString() const;

  /// Returns this status with `context + ": "` prepended to its message (no-op when ok).
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

/// A value or the Status explaining why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<Status>(v_).ok()) v_ = Status(StatusCode::kInternal, "Result built from ok Status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace kvwire

#define KVWIRE_CONCAT_INNER_(a, b) a##b
#define KVWIRE_CONCAT_(a, b) KVWIRE_CONCAT_INNER_(a, b)

/// Returns the Status of `expr` from the enclosing function if it is not ok.
#define KVWIRE_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::kvwire::Status kvwire_status_ = (expr);        \
    if (!kvwire_status_.ok()) return kvwire_status_; \
  } while (0)

/// One-line error path: `KVWIRE_RETURN_ERROR_IF(len > cap, kCorrupt, "length " + ...)`.
#define KVWIRE_RETURN_ERROR_IF(cond, code, msg)                  \
  do {                                                           \
    if (cond) return ::kvwire::Status(::kvwire::StatusCode::code, (msg)); \
  } while (0)

/// `KVWIRE_ASSIGN_OR_RETURN(auto x, MakeX());`
#define KVWIRE_ASSIGN_OR_RETURN(lhs, expr)                                    \
  auto KVWIRE_CONCAT_(kvwire_result_, __LINE__) = (expr);                     \
  if (!KVWIRE_CONCAT_(kvwire_result_, __LINE__).ok())                         \
    return KVWIRE_CONCAT_(kvwire_result_, __LINE__).status();                 \
  lhs = std::move(KVWIRE_CONCAT_(kvwire_result_, __LINE__)).value()
