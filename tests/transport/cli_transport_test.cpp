// `kvwire serve` + `kvwire send` over loopback, tcp, tcp inside TLS and ucx: the received KV dump
// equals the sent one (fp16 codec: bit-exact).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <random>
#include <string>

#include "kvwire/kv_file.h"
#include "kvwire/session.h"
#include "kvwire/transport.h"
#include "transport/test_pki.h"

namespace kvwire {
namespace {

std::string Dir(const std::string& name) {
  std::string d = testing::TempDir() + "/kvwire_cli_transport_" + name;
  std::string cmd = "rm -rf '" + d + "' && mkdir -p '" + d + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  return d;
}

// A pre-shared key file (`hex` and a newline, mode 0600) at `path`; returns the path.
std::string KeyFile(const std::string& path, const std::string& hex) {
  {
    std::ofstream f(path);
    f << hex << "\n";
  }
  ::chmod(path.c_str(), 0600);
  return path;
}

// Writes a synthetic KV dump (`kvwire synth` with `shape`, its shape flags) at `path`; true on
// success.
bool SynthDump(const std::string& path, const std::string& shape) {
  return std::system((std::string(KVWIRE_CLI) + " synth --out " + path + " " + shape +
                      " >/dev/null")
                         .c_str()) == 0;
}

// Reads the first line of a `kvwire serve` started with popen ("... listening on ADDRESS
// (backend)") into `*line`; returns ADDRESS, or "" when the line is not that.
std::string ListenAddress(FILE* serve, std::string* line) {
  char buf[512];
  *line = std::fgets(buf, sizeof buf, serve) ? buf : "";
  const std::string marker = "listening on ";
  const size_t at = line->find(marker);
  if (at == std::string::npos) return "";
  const std::string rest = line->substr(at + marker.size());
  return rest.substr(0, rest.find(' '));
}

// Output and exit code of a command (stderr included).
std::pair<int, std::string> RunCommand(const std::string& cmd) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  char buf[512];
  while (p && std::fgets(buf, sizeof buf, p)) out += buf;
  const int rc = p ? ::pclose(p) : -1;
  return {rc, out};
}

// A loopback port nobody listens on (bound, then closed).
uint16_t ClosedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

// --reconnect-window-ms bounds the attempts of a first connection that fails on the way too:
// they go on for the window, not longer, and the error says how many were made, on one line.
TEST(CliSend, ANoListenerFailsAfterItsConnectAttempts) {
  const std::string dir = Dir("no_listener");
  const std::string key = KeyFile(dir + "/key", std::string(64, 'a'));
  const std::string in = dir + "/kv.safetensors";
  ASSERT_TRUE(SynthDump(in, "--layers 1 --kv-heads 1 --head-dim 64 --tokens 8"));
  FILE* p = ::popen((std::string(KVWIRE_CLI) + " send --connect 127.0.0.1:" +
                     std::to_string(ClosedPort()) + " --key-file " + key + " --in " + in +
                     " --reconnect-window-ms 400 --reconnect-backoff-ms 10 2>&1")
                        .c_str(),
                    "r");
  ASSERT_NE(p, nullptr);
  const auto t0 = std::chrono::steady_clock::now();
  std::string out;
  char line[1024];
  while (std::fgets(line, sizeof line, p)) out += line;
  const int st = ::pclose(p);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1) << out;
  EXPECT_EQ(out.rfind("kvwire send: i/o error: ", 0), 0u) << out;
  EXPECT_NE(out.find(" connect attempts in the reconnect window of 400 ms failed: "),
            std::string::npos)
      << out;
  // Backoff 10, 20, 40, ... ms: several attempts fit, and the last one is not before the end.
  EXPECT_GE(took, std::chrono::milliseconds(400)) << out;
  int attempts = 0;
  EXPECT_EQ(std::sscanf(out.c_str(), "kvwire send: i/o error: %d connect", &attempts), 1) << out;
  EXPECT_GE(attempts, 4) << out;
  EXPECT_EQ(out.find('\n'), out.size() - 1) << out;
}

// `kvwire serve` serves requests side by side: a request whose sender went quiet (here: it
// pushed one layer of three and stopped) holds its own slot until the stall timeout, not the
// request behind it, which completes meanwhile.
TEST(CliServe, AQuietSenderDoesNotHoldTheNextRequest) {
  const std::string dir = Dir("quiet_sender");
  const std::string key = KeyFile(dir + "/key", std::string(64, 'c'));
  const std::string in = dir + "/kv.safetensors";
  ASSERT_TRUE(SynthDump(in, "--layers 2 --kv-heads 2 --head-dim 64 --tokens 64"));
  FILE* p = ::popen(("timeout 60 " + std::string(KVWIRE_CLI) +
                     " serve --listen 127.0.0.1:0 --backend tcp --key-file " + key +
                     " --discard --count 2 --stall-timeout-ms 30000 2>&1")
                        .c_str(),
                    "r");
  ASSERT_NE(p, nullptr);
  char line[512];
  std::string first;
  const std::string address = ListenAddress(p, &first);
  ASSERT_FALSE(address.empty()) << first;

  // The quiet request: three layers announced, one pushed.
  const KvShape shape{3, 32, 1, 64};
  auto quiet_kv = KvCache::Create(shape, DType::kF16);
  ASSERT_TRUE(quiet_kv.ok());
  SenderOptions so;
  so.backend = "tcp";
  so.transport.address = address;
  std::ifstream kf(key);
  std::string hex;
  kf >> hex;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    so.transport.key.push_back(uint8_t(std::stoi(hex.substr(i, 2), nullptr, 16)));
  auto sender = Sender::Connect(so);
  ASSERT_TRUE(sender.ok()) << sender.status().ToString();
  SendRequestOptions ro;
  ro.request_id = 1;
  ro.levels = {LevelSpec{"fp16"}};
  auto quiet = (*sender)->Open(quiet_kv->view(), ro);
  ASSERT_TRUE(quiet.ok()) << quiet.status().ToString();
  ASSERT_TRUE((*quiet)->PushLayer(0).ok());

  // The next request, from another process, completes well before the 30 s stall timeout.
  const auto t0 = std::chrono::steady_clock::now();
  const std::string send = "timeout 20 " + std::string(KVWIRE_CLI) + " send --connect " +
                           address + " --backend tcp --key-file " + key + " --in " + in +
                           " --request-id 2 >/dev/null";
  EXPECT_EQ(std::system(send.c_str()), 0) << send;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(15));
  EXPECT_EQ((*quiet)->Poll().code(), StatusCode::kInProgress);

  // The quiet one finishes once its sender goes on; serve then exits after its two requests.
  ASSERT_TRUE((*quiet)->PushAll().ok());
  EXPECT_TRUE((*quiet)->Wait(20000).ok());
  std::string rest;
  while (std::fgets(line, sizeof line, p)) rest += line;
  EXPECT_EQ(::pclose(p), 0) << rest;
  // Both served. (Not their order in serve's output: a request's line is printed after its
  // sender was told it completed, so request 1's line may still come first.)
  EXPECT_NE(rest.find("request 2 from"), std::string::npos) << rest;
  EXPECT_NE(rest.find("request 1 from"), std::string::npos) << rest;
  EXPECT_EQ(rest.find("failed"), std::string::npos) << rest;
}

// Two requests with the same id (kvwire send's default), one after the other, to one serve:
// an id is free again once its request is done, even while serve still winds down the first
// request's thread.
TEST(CliServe, ARequestIdCanBeReusedOnceItsRequestIsDone) {
  const std::string dir = Dir("reused_id");
  const std::string key = KeyFile(dir + "/key", std::string(64, 'd'));
  const std::string in = dir + "/kv.safetensors";
  ASSERT_TRUE(SynthDump(in, "--layers 2 --kv-heads 2 --head-dim 64 --tokens 64"));
  FILE* p = ::popen(("timeout 60 " + std::string(KVWIRE_CLI) +
                     " serve --listen 127.0.0.1:0 --backend tcp --key-file " + key +
                     " --discard --count 3 2>&1")
                        .c_str(),
                    "r");
  ASSERT_NE(p, nullptr);
  char line[512];
  std::string first;
  const std::string address = ListenAddress(p, &first);
  ASSERT_FALSE(address.empty()) << first;
  for (int i = 0; i < 3; ++i) {
    const std::string send = "timeout 20 " + std::string(KVWIRE_CLI) + " send --connect " +
                             address + " --backend tcp --key-file " + key + " --in " + in +
                             " >/dev/null";
    EXPECT_EQ(std::system(send.c_str()), 0) << "send " << i;
  }
  std::string rest;
  while (std::fgets(line, sizeof line, p)) rest += line;
  EXPECT_EQ(::pclose(p), 0) << rest;
  size_t served = 0;
  for (size_t at = rest.find("request 1 from"); at != std::string::npos;
       at = rest.find("request 1 from", at + 1))
    ++served;
  EXPECT_EQ(served, 3u) << rest;
}

// --preallocate: the cache exists before the first request and that request lands in it
// whole; a shape that cannot be parsed or is out of bounds is refused with the reason.
TEST(CliServe, APreallocatedCacheReceivesTheRequestsOfItsShape) {
  const std::string dir = Dir("preallocate");
  const std::string key = KeyFile(dir + "/key", std::string(64, 'e'));
  const std::string in = dir + "/kv.safetensors";
  ASSERT_TRUE(SynthDump(in, "--layers 2 --kv-heads 2 --head-dim 64 --tokens 96"));
  FILE* p = ::popen(("timeout 60 " + std::string(KVWIRE_CLI) +
                     " serve --listen 127.0.0.1:0 --backend tcp --key-file " + key +
                     " --preallocate 2x96x2x64:f16 --out-dir " + dir + "/out --count 2 2>&1")
                        .c_str(),
                    "r");
  ASSERT_NE(p, nullptr);
  char buf[512];
  const std::string first = std::fgets(buf, sizeof buf, p) ? buf : "";  // the preallocation
  std::string line;
  EXPECT_NE(first.find("preallocated a f16 KV cache of 98,304 bytes"), std::string::npos) << first;
  const std::string address = ListenAddress(p, &line);
  ASSERT_FALSE(address.empty()) << first << line;
  for (int id : {1, 2}) {
    const std::string send = "timeout 20 " + std::string(KVWIRE_CLI) + " send --connect " +
                             address + " --backend tcp --key-file " + key + " --in " + in +
                             " --codec fp16 --request-id " + std::to_string(id) + " >/dev/null";
    EXPECT_EQ(std::system(send.c_str()), 0) << "request " << id;
  }
  std::string rest;
  while (std::fgets(buf, sizeof buf, p)) rest += buf;
  EXPECT_EQ(::pclose(p), 0) << rest;
  auto want = LoadKvDump(in);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  for (int id : {1, 2}) {
    auto got = LoadKvDump(dir + "/out/request-" + std::to_string(id) + ".safetensors");
    ASSERT_TRUE(got.ok()) << got.status().ToString() << "\n" << rest;
    ASSERT_EQ(got->shape(), want->shape());
    for (uint32_t l = 0; l < want->shape().layers; ++l)
      for (KvKind k : {KvKind::kKey, KvKind::kValue}) {
        auto a = want->tensor(l, k), b = got->tensor(l, k);
        EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0)
            << "request " << id << " layer " << l;
      }
  }

  for (const char* spec : {"2x96x2", "2x96x2x64:f8", "0x96x2x64", "2x96x2x64x1", "2xx2x64"}) {
    auto [rc, out] =
        RunCommand(std::string(KVWIRE_CLI) +
                   " serve --listen 127.0.0.1:0 --insecure --count 1 --preallocate " + spec);
    EXPECT_NE(rc, 0) << spec << ": " << out;
    EXPECT_NE(out.find("--preallocate '" + std::string(spec) + "'"), std::string::npos)
        << spec << ": " << out;
  }
}

// A backend name, or "tcp_tls": tcp with --tls (certificates of test_pki.h).
class CliTransportTest : public testing::TestWithParam<std::string> {
 protected:
  bool Tls() const { return GetParam() == "tcp_tls"; }
  std::string Backend() const { return Tls() ? "tcp" : GetParam(); }
  // " --backend B" and, with TLS, the flags of each side.
  std::string ServeFlags() const {
    std::string f = " --backend " + Backend();
    if (Tls()) {
      const auto& pki = testing_pki::Get();
      f += " --tls --tls-cert " + pki.server_cert + " --tls-key " + pki.server_key;
    }
    return f;
  }
  std::string SendFlags() const {
    std::string f = " --backend " + Backend();
    if (Tls()) f += " --tls --tls-ca " + testing_pki::Get().ca_cert;
    return f;
  }
};

TEST_P(CliTransportTest, ServeAndSendRoundTrip) {
  const std::string dir = Dir(GetParam());
  const std::string key =
      KeyFile(dir + "/key", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
  const KvShape shape{3, 70, 2, 16};
  auto cache = KvCache::Create(shape, DType::kF16);
  ASSERT_TRUE(cache.ok());
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  std::vector<float> buf(shape.tensor_elements());
  for (uint32_t l = 0; l < shape.layers; ++l)
    for (KvKind k : {KvKind::kKey, KvKind::kValue}) {
      for (float& x : buf) x = dist(rng);
      ASSERT_TRUE(cache->view().WriteF32(l, k, 0, shape.tokens, buf.data()).ok());
    }
  cache->metadata().rope_theta = 10000;
  const std::string in = dir + "/in.safetensors";
  ASSERT_TRUE(SaveKvDump(in, *cache).ok());

  const std::string serve = "timeout 60 " + std::string(KVWIRE_CLI) +
                            " serve --listen 127.0.0.1:0" + ServeFlags() + " --key-file " + key +
                            " --out-dir " + dir + "/out --count 1 2>&1";
  FILE* p = ::popen(serve.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char line[512];
  std::string first;
  const std::string address = ListenAddress(p, &first);
  ASSERT_FALSE(address.empty()) << first;

  const std::string send = std::string(KVWIRE_CLI) + " send --connect " + address +
                           SendFlags() + " --key-file " + key + " --in " + in +
                           " --codec fp16 --chunk-tokens 32 --request-id 3";
  EXPECT_EQ(std::system(send.c_str()), 0) << send;
  std::string rest;
  while (std::fgets(line, sizeof line, p)) rest += line;
  EXPECT_EQ(::pclose(p), 0) << rest;
  auto got = LoadKvDump(dir + "/out/request-3.safetensors");
  ASSERT_TRUE(got.ok()) << got.status().ToString() << "\n" << rest;
  ASSERT_EQ(got->shape(), shape);
  for (uint32_t l = 0; l < shape.layers; ++l)
    for (KvKind k : {KvKind::kKey, KvKind::kValue}) {
      auto a = cache->tensor(l, k), b = got->tensor(l, k);
      ASSERT_EQ(a.size(), b.size());
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0) << "layer " << l;
    }

  // A wrong key is refused with a one-line reason and a non-zero exit.
  const std::string bad_key = KeyFile(dir + "/bad", std::string(64, 'f'));
  FILE* p2 =
      ::popen(("timeout 60 " + std::string(KVWIRE_CLI) + " serve --listen 127.0.0.1:0" +
               ServeFlags() + " --key-file " + key + " --out-dir " + dir + "/out2 --count 1 2>&1")
                  .c_str(),
              "r");
  ASSERT_NE(p2, nullptr);
  std::string l2;
  const std::string addr2 = ListenAddress(p2, &l2);
  ASSERT_FALSE(addr2.empty()) << l2;
  const std::string bad = std::string(KVWIRE_CLI) + " send --connect " + addr2 + SendFlags() +
                          " --key-file " + bad_key + " --in " + in + " 2>/dev/null";
  EXPECT_NE(std::system(bad.c_str()), 0);
  // Stop the server: a good request completes it.
  EXPECT_EQ(std::system((std::string(KVWIRE_CLI) + " send --connect " + addr2 + SendFlags() +
                         " --key-file " + key + " --in " + in + " >/dev/null")
                            .c_str()),
            0);
  while (std::fgets(line, sizeof line, p2)) {
  }
  ::pclose(p2);
}

std::string Name(const testing::TestParamInfo<std::string>& info) { return info.param; }
std::vector<std::string> NetworkBackends() {
  std::vector<std::string> out;
  for (auto& b : AvailableTransports())
    if (b != "inproc") out.push_back(b);
  out.push_back("tcp_tls");
  return out;
}
INSTANTIATE_TEST_SUITE_P(Backends, CliTransportTest, testing::ValuesIn(NetworkBackends()), Name);

TEST(CliTls, FlagsThatCannotWorkAreRefusedWithTheReason) {
  const std::string cli = KVWIRE_CLI;
  const auto& pki = testing_pki::Get();
  auto [rc, out] = RunCommand(cli + " serve --listen 127.0.0.1:0 --insecure --count 1 --tls-cert " +
                       pki.server_cert);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("need --tls"), std::string::npos) << out;
  std::tie(rc, out) = RunCommand(cli + " serve --listen 127.0.0.1:0 --insecure --count 1 --tls");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("certificate and its key"), std::string::npos) << out;
  std::tie(rc, out) = RunCommand(cli + " send --connect 127.0.0.1:1 --insecure --in x --backend ucx --tls");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--tls needs --backend tcp"), std::string::npos) << out;
}

}  // namespace
}  // namespace kvwire
