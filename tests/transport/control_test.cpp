#include "transport/control.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>

namespace kvwire::transport {
namespace {

control::Control ValidBegin() {
  control::Control c;
  auto* r = c.mutable_request_begin();
  r->set_request_id(7);
  r->mutable_shape()->set_layers(2);
  r->mutable_shape()->set_tokens(16);
  r->mutable_shape()->set_kv_heads(2);
  r->mutable_shape()->set_head_dim(8);
  r->set_dtype(1);
  auto* l = r->add_levels();
  l->set_codec("fp16");
  l->set_bits_per_element(16);
  return c;
}

Result<control::Control> RoundTrip(const control::Control& c) {
  std::string bytes = c.SerializeAsString();
  return ParseControl({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
}

TEST(Control, AcceptsAValidRequestBegin) {
  auto r = RoundTrip(ValidBegin());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(ControlName(*r), "request_begin");
}

TEST(Control, RefusesInvalidFields) {
  std::vector<std::function<void(control::Control&)>> breakers = {
      [](auto& c) { c.mutable_request_begin()->set_request_id(0); },
      [](auto& c) { c.mutable_request_begin()->mutable_shape()->set_layers(0); },
      [](auto& c) { c.mutable_request_begin()->mutable_shape()->set_head_dim(1u << 20); },
      [](auto& c) { c.mutable_request_begin()->set_dtype(9); },
      [](auto& c) { c.mutable_request_begin()->clear_levels(); },
      [](auto& c) { c.mutable_request_begin()->set_min_bits(1e9); },
      [](auto& c) { c.mutable_request_begin()->set_max_kl(std::nan("")); },
      [](auto& c) { c.mutable_request_begin()->mutable_levels(0)->set_bits_per_element(-1); },
      [](auto& c) {
        c.mutable_request_begin()->mutable_levels(0)->set_codec(std::string(300, 'x'));
      },
      [](auto& c) {
        c.mutable_request_begin()->set_chunk_tokens(1);
        c.mutable_request_begin()->mutable_shape()->set_tokens(1u << 24);
        c.mutable_request_begin()->mutable_shape()->set_layers(64);
      },
      [](auto& c) { c.mutable_hello()->set_client_nonce("short"); },
      [](auto& c) { c.mutable_ack()->set_request_id(1); },
      [](auto& c) {
        c.mutable_ack()->set_request_id(1);
        c.mutable_ack()->add_seqs(1u << 25);
      },
      [](auto& c) { c.Clear(); },
      [](auto& c) { c.mutable_request_begin()->mutable_levels(0)->set_codec("fp16\n"); },
      [](auto& c) { c.mutable_error()->set_message(std::string("forged\x1b[2J", 11)); },
      [](auto& c) { c.mutable_request_begin()->set_user_data(std::string((64 << 10) + 1, 'u')); },
  };
  for (size_t i = 0; i < breakers.size(); ++i) {
    control::Control c = ValidBegin();
    breakers[i](c);
    auto r = RoundTrip(c);
    EXPECT_FALSE(r.ok()) << "breaker " << i;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kCorrupt) << r.status().ToString();
    }
  }
}

// ProfileData: pieces within the announced size, an error without data, bounded messages.
TEST(Control, ProfileDataBounds) {
  auto piece = [](uint64_t offset, size_t bytes, uint64_t total) {
    control::Control c;
    auto* d = c.mutable_profile_data();
    d->set_profile_id("sha256:00");
    d->set_offset(offset);
    d->set_data(std::string(bytes, 'p'));
    d->set_total_bytes(total);
    return c;
  };
  EXPECT_TRUE(RoundTrip(piece(0, 512 << 10, 1 << 20)).ok());
  EXPECT_TRUE(RoundTrip(piece(512 << 10, 512 << 10, 1 << 20)).ok());
  EXPECT_FALSE(RoundTrip(piece(0, (512 << 10) + 1, 1 << 20)).ok());  // piece too large
  EXPECT_FALSE(RoundTrip(piece(1 << 20, 1, 1 << 20)).ok());           // beyond the size
  EXPECT_FALSE(RoundTrip(piece(0, 0, (1ull << 30) + 1)).ok());        // profile too large
  control::Control refused = piece(0, 0, 0);
  refused.mutable_profile_data()->set_status_code(static_cast<uint32_t>(StatusCode::kNotFound));
  refused.mutable_profile_data()->set_message("the sender holds no profile");
  EXPECT_TRUE(RoundTrip(refused).ok());
  control::Control both = piece(0, 4, 4);
  both.mutable_profile_data()->set_status_code(static_cast<uint32_t>(StatusCode::kNotFound));
  EXPECT_FALSE(RoundTrip(both).ok());  // an error carries no data
  refused.mutable_profile_data()->set_message(std::string(2000, 'm'));
  EXPECT_FALSE(RoundTrip(refused).ok());
}

TEST(Control, RefusesGarbageBytes) {
  std::vector<uint8_t> junk = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
  EXPECT_EQ(ParseControl(junk).status().code(), StatusCode::kCorrupt);
}

TEST(Control, ChunkDescriptorMustMatchItsPayload) {
  control::ChunkDescriptor d;
  d.set_request_id(3);
  d.set_tokens(4);
  d.set_payload_bytes(10);
  auto m = MakeDataMessage(d, std::vector<uint8_t>(10, 1));
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(ParseChunkDescriptor(*m).ok());
  m->payload.pop_back();
  EXPECT_EQ(ParseChunkDescriptor(*m).status().code(), StatusCode::kCorrupt);
}

TEST(Control, MakeControlMessageRefusesInvalid) {
  control::Control c = ValidBegin();
  c.mutable_request_begin()->set_request_id(0);
  EXPECT_FALSE(MakeControlMessage(c).ok());
}

TEST(Control, ErrorRoundTrip) {
  auto c = MakeError(5, Status(StatusCode::kTimeout, "stalled"));
  auto r = RoundTrip(c);
  ASSERT_TRUE(r.ok());
  Status s = ErrorToStatus(r->error());
  EXPECT_EQ(s.code(), StatusCode::kTimeout);
  EXPECT_NE(s.message().find("stalled"), std::string::npos);
}

}  // namespace
}  // namespace kvwire::transport
