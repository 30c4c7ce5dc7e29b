// kvwire inspect: validates a stream and shows what it holds and where its bytes go.
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_util.h"
#include "command.h"
#include "kvwire/kv_file.h"
#include "kvwire/stream.h"

namespace kvwire::cli {
namespace {

using Json = nlohmann::ordered_json;

struct InspectArgs {
  std::string in;
  bool json = false;
  bool chunks = false;
};

struct KindTotals {
  uint64_t payload_bytes = 0;
  uint64_t elements = 0;
  uint32_t chunks = 0;
  double bits() const { return elements ? double(payload_bytes) * 8.0 / double(elements) : 0.0; }
};

struct Walk {
  std::vector<ChunkRef> chunks;
  KindTotals k, v;
};

// Second pass over the (already validated) stream for the per-chunk and per-K|V numbers. No
// codec is created, so this works without the profile and for codecs this build lacks.
Result<Walk> WalkChunks(std::span<const uint8_t> bytes) {
  KVWIRE_ASSIGN_OR_RETURN(auto reader, StreamReader::OpenForInspection(bytes));
  const KvShape& s = reader->info().shape;
  Walk w;
  for (;;) {
    Result<ChunkRef> c = reader->Next();
    if (!c.ok()) {
      if (c.status().code() == StatusCode::kNotFound) break;
      return c.status();
    }
    KindTotals& t = c->header.kind == KvKind::kKey ? w.k : w.v;
    t.payload_bytes += c->header.payload_bytes;
    t.elements += uint64_t{c->header.tokens} * s.kv_heads * s.head_dim;
    ++t.chunks;
    w.chunks.push_back(*c);
  }
  return w;
}

Json ToJson(const std::string& path, const StreamSummary& sum, const Walk& walk, bool chunks) {
  const StreamInfo& info = sum.info;
  const KvShape& s = info.shape;
  Json j;
  j["file"] = path;
  j["codec"] = info.levels.empty() ? "" : info.levels[0];
  j["levels"] = info.levels;
  j["layers"] = s.layers;
  j["kv_heads"] = s.kv_heads;
  j["head_dim"] = s.head_dim;
  j["tokens"] = s.tokens;
  j["token_begin"] = info.token_begin;
  j["dtype"] = std::string(DTypeName(info.dtype));
  j["elements"] = s.elements();
  j["chunks"] = sum.chunks;
  j["bytes"] = sum.bytes;
  j["bits_per_element"] = double(sum.bytes) * 8.0 / double(s.elements());
  j["header_bytes"] = sum.header_bytes;
  j["chunk_header_bytes"] = sum.chunk_header_bytes;
  j["payload_bytes"] = sum.payload_bytes;
  j["trailer_bytes"] = sum.trailer_bytes;
  j["chunks_per_level"] = sum.chunks_per_level;
  j["k_payload_bits_per_element"] = walk.k.bits();
  j["v_payload_bits_per_element"] = walk.v.bits();
  j["profile_id"] = info.profile_id;
  j["metadata"] = {{"positions_start", info.metadata.positions_start},
                   {"rope_theta", info.metadata.rope_theta},
                   {"rope_style", info.metadata.rope_style},
                   {"model_fingerprint", info.metadata.model_fingerprint}};
  if (chunks) {
    Json list = Json::array();
    for (const ChunkRef& c : walk.chunks) {
      const ChunkHeader& h = c.header;
      list.push_back({{"offset", c.offset},
                      {"layer", h.layer},
                      {"kind", std::string(KvKindName(h.kind))},
                      {"token_begin", h.token_begin},
                      {"tokens", h.tokens},
                      {"level", h.level},
                      {"codec_id", h.codec_id},
                      {"payload_bytes", h.payload_bytes},
                      {"payload_crc32c", h.payload_crc32c}});
    }
    j["chunk_list"] = std::move(list);
  }
  return j;
}

void PrintHuman(const std::string& path, const StreamSummary& sum, const Walk& walk, bool chunks) {
  const StreamInfo& info = sum.info;
  const KvShape& s = info.shape;
  const double bpe = double(sum.bytes) * 8.0 / double(s.elements());
  auto pct = [&](uint64_t b) { return Format("%6.2f %%", 100.0 * double(b) / double(sum.bytes)); };
  auto row = [](const std::string& k, const std::string& v) {
    std::cout << "  " << Format("%-20s", k.c_str()) << v << "\n";
  };
  std::cout << path << ": valid kvwire stream (every CRC32C and the trailer checked)\n";
  row("codec", info.levels.empty() ? "?" : info.levels[0]);
  if (info.levels.size() > 1) {
    std::string all;
    for (size_t i = 0; i < info.levels.size(); ++i) {
      all += (i ? ", " : "") + std::to_string(i) + "=" + info.levels[i] + " (" +
             std::to_string(i < sum.chunks_per_level.size() ? sum.chunks_per_level[i] : 0) +
             " chunks)";
    }
    row("levels", all);
  }
  row("shape", Format("%u layers x %u tokens x %u kv heads x %u head_dim (K and V)", s.layers,
                      s.tokens, s.kv_heads, s.head_dim));
  row("tokens", Format("[%u, %u) of the sequence", info.token_begin, info.token_begin + s.tokens));
  row("source dtype", std::string(DTypeName(info.dtype)));
  row("elements", Thousands(s.elements()));
  row("chunks", std::to_string(sum.chunks));
  std::cout << "\n  " << Format("%-20s%15s %8s", "bytes", "bytes", "share") << "\n";
  auto brow = [&](const char* k, uint64_t b) {
    std::cout << "  " << Format("%-20s%15s %s", k, Thousands(b).c_str(), pct(b).c_str()) << "\n";
  };
  brow("  stream header", sum.header_bytes);
  brow("  chunk headers", sum.chunk_header_bytes);
  brow("  payload", sum.payload_bytes);
  brow("  trailer", sum.trailer_bytes);
  brow("  total", sum.bytes);
  std::cout << "\n";
  row("bits/element", Format("%.4f  (all-in: %s bytes x 8 / %s elements)", bpe,
                             Thousands(sum.bytes).c_str(), Thousands(s.elements()).c_str()));
  row("  K payload only", Format("%.4f", walk.k.bits()));
  row("  V payload only", Format("%.4f", walk.v.bits()));
  row("vs fp16", Format("%.2fx smaller", 16.0 / bpe));
  const KvMetadata& m = info.metadata;
  row("positions_start", std::to_string(m.positions_start));
  row("rope", m.rope_style + Format(", theta %g", m.rope_theta));
  row("model", m.model_fingerprint.empty() ? "(unknown)" : m.model_fingerprint);
  if (!info.profile_id.empty()) row("profile", info.profile_id);
  if (!chunks) return;
  std::cout << "\n  "
            << Format("%5s %12s %5s %2s %17s %5s %5s %12s %10s", "#", "offset", "layer", "kv",
                      "tokens", "level", "codec", "payload", "bits/elem")
            << "\n";
  for (size_t i = 0; i < walk.chunks.size(); ++i) {
    const ChunkHeader& h = walk.chunks[i].header;
    const double elems = double(h.tokens) * s.kv_heads * s.head_dim;
    const std::string range = Format("[%u, %u)", h.token_begin, h.token_begin + h.tokens);
    std::cout << "  "
              << Format("%5zu %12llu %5u %2s %17s %5u %5u %12s %10.4f", i,
                        static_cast<unsigned long long>(walk.chunks[i].offset), h.layer,
                        std::string(KvKindName(h.kind)).c_str(), range.c_str(), unsigned{h.level},
                        unsigned{h.codec_id}, Thousands(h.payload_bytes).c_str(),
                        double(h.payload_bytes) * 8.0 / elems)
              << "\n";
  }
}

int RunInspect(const InspectArgs& a) {
  const char* cmd = "inspect";
  auto bytes = ReadFileBytes(a.in);
  if (!bytes.ok()) return FailStatus(cmd, bytes.status());
  auto summary = InspectStream(*bytes);
  if (!summary.ok()) return FailStatus(cmd, summary.status().WithContext(a.in));
  if (summary->bytes != bytes->size()) {
    return Fail(cmd, a.in + ": stream ends at byte " + std::to_string(summary->bytes) + " of " +
                         std::to_string(bytes->size()) + " (trailing bytes)");
  }
  auto walk = WalkChunks(*bytes);
  if (!walk.ok()) return FailStatus(cmd, walk.status().WithContext(a.in));
  if (a.json) {
    std::cout << ToJson(a.in, *summary, *walk, a.chunks).dump(2) << "\n";
  } else {
    PrintHuman(a.in, *summary, *walk, a.chunks);
  }
  return 0;
}

const CommandRegistrar kRegistrar(
    "inspect", "Validate a kvwire stream and show its codec, shape and byte accounting",
    [](CLI::App* sub) -> std::function<int()> {
      auto a = std::make_shared<InspectArgs>();
      sub->footer(
          "Checks the whole stream (header, every chunk header and CRC32C, the trailer) and\n"
          "prints where its bytes go. bits/element is all-in: file bytes x 8 / (layers x 2 x\n"
          "kv_heads x head_dim x tokens), headers and padding included.\n"
          "--json prints: file, codec, levels, layers, kv_heads, head_dim, tokens, token_begin,\n"
          "dtype, elements, chunks, bytes, bits_per_element, header_bytes, chunk_header_bytes,\n"
          "payload_bytes, trailer_bytes, chunks_per_level, k/v_payload_bits_per_element,\n"
          "profile_id, metadata{...}, and with --chunks a chunk_list of every chunk header.");
      sub->add_option("stream", a->in, "Stream file (.kvw)")->required();
      sub->add_flag("--json", a->json, "Print JSON instead of a table");
      sub->add_flag("--chunks", a->chunks, "Also list every chunk");
      return [a] { return RunInspect(*a); };
    });

}  // namespace
}  // namespace kvwire::cli
