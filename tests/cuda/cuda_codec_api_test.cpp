// kvwire/cuda_codec.h without kernels: device discovery, spec handling and what a build without
// a GPU says. Runs everywhere (the device-only expectations branch on IsCudaAvailable).
#include <gtest/gtest.h>

#include "kvwire/codec.h"
#include "kvwire/cuda_codec.h"

namespace kvwire {
namespace {

TEST(CudaCodecApiTest, AvailabilityComesWithAReason) {
  std::string reason;
  const bool available = cuda::IsCudaAvailable(&reason);
  if (!available) {
    EXPECT_FALSE(reason.empty());
    EXPECT_EQ(cuda::GetDeviceInfo(0).status().code(), StatusCode::kUnsupported);
    std::cout << "[   INFO   ] no CUDA device here (" << reason
              << "); the GPU tests of this binary are skipped\n";
  } else {
    auto info = cuda::GetDeviceInfo(0);
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    EXPECT_FALSE(info->name.empty());
  }
}

TEST(CudaCodecApiTest, SpecsAreCheckedBeforeTheDevice) {
  EXPECT_EQ(cuda::CudaCodec::Create("no-such-codec").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(cuda::CudaCodec::Create("kivi9").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cuda::CudaCodec::Create("fraqtl@2").status().code(), StatusCode::kUnsupported);
  EXPECT_EQ(cuda::CudaCodec::Create("rank-8").status().code(), StatusCode::kUnsupported);
}

TEST(CudaCodecApiTest, EveryCudaSpecIsCreatableWithTheCpuCanonicalSpec) {
  const bool available = cuda::IsCudaAvailable();
  for (const std::string& spec : cuda::CudaCodecSpecs()) {
    SCOPED_TRACE(spec);
    auto gpu = cuda::CudaCodec::Create(spec);
    if (!available) {
      EXPECT_EQ(gpu.status().code(), StatusCode::kUnsupported);
      EXPECT_NE(gpu.status().message().find("no CUDA device"), std::string::npos);
      continue;
    }
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
