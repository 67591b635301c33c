// SHA-256 through OpenSSL's EVP interface (libcrypto, Debian's libssl-dev).
#include "util/sha256.h"

#include <openssl/evp.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <vector>

#include "util/error.h"

namespace kvd {

namespace {

using MdCtx = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;

MdCtx new_ctx() {
  MdCtx ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    throw Error("sha256: OpenSSL init failed");
  return ctx;
}

std::string finish(EVP_MD_CTX* ctx) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx, md, &len) != 1 || len != 32) throw Error("sha256: OpenSSL digest failed");
  char out[65];
  for (unsigned int i = 0; i < len; ++i) std::snprintf(out + 2 * i, 3, "%02x", md[i]);
  return std::string(out, 64);
}

}  // namespace

std::string sha256_hex(const void* data, size_t n) {
  MdCtx ctx = new_ctx();
  if (EVP_DigestUpdate(ctx.get(), data, n) != 1) throw Error("sha256: OpenSSL update failed");
  return finish(ctx.get());
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file");
  MdCtx ctx = new_ctx();
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount())) != 1)
      throw Error("sha256: OpenSSL update failed");
  }
  if (in.bad()) throw Error(path + ": read error");
  return finish(ctx.get());
}

}  // namespace kvd
