// The golden accuracy protocol as a library (golden_eval.h).
#include "diagnostics/golden_eval.h"

#include <algorithm>

#include "kvwire/stream.h"

namespace kvwire::diag {

Result<std::unique_ptr<GoldenEval>> GoldenEval::Create(
    const Model& model, std::span<const int32_t> ids, const GoldenOptions& o,
    const std::function<void(double, const std::string&)>& progress) {
  KVWIRE_RETURN_ERROR_IF(o.prefix == 0 || o.cont == 0 || o.seqs == 0, kInvalidArgument,
                         "golden eval: prefix, continuation and sequence count must be > 0");
  const int32_t bos = model.tokenizer().bos_id();
  KVWIRE_RETURN_ERROR_IF(o.bos && bos < 0, kInvalidArgument,
                         "golden eval: --bos but the tokenizer has no BOS token");
  // A window is P + C tokens fed plus the token that follows (the last target); with BOS the
  // first fed token is BOS instead of text.
  const uint32_t window = o.prefix + o.cont + 1 - (o.bos ? 1 : 0);
  KVWIRE_RETURN_ERROR_IF(ids.size() < window, kInvalidArgument,
                         "golden eval: the text has " + std::to_string(ids.size()) +
                             " tokens; one window needs " + std::to_string(window));
  std::unique_ptr<GoldenEval> g(new GoldenEval());
  g->model_ = &model;
  g->opt_ = o;
  KVWIRE_ASSIGN_OR_RETURN(g->starts_, SampleWindows(ids.size(), window, o.seqs, o.seed));
  g->overlap_ = uint64_t{o.seqs} * window > ids.size();
  const uint32_t V = model.config().vocab_size;
  const KvMetadata meta = model.kv_metadata();
  std::vector<int32_t> toks(size_t{o.prefix} + o.cont + 1);
  g->windows_.resize(o.seqs);
  for (uint32_t si = 0; si < o.seqs; ++si) {
    size_t k = 0;
    if (o.bos) toks[k++] = bos;
    std::copy_n(ids.begin() + static_cast<ptrdiff_t>(g->starts_[si]), window, toks.begin() + k);
    const std::span<const int32_t> all(toks);
    Window& w = g->windows_[si];
    w.cont.assign(all.begin() + o.prefix, all.begin() + o.prefix + o.cont);
    w.targets.assign(all.begin() + o.prefix + 1, all.begin() + o.prefix + 1 + o.cont);
    KVWIRE_ASSIGN_OR_RETURN(Sequence seq, model.NewSequence(o.prefix + o.cont));
    KVWIRE_RETURN_IF_ERROR(
        model.Forward(&seq, all.first(o.prefix), {ForwardOptions::Logits::kNone}, nullptr));
    KVWIRE_ASSIGN_OR_RETURN(w.prefix_kv, seq.Export(0, o.prefix, DType::kF32, false, meta));
    KVWIRE_RETURN_IF_ERROR(model.Forward(&seq, w.cont, {}, &w.ref_logits));
    KVWIRE_RETURN_IF_ERROR(
        AccumulateLogitStats(w.ref_logits, w.ref_logits, w.targets, V, &g->reference_));
    if (progress) progress(double(si + 1) / o.seqs, "reference runs");
  }
  return g;
}

Result<ArmResult> GoldenEval::Evaluate(const KvCoder& coder) const {
  ArmResult r;
  const uint32_t V = model_->config().vocab_size;
  std::vector<float> logits;
  for (const Window& w : windows_) {
    KvCache kv = w.prefix_kv;  // the coder works on a copy
    KVWIRE_RETURN_IF_ERROR(coder(&kv, &r.coded_bytes, &r.elements));
    KVWIRE_ASSIGN_OR_RETURN(Sequence seq, model_->SequenceFromKv(kv.view(), opt_.cont));
    KVWIRE_RETURN_IF_ERROR(model_->Forward(&seq, w.cont, {}, &logits));
    KVWIRE_RETURN_IF_ERROR(AccumulateLogitStats(logits, w.ref_logits, w.targets, V, &r.stats));
  }
  return r;
}

Result<KvCoder> StreamCoder(const std::string& spec, const Profile* profile, int threads) {
  // Validate the spec once, up front.
  KVWIRE_ASSIGN_OR_RETURN(auto codec, CreateCodec(spec, profile));
  const std::string canonical = codec->Spec();
  return KvCoder([canonical, profile, threads](KvCache* kv, uint64_t* bytes,
                                                uint64_t* elements) -> Status {
    StreamInfo info;
    info.shape = kv->shape();
    info.dtype = DType::kF32;
    info.metadata = kv->metadata();
    info.levels = {canonical};
    // The writer puts the profile's id into the header (same length whatever the profile).
    StreamWriterOptions wopt;
    wopt.threads = std::max(1, threads);
    KVWIRE_ASSIGN_OR_RETURN(auto stream, EncodeStream(kv->view(), info, wopt, profile));
    KVWIRE_ASSIGN_OR_RETURN(KvCache decoded, DecodeStream(stream, profile));
    KVWIRE_RETURN_ERROR_IF(decoded.dtype() != DType::kF32 || !(decoded.shape() == kv->shape()),
                           kInternal, "golden eval: decoded cache has another shape or dtype");
    const KvMetadata meta = kv->metadata();
    *kv = std::move(decoded);
    kv->metadata() = meta;
    *bytes += stream.size();
    *elements += info.shape.elements();
    return Status::Ok();
  });
}

KvCoder SingleTensorCoder(std::shared_ptr<const Codec> codec, uint32_t layer, KvKind kind) {
  return [codec = std::move(codec), layer, kind](KvCache* kv, uint64_t* bytes,
                                                 uint64_t* elements) -> Status {
    const KvShape& s = kv->shape();
    KVWIRE_RETURN_ERROR_IF(layer >= s.layers, kInvalidArgument, "golden eval: layer out of range");
    ChunkDesc d;
    d.layer = layer;
    d.kind = kind;
    d.token_begin = 0;
    d.tokens = s.tokens;
    d.kv_heads = s.kv_heads;
    d.head_dim = s.head_dim;
    d.seq_tokens = s.tokens;
    d.positions_start = kv->metadata().positions_start;
    std::vector<float> x(s.tensor_elements()), y(s.tensor_elements());
    const KvView view = kv->view();
    KVWIRE_RETURN_IF_ERROR(view.ReadF32(layer, kind, 0, s.tokens, x.data()));
    std::vector<uint8_t> payload;
    KVWIRE_RETURN_IF_ERROR(codec->Encode(d, x.data(), &payload));
    KVWIRE_RETURN_IF_ERROR(codec->Decode(d, payload, y.data()));
    KVWIRE_RETURN_IF_ERROR(view.WriteF32(layer, kind, 0, s.tokens, y.data()));
    *bytes += payload.size() + kChunkHeaderBytes;
    *elements += s.tensor_elements();
    return Status::Ok();
  };
}

}  // namespace kvwire::diag
