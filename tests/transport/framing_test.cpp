#include "transport/framing.h"

#include <gtest/gtest.h>

namespace kvwire::transport {
namespace {

Message MakeMsg(MessageKind kind, size_t meta, size_t payload) {
  Message m;
  m.kind = kind;
  m.meta.assign(meta, 0xab);
  m.payload.assign(payload, 0xcd);
  return m;
}

TEST(Framing, RoundTripsSeveralFramesFedByteByByte) {
  std::vector<uint8_t> wire;
  ASSERT_TRUE(AppendFrame(MakeMsg(MessageKind::kControl, 10, 0), &wire).ok());
  ASSERT_TRUE(AppendFrame(MakeMsg(MessageKind::kData, 7, 1000), &wire).ok());
  FrameDecoder dec;
  std::vector<Message> got;
  for (uint8_t b : wire) {
    dec.Feed(std::span<const uint8_t>(&b, 1));
    auto m = dec.Next();
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    if (m->has_value()) got.push_back(std::move(**m));
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].kind, MessageKind::kControl);
  EXPECT_EQ(got[0].meta.size(), 10u);
  EXPECT_EQ(got[1].kind, MessageKind::kData);
  EXPECT_EQ(got[1].payload.size(), 1000u);
  EXPECT_EQ(got[1].payload[999], 0xcd);
  EXPECT_EQ(dec.buffered(), 0u);
}

TEST(Framing, RefusesOversizedAndMalformedPrefixes) {
  auto prefix = [](uint32_t body, uint8_t kind, uint32_t meta) {
    std::array<uint8_t, kFramePrefixBytes> p{};
    for (int i = 0; i < 4; ++i) p[i] = uint8_t(body >> (8 * i));
    p[4] = kind;
    for (int i = 0; i < 4; ++i) p[5 + i] = uint8_t(meta >> (8 * i));
    return p;
  };
  EXPECT_EQ(ParseFramePrefix(prefix(5 + 10, 3, 10)).status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(ParseFramePrefix(prefix(4, 1, 0)).status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(ParseFramePrefix(prefix(5 + 10, 1, 11)).status().code(), StatusCode::kCorrupt);
  // Control frames carry no payload and stay under 1 MiB.
  EXPECT_EQ(ParseFramePrefix(prefix(5 + 20, 1, 10)).status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(ParseFramePrefix(prefix(5 + (2u << 20), 1, 2u << 20)).status().code(),
            StatusCode::kResourceExhausted);
  // Data frames stay under 64 MiB and have a descriptor.
  EXPECT_EQ(ParseFramePrefix(prefix(0xffffffffu, 2, 100)).status().code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(ParseFramePrefix(prefix(5 + 100, 2, 0)).status().code(), StatusCode::kCorrupt);
  EXPECT_TRUE(ParseFramePrefix(prefix(5 + 100, 2, 10)).ok());
}

TEST(Framing, DecoderErrorIsStickyAndNamesTheOffset) {
  std::vector<uint8_t> wire;
  ASSERT_TRUE(AppendFrame(MakeMsg(MessageKind::kControl, 3, 0), &wire).ok());
  wire.insert(wire.end(), {0xff, 0xff, 0xff, 0xff, 9, 0, 0, 0, 0});
  FrameDecoder dec;
  dec.Feed(wire);
  ASSERT_TRUE(dec.Next().ok());
  auto bad = dec.Next();
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("offset 12"), std::string::npos) << bad.status().ToString();
  EXPECT_FALSE(dec.Next().ok());
}

TEST(Framing, SendSideRefusesWhatTheReceiverWould) {
  EXPECT_FALSE(ValidateMessageBounds(MakeMsg(MessageKind::kControl, 0, 0)).ok());
  EXPECT_FALSE(ValidateMessageBounds(MakeMsg(MessageKind::kControl, 4, 1)).ok());
  EXPECT_FALSE(ValidateMessageBounds(MakeMsg(MessageKind::kData, 100, kMaxDataMessageBytes)).ok());
  EXPECT_TRUE(ValidateMessageBounds(MakeMsg(MessageKind::kData, 100, 1000)).ok());
}

}  // namespace
}  // namespace kvwire::transport
