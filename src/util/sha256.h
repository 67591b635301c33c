// SHA-256 digests (the sidecars record the model's and the data's), computed by OpenSSL's libcrypto.
#pragma once
#include <cstddef>
#include <string>

namespace kvd {

// SHA-256 of bytes / of a file, as 64 lowercase hex digits. sha256_file throws kvd::Error naming the
// file when it cannot be opened or read.
std::string sha256_hex(const void* data, size_t n);
std::string sha256_file(const std::string& path);

}  // namespace kvd
