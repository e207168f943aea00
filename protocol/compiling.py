"""Construct pieces that compile to fast *and* checked code.

construct 2.10 compiles strings and bytes to a bare read that accepts a truncated payload, and
cannot compile an Adapter at all (everything under it then runs as slow plain construct). The
records and events terminals send by the thousand need both fixed; these two classes do it.
"""

from typing import Any

from construct import Adapter, Bytes, GreedyBytes, Prefixed, StringEncoded, Subconstruct


class LengthChecked(Subconstruct):
    """A string or bytes field that fails on a short payload, compiled or not.

    construct 2.10 compiles Bytes and PascalString to a bare ``io.read(n)``, which returns what is
    left instead of failing, so a truncated message would decode. This wrapper compiles to
    ``stream_read`` and ``stream_write``, the checked reads and writes of the plain declaration
    (StreamError when short).
    """

    def __init__(self, subcon: Any) -> None:
        super().__init__(subcon)
        self.lengthfield: Any
        self.size: int | None
        self.encoding = subcon.encoding if isinstance(subcon, StringEncoded) else None
        raw = subcon.subcon if self.encoding else subcon
        if isinstance(raw, Bytes) and isinstance(raw.length, int):
            self.lengthfield, self.size = None, raw.length
        elif isinstance(raw, Prefixed) and raw.subcon is GreedyBytes and not raw.includelength:
            self.lengthfield, self.size = raw.lengthfield, None
        else:
            raise TypeError(f"LengthChecked takes Bytes(n), Prefixed(n, GreedyBytes) or PascalString, not {subcon}")

    def _emitparse(self, code: Any) -> str:
        length = self.size if self.lengthfield is None else self.lengthfield._compileparse(code)
        read = f"stream_read(io, {length}, '(compiled)')"
        return f"{read}.decode({self.encoding!r})" if self.encoding else read

    def _emitbuild(self, code: Any) -> str:
        data = f"obj.encode({self.encoding!r})" if self.encoding else "obj"
        if self.lengthfield is None:
            write = f"stream_write(io, data, {self.size}, '(compiled)')"
        else:
            prefix = f"reuse(len(data), lambda obj: {self.lengthfield._compilebuild(code)})"
            write = f"({prefix}, stream_write(io, data, len(data), '(compiled)'))"
        return f"(reuse({data}, lambda data: {write}), obj)[1]"


class CompilableAdapter(Adapter):
    """An Adapter that construct's compiler compiles instead of running its subtree plainly.

    The compiled code parses the subcon compiled, then calls ``_decode`` on the result (and
    ``_encode`` before building), so the dataclass conversion costs one call, not a plain parse.
    """

    def _emitparse(self, code: Any) -> str:
        self._compileinstance(code)
        return f"linkedinstances[{id(self)}]._decode({self.subcon._compileparse(code)}, this, '(compiled)')"

    def _emitbuild(self, code: Any) -> str:
        self._compileinstance(code)
        encoded = f"linkedinstances[{id(self)}]._encode(obj, this, '(compiled)')"
        return f"(reuse({encoded}, lambda obj: {self.subcon._compilebuild(code)}), obj)[1]"
