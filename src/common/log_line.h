// One log line, one write. std::cerr is unbuffered, so `cerr << a << b << "\n"` is several
// write(2) calls; when threads log at once, or stdout and stderr share one file (a service's log),
// another thread's line can land in the middle of ours and both become unreadable to anything
// that parses them. Building the line first and handing it to stdio whole keeps lines intact.
#pragma once

#include <cstdio>
#include <string>

namespace kvwire {

/// Writes `line` and a newline to `out` (stdout or stderr) with one fwrite, then flushes.
inline void WriteLogLine(std::FILE* out, std::string line) {
  line.push_back('\n');
  std::fwrite(line.data(), 1, line.size(), out);
  std::fflush(out);
}

}  // namespace kvwire
