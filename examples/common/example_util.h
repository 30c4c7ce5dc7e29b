// Helpers shared by the examples (examples/*): error lines, the shared monotonic clock, files,
// key files, loopback addresses, a watchdog. Not part of the kvwire API.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvwire/status.h"

namespace kvwire::examples {

/// The program name errors start with ("prefill_decode_handoff"). Set once in main().
void SetProgramName(std::string name);
const std::string& ProgramName();
/// The role this process plays ("decode"), named after the program in its errors.
void SetRoleName(std::string role);

/// Prints "<program>: [<role>: ]<reason>" on stderr as one line (newlines flattened); returns 1.
int Fail(std::string_view reason);
int FailStatus(const Status& status, std::string_view context = {});

/// Nanoseconds on CLOCK_MONOTONIC. One clock for every process of the machine, so timestamps
/// taken by two processes on the same host can be subtracted (the examples run on loopback).
int64_t NowNs();
/// Milliseconds between two NowNs() values.
inline double Ms(int64_t from_ns, int64_t to_ns) { return double(to_ns - from_ns) / 1e6; }

/// printf into a std::string.
std::string Format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
/// 1234567 -> "1,234,567".
std::string Thousands(uint64_t n);

/// Whole file as bytes / text; kNotFound or kIoError with the path.
Result<std::string> ReadFile(const std::string& path);
/// Writes `path` atomically (temporary file + rename), mode 0600.
Status WriteFileAtomic(const std::string& path, std::string_view bytes);

/// A fresh private directory under $TMPDIR (or /tmp), named `prefix`, a dash and 6 random
/// characters, e.g. "kvwire-example-Xa81Qz".
Result<std::string> MakeTempDir(std::string_view prefix);
/// Removes a directory made by MakeTempDir and its files (not recursive into subfolders).
void RemoveTempDir(const std::string& dir);

/// Writes a fresh random pre-shared key (64 hex digits from /dev/urandom) to `path`, mode 0600.
Status WriteRandomKeyFile(const std::string& path);
/// Loads a pre-shared key file (kvwire::LoadKeyFile); the error names the flag.
Result<std::vector<uint8_t>> LoadKey(const std::string& path);

/// Ok when `address` ("HOST:PORT") names the loopback interface (127.0.0.1, localhost, ::1):
/// the examples compare timestamps of both ends on one clock, so they run on one host only.
Status CheckLoopback(std::string_view address, std::string_view flag);

/// Kills this process with a one-line error if it is still running after `timeout_ms`: a last
/// line of defence against hangs, on top of the timeout of every blocking call.
void StartWatchdog(int timeout_ms);

/// Index of the largest element (the first one on ties, as Model::Generate picks it).
int32_t ArgMax(const float* row, uint32_t n);

}  // namespace kvwire::examples
