#include "transport/auth.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>

namespace kvwire::transport {
namespace {

TEST(Auth, HmacSha256MatchesRfc4231Case2) {
  const std::string key = "Jefe";
  const std::string data = "what do ya want for nothing?";
  auto mac = HmacSha256({reinterpret_cast<const uint8_t*>(key.data()), key.size()}, data, {}, {});
  std::string hex;
  char buf[3];
  for (uint8_t b : mac) {
    std::snprintf(buf, sizeof buf, "%02x", b);
    hex += buf;
  }
  EXPECT_EQ(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(Auth, ConstantTimeEqual) {
  std::vector<uint8_t> a = {1, 2, 3}, b = {1, 2, 3}, c = {1, 2, 4}, d = {1, 2};
  EXPECT_TRUE(ConstantTimeEqual(a, b));
  EXPECT_FALSE(ConstantTimeEqual(a, c));
  EXPECT_FALSE(ConstantTimeEqual(a, d));
  EXPECT_FALSE(ConstantTimeEqual({}, {}));
}

TEST(Auth, ParseKeyHexOrRaw) {
  std::string hex(64, 'a');
  hex += "\n";
  auto k = ParseKey({reinterpret_cast<const uint8_t*>(hex.data()), hex.size()});
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->size(), 32u);
  EXPECT_EQ((*k)[0], 0xaa);
  std::string raw = "0123456789abcdefXYZ";  // not all hex: raw bytes
  k = ParseKey({reinterpret_cast<const uint8_t*>(raw.data()), raw.size()});
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->size(), raw.size());
  std::string shortkey = "tooshort";
  EXPECT_FALSE(ParseKey({reinterpret_cast<const uint8_t*>(shortkey.data()), shortkey.size()}).ok());
}

TEST(Auth, LoadKeyFile) {
  std::string path = testing::TempDir() + "/kvwire_auth_test.key";
  {
    std::ofstream f(path);
    f << std::string(64, 'b') << "\n";
  }
  ::chmod(path.c_str(), 0600);
  auto k = LoadKeyFile(path);
  ASSERT_TRUE(k.ok()) << k.status().ToString();
  EXPECT_EQ(k->size(), 32u);
  EXPECT_EQ(LoadKeyFile(path + ".missing").status().code(), StatusCode::kNotFound);
  std::remove(path.c_str());
}

TEST(Auth, KeyOptions) {
  TransportOptions o;
  EXPECT_FALSE(ValidateKeyOptions(o).ok());
  o.allow_unauthenticated = true;
  EXPECT_TRUE(ValidateKeyOptions(o).ok());
  o.key = {1, 2, 3};
  EXPECT_FALSE(ValidateKeyOptions(o).ok());
}

}  // namespace
}  // namespace kvwire::transport
