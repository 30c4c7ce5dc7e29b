"""kvwire: compressed KV-cache streams and transfers between machines.

KV caches are numpy arrays or CPU torch tensors, in one of two layouts:

* contiguous: one tensor ``(layers, 2, tokens, kv_heads, head_dim)``, index 0 = K, 1 = V;
* paged: a list with one tensor per layer plus ``block_ids``, the blocks of the sequence in
  order. ``layout="flash_attn"`` (the default, vLLM's flash-attention cache): each tensor is
  ``(2, num_blocks, block_size, kv_heads, head_dim)``; ``layout="flashinfer"``:
  ``(num_blocks, 2, block_size, kv_heads, head_dim)``.

Strides are free except that head_dim must be the contiguous dimension: NHD tensors and HND ones
(allocated ``(..., kv_heads, block_size, head_dim)`` and permuted to the shapes above) are read
and written in place, without a copy. Tensors whose elements overlap (``expand``) are refused.

dtypes: float16 and float32 (numpy or torch), bfloat16 (torch only). Every failure raises
``kvwire.Error`` (``kvwire.TimeoutError`` for timeouts); a tensor kvwire cannot use raises
``ValueError`` saying what is expected.
"""

from . import _kvwire
from ._kvwire import (
    IncomingRequest,
    LevelSpec,
    Profile,
    Receiver,
    Sender,
    SendRequest,
    backends,
    codecs,
    encode,
    inspect,
)
from .errors import Error, InvalidArgumentError, TimeoutError  # noqa: A004

__all__ = [
    "Error", "InvalidArgumentError", "TimeoutError", "IncomingRequest", "LevelSpec", "Profile",
    "Receiver", "Sender", "SendRequest", "backends", "codecs", "decode", "encode", "inspect",
]


def _new_like_stream(info):
    """A new contiguous array for the stream's shape and dtype (numpy; torch for bfloat16)."""
    if info["dtype"] == "bfloat16":
        try:
            import torch
        except ImportError:
            raise Error("the stream holds a bfloat16 KV cache and numpy has no bfloat16: "
                        "pass out= (a torch.bfloat16 or a numpy float32 array)",
                        "invalid argument") from None
        return torch.empty(info["shape"], dtype=torch.bfloat16)
    import numpy
    return numpy.empty(info["shape"], dtype=info["dtype"])


def decode(stream, out=None, profile=None, block_ids=None, layout="flash_attn"):
    """Decodes a kvwire stream.

    ``out``: where to write, a contiguous ``(layers, 2, tokens, kv_heads, head_dim)`` tensor or a
    paged list with ``block_ids`` (and ``layout``), any of the three dtypes (values are
    converted). Without it, a new numpy array of the stream's dtype is returned (a torch tensor
    for bfloat16 streams). ``profile``: the kvwire.Profile the stream was encoded with, for
    profile-based codecs.
    """
    if out is None:
        if block_ids is not None:
            raise ValueError("block_ids needs out= (the paged cache to write)")
        out = _new_like_stream(_kvwire._header_info(stream))
    _kvwire._decode_into(stream, out, profile, block_ids, layout)
    return out
