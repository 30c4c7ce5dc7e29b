// Read-only memory-mapped files and the SHA-256 fingerprint of model files.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "kvwire/status.h"

namespace kvwire::model {

/// A whole file mapped read-only (RAII: unmapped on destruction). Move-only.
class MappedFile {
 public:
  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  static Result<MappedFile> Open(const std::string& path);

  std::span<const uint8_t> bytes() const { return {data_, size_}; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

/// "sha256:<64 hex digits>" of `bytes` (OpenSSL).
std::string Sha256Fingerprint(std::span<const uint8_t> bytes);

}  // namespace kvwire::model
