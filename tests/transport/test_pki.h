// Certificates for the TLS tests, made with OpenSSL at run time (nothing is committed): a CA, a
// server and a client certificate it signed (both for IP 127.0.0.1 and DNS "kvwire-test"), and
// an unrelated second CA with a server certificate of its own. PEM files in a temporary folder,
// created once per process and removed at exit.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

namespace kvwire::testing_pki {

struct Pki {
  std::string dir;
  std::string ca_cert;
  std::string server_cert, server_key;
  std::string client_cert, client_key;
  std::string other_ca_cert;                   // a CA that signed none of the above
  std::string other_server_cert, other_server_key;  // signed by other_ca, for 127.0.0.1 too

  ~Pki() {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
};

namespace detail {

inline void Check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("test PKI: ") + what + " failed");
}

inline void AddExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  Check(ext != nullptr, "X509V3_EXT_conf_nid");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A certificate for `key` named `cn`, signed by issuer/issuer_key (self-signed when null).
inline X509* MakeCert(EVP_PKEY* key, const char* cn, long serial, X509* issuer,
                      EVP_PKEY* issuer_key, bool ca) {
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 30L * 24 * 3600);
  X509_set_pubkey(x, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn), -1, -1, 0);
  X509* signer = issuer ? issuer : x;
  X509_set_issuer_name(x, X509_get_subject_name(signer));
  if (ca) {
    AddExt(x, signer, NID_basic_constraints, "critical,CA:TRUE");
    AddExt(x, signer, NID_key_usage, "critical,keyCertSign,cRLSign");
    AddExt(x, signer, NID_subject_key_identifier, "hash");
  } else {
    AddExt(x, signer, NID_basic_constraints, "CA:FALSE");
    AddExt(x, signer, NID_subject_alt_name, "IP:127.0.0.1,DNS:kvwire-test");
    AddExt(x, signer, NID_ext_key_usage, "serverAuth,clientAuth");
  }
  Check(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
  return x;
}

inline void WriteCert(const std::string& path, X509* x) {
  FILE* f = std::fopen(path.c_str(), "w");
  Check(f != nullptr && PEM_write_X509(f, x) == 1, "writing a certificate");
  std::fclose(f);
}

inline void WriteKey(const std::string& path, EVP_PKEY* k) {
  FILE* f = std::fopen(path.c_str(), "w");
  Check(f != nullptr && PEM_write_PrivateKey(f, k, nullptr, nullptr, 0, nullptr, nullptr) == 1,
        "writing a key");
  std::fclose(f);
}

inline Pki* Make() {
  auto* p = new Pki();
  std::string tmpl = (std::filesystem::temp_directory_path() / "kvwire-pki-XXXXXX").string();
  Check(::mkdtemp(tmpl.data()) != nullptr, "mkdtemp");
  p->dir = tmpl;
  auto path = [&](const char* name) { return p->dir + "/" + name; };
  EVP_PKEY* ca_key = EVP_EC_gen("P-256");
  EVP_PKEY* server_key = EVP_EC_gen("P-256");
  EVP_PKEY* client_key = EVP_EC_gen("P-256");
  EVP_PKEY* other_key = EVP_EC_gen("P-256");
  EVP_PKEY* other_server_key = EVP_EC_gen("P-256");
  Check(ca_key && server_key && client_key && other_key && other_server_key, "EVP_EC_gen");
  X509* ca = MakeCert(ca_key, "kvwire test CA", 1, nullptr, nullptr, true);
  X509* server = MakeCert(server_key, "kvwire-test", 2, ca, ca_key, false);
  X509* client = MakeCert(client_key, "kvwire test client", 3, ca, ca_key, false);
  X509* other = MakeCert(other_key, "another CA", 4, nullptr, nullptr, true);
  X509* other_server = MakeCert(other_server_key, "kvwire-test", 5, other, other_key, false);
  p->ca_cert = path("ca.pem");
  p->server_cert = path("server.pem");
  p->server_key = path("server.key");
  p->client_cert = path("client.pem");
  p->client_key = path("client.key");
  p->other_ca_cert = path("other-ca.pem");
  p->other_server_cert = path("other-server.pem");
  p->other_server_key = path("other-server.key");
  WriteCert(p->ca_cert, ca);
  WriteCert(p->server_cert, server);
  WriteKey(p->server_key, server_key);
  WriteCert(p->client_cert, client);
  WriteKey(p->client_key, client_key);
  WriteCert(p->other_ca_cert, other);
  WriteCert(p->other_server_cert, other_server);
  WriteKey(p->other_server_key, other_server_key);
  for (X509* x : {ca, server, client, other, other_server}) X509_free(x);
  for (EVP_PKEY* k : {ca_key, server_key, client_key, other_key, other_server_key})
    EVP_PKEY_free(k);
  return p;
}

}  // namespace detail

/// The process's test PKI (made on first use).
inline const Pki& Get() {
  static const std::unique_ptr<Pki> pki(detail::Make());
  return *pki;
}

}  // namespace kvwire::testing_pki
