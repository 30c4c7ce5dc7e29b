"""kvwire.vllm: a KV connector shaped like vLLM's v1 KV connector API, over kvwire.Sender and
kvwire.Receiver, for prefill/decode disaggregation.

The prefill instance (``kv_role="kv_producer"``) pushes each request's KV layer by layer as its
forward pass produces it (``save_kv_layer``); the decode instance (``kv_role="kv_consumer"``)
listens, decodes every layer straight into its own paged cache, and lets the forward pass wait
per layer (``wait_for_layer_load``) or, with ``load_async``, between scheduler steps. Both sides
keep their own block ids; only tokens the decode side does not hold yet are sent.

vLLM is not imported: the connector reads only the attributes it needs from the objects vLLM
passes (config, requests, block lists, scheduler output), so it also runs under a harness. Use
it from vLLM with::

    KVTransferConfig(kv_connector="KvwireConnector", kv_connector_module_path="kvwire.vllm",
                     kv_role="kv_producer" | "kv_consumer",
                     kv_connector_extra_config={...})

``kv_connector_extra_config`` keys (all optional but the key):

* ``backend``: "tcp" (default) or "ucx";
* ``key_file``: the shared key (hex, as ``kvwire keygen`` writes it); or ``insecure: True``;
* ``codec``: one codec spec (default "fp16"), or ``levels``: an adaptive ladder of codec specs;
* ``profile``: path of the calibrated profile that profile-based codecs (fraqtl) need;
* ``max_kl``, ``min_bits``: the accuracy budget the level chooser keeps to;
* ``chunk_tokens``: tokens per chunk (0: kvwire's default);
* ``listen_address``: decode side, HOST:PORT to listen on (default "127.0.0.1:0");
* ``peer_address``: prefill side, the decode side's address (a request's
  ``kv_transfer_params["remote_address"]`` overrides it);
* ``timeout_ms``: bound on every wait (default 30000): a layer wait, an announcement that
  never comes; ``stall_timeout_ms``, ``connect_timeout_ms``: passed to kvwire;
* ``layout``: "flash_attn" or "flashinfer" (default: from the registered tensors' shape);
* ``load_async``: decode side loads between steps instead of layer by layer (default False).

Per-request ``kv_transfer_params``: on the prefill side ``do_remote_decode: True``, optional
``transfer_id`` (an int both sides agree on; default: derived from the request id),
``remote_cached_tokens`` (tokens the decode side already holds, a multiple of the block size;
only the rest is sent) and ``remote_address``; on the decode side ``do_remote_prefill: True`` and
the same ``transfer_id``. The prefill side's ``request_finished`` returns the parameters the
decode side needs.
"""

import dataclasses
import hashlib
import logging
import threading
import time

import kvwire

logger = logging.getLogger("kvwire.vllm")

_PRODUCER_ROLES = ("kv_producer", "kv_both")
_CONSUMER_ROLES = ("kv_consumer", "kv_both")


def transfer_id_of(request_id, params=None):
    """The kvwire request id of a vLLM request: params["transfer_id"] when given, else a 63-bit
    hash of the request id (both sides derive the same one from the same string)."""
    if params and params.get("transfer_id") is not None:
        return int(params["transfer_id"])
    digest = hashlib.blake2b(str(request_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _block_ids(blocks):
    """Block ids of a vLLM KVCacheBlocks (first KV cache group), or of a plain list."""
    if hasattr(blocks, "get_block_ids"):
        blocks = blocks.get_block_ids()
    blocks = list(blocks)
    if blocks and isinstance(blocks[0], (list, tuple)):
        blocks = list(blocks[0])
    return [int(b) for b in blocks]


def _role_name(role):
    name = getattr(role, "name", role)
    if isinstance(name, int):
        name = ("SCHEDULER", "WORKER")[name]
    name = str(name).upper()
    if name not in ("SCHEDULER", "WORKER"):
        raise ValueError(f"connector role {role!r}: expected SCHEDULER or WORKER")
    return name


@dataclasses.dataclass
class TransferSpec:
    """One request's transfer as the scheduler side hands it to the worker side."""
    transfer_id: int
    block_ids: list        # the request's blocks from token 0, in order
    token_begin: int       # first token transferred (held already on the decode side before it)
    tokens: int            # tokens transferred: [token_begin, token_begin + tokens)
    remote_address: str = ""


@dataclasses.dataclass
class KvwireConnectorMetadata:
    """Scheduler -> worker metadata of one step (picklable)."""
    reqs_to_recv: dict = dataclasses.field(default_factory=dict)  # request id -> TransferSpec
    reqs_to_send: dict = dataclasses.field(default_factory=dict)  # request id -> TransferSpec


class _Receive:
    """A request the decode worker receives: its spec, and where kvwire stands with it."""

    def __init__(self, request_id, spec, deadline):
        self.request_id = request_id
        self.spec = spec
        self.deadline = deadline  # for the announcement and the destination
        self.bound = False        # set_destination done
        self.error = None         # why it failed, once it did
        self.done = False


class KvwireConnector:
    """vLLM v1 KV connector over kvwire (see the module docstring). One instance per role:
    vLLM creates a SCHEDULER one in the scheduler process and a WORKER one per worker."""

    def __init__(self, vllm_config, role, kv_cache_config=None):
        self._role = role
        _role_name(role)  # refuses an unknown role early
        transfer = vllm_config.kv_transfer_config
        self._kv_role = getattr(transfer, "kv_role", "kv_both") or "kv_both"
        self._cfg = dict(getattr(transfer, "kv_connector_extra_config", None) or {})
        self._block_size = int(vllm_config.cache_config.block_size)
        self._timeout_ms = int(self._cfg.get("timeout_ms", 30000))
        self._load_async = bool(self._cfg.get("load_async", False))
        self._connector_metadata = None
        # Scheduler side: specs waiting for the next build_connector_meta.
        self._pending_recv = {}
        self._unsent = {}  # prefill requests allocated but not fully scheduled yet
        self._sent_params = {}  # request id -> params for request_finished
        # Worker side.
        self._layers = []        # per-layer KV tensors, in registration order
        self._layer_index = {}   # layer name -> index
        self._layout = self._cfg.get("layout")
        self._profile = None
        self._receiver = None
        self._listener = None
        self._stop = threading.Event()
        self._lock = threading.Condition()
        self._receives = {}      # request id -> _Receive
        self._by_transfer = {}   # transfer id -> request id
        self._announced = {}     # transfer id -> (kvwire.IncomingRequest, when), not claimed yet
        self._load_errors = set()
        self._senders = {}       # address -> kvwire.Sender
        self._sends = {}         # request id -> (kvwire.SendRequest or None, error or None)
        self._step_sends = []    # request ids whose layers this forward pass pushes
        self._vllm_finished = set()
        self._failed_sends = {}  # request id -> error text

    # ----------------------------------------------------------------------------------------
    # Scheduler side
    # ----------------------------------------------------------------------------------------

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        """Tokens the prefill side will push beyond `num_computed_tokens` (a decode request with
        ``do_remote_prefill``), and whether they load between steps. Side-effect free. Without
        load_async the last prompt token is left to the decode side to compute, as vLLM needs
        one token to schedule."""
        params = getattr(request, "kv_transfer_params", None) or {}
        if self._kv_role not in _CONSUMER_ROLES or not params.get("do_remote_prefill"):
            return 0, False
        prompt = len(request.prompt_token_ids)
        count = prompt - num_computed_tokens - (0 if self._load_async else 1)
        if count <= 0:
            return 0, False
        return count, self._load_async

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        """Records the blocks a request's transfer reads (prefill) or writes (decode)."""
        params = getattr(request, "kv_transfer_params", None) or {}
        rid = request.request_id
        if params.get("do_remote_prefill") and num_external_tokens > 0:
            prompt = len(request.prompt_token_ids)
            begin = prompt - num_external_tokens - (0 if self._load_async else 1)
            self._pending_recv[rid] = TransferSpec(transfer_id_of(rid, params), _block_ids(blocks),
                                                   begin, prompt - begin)
        elif params.get("do_remote_decode") and self._kv_role in _PRODUCER_ROLES:
            prompt = len(request.prompt_token_ids)
            begin = int(params.get("remote_cached_tokens", 0))
            if begin % self._block_size != 0 or not 0 <= begin < prompt:
                # Not sent: the decode side times out and recomputes the prompt.
                logger.error("kvwire: request %s not sent: remote_cached_tokens=%d is not a "
                             "multiple of the block size %d below the prompt length %d", rid,
                             begin, self._block_size, prompt)
                return
            address = params.get("remote_address") or self._cfg.get("peer_address", "")
            spec = TransferSpec(transfer_id_of(rid, params), _block_ids(blocks), begin,
                                prompt - begin, address)
            self._unsent[rid] = (request, spec)

    def build_connector_meta(self, scheduler_output):
        """This step's receives, and the sends of prefills that complete in this step."""
        meta = KvwireConnectorMetadata(reqs_to_recv=self._pending_recv)
        self._pending_recv = {}
        scheduled = getattr(scheduler_output, "num_scheduled_tokens", {}) or {}
        cached = getattr(scheduler_output, "scheduled_cached_reqs", None)
        # Blocks allocated for later chunks of a chunked prefill.
        for rid, new_ids in zip(getattr(cached, "req_ids", ()) or (),
                                getattr(cached, "new_block_ids", ()) or ()):
            if rid in self._unsent and new_ids:
                self._unsent[rid][1].block_ids.extend(_block_ids(new_ids))
        for rid, (request, spec) in list(self._unsent.items()):
            if rid not in scheduled:
                continue
            end = request.num_computed_tokens + scheduled[rid]
            if end >= spec.token_begin + spec.tokens:
                meta.reqs_to_send[rid] = spec
                self._sent_params[rid] = {"do_remote_prefill": True,
                                          "transfer_id": spec.transfer_id,
                                          "remote_cached_tokens": spec.token_begin}
                del self._unsent[rid]
        return meta

    def request_finished(self, request, block_ids):
        """Prefill side: (True, params for the decode side) while kvwire may still read the
        request's blocks (freed once get_finished reports it); otherwise (False, None)."""
        rid = request.request_id
        self._unsent.pop(rid, None)
        params = self._sent_params.pop(rid, None)
        if params is None:
            return False, None
        return True, params

    # ----------------------------------------------------------------------------------------
    # Worker side
    # ----------------------------------------------------------------------------------------

    def bind_connector_metadata(self, connector_metadata):
        self._connector_metadata = connector_metadata

    def clear_connector_metadata(self):
        self._connector_metadata = None

    def has_connector_metadata(self):
        return self._connector_metadata is not None

    def _get_connector_metadata(self):
        assert self._connector_metadata is not None, "bind_connector_metadata first"
        return self._connector_metadata

    @property
    def listen_address(self):
        """The decode side's HOST:PORT (after register_kv_caches)."""
        return self._receiver.address if self._receiver else None

    def _transport_kwargs(self):
        kw = {"backend": self._cfg.get("backend", "tcp")}
        if self._cfg.get("key_file"):
            kw["key_file"] = self._cfg["key_file"]
        elif self._cfg.get("insecure"):
            kw["insecure"] = True
        if self._profile is not None:
            kw["profile"] = self._profile
        return kw

    def register_kv_caches(self, kv_caches):
        """Takes vLLM's per-layer caches (name -> tensor, in layer order) and starts the
        receiver (decode side)."""
        self._layers = list(kv_caches.values())
        self._layer_index = {name: i for i, name in enumerate(kv_caches)}
        if not self._layers:
            raise ValueError("register_kv_caches: no layers")
        if self._layout is None:
            shape = tuple(self._layers[0].shape)
            self._layout = "flash_attn" if shape[0] == 2 else "flashinfer"
        if self._cfg.get("profile"):
            self._profile = kvwire.Profile.load(self._cfg["profile"])
        if self._kv_role in _CONSUMER_ROLES:
            kw = self._transport_kwargs()
            if "stall_timeout_ms" in self._cfg:
                kw["stall_timeout_ms"] = int(self._cfg["stall_timeout_ms"])
            self._receiver = kvwire.Receiver.listen(
                self._cfg.get("listen_address", "127.0.0.1:0"), node_name="vllm-decode", **kw)
            self._listener = threading.Thread(target=self._listen, name="kvwire-listen",
                                              daemon=True)
            self._listener.start()
            logger.info("kvwire connector listening on %s", self._receiver.address)

    def _listen(self):
        while not self._stop.is_set():
            try:
                incoming = self._receiver.next_request(timeout_ms=200)
            except kvwire.TimeoutError:
                continue
            except kvwire.Error:
                if not self._stop.is_set():
                    logger.exception("kvwire receiver stopped")
                return
            with self._lock:
                self._announced[incoming.request_id] = (incoming, time.monotonic())
                self._lock.notify_all()
            self._bind(incoming.request_id)

    def _bind(self, transfer_id):
        """Sets the destination of a request once it is both announced and expected."""
        with self._lock:
            rid = self._by_transfer.get(transfer_id)
            incoming, _ = self._announced.get(transfer_id, (None, 0))
            if rid is None or incoming is None:
                return
            r = self._receives[rid]
            del self._announced[transfer_id]
            spec = r.spec
            layers, _, tokens, heads, dim = incoming.shape
            want = (len(self._layers), spec.token_begin, spec.tokens)
            if (layers, incoming.token_begin, tokens) != want:
                r.error = (f"announced {layers} layers, tokens [{incoming.token_begin}, "
                           f"{incoming.token_begin + tokens}); expected {want[0]} layers, tokens "
                           f"[{spec.token_begin}, {spec.token_begin + spec.tokens})")
                self._lock.notify_all()
                bound = None
            else:
                bound = r
        if bound is None:
            self._forget(transfer_id)
            return
        end = spec.token_begin + spec.tokens
        blocks = spec.block_ids[:(end + self._block_size - 1) // self._block_size]
        try:
            self._receiver.set_destination(transfer_id, self._layers, block_ids=blocks, tokens=end,
                                           layout=self._layout)
            error = None
        except (kvwire.Error, ValueError) as e:
            error = f"set_destination: {e}"
        with self._lock:
            r.bound = error is None
            r.error = r.error or error
            self._lock.notify_all()
        if error:
            self._forget(transfer_id)

    def _forget(self, transfer_id):
        try:
            self._receiver.release(transfer_id)
        except kvwire.Error:
            pass

    def start_load_kv(self, forward_context, **kwargs):
        """Decode side: expects this step's receives (their destinations are set as soon as the
        prefill side announces them). Prefill side: opens this step's sends."""
        meta = self._get_connector_metadata()
        now = time.monotonic()
        for rid, spec in meta.reqs_to_recv.items():
            with self._lock:
                self._receives[rid] = _Receive(rid, spec, now + self._timeout_ms / 1000)
                self._by_transfer[spec.transfer_id] = rid
            self._bind(spec.transfer_id)
        self._step_sends = []
        for rid, spec in meta.reqs_to_send.items():
            self._open_send(rid, spec)

    def _sender(self, address):
        if address not in self._senders:
            kw = self._transport_kwargs()
            for k in ("connect_timeout_ms", "stall_timeout_ms"):
                if k in self._cfg:
                    kw[k] = int(self._cfg[k])
            self._senders[address] = kvwire.Sender.connect(address, node_name="vllm-prefill", **kw)
        return self._senders[address]

    def _open_send(self, rid, spec):
        first = spec.token_begin // self._block_size
        last = (spec.token_begin + spec.tokens + self._block_size - 1) // self._block_size
        kw = {}
        if self._cfg.get("levels"):
            kw["levels"] = list(self._cfg["levels"])
        else:
            kw["codec"] = self._cfg.get("codec", "fp16")
        for k in ("max_kl", "min_bits"):
            if k in self._cfg:
                kw[k] = float(self._cfg[k])
        try:
            if not spec.remote_address:
                raise kvwire.InvalidArgumentError(
                    "no decode address: set peer_address or kv_transfer_params['remote_address']",
                    "invalid argument")
            req = self._sender(spec.remote_address).open(
                self._layers, request_id=spec.transfer_id, block_ids=spec.block_ids[first:last],
                tokens=spec.tokens, token_begin=spec.token_begin, layout=self._layout,
                chunk_tokens=int(self._cfg.get("chunk_tokens", 0)),
                user_data=str(rid).encode(), **kw)
            self._sends[rid] = (req, None)
            self._step_sends.append(rid)
        except (kvwire.Error, ValueError) as e:
            logger.error("kvwire: cannot send request %s: %s", rid, e)
            self._sends[rid] = (None, str(e))

    def wait_for_layer_load(self, layer_name):
        """Decode side: returns once layer `layer_name` of every receive of this step is decoded
        into the cache, or has failed (its blocks are then reported by
        get_block_ids_with_load_errors). Bounded by timeout_ms."""
        if self._load_async or self._connector_metadata is None:
            return
        layer = self._layer_index[layer_name]
        for rid in self._connector_metadata.reqs_to_recv:
            r = self._receives.get(rid)
            if r is None or r.done:
                continue
            if not self._wait_bound(r):
                continue
            try:
                self._receiver.wait_layer(r.spec.transfer_id, layer,
                                          timeout_ms=self._timeout_ms)
            except kvwire.Error as e:
                self._fail(r, f"layer {layer}: {e}")

    def _wait_bound(self, r):
        """Waits (bounded) for the request's destination; False if it failed instead."""
        with self._lock:
            while not r.bound and r.error is None:
                left = r.deadline - time.monotonic()
                if left <= 0:
                    r.error = f"not announced by the prefill side within {self._timeout_ms} ms"
                    break
                self._lock.wait(left)
            error = r.error
        if error is not None:
            self._fail(r, error)
            return False
        return True

    def _fail(self, r, error):
        with self._lock:
            if r.done:
                return
            r.done = True
            r.error = r.error or error
            first = r.spec.token_begin // self._block_size
            last = (r.spec.token_begin + r.spec.tokens + self._block_size - 1) // self._block_size
            self._load_errors.update(r.spec.block_ids[first:last])
            self._by_transfer.pop(r.spec.transfer_id, None)
        logger.error("kvwire: request %s failed to load: %s", r.request_id, r.error)
        self._forget(r.spec.transfer_id)

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        """Prefill side: layer `layer_name` is in the cache: push it for this step's sends."""
        layer = self._layer_index[layer_name]
        for rid in self._step_sends:
            req, error = self._sends[rid]
            if req is None:
                continue
            try:
                req.push_layer(layer)
            except kvwire.Error as e:
                logger.error("kvwire: request %s, layer %d: %s", rid, layer, e)
                self._sends[rid] = (None, str(e))

    def wait_for_save(self):
        """Pushes any layer of this step's sends that save_kv_layer did not. kvwire encodes and
        sends in the background; the blocks stay allocated (request_finished returned True)
        until get_finished reports the send."""
        for rid in self._step_sends:
            req, _ = self._sends[rid]
            if req is not None:
                try:
                    req.push_all()
                except kvwire.Error as e:
                    self._sends[rid] = (None, str(e))
        self._step_sends = []

    def get_finished(self, finished_req_ids):
        """(sends done, receives done) since the last call. A send is reported once vLLM has
        finished the request and the decode side confirmed every chunk (or the send failed);
        a receive (load_async only) once it is decoded or has failed."""
        self._vllm_finished.update(finished_req_ids)
        sending = set()
        for rid, (req, error) in list(self._sends.items()):
            if error is None:
                try:
                    if not req.poll():
                        continue
                except kvwire.Error as e:
                    error = str(e)
            if rid not in self._vllm_finished:
                if error is not None:
                    self._sends[rid] = (None, error)
                continue
            if error is not None:
                self._failed_sends[rid] = error
            sending.add(rid)
            del self._sends[rid]
            self._vllm_finished.discard(rid)
        recving = set()
        now = time.monotonic()
        # Announced requests that no step claimed (e.g. the decode side computes the one token
        # left itself) are released after timeout_ms, which fails them on the prefill side.
        with self._lock:
            expired = [t for t, (_, at) in self._announced.items()
                       if now - at > self._timeout_ms / 1000 and t not in self._by_transfer]
            for t in expired:
                del self._announced[t]
        for t in expired:
            self._forget(t)
        for rid, r in list(self._receives.items()):
            if not r.done:
                with self._lock:
                    bound, error = r.bound, r.error
                    if not bound and error is None and now > r.deadline:
                        error = f"not announced by the prefill side within {self._timeout_ms} ms"
                if error is not None:
                    self._fail(r, error)
                elif bound:
                    try:
                        if self._receiver.poll(r.spec.transfer_id):
                            r.done = True
                            with self._lock:
                                self._by_transfer.pop(r.spec.transfer_id, None)
                            self._forget(r.spec.transfer_id)
                    except kvwire.Error as e:
                        self._fail(r, str(e))
            if r.done:
                del self._receives[rid]
                if self._load_async:
                    recving.add(rid)
        return sending or None, recving or None

    def get_block_ids_with_load_errors(self):
        """Blocks of failed receives since the last call (vLLM recomputes them)."""
        with self._lock:
            errors, self._load_errors = self._load_errors, set()
        return errors

    def failed_sends(self):
        """Request id -> error of sends reported by get_finished that did not complete."""
        return dict(self._failed_sends)

    def shutdown(self):
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        for s in self._senders.values():
            s.close()
        if self._receiver is not None:
            self._receiver.close()

    @classmethod
    def get_required_kvcache_layout(cls, vllm_config):
        return None  # NHD and HND both work in place
