// kvwire/cuda_codec.h without kernels: device discovery, spec handling and what a build without
// a GPU says. The tests of the device path skip, with the reason, where there is no CUDA device;
// the tests of the no-device path skip where there is one. Spec checks run everywhere.
#include <gtest/gtest.h>

#include "kvwire/codec.h"
#include "kvwire/cuda_codec.h"

namespace kvwire {
namespace {

TEST(CudaCodecApiTest, AvailabilityComesWithAReason) {
  std::string reason;
  if (!cuda::IsCudaAvailable(&reason)) GTEST_SKIP() << "SKIPPED: no CUDA device: " << reason;
  auto info = cuda::GetDeviceInfo(0);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_FALSE(info->name.empty());
}

TEST(CudaCodecApiTest, WithoutADeviceTheReasonIsGivenAndDeviceCallsAreUnsupported) {
  std::string reason;
  if (cuda::IsCudaAvailable(&reason))
    GTEST_SKIP() << "SKIPPED: a CUDA device is present, so the no-device path cannot run here";
  EXPECT_FALSE(reason.empty());
  EXPECT_EQ(cuda::GetDeviceInfo(0).status().code(), StatusCode::kUnsupported);
  for (const std::string& spec : cuda::CudaCodecSpecs()) {
    SCOPED_TRACE(spec);
    auto gpu = cuda::CudaCodec::Create(spec);
    EXPECT_EQ(gpu.status().code(), StatusCode::kUnsupported);
    EXPECT_NE(gpu.status().message().find("no CUDA device"), std::string::npos)
        << gpu.status().ToString();
  }
}

TEST(CudaCodecApiTest, SpecsAreCheckedBeforeTheDevice) {
  EXPECT_EQ(cuda::CudaCodec::Create("no-such-codec").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(cuda::CudaCodec::Create("kivi9").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cuda::CudaCodec::Create("fraqtl@2").status().code(), StatusCode::kUnsupported);
  EXPECT_EQ(cuda::CudaCodec::Create("rank-8").status().code(), StatusCode::kUnsupported);
}

TEST(CudaCodecApiTest, EveryCudaSpecIsCreatableWithTheCpuCanonicalSpec) {
  std::string reason;
  if (!cuda::IsCudaAvailable(&reason)) GTEST_SKIP() << "SKIPPED: no CUDA device: " << reason;
  ASSERT_FALSE(cuda::CudaCodecSpecs().empty());
  for (const std::string& spec : cuda::CudaCodecSpecs()) {
    SCOPED_TRACE(spec);
    auto gpu = cuda::CudaCodec::Create(spec);
    ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
    auto cpu = CreateCodec(spec);
    ASSERT_TRUE(cpu.ok());
    EXPECT_EQ((*gpu)->Spec(), (*cpu)->Spec());
    EXPECT_EQ((*gpu)->Id(), (*cpu)->Id());
    EXPECT_EQ((*gpu)->TokenAlignment(), (*cpu)->TokenAlignment());
  }
}

}  // namespace
}  // namespace kvwire
