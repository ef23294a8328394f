"""The MySQL compressed protocol (``CLIENT_COMPRESS``, zlib) on top of PyMySQL.

PyMySQL refuses ``compress=True``; :class:`CompressedConnection` is a drop-in subclass of
``pymysql.connections.Connection`` that speaks it::

    from tenantkit.db.compress import CompressedConnection

    conn = CompressedConnection(host="db.example.com", user="app", password="...",
                                database="blog", compress=True, compress_level=6)
    with conn.cursor() as cur:
        cur.execute("SELECT option_name, option_value FROM wp_options")
        rows = cur.fetchall()
    print(conn.wire_stats())   # WireStats(sent=..., received=..., sent_payload=..., ...)

or through SQLAlchemy: ``create_engine("mysql+tenantkit://app:pw@db/blog?compress=true")``
(see :mod:`tenantkit.db.dialect`).

How it works. PyMySQL reads and writes ordinary packets through ``_read_packet`` (which
calls ``_read_bytes``) and ``_write_bytes``; once authentication has ended with OK, this
class turns every write into compressed frames and cuts every packet read out of a buffer
of decompressed frames. A frame
is a 7-byte header -- the payload length (3 bytes, little-endian), the compressed sequence
id (1 byte), the length before compression (3 bytes; 0 means "sent as is") -- and then a
zlib stream holding one or more packets, or a piece of one. The compressed sequence id
restarts with each command and counts frames in both directions. The servers renumber the
inner packets from the frame sequence whenever they flush (after each result of a
multi-statement, for instance), so, like libmariadb, this class checks the frame sequence
and takes the inner packet numbers as they come.

A frame that breaks these rules (bad zlib data, lengths that do not match, an unexpected
sequence id, a connection cut off mid-frame) raises ``pymysql.err.OperationalError``
(code 2013, so SQLAlchemy's pool discards the connection) naming what was wrong, and the
connection is closed: it never returns rows from a broken stream. Frames sent uncompressed
carry no checksum in this protocol; use TLS (``ssl_ca=...``) where bytes may be altered.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

from pymysql import err
from pymysql.connections import Connection
from pymysql.constants import CLIENT, CR
from pymysql.protocol import MysqlPacket

__all__ = [
    "MAX_FRAME_PAYLOAD",
    "CompressedConnection",
    "CompressionUnavailableWarning",
    "WireStats",
]

log = logging.getLogger(__name__)

MAX_FRAME_PAYLOAD = 2**24 - 1
"""The most bytes one frame may carry, before and after compression (3-byte lengths)."""

_HEADER_LEN = 7
_MAX_PACKET_LEN = 2**24 - 1  # an inner packet this long continues in the next one


class CompressionUnavailableWarning(UserWarning):
    """``compress=True`` was asked for but the server does not offer ``CLIENT_COMPRESS``."""


@dataclass(frozen=True)
class WireStats:
    """Bytes counted on one connection (across reconnects).

    ``sent``/``received``: bytes of the MySQL protocol on the socket (frame headers included;
    below TLS, so TLS record overhead is not counted). ``sent_payload``/``received_payload``:
    the same traffic before compression. Without compression both pairs are equal.
    """

    sent: int
    received: int
    sent_payload: int
    received_payload: int
    frames_sent: int
    frames_received: int

    @property
    def ratio(self) -> float:
        """Wire bytes / payload bytes, both directions together (1.0 means no saving)."""
        payload = self.sent_payload + self.received_payload
        return (self.sent + self.received) / payload if payload else 1.0


def _deflate(data: bytes, level: int) -> bytes:
    """One complete zlib stream of ``data``.

    Small payloads get a window just big enough to hold them and a small hash table: the same
    output, without zlib's default 256 KB of state to allocate for every frame, which would
    cost more CPU than the whole query for short statements.
    """
    size = len(data)
    if size >= 1 << 14:
        return zlib.compress(data, level)
    wbits = max(9, size.bit_length())
    deflater = zlib.compressobj(level, zlib.DEFLATED, wbits, max(1, wbits - 6))
    return deflater.compress(data) + deflater.flush()


class CompressedConnection(Connection):  # type: ignore[misc]  # PyMySQL ships no type hints
    """``pymysql.connections.Connection`` with the compressed protocol.

    :param compress: ask the server for ``CLIENT_COMPRESS``. When the server does not offer
        it, the connection stays uncompressed and a :class:`CompressionUnavailableWarning`
        is issued. With ``False`` (the default) this class behaves exactly as PyMySQL.
    :param compress_level: zlib level, 0-9 (or -1 for zlib's default); 6 by default.
    :param compress_min_length: payloads shorter than this are sent uncompressed (50 by
        default, like the MySQL and MariaDB servers).

    Every other keyword argument is PyMySQL's.
    """

    def __init__(self, *, compress: bool = False, compress_level: int = 6,
                 compress_min_length: int = 50, **kwargs: Any) -> None:
        if not isinstance(compress, bool):
            raise TypeError(f"compress must be True or False, got {compress!r}")
        if (isinstance(compress_level, bool) or not isinstance(compress_level, int)
                or not -1 <= compress_level <= 9):
            raise ValueError(
                f"compress_level must be an integer from -1 to 9, got {compress_level!r}"
            )
        if (isinstance(compress_min_length, bool) or not isinstance(compress_min_length, int)
                or compress_min_length < 0):
            raise ValueError(
                f"compress_min_length must be an integer >= 0, got {compress_min_length!r}"
            )
        self._compress_wanted = compress
        self.compress_level = compress_level
        self.compress_min_length = compress_min_length
        self._counts = [0, 0, 0, 0, 0, 0]  # sent, received, sent/received payload, frames
        self._reset_framing()
        super().__init__(**kwargs)

    # --- public --------------------------------------------------------------------------

    @property
    def compressed(self) -> bool:
        """True while the connection uses compressed framing."""
        return self._compressing

    def wire_stats(self) -> WireStats:
        """Bytes sent and received so far, on the wire and before compression."""
        return WireStats(*self._counts)

    # --- framing state -------------------------------------------------------------------

    def _reset_framing(self) -> None:
        self._compressing = False
        self._cseq = 0
        self._rbuf = b""
        self._rpos = 0
        self._command_starts = False
        # PyMySQL's _read_packet alternates _read_bytes(4) for a header and one read for
        # the body; this tells which one comes next.
        self._header_next = True

    def connect(self, sock: Any = None) -> None:
        # A reconnect (ping(reconnect=True)) negotiates again from a clean framing state.
        self._reset_framing()
        super().connect(sock)

    def _force_close(self) -> None:
        super()._force_close()
        self._reset_framing()

    def _request_authentication(self) -> None:
        if self._compress_wanted and self.server_capabilities & CLIENT.COMPRESS:
            self.client_flag |= CLIENT.COMPRESS
        else:
            self.client_flag &= ~CLIENT.COMPRESS
            if self._compress_wanted:
                message = (
                    f"the MySQL server at {self.host}:{self.port} does not offer compression "
                    "(CLIENT_COMPRESS); this connection is not compressed"
                )
                log.warning(message)
                warnings.warn(message, CompressionUnavailableWarning, stacklevel=2)
        super()._request_authentication()
        # The protocol switches to compressed frames right after the final OK of the
        # authentication exchange (auth switch and extra rounds included).
        self._compressing = bool(self.client_flag & CLIENT.COMPRESS)

    def _execute_command(self, command: int, sql: Any) -> None:
        # PyMySQL may first read the rest of a previous unbuffered result (frames of the
        # old command); the new command's numbering starts with its first write.
        self._command_starts = True
        try:
            super()._execute_command(command, sql)
        finally:
            self._command_starts = False

    def close(self) -> None:
        self._command_starts = True  # COM_QUIT is a command of its own
        super().close()

    # --- writing ---------------------------------------------------------------------------

    def _write_bytes(self, data: bytes) -> None:
        counts = self._counts
        if not self._compressing:
            super()._write_bytes(data)
            counts[0] += len(data)
            counts[2] += len(data)
            return
        if self._command_starts:
            self._command_starts = False
            self._cseq = 0
            self._rbuf = b""
            self._rpos = 0
        self._header_next = True
        total = len(data)
        if total <= MAX_FRAME_PAYLOAD:  # the common case: one frame, header and payload joined
            wire = self._frame(data)
            nframes = 1
        else:
            frames = [self._frame(data[start:start + MAX_FRAME_PAYLOAD])
                      for start in range(0, total, MAX_FRAME_PAYLOAD)]
            wire = b"".join(frames)
            nframes = len(frames)
        super()._write_bytes(wire)
        counts[0] += len(wire)
        counts[2] += total
        counts[4] += nframes

    def _frame(self, chunk: bytes) -> bytes:
        """One frame for ``chunk`` (at most MAX_FRAME_PAYLOAD bytes), numbered in sequence."""
        seq = self._cseq
        self._cseq = (seq + 1) & 0xFF
        size = len(chunk)
        if size >= self.compress_min_length:
            packed = _deflate(chunk, self.compress_level)
            if len(packed) < size:
                # header: length (3 bytes), sequence id (1), length before compression (3)
                return (len(packed) | seq << 24 | size << 32).to_bytes(7, "little") + packed
        return (size | seq << 24).to_bytes(7, "little") + chunk

    # --- reading ---------------------------------------------------------------------------

    def _read_packet(self, packet_type: Any = MysqlPacket) -> Any:
        if not self._compressing:
            return super()._read_packet(packet_type)
        # PyMySQL's own, without its two _read_bytes calls per packet: the packets are cut
        # straight out of the buffer of inflated frames.
        timeout = self._read_timeout
        if getattr(self, "_current_timeout", timeout) != timeout:
            self._sock.settimeout(timeout)
            self._current_timeout = timeout
        parts: list[bytes] = []
        while True:
            buf = self._rbuf
            pos = self._rpos
            end = pos + 4
            if end <= len(buf):
                self._rpos = end
                header = int.from_bytes(buf[pos:end], "little")
            else:
                header = int.from_bytes(self._refill(4), "little")
            # The frame sequence is checked; the inner one restarts at each server flush.
            self._next_seq_id = ((header >> 24) + 1) & 0xFF
            length = header & 0xFFFFFF
            buf = self._rbuf
            pos = self._rpos
            end = pos + length
            if end <= len(buf):
                self._rpos = end
                body = buf[pos:end]
            else:
                body = self._refill(length)
            if length < _MAX_PACKET_LEN:
                break
            parts.append(body)
        if parts:
            parts.append(body)
            body = b"".join(parts)
        packet = packet_type(body, self.encoding)
        if packet.is_error_packet():
            result = self._result
            if result is not None and result.unbuffered_active is True:
                result.unbuffered_active = False
            packet.raise_for_error()
        return packet

    def _read_bytes(self, num_bytes: int) -> bytes:
        if not self._compressing:
            data: bytes = super()._read_bytes(num_bytes)
            self._counts[1] += num_bytes
            self._counts[3] += num_bytes
            return data
        pos = self._rpos
        end = pos + num_bytes
        if end <= len(self._rbuf):
            self._rpos = end
            data = self._rbuf[pos:end]
        else:
            data = self._refill(num_bytes)
        if self._header_next:
            # The frame sequence is checked; the inner one restarts at each server flush.
            self._next_seq_id = data[3]
            self._header_next = False
        else:
            self._header_next = True
        return data

    def _refill(self, num_bytes: int) -> bytes:
        buf = self._rbuf
        have = len(buf) - self._rpos
        if not have:
            # The buffer is used up (the common case, as servers end frames on packet
            # boundaries): the next frame becomes the buffer, with no copying.
            buf = self._read_frame()
            have = len(buf)
            if have >= num_bytes:
                self._rbuf = buf
                self._rpos = num_bytes
                return buf[:num_bytes]
            parts = [buf]
        else:
            parts = [buf[self._rpos:]]
        while have < num_bytes:
            chunk = self._read_frame()
            parts.append(chunk)
            have += len(chunk)
        buf = b"".join(parts)
        self._rbuf = buf
        self._rpos = num_bytes
        return buf[:num_bytes]

    def _broken(self, what: str) -> err.OperationalError:
        self._force_close()
        return err.OperationalError(
            CR.CR_SERVER_LOST,
            f"Lost connection to MySQL server during query: bad compressed frame: {what} "
            "(the connection was closed; reconnect, and check for a proxy or network "
            "device that alters MySQL traffic)",
        )

    def _read_wire(self, num_bytes: int, what: str) -> bytes:
        try:
            data: bytes = self._rfile.read(num_bytes)
        except OSError as exc:
            self._force_close()
            raise err.OperationalError(
                CR.CR_SERVER_LOST, f"Lost connection to MySQL server during query ({exc})"
            ) from exc
        except BaseException:
            self._force_close()
            raise
        if len(data) < num_bytes:
            self._force_close()
            raise err.OperationalError(
                CR.CR_SERVER_LOST,
                f"Lost connection to MySQL server during query: the connection ended "
                f"{len(data)} bytes into a compressed {what} of {num_bytes} bytes",
            )
        return data

    def _read_frame(self) -> bytes:
        header = self._read_wire(_HEADER_LEN, "frame header")
        fields = int.from_bytes(header, "little")
        length = fields & 0xFFFFFF
        seq = header[3]
        uncompressed = fields >> 32
        if seq != self._cseq:
            raise self._broken(
                f"sequence id {seq}, expected {self._cseq} (frames lost or out of order)"
            )
        if not length:
            raise self._broken(f"frame {seq} is empty (header {header.hex()})")
        self._cseq = (seq + 1) & 0xFF
        payload = self._read_wire(length, "frame payload")
        counts = self._counts
        counts[1] += _HEADER_LEN + length
        counts[5] += 1
        if not uncompressed:
            counts[3] += length
            return payload
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(payload, uncompressed)
        except zlib.error as exc:
            raise self._broken(f"frame {seq} holds bad zlib data ({exc})") from exc
        if (len(data) != uncompressed or not inflater.eof or inflater.unconsumed_tail
                or inflater.unused_data):
            raise self._broken(self._inflate_problem(seq, uncompressed, data, inflater))
        counts[3] += uncompressed
        return data

    @staticmethod
    def _inflate_problem(seq: int, uncompressed: int, data: bytes, inflater: Any) -> str:
        if inflater.unconsumed_tail:
            return f"frame {seq} inflates to more than the {uncompressed} bytes its header says"
        if not inflater.eof:
            return f"frame {seq}: the zlib stream is cut off"
        if inflater.unused_data:
            return f"frame {seq} has {len(inflater.unused_data)} bytes after its zlib stream"
        return f"frame {seq} inflates to {len(data)} bytes, its header says {uncompressed}"
